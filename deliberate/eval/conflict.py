"""Conflict-resolution evaluation: a policy negotiates each evaluation task with itself under the task's fixed eval
persona pair, and a completion is written whether or not the agents agreed (docs/protocol.md: evaluation).

The summary is computed from the JSONL records alone, so it can be recomputed from a stored `conflict.jsonl`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from deliberate.eval import stats
from deliberate.negotiation import episode, records as records_lib
from deliberate.negotiation.dialogue import eval_items

DECODINGS = ("greedy", "sampled")


def make_negotiator(engine, tokenizer, judge, config: ml_collections.ConfigDict,
                    decoding: str) -> episode.Negotiator:
  """The training negotiator; 'greedy' decodes turns and completions greedily, 'sampled' uses the config's
  temperatures (the paper's 0.7 for turns, 0.1 for the completion)."""
  if decoding not in DECODINGS:
    raise ValueError(f"decoding: {decoding!r} is not one of {DECODINGS}")
  neg = episode.Negotiator(engine, tokenizer, judge, config)
  if decoding == "greedy":
    neg.turn_sp = dataclasses.replace(neg.turn_sp, greedy=True)
    neg.completion_sp = dataclasses.replace(neg.completion_sp, greedy=True)
  return neg


def run_conflict_eval(negotiator: episode.Negotiator, tasks: Sequence[Mapping[str, Any]], *, seed: int,
                      batch_tasks: int = 0, policy: str = "", decoding: str = "") -> list[dict[str, Any]]:
  """Negotiates every task `negotiator.config.group_size` times; returns one record per dialogue, task-major.

  batch_tasks bounds the tasks negotiated in one batched episode call (0 = all at once).
  """
  items = eval_items(tasks)
  size = batch_tasks or len(items)
  g = negotiator.config.group_size
  out = []
  for b, start in enumerate(range(0, len(items), size)):
    dialogues = negotiator.run(items[start:start + size], seed + b, evaluation=True)
    for d in dialogues:
      rec = records_lib.dialogue_record(d, step=0, judge=records_lib.judge_name(negotiator.judge))
      rec.update(policy=policy, decoding=decoding, task=start + d.group, sample=d.index % g)
      out.append(rec)
  return out


def _fraction(num: int, den: int) -> float:
  return num / den if den else float("nan")


def conflict_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Agreement rate (over dialogues whose every agreement verdict was had), mean rounds to agreement, and CA score
  statistics of the completions (all of them, the agreed ones, and per task group min/mean/max)."""
  judged = [r for r in records if not any(t.get("judge_failure") for t in r["turns"])]
  agreed = [r for r in records if r["agreed"]]
  groups: dict[str, list[int]] = {}
  for r in records:
    if r["score"] is not None:
      groups.setdefault(r["dilemma_id"], []).append(r["score"])
  per_task = list(groups.values())
  return {
      "tasks": len({r["dilemma_id"] for r in records}), "dialogues": len(records),
      "agreement_rate": _fraction(sum(r["agreed"] for r in judged), len(judged)),
      "mean_rounds_to_agreement": float(np.mean([r["rounds"] for r in agreed])) if agreed else float("nan"),
      "agreement_judge_failed": len(records) - len(judged),
      "failed": sum(bool(r["failed"]) for r in records),
      "ca": stats.score_summary([r["score"] for r in records]),
      "ca_agreed": stats.score_summary([r["score"] for r in agreed]),
      "ca_group_min": float(np.mean([min(s) for s in per_task])) if per_task else float("nan"),
      "ca_group_mean": float(np.mean([np.mean(s) for s in per_task])) if per_task else float("nan"),
      "ca_group_max": float(np.mean([max(s) for s in per_task])) if per_task else float("nan"),
      "truncated_turn_fraction": _fraction(sum(t["stop_reason"] == "length" for r in records for t in r["turns"]),
                                           sum(len(r["turns"]) for r in records)),
  }
