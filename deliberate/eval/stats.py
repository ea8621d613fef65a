"""Statistics of the evaluation: CA score summaries and the cross-judge agreement measures of docs/protocol.md.

Scores are integers 0-5; None marks a score the judge could not give, which is counted and left out, never zeroed.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

LEVELS = 6  # CA scores 0..5


def _check_scores(scores: Sequence[int], what: str) -> None:
  bad = [s for s in scores if not (isinstance(s, (int, np.integer)) and 0 <= s < LEVELS)]
  if bad:
    raise ValueError(f"{what}: scores must be integers 0-{LEVELS - 1}, got {bad[:5]}")


def score_summary(scores: Sequence[int | None]) -> dict[str, float | int | dict[str, int]]:
  """n, how many were scored, mean/std/min/max/median and the 0-5 histogram of the scored ones."""
  got = [s for s in scores if s is not None]
  _check_scores(got, "score_summary")
  out: dict = {"n": len(scores), "n_scored": len(got), "n_failed": len(scores) - len(got)}
  if got:
    x = np.asarray(got, np.float64)
    out.update(mean=float(x.mean()), std=float(x.std()), min=int(x.min()), max=int(x.max()),
               median=float(np.median(x)))
  out["histogram"] = {str(k): int(sum(s == k for s in got)) for k in range(LEVELS)}
  return out


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
  """NaN when it is undefined (fewer than two items, or a constant side)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) < 2 or x.std() == 0 or y.std() == 0:
    return float("nan")
  return float(np.corrcoef(x, y)[0, 1])


def confusion(x: Sequence[int], y: Sequence[int]) -> np.ndarray:
  """Counts [LEVELS, LEVELS]: row = x's score, column = y's score."""
  _check_scores(x, "confusion x")
  _check_scores(y, "confusion y")
  m = np.zeros((LEVELS, LEVELS), np.int64)
  np.add.at(m, (np.asarray(x, np.int64), np.asarray(y, np.int64)), 1)
  return m


def quadratic_weighted_kappa(x: Sequence[int], y: Sequence[int]) -> float:
  """Cohen's kappa with weights (i - j)^2 over the 0-5 scale; NaN when chance disagreement is zero."""
  observed = confusion(x, y).astype(np.float64)
  n = observed.sum()
  if n == 0:
    return float("nan")
  expected = np.outer(observed.sum(1), observed.sum(0)) / n
  i, j = np.indices(observed.shape)
  w = (i - j) ** 2
  chance = (w * expected).sum()
  return float("nan") if chance == 0 else float(1.0 - (w * observed).sum() / chance)


def _agreement(train: Sequence[int], strong: Sequence[int | None]) -> dict[str, float | int]:
  pairs = [(t, s) for t, s in zip(train, strong) if s is not None]
  if not pairs:
    return {"n": 0, "n_failed": len(train)}
  x, y = np.asarray(pairs, np.int64).T
  return {"n": len(pairs), "n_failed": len(train) - len(pairs), "exact": float(np.mean(x == y)),
          "within_1": float(np.mean(np.abs(x - y) <= 1)), "pearson": pearson(x, y),
          "weighted_kappa": quadratic_weighted_kappa(x, y), "strong_mean": float(y.mean())}


def cross_judge_stats(train: Sequence[int], strong_passes: Sequence[Sequence[int | None]]) -> dict:
  """Agreement of each strong-judge pass with the training judge, test-retest between the first two passes, the
  mean strong score per training-judge level (passes pooled) and the pooled confusion counts."""
  _check_scores(train, "training-judge scores")
  for k, p in enumerate(strong_passes):
    if len(p) != len(train):
      raise ValueError(f"strong pass {k}: {len(p)} scores for {len(train)} items")
    _check_scores([s for s in p if s is not None], f"strong pass {k}")
  out: dict = {"n_items": len(train), "passes": [_agreement(train, p) for p in strong_passes]}
  if len(strong_passes) >= 2:
    both = [(a, b) for a, b in zip(strong_passes[0], strong_passes[1]) if a is not None and b is not None]
    out["test_retest"] = {"n": len(both), "exact": float(np.mean([a == b for a, b in both])) if both else float("nan"),
                          "within_1": float(np.mean([abs(a - b) <= 1 for a, b in both])) if both else float("nan")}
  pooled = [(t, s) for p in strong_passes for t, s in zip(train, p) if s is not None]
  levels = sorted({t for t in train})
  out["mean_strong_by_level"] = {
      str(lv): float(np.mean([s for t, s in pooled if t == lv])) if any(t == lv for t, _ in pooled) else float("nan")
      for lv in levels}
  out["items_by_level"] = {str(lv): int(sum(t == lv for t in train)) for lv in levels}
  out["confusion"] = confusion([t for t, _ in pooled], [s for _, s in pooled]).tolist()
  return out
