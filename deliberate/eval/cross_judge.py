"""Cross-judge study (docs/protocol.md): converged dialogues scored by the training judge, sampled stratified by that score,
re-scored several times by another (stronger) judge with the same CA rubric.

Each pass is sent under its own rubric-version tag (`ca-score/v1#pass2`, ...), so a judge cache keeps every pass
apart and a second pass is a real second request: test-retest agreement measures the judge, not the cache. With
temperature 0 against a deterministic endpoint the retest is trivially perfect, so the passes run at their own
temperature (eval config `cross_judge.temperature`).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from deliberate.eval import stats
from deliberate.judge import parsers, rubrics
from deliberate.judge.client import JudgeRequest

PAPER_QUOTAS = "2:2,3:18,4:40,5:40"  # training-judge score: items (100 converged evaluation dialogues)


def parse_quotas(spec: str) -> dict[int, int]:
  """'2:2,3:18' -> {2: 2, 3: 18}."""
  out = {}
  for part in filter(None, (p.strip() for p in spec.split(","))):
    level, _, count = part.partition(":")
    try:
      lv, n = int(level), int(count)
    except ValueError:
      raise ValueError(f"cross-judge quotas {spec!r}: {part!r} is not 'score:count'") from None
    if not 0 <= lv < stats.LEVELS or n < 0:
      raise ValueError(f"cross-judge quotas {spec!r}: {part!r} needs a score 0-5 and a count >= 0")
    out[lv] = n
  if not out:
    raise ValueError(f"cross-judge quotas {spec!r}: empty")
  return out


def select_stratified(records: Sequence[Mapping[str, Any]], quotas: Mapping[int, int],
                      seed: int) -> tuple[list[Mapping[str, Any]], dict[str, int]]:
  """Converged (agreed, scored, non-empty completion) records drawn per training-judge score without replacement.

  Returns (selected records, shortfall per level where fewer were available than asked).
  """
  rng = np.random.default_rng(seed)
  pool: dict[int, list[Mapping[str, Any]]] = {}
  for r in records:
    if r.get("agreed") and r.get("score") is not None and r.get("completion"):
      pool.setdefault(int(r["score"]), []).append(r)
  chosen, shortfall = [], {}
  for level, n in sorted(quotas.items()):
    have = pool.get(level, [])
    take = rng.choice(len(have), size=min(n, len(have)), replace=False) if have else []
    chosen += [have[i] for i in sorted(take)]
    if len(have) < n:
      shortfall[str(level)] = n - len(have)
  return chosen, shortfall


def _context(rec: Mapping[str, Any], dilemmas: Mapping[str, Any], pairs: Mapping[str, Any]) -> dict[str, Any]:
  what = f"record (dilemma {rec.get('dilemma_id')!r}, pair {rec.get('pair_id')!r})"
  if rec.get("dilemma_id") not in dilemmas:
    raise ValueError(f"{what}: unknown dilemma id")
  if rec.get("pair_id") not in pairs:
    raise ValueError(f"{what}: unknown persona pair id")
  pair = pairs[rec["pair_id"]]
  roles = {pair["a"]["id"]: (pair["a"], pair["b"]), pair["b"]["id"]: (pair["b"], pair["a"])}
  if rec.get("agent1") not in roles:
    raise ValueError(f"{what}: agent1 {rec.get('agent1')!r} is neither persona of the pair")
  a, b = roles[rec["agent1"]]
  return dict(dilemma=dilemmas[rec["dilemma_id"]], persona_a=a, persona_b=b)


def rescore(judge, records: Sequence[Mapping[str, Any]], dilemmas: Mapping[str, Any], pairs: Mapping[str, Any],
            passes: int = 2, temperature: float | None = None) -> list[dict[str, Any]]:
  """Every record's completion scored `passes` times by `judge` (at `temperature`, None = the judge config's); all
  passes go out in one concurrent burst."""
  if passes < 1:
    raise ValueError(f"cross-judge passes: must be >= 1, got {passes}")
  contexts = [_context(r, dilemmas, pairs) for r in records]
  requests = [JudgeRequest(rubrics.ca_messages(completion=r["completion"], **ctx),
                           rubrics.CA_VERSION if k == 0 else f"{rubrics.CA_VERSION}#pass{k + 1}",
                           temperature=temperature)
              for k in range(passes) for r, ctx in zip(records, contexts)]
  results = judge.judge_many(requests, parsers.parse_score) if records else []
  n = len(records)
  return [{"dilemma_id": r["dilemma_id"], "pair_id": r["pair_id"], "policy": r.get("policy", ""),
           "sample": r.get("sample", 0), "train_score": int(r["score"]),
           "strong_scores": [results[k * n + i].value if results[k * n + i].ok else None for k in range(passes)],
           "strong_failures": [results[k * n + i].reason for k in range(passes)],
           "strong_model": next((results[k * n + i].model for k in range(passes) if results[k * n + i].ok), None)}
          for i, r in enumerate(records)]


def cross_judge_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  passes = len(rows[0]["strong_scores"]) if rows else 0
  return stats.cross_judge_stats([r["train_score"] for r in rows],
                                 [[r["strong_scores"][k] for r in rows] for k in range(passes)])
