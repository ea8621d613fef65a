"""Per-step negotiation metrics (the paper's Figure 2 quantities and the health of the judge)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from deliberate import metric_names as M
from deliberate.negotiation.dialogue import Dialogue


def _percentiles(xs: Sequence[float]) -> dict[str, float]:
  if not xs:
    return {}
  p50, p95 = np.percentile(np.asarray(xs), [50, 95])
  return {"p50": float(p50), "p95": float(p95)}


def _ca_metrics(dialogues: Sequence[Dialogue], group_size: int) -> dict[str, float]:
  """The CA scores of the completions that were written and scored (in evaluation, also those of dialogues that
  did not agree), per group: the evaluation's CA, which the reward (0 without agreement) is not."""
  mins, means, maxs = [], [], []
  for start in range(0, len(dialogues), group_size):
    scores = [d.score for d in dialogues[start:start + group_size] if d.score is not None]
    if scores:
      mins.append(min(scores)), means.append(np.mean(scores)), maxs.append(max(scores))
  nan = float("nan")
  return {M.CA_GROUP_MIN: float(np.mean(mins)) if mins else nan, M.CA_GROUP_MEAN: float(np.mean(means)) if means
          else nan, M.CA_GROUP_MAX: float(np.mean(maxs)) if maxs else nan,
          M.CA_SCORED: sum(d.score is not None for d in dialogues),
          M.CA_FAILED: sum(d.failure is not None and d.failure.startswith("CA judge") for d in dialogues)}


def step_metrics(dialogues: Sequence[Dialogue], group_size: int) -> dict[str, float]:
  n = len(dialogues)
  agreed = [d for d in dialogues if d.agreed]
  judged = [d for d in dialogues if not any(t.judge_failure for t in d.turns)]  # every verdict was had
  m = {
      "negotiation/dialogues": n,
      # nan when no dialogue had every verdict (a judge that never answered is not a rate of 0)
      "negotiation/agreement_rate": len(agreed) / len(judged) if judged else float("nan"),
      "negotiation/mean_rounds_to_agreement": float(np.mean([d.rounds for d in agreed])) if agreed else float("nan"),
      "negotiation/mean_rounds": float(np.mean([d.rounds for d in judged])) if judged else float("nan"),
      "negotiation/failed_negotiation_fraction": sum(not d.agreed and not d.failed for d in dialogues) / max(n, 1),
      "negotiation/judge_failed_fraction": sum(d.failed for d in dialogues) / max(n, 1),
      "negotiation/excluded": sum(d.excluded for d in dialogues),
  }
  mins, means, maxs, equal = [], [], [], 0
  for start in range(0, n, group_size):
    rewards = [d.reward for d in dialogues[start:start + group_size] if not d.excluded]
    if not rewards:
      continue
    mins.append(min(rewards)), means.append(np.mean(rewards)), maxs.append(max(rewards))
    if len(set(rewards)) == 1:
      equal += len(rewards)
  kept = sum(not d.excluded for d in dialogues)
  m.update(_ca_metrics(dialogues, group_size))
  m.update({"reward/group_min": float(np.mean(mins)) if mins else float("nan"),
            "reward/group_mean": float(np.mean(means)) if means else float("nan"),
            "reward/group_max": float(np.mean(maxs)) if maxs else float("nan"),
            "reward/zero_advantage_fraction": equal / max(kept, 1)})
  turns = [t for d in dialogues for t in d.turns]
  m["negotiation/tokens_per_turn"] = float(np.mean([len(t.response_ids) for t in turns])) if turns else 0.0
  m["negotiation/truncated_turn_fraction"] = (sum(t.stop_reason == "length" for t in turns) / len(turns)
                                              if turns else 0.0)
  latencies = [t.judge_latency_s for t in turns if t.judge_failure is None and t.agreed is not None]
  latencies += [d.ca_latency_s for d in dialogues if d.score is not None]
  m.update({f"negotiation/judge_latency_{k}_s": v for k, v in _percentiles(latencies).items()})
  m["negotiation/judge_failures"] = sum(d.failed for d in dialogues)
  return m
