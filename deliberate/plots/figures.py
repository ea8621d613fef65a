"""Paper-style figures (Figures 2-5 of the paper; docs/protocol.md) from a run's metrics.jsonl and an evaluation's cross_judge.jsonl.

Figures are built on `matplotlib.figure.Figure` (no pyplot state, no backend needed): display them in a notebook
with `display(fig)`, or pass `path` to write a PNG. `figure2` .. `figure5` are one call per paper figure from a
run's (or an evaluation's) directory; they name the judge that gave the scores, and the deterministic local judge
(lexicon) as such.

Figure 2's panel (a) is the CA of the evaluation completions (`eval/ca/group_*`: every completion written and
scored, agreed or not). Runs logged before those metrics existed only have `eval/reward/group_*`, where a completion
without agreement counts 0; such a run is drawn from them with the panel saying so.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from deliberate import metric_names as M
from deliberate.eval.stats import LEVELS, confusion  # the eval's own counting: figure and summary agree

CA_KEYS = (M.CA_GROUP_MIN, M.CA_GROUP_MEAN, M.CA_GROUP_MAX)              # CA of the written, scored completions
REWARD_KEYS = (M.REWARD_GROUP_MIN, M.REWARD_GROUP_MEAN, M.REWARD_GROUP_MAX)  # 0 without agreement
CA_STYLES = (("min", "--"), ("mean", "-"), ("max", "-."))
AGREEMENT_KEY = M.AGREEMENT_RATE
ROUNDS_KEY = M.ROUNDS_TO_AGREEMENT
LEXICON_LABEL = "deterministic local judge (lexicon), not an LLM"


def _lines(path: str):
  """(line number, line) for every non-blank line: both loaders name the line at fault."""
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if line.strip():
        yield n, line


def load_metrics(path: str) -> dict[str, np.ndarray]:
  """{'step': steps, key: values} from metrics.jsonl (or a workdir holding it); absent or null values are NaN.

  A step logged twice (a run resumed from an older checkpoint) keeps its last line.
  """
  if os.path.isdir(path):
    path = os.path.join(path, "metrics.jsonl")
  rows: dict[int, dict[str, Any]] = {}
  for n, line in _lines(path):
    try:
      row = json.loads(line)
      rows[int(row["step"])] = row
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{path}:{n}: not a metrics line with a 'step' ({type(e).__name__}: {e})") from None
  if not rows:
    raise ValueError(f"{path}: no metrics lines")
  steps = sorted(rows)
  keys = sorted({k for r in rows.values() for k in r if k != "step"})
  out = {"step": np.asarray(steps, np.int64)}
  for k in keys:
    out[k] = np.asarray([np.nan if rows[s].get(k) is None else float(rows[s][k]) for s in steps], np.float64)
  return out


def running_average(x: Sequence[float], window: int = 50) -> np.ndarray:
  """Mean of the last `window` values up to each point, NaNs skipped (NaN where the window holds none)."""
  if window < 1:
    raise ValueError(f"running_average: window must be >= 1, got {window}")
  x = np.asarray(x, np.float64)
  finite = np.isfinite(x)
  csum = np.concatenate([[0.0], np.cumsum(np.where(finite, x, 0.0))])
  ccount = np.concatenate([[0], np.cumsum(finite)])
  hi = np.arange(1, len(x) + 1)
  lo = np.maximum(hi - window, 0)
  count = ccount[hi] - ccount[lo]
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, (csum[hi] - csum[lo]) / np.maximum(count, 1), np.nan)


def _series(metrics: Mapping[str, np.ndarray], key: str) -> np.ndarray:
  if key not in metrics:
    have = sorted(k for k in metrics if k != "step")
    raise ValueError(f"metrics have no {key!r} (have {have[:12]}{'...' if len(have) > 12 else ''})")
  return metrics[key]


def _save(fig: Figure, path: str | None) -> Figure:
  if path:
    fig.savefig(path, dpi=150)
  return fig


def ca_keys(metrics: Mapping[str, np.ndarray], prefix: str, source: str = "auto") -> tuple[tuple[str, ...], str]:
  """(keys, y label) of the CA panel: 'ca' (CA scores), 'reward' (training reward, 0 without agreement), or 'auto':
  the CA scores under the prefix when logged, else the rewards."""
  if source not in ("auto", "ca", "reward"):
    raise ValueError(f"ca source: {source!r} is not 'auto', 'ca' or 'reward'")
  if source == "ca" or (source == "auto" and prefix + M.CA_GROUP_MEAN in metrics):
    return tuple(prefix + k for k in CA_KEYS), "CA score"
  return tuple(prefix + k for k in REWARD_KEYS), "reward (CA if agreed, else 0)"


def _ca_panel(ax, metrics: Mapping[str, np.ndarray], prefix: str, window: int, source: str = "auto",
              judge: str = "") -> None:
  steps = metrics["step"]
  keys, ylabel = ca_keys(metrics, prefix, source)
  if judge == LEXICON_LABEL:  # the keyword heuristic's 0-5, never to be read as an LLM judge's CA score
    ylabel = ylabel.replace("CA", "lexicon-CA")
  for key, (label, style) in zip(keys, CA_STYLES):
    ax.plot(steps, running_average(_series(metrics, key), window), style, color="C0", label=f"group {label}")
  ax.set_ylim(0, 5)
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)
  ax.legend(loc="best", fontsize="small")


def training_dynamics(metrics: Mapping[str, np.ndarray], *, window: int = 50, prefix: str = "", title: str = "",
                      path: str | None = None, ca_source: str = "auto", judge: str = "") -> Figure:
  """Figure 2/5: (a) CA group min (dashed) / mean (solid) / max (dash-dot), (b) agreement rate, (c) mean rounds to
  agreement, each a `window`-step running average. `prefix` selects metrics logged under it (e.g. 'eval/');
  `ca_source` picks panel (a)'s series (see `ca_keys`); `judge` names the judge in the title."""
  fig = Figure(figsize=(13, 3.8), layout="constrained")
  ax_ca, ax_agree, ax_rounds = fig.subplots(1, 3)
  _ca_panel(ax_ca, metrics, prefix, window, ca_source, judge)
  ax_ca.set_title("(a) Collective Agency" + (" (lexicon heuristic)" if judge == LEXICON_LABEL else ""))
  steps = metrics["step"]
  ax_agree.plot(steps, running_average(_series(metrics, prefix + AGREEMENT_KEY), window), color="C2")
  ax_agree.set_ylim(0, 1.02)
  ax_agree.set_title("(b) agreement rate")
  ax_rounds.plot(steps, running_average(_series(metrics, prefix + ROUNDS_KEY), window), color="C3")
  ax_rounds.set_title("(c) mean rounds to agreement")
  for ax in (ax_agree, ax_rounds):
    ax.set_xlabel("step")
  _title(fig, title, judge)
  return _save(fig, path)


def _title(fig: Figure, title: str, judge: str) -> None:
  text = "\n".join(t for t in (title, f"scores: {judge}" if judge else "") if t)
  if text:
    fig.suptitle(text)


def single_agent_dynamics(metrics: Mapping[str, np.ndarray], *, window: int = 50, title: str = "",
                          path: str | None = None, judge: str = "") -> Figure:
  """Figure 4: CA min / mean / max of the single-agent baseline's candidate groups, running averages (its reward is
  the CA score itself: no agreement step)."""
  fig = Figure(figsize=(5.5, 3.8), layout="constrained")
  ax = fig.subplots()
  _ca_panel(ax, metrics, "", window)
  ax.set_ylabel("lexicon-CA score" if judge == LEXICON_LABEL else "CA score")
  ax.set_title("single-agent Collective Agency" + (" (lexicon heuristic)" if judge == LEXICON_LABEL else ""))
  _title(fig, title, judge)
  return _save(fig, path)


def load_cross_judge(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(training-judge score, strong-judge score) for every successful pass in cross_judge.jsonl."""
  train, strong = [], []
  for n, line in _lines(path):
    try:
      row = json.loads(line)
      for s in row["strong_scores"]:
        if s is not None:
          train.append(int(row["train_score"]))
          strong.append(int(s))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{path}:{n}: not a cross-judge row ({type(e).__name__}: {e})") from None
  return np.asarray(train, np.int64), np.asarray(strong, np.int64)


def cross_judge(train: Sequence[int], strong: Sequence[int], *, seed: int = 0, title: str = "",
                path: str | None = None, judges: tuple[str, str] = ("", "")) -> Figure:
  """Figure 3: (a) jittered scatter of strong vs training-judge scores with the strong judge's mean per training
  level, (b) confusion heatmap (rows: training judge, columns: strong judge) with counts."""
  train, strong = np.asarray(train, np.int64), np.asarray(strong, np.int64)
  if train.shape != strong.shape or train.ndim != 1:
    raise ValueError(f"cross_judge: train {train.shape} and strong {strong.shape} must be equal-length 1-D")
  counts = confusion(train, strong)
  fig = Figure(figsize=(11, 4.2), layout="constrained")
  ax_s, ax_h = fig.subplots(1, 2)
  rng = np.random.default_rng(seed)
  ax_s.scatter(train + rng.uniform(-0.15, 0.15, len(train)), strong + rng.uniform(-0.15, 0.15, len(strong)),
               s=14, alpha=0.5, color="C0", label="dialogue (jittered)")
  levels = np.unique(train)
  means = [strong[train == lv].mean() for lv in levels]
  ax_s.plot(levels, means, "o-", color="C3", label="strong-judge mean")
  ax_s.plot([0, LEVELS - 1], [0, LEVELS - 1], ":", color="gray", label="y = x")
  ax_s.set(xlim=(-0.5, LEVELS - 0.5), ylim=(-0.5, LEVELS - 0.5), xlabel="training-judge score",
           ylabel="strong-judge score", title="(a) scores")
  ax_s.legend(loc="upper left", fontsize="small")
  im = ax_h.imshow(counts, origin="lower", cmap="Blues")
  for i in range(LEVELS):
    for j in range(LEVELS):
      ax_h.text(j, i, str(counts[i, j]), ha="center", va="center",
                color="white" if counts[i, j] > counts.max() / 2 else "black", fontsize="small")
  ax_h.set(xticks=range(LEVELS), yticks=range(LEVELS), xlabel="strong-judge score", ylabel="training-judge score",
           title="(b) counts")
  fig.colorbar(im, ax=ax_h, shrink=0.8)
  names = "; ".join(f"{k} judge: {v}" for k, v in zip(("training", "strong"), judges) if v)
  text = "\n".join(t for t in (title, names) if t)
  if text:
    fig.suptitle(text)
  return _save(fig, path)


def judge_name(model: str | None, embedded_backend: str = "") -> str:
  """How a figure names a judge: the deterministic local judge as such, else its model name."""
  if embedded_backend == "lexicon" or (model and "lexicon" in model):
    return LEXICON_LABEL
  if embedded_backend == "model":  # the embedded server answers under its own name, whatever judge.model says
    return M.MODEL_JUDGE_NAME
  return model or ""


def run_judge(run_dir: str) -> str:
  """The training judge of a run, from the config.json it saved ('' when it saved none)."""
  path = os.path.join(run_dir, "config.json")
  if not os.path.isfile(path):
    return ""
  with open(path, encoding="utf-8") as f:
    judge = json.load(f).get("judge", {})
  return judge_name(judge.get("model"), judge.get("embedded_backend", "") if judge.get("embedded") else "")


def _eval_judges(eval_dir: str) -> tuple[str, str]:
  path = os.path.join(eval_dir, "summary.json")
  if not os.path.isfile(path):
    return "", ""
  with open(path, encoding="utf-8") as f:
    s = json.load(f)
  train = next((p.get("judge_model") for p in s.get("policies", {}).values() if p.get("judge_model")), "")
  return judge_name(train), judge_name(s.get("strong_judge_model"))


def figure2(run_dir: str, *, window: int = 50, path: str | None = None) -> Figure:
  """Figure 2: evaluation-set dynamics during training, from a negotiation run's workdir."""
  return training_dynamics(load_metrics(run_dir), window=window, prefix=M.EVAL_PREFIX, path=path,
                           title="Evaluation-set dynamics (Figure 2)", judge=run_judge(run_dir))


def figure3(eval_dir: str, *, path: str | None = None) -> Figure:
  """Figure 3: cross-judge correspondence, from an evaluation workdir's cross_judge.jsonl."""
  train, strong = load_cross_judge(os.path.join(eval_dir, "cross_judge.jsonl"))
  return cross_judge(train, strong, path=path, title="Cross-judge correspondence (Figure 3)",
                     judges=_eval_judges(eval_dir))


def figure4(single_run_dir: str, *, window: int = 50, path: str | None = None) -> Figure:
  """Figure 4: the single-agent baseline's CA during training, from its run's workdir."""
  return single_agent_dynamics(load_metrics(single_run_dir), window=window, path=path,
                               title="Single-agent CA (Figure 4)", judge=run_judge(single_run_dir))


def figure5(run_dir: str, *, window: int = 50, path: str | None = None) -> Figure:
  """Figure 5: training-set dynamics, from a negotiation run's workdir (panel (a): the training reward's groups
  unless the run also logged CA scores)."""
  return training_dynamics(load_metrics(run_dir), window=window, path=path,
                           title="Training-set dynamics (Figure 5)", judge=run_judge(run_dir))
