"""Does the embedded default learn? Trains configs/quickstart.py (SmolLM2-135M, the deterministic local judge) for
a fixed number of steps per seed and compares the first and the last tenth of the steps.

  python bench/learning.py                                  # 3 seeds x 16 steps, lexicon judge (70 min on 2
                                                            # CPU cores)
  python bench/learning.py --seeds 0 --steps 6 --backend model   # the policy judging itself (shorter run)

Prints per seed and pooled over seeds: agreement rate, mean rounds to agreement (of agreed dialogues: undefined in
a window without one), mean rounds of all dialogues (one that never agreed counts the turns it ran), programs
compiled, lexicon-CA group min/mean/max (of the completions written, i.e. of agreed dialogues) and the truncated-turn
fraction, each as mean +- standard error
over the steps of the first and the last tenth, and the change in units of its standard error; then one line per
target (agreement rises, rounds fall, by more than twice the pooled standard error). Writes the paper's
training-dynamics figure (CA group min/mean/max, agreement rate, rounds; running averages) per seed and pooled as
PNG. With `--backend model` it also reports how often the policy's judge answers parse. Scores from the lexicon
backend are a keyword heuristic's, labelled as such: a smoke signal that the loop learns, not Collective Agency.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from deliberate import metric_names as M  # noqa: E402
from deliberate.plots import figures  # noqa: E402

ROWS = ((M.AGREEMENT_RATE, "agreement rate", +1), (M.ROUNDS_TO_AGREEMENT, "rounds to agreement", -1),
        (M.ROUNDS_ALL, "rounds, all dialogues", -1), (M.COMPILES, "programs compiled", -1),
        (M.CA_GROUP_MIN, "CA group min", +1), (M.CA_GROUP_MEAN, "CA group mean", +1),
        (M.CA_GROUP_MAX, "CA group max", +1), (M.TRUNCATED_TURN_FRACTION, "truncated-turn fraction", -1),
        ("advantage/zero_advantage_frac", "zero-advantage fraction", -1))


def train(seed: int, steps: int, workdir: str, backend: str, extra: list[str]) -> float:
  """One seed's run through the launcher (its own process and log); returns its wall time."""
  cmd = [sys.executable, os.path.join(ROOT, "launch/train.py"), "--config", os.path.join(ROOT, "configs/quickstart.py"),
         "--workdir", workdir, f"--config.seed={seed}", f"--config.num_steps={steps}",
         f"--config.optim.total_steps={steps}", f"--config.checkpoint_every={steps}",
         f"--config.judge.embedded_backend={backend}",
         f"--config.compilation_cache_dir={os.path.join(os.path.dirname(workdir), 'xla-cache')}",
         *(MODEL_JUDGE if backend == "model" else ()), *extra]
  t0 = time.time()
  with open(workdir + ".log", "w") as log:
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
  return time.time() - t0


def _mean_se(x: np.ndarray) -> tuple[float, float, int]:
  x = x[np.isfinite(x)]
  if not len(x):
    return math.nan, math.nan, 0
  return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan, len(x)


def windows(metrics: dict[str, np.ndarray], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(first tenth, last tenth) of a run's per-step values, a tenth rounded up (16 steps: 2 each)."""
  x = metrics.get(key, np.full(len(metrics["step"]), np.nan))
  k = -(-len(x) // 10)
  return x[:k], x[-k:]


TARGETS = (M.AGREEMENT_RATE, M.ROUNDS_TO_AGREEMENT, M.ROUNDS_ALL)  # the issue's: rises / falls by > 2 pooled SE


def change_in_se(a: np.ndarray, b: np.ndarray) -> float:
  """(mean of b - mean of a) / the standard error of that difference (nan where either window has < 2 values)."""
  (ma, sa, _), (mb, sb, _) = _mean_se(a), _mean_se(b)
  se = math.sqrt(sa ** 2 + sb ** 2) if math.isfinite(sa) and math.isfinite(sb) else math.nan
  if se == 0 and mb != ma:
    return math.copysign(math.inf, mb - ma)
  return (mb - ma) / se if se and math.isfinite(se) else math.nan


def verdicts(runs: dict[str, dict[str, np.ndarray]]) -> str:
  """One line per target metric: its pooled change in standard errors, in the direction it should go."""
  out = []
  for key, label, sign in ROWS:
    if key not in TARGETS:
      continue
    a = np.concatenate([windows(m, key)[0] for m in runs.values()])
    b = np.concatenate([windows(m, key)[1] for m in runs.values()])
    z = sign * change_in_se(a, b)
    word = "rises" if sign > 0 else "falls"
    verdict = "yes" if z > 2 else ("undefined: a window has fewer than 2 values" if math.isnan(z) else "no")
    out.append(f"target: {label} {word} by > 2 pooled SE: {z:+.2f} SE -> {verdict}")
  return "\n".join(out)


def table(runs: dict[str, dict[str, np.ndarray]]) -> str:
  lines = [f"{'run':<8} {'metric':<24} {'first tenth':>18} {'last tenth':>18} {'change / SE':>12}"]
  pooled = {}
  for name, m in runs.items():
    for key, label, _ in ROWS:
      a, b = windows(m, key)
      pooled.setdefault(key, ([], []))
      pooled[key][0].append(a), pooled[key][1].append(b)
  groups = list(runs.items()) + [("pooled", None)]
  for name, m in groups:
    for key, label, _ in ROWS:
      a, b = (windows(m, key) if m is not None else (np.concatenate(pooled[key][0]), np.concatenate(pooled[key][1])))
      (ma, sa, na), (mb, sb, nb) = _mean_se(a), _mean_se(b)
      z = change_in_se(a, b)
      cell = lambda m_, s_, n_: f"{m_:.3f}+-{s_:.3f} (n={n_})" if math.isfinite(s_) else f"{m_:.3f} (n={n_})"
      lines.append(f"{name:<8} {label:<24} {cell(ma, sa, na):>18} {cell(mb, sb, nb):>18} {z:>12.2f}")
  return "\n".join(lines)


ANSWER_FAILURES = ("unparseable", "length", "null_content")  # an answer came back and could not be read


def parse_report(runs: dict[str, dict[str, np.ndarray]]) -> str:
  """How often the policy's judge answers parse: of the answers that came back (requests less transport failures),
  those read as a verdict or score; failures by reason."""
  total = lambda key: sum(float(np.nansum(m.get(key, [0]))) for m in runs.values())
  req, fail = total("judge/requests"), total("judge/failures")
  reasons = {k[len("judge/failures/"):]: total(k) for m in runs.values() for k in m if k.startswith("judge/failures/")}
  unread = sum(v for k, v in reasons.items() if k in ANSWER_FAILURES)
  answered = req - (fail - unread)
  return (f"judge answers: {req:.0f} requests, {answered:.0f} answered, {answered - unread:.0f} parsed "
          f"({100 * (answered - unread) / max(answered, 1):.1f}% of answers; {total('judge/parse_retries'):.0f} "
          f"parse retries, {total('judge/truncated'):.0f} cut at max_tokens); failures by reason: "
          f"{ {k: int(v) for k, v in sorted(reasons.items()) if v} }")


# The policy judging itself on CPU: a 512-token judge answer at batch 8 takes minutes on 2 cores, past the 60 s
# timeout, and a timed-out request is re-sent while the server still works on it. Short answers (the rubrics end
# with a one-word verdict line), no length retry, and a long timeout; parse retries as configured by default.
MODEL_JUDGE = ("--config.judge.max_tokens=96", "--config.judge.length_retry_max_tokens=0",
               "--config.judge.timeout_s=1800", "--config.judge.max_retries=1")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--steps", type=int, default=16)  # sized to the 90 minutes on a 2-core machine
  ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  ap.add_argument("--backend", choices=("lexicon", "model"), default="lexicon")
  ap.add_argument("--workdir", default="/tmp/deliberate-bench-learning")
  ap.add_argument("--reuse", action="store_true", help="read the runs already in --workdir instead of training")
  ap.add_argument("overrides", nargs="*", help="extra --config.X=Y flags for every run")
  args = ap.parse_args(argv)
  os.makedirs(args.workdir, exist_ok=True)
  runs, wall = {}, {}
  for seed in args.seeds:
    wd = os.path.join(args.workdir, f"{args.backend}-seed{seed}")
    if not args.reuse:
      wall[seed] = train(seed, args.steps, wd, args.backend, args.overrides)
    runs[f"seed {seed}"] = figures.load_metrics(wd)
  judge = figures.run_judge(wd)
  print(f"scores: {judge or args.backend}; {args.steps} steps x seeds {args.seeds}; wall time per seed (s): "
        f"{ {s: round(w) for s, w in wall.items()} }")
  print(table(runs))
  print(verdicts(runs))
  if args.backend == "model":
    print(parse_report(runs))
  window = max(1, min(50, args.steps // 10))
  for name, m in runs.items():
    figures.training_dynamics(m, window=window, ca_source="ca", judge=judge, title=f"training, {name}",
                              path=os.path.join(args.workdir, f"{args.backend}-{name.replace(' ', '')}.png"))
  n = min(len(m["step"]) for m in runs.values())
  keys = {k for m in runs.values() for k in m} - {"step"}
  pooled = {"step": next(iter(runs.values()))["step"][:n]}
  for k in keys:
    stack = np.stack([m[k][:n] if k in m else np.full(n, np.nan) for m in runs.values()])
    with np.errstate(all="ignore"):
      pooled[k] = np.nanmean(stack, axis=0)
  path = os.path.join(args.workdir, f"{args.backend}-pooled.png")
  figures.training_dynamics(pooled, window=window, ca_source="ca", judge=judge, path=path,
                            title=f"training, mean over seeds {args.seeds}")
  print(f"figures: {args.workdir}/{args.backend}-*.png")
  return 0


if __name__ == "__main__":
  sys.exit(main())
