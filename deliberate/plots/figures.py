"""Paper-style figures (Figures 2-5 of the paper; docs/protocol.md) from a run's metrics.jsonl and an evaluation's cross_judge.jsonl.

Figures are built on `matplotlib.figure.Figure` (no pyplot state, no backend needed): display them in a notebook
with `display(fig)`, or pass `path` to write a PNG.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from deliberate.eval.stats import LEVELS, confusion  # the eval's own counting: figure and summary agree

CA_KEYS = ("reward/group_min", "reward/group_mean", "reward/group_max")
CA_STYLES = (("min", "--"), ("mean", "-"), ("max", "-."))
AGREEMENT_KEY = "negotiation/agreement_rate"
ROUNDS_KEY = "negotiation/mean_rounds_to_agreement"


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


def _ca_panel(ax, metrics: Mapping[str, np.ndarray], prefix: str, window: int) -> None:
  steps = metrics["step"]
  for key, (label, style) in zip(CA_KEYS, CA_STYLES):
    ax.plot(steps, running_average(_series(metrics, prefix + key), window), style, color="C0", label=f"group {label}")
  ax.set_ylim(0, 5)
  ax.set_xlabel("step")
  ax.set_ylabel("CA score")
  ax.legend(loc="lower right", fontsize="small")


def training_dynamics(metrics: Mapping[str, np.ndarray], *, window: int = 50, prefix: str = "", title: str = "",
                      path: str | None = None) -> Figure:
  """Figure 2/5: (a) CA group min (dashed) / mean (solid) / max (dash-dot), (b) agreement rate, (c) mean rounds to
  agreement, each a `window`-step running average. `prefix` selects metrics logged under it (e.g. 'eval/')."""
  fig = Figure(figsize=(13, 3.6), layout="constrained")
  ax_ca, ax_agree, ax_rounds = fig.subplots(1, 3)
  _ca_panel(ax_ca, metrics, prefix, window)
  ax_ca.set_title("(a) Collective Agency")
  steps = metrics["step"]
  ax_agree.plot(steps, running_average(_series(metrics, prefix + AGREEMENT_KEY), window), color="C2")
  ax_agree.set_ylim(0, 1.02)
  ax_agree.set_title("(b) agreement rate")
  ax_rounds.plot(steps, running_average(_series(metrics, prefix + ROUNDS_KEY), window), color="C3")
  ax_rounds.set_title("(c) mean rounds to agreement")
  for ax in (ax_agree, ax_rounds):
    ax.set_xlabel("step")
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def single_agent_dynamics(metrics: Mapping[str, np.ndarray], *, window: int = 50, title: str = "",
                          path: str | None = None) -> Figure:
  """Figure 4: CA min / mean / max of the single-agent baseline's candidate groups, running averages."""
  fig = Figure(figsize=(5.5, 3.6), layout="constrained")
  ax = fig.subplots()
  _ca_panel(ax, metrics, "", window)
  ax.set_title(title or "single-agent Collective Agency")
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
                path: str | None = None) -> Figure:
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
  if title:
    fig.suptitle(title)
  return _save(fig, path)
