"""Pairwise win rates of policy a over policy b, judged in both orders (docs/protocol.md).

Every item is judged twice, once with a's output shown as Response A and once with it shown as Response B. A win
(or loss, or tie) counts only when both orders give it; pairs whose orders disagree are dropped as inconsistent and
counted, as are pairs the judge could not answer (failed) and pairs where one side has no output (missing).
The paper does not say how consistent ties enter the win rate, so three rates are reported: `win_rate` =
wins / consistent pairs (ties count against), `win_rate_ties_half` (a tie is half a win), and `decisive_win_rate` =
wins / (wins + losses).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from deliberate.judge import judges
from deliberate.judge.client import JudgeResult

OUTCOMES = ("win", "loss", "tie", "inconsistent", "failed", "missing")
_FIRST = {"A": "win", "B": "loss", "tie": "tie"}   # order 1: a is Response A
_SECOND = {"A": "loss", "B": "win", "tie": "tie"}  # order 2: b is Response A
COMPARISONS = {"ca_conflict": judges.compare_ca, "ca_open": judges.compare_ca,
               "resolution": judges.compare_resolution}


def combine(first: JudgeResult, second: JudgeResult) -> str:
  """a's outcome from the verdict with a shown first and the verdict with b shown first."""
  if not (first.ok and second.ok):
    return "failed"
  v1, v2 = _FIRST[first.value], _SECOND[second.value]
  return v1 if v1 == v2 else "inconsistent"


def _rate(num: float, den: int) -> float:
  return 100.0 * num / den if den else float("nan")


def summarize(outcomes: Sequence[str]) -> dict[str, float | int]:
  """Counts of every outcome and the win rates (%) over the consistent pairs."""
  bad = sorted({o for o in outcomes} - set(OUTCOMES))
  if bad:
    raise ValueError(f"unknown pairwise outcomes {bad}; expected {OUTCOMES}")
  c = {o: sum(x == o for x in outcomes) for o in OUTCOMES}
  consistent = c["win"] + c["loss"] + c["tie"]
  return {"pairs": len(outcomes), "consistent": consistent, "dropped_inconsistent": c["inconsistent"],
          "wins": c["win"], "losses": c["loss"], "ties": c["tie"], "failed": c["failed"], "missing": c["missing"],
          "win_rate": _rate(c["win"], consistent), "loss_rate": _rate(c["loss"], consistent),
          "win_rate_ties_half": _rate(c["win"] + 0.5 * c["tie"], consistent),
          "decisive_win_rate": _rate(c["win"], c["win"] + c["loss"])}


def judge_both_orders(judge, judge_fn: Callable, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """items: {'key', 'context': judge kwargs (dilemma, persona_a, persona_b), 'a': text or None, 'b': ...}.

  Both orders of every item go to the judge in one concurrent burst. Returns one record per item.
  """
  ready = [it for it in items if it["a"] and it["b"]]
  kwargs = [dict(it["context"], response_a=it["a"], response_b=it["b"]) for it in ready]
  kwargs += [dict(it["context"], response_a=it["b"], response_b=it["a"]) for it in ready]
  results = judge.map(judge_fn, kwargs) if ready else []
  by_key = {it["key"]: (results[i], results[i + len(ready)]) for i, it in enumerate(ready)}
  out = []
  for it in items:
    rec: dict[str, Any] = {"key": it["key"]}
    if it["key"] not in by_key:
      rec["outcome"] = "missing"
    else:
      first, second = by_key[it["key"]]
      rec.update(outcome=combine(first, second), first=first.value if first.ok else f"failed: {first.reason}",
                 second=second.value if second.ok else f"failed: {second.reason}",
                 judge_model=first.model or second.model)
    out.append(rec)
  return out


def _key(rec: Mapping[str, Any], id_field: str) -> str:
  return f"{rec[id_field]}#{rec.get('sample', 0)}"


def conflict_items(outputs_a: Sequence[Mapping], outputs_b: Sequence[Mapping],
                   tasks: Sequence[Mapping]) -> list[dict[str, Any]]:
  """Final completions of two policies' evaluation negotiations, matched by (task, sample)."""
  by_id = {t["id"]: t for t in tasks}
  texts_a = {_key(r, "dilemma_id"): r.get("completion") for r in outputs_a}
  texts_b = {_key(r, "dilemma_id"): r.get("completion") for r in outputs_b}
  items = []
  for key in sorted(set(texts_a) | set(texts_b)):
    task_id = key.rsplit("#", 1)[0]
    if task_id not in by_id:
      raise ValueError(f"conflict output {key!r}: task {task_id!r} is not among the evaluation tasks")
    task = by_id[task_id]
    context = dict(dilemma=task, persona_a=task["pair"]["a"], persona_b=task["pair"]["b"])
    items.append({"key": key, "context": context, "a": texts_a.get(key), "b": texts_b.get(key)})
  return items


def open_items(outputs_a: Sequence[Mapping], outputs_b: Sequence[Mapping],
               questions: Sequence[Mapping]) -> list[dict[str, Any]]:
  """Single-agent answers of two policies to the open-ended questions, matched by (question, sample)."""
  by_id = {q["id"]: q for q in questions}
  texts_a = {_key(r, "id"): r.get("text") for r in outputs_a}
  texts_b = {_key(r, "id"): r.get("text") for r in outputs_b}
  items = []
  for key in sorted(set(texts_a) | set(texts_b)):
    qid = key.rsplit("#", 1)[0]
    if qid not in by_id:
      raise ValueError(f"open answer {key!r}: question {qid!r} is not among the evaluation questions")
    context = dict(dilemma=by_id[qid]["question"], persona_a=None, persona_b=None)
    items.append({"key": key, "context": context, "a": texts_a.get(key), "b": texts_b.get(key)})
  return items


def compare_policies(judge, conflict_a: Sequence[Mapping], conflict_b: Sequence[Mapping], open_a: Sequence[Mapping],
                     open_b: Sequence[Mapping], tasks: Sequence[Mapping],
                     questions: Sequence[Mapping]) -> tuple[dict[str, dict], list[dict[str, Any]]]:
  """CA on conflict tasks and on open questions (compare_ca) and conflict resolution (compare_resolution).

  Returns ({comparison: summary}, per-item records). A comparison without outputs on either side is skipped.
  """
  plan = {"ca_conflict": conflict_items(conflict_a, conflict_b, tasks) if conflict_a or conflict_b else [],
          "ca_open": open_items(open_a, open_b, questions) if open_a or open_b else []}
  plan["resolution"] = plan["ca_conflict"]
  summaries, records = {}, []
  for name, items in plan.items():
    if not items:
      continue
    recs = judge_both_orders(judge, COMPARISONS[name], items)
    summaries[name] = summarize([r["outcome"] for r in recs])
    records += [{"comparison": name, **r} for r in recs]
  return summaries, records
