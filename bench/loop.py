"""Step time of the quickstart loop against a peer tree (e.g. a worktree of an older commit), same machine, one
after the other:

  git worktree add /tmp/peer 559d7ac   # once: the commit issue 16 was measured on
  python bench/loop.py --peer /tmp/peer --steps 4

Runs `launch/train.py --config configs/quickstart.py` for --steps steps in the peer tree, then in this tree, and
prints, for each, the first step's time and the steady-state step time (the mean of steps 2..N), each as rollout
(sampling + judge) + train seconds from metrics.jsonl, and the ratios this/peer, per step and per dialogue (the
quickstart of 559d7ac ran 4 dialogues a step, this one 8). Issue 16's targets: steady state at most 0.5 x the
peer's, the first step at most 120 s. Both trees compile in steps 2-4 (559d7ac: a new padded train shape at
step 4; this tree: the train step at its first update, in step 2 when step 1 has none), so use 4 steps or more.
The runs share the machine with whatever else runs on it: read the ratios, not the seconds. The 1-minute load
average is printed before and after each run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(tree: str, workdir: str, steps: int, overrides: list[str]) -> tuple[list[dict], float]:
  cmd = [sys.executable, "launch/train.py", "--config", "configs/quickstart.py", "--workdir", workdir,
         f"--config.num_steps={steps}", f"--config.optim.total_steps={steps}", f"--config.checkpoint_every={steps}",
         *overrides]
  env = dict(os.environ, PYTHONPATH=tree)
  t0 = time.time()
  print(f"{tree}: load average before {os.getloadavg()[0]:.1f}", flush=True)
  with open(workdir + ".log", "w") as log:
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
  print(f"{tree}: load average after {os.getloadavg()[0]:.1f}", flush=True)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()], time.time() - t0


def step_s(m: dict) -> float:
  return float(m.get("time/rollout_s") or 0.0) + float(m.get("time/train_s") or 0.0)


def summary(name: str, metrics: list[dict], wall: float) -> tuple[float, float, int]:
  first = step_s(metrics[0])
  rest = [step_s(m) for m in metrics[1:]]
  steady = sum(rest) / len(rest) if rest else float("nan")
  cut = [m.get("negotiation/truncated_turn_fraction") for m in metrics]
  signal = sum(1 for m in metrics if (m.get("advantage/zero_advantage_frac") or 0) < 1)
  programs = [int(m.get("compile/programs", -1)) for m in metrics]
  part = lambda k: sum(float(m.get(k) or 0.0) for m in metrics[1:]) / max(len(metrics) - 1, 1)
  print(f"{name:<6} first step {first:7.1f} s | steady {steady:7.1f} s/step (steps 2..{len(metrics)}: rollout "
        f"{part('time/rollout_s'):.1f} + train {part('time/train_s'):.1f}; "
        f"{int(metrics[0].get('negotiation/dialogues', 0))} dialogues a step) | "
        f"wall {wall:6.0f} s | truncated-turn fraction per step {cut} | steps with a non-zero advantage "
        f"{signal}/{len(metrics)} | programs compiled per step {programs}")
  return first, steady, int(metrics[0].get("negotiation/dialogues", 0))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--peer", required=True, help="the peer tree (a checkout or worktree with launch/train.py)")
  ap.add_argument("--steps", type=int, default=4)
  ap.add_argument("--workdir", default="/tmp/deliberate-bench-loop")
  ap.add_argument("--skip_peer", default="", help="a peer workdir already run: read it instead of running")
  args, overrides = ap.parse_known_args(argv)
  os.makedirs(args.workdir, exist_ok=True)
  if args.skip_peer:
    with open(os.path.join(args.skip_peer, "metrics.jsonl")) as f:
      peer, peer_wall = [json.loads(line) for line in f if line.strip()], float("nan")
  else:
    peer, peer_wall = run(os.path.abspath(args.peer), os.path.join(args.workdir, "peer"), args.steps, [])
  this, this_wall = run(ROOT, os.path.join(args.workdir, "this"), args.steps, overrides)
  p1, ps, pd = summary("peer", peer, peer_wall)
  t1, ts, td = summary("this", this, this_wall)
  print(f"ratio this/peer: first step {t1 / p1:.2f} (target: first step <= 120 s), steady state {ts / ps:.2f} "
        f"a step (target <= 0.50), {(ts / max(td, 1)) / (ps / max(pd, 1)):.2f} a dialogue")
  return 0


if __name__ == "__main__":
  sys.exit(main())
