"""Single-agent answers to the open-ended evaluation questions, prompted as the single-agent baseline trains
(tasks/single_agent.py), optionally scored for CA by the training judge."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from deliberate.eval import stats
from deliberate.judge import judges
from deliberate.model import tokenizer as tok_lib
from deliberate.sampling.engine import Request, SamplingEngine
from deliberate.sampling.sampler import SamplingParams
from deliberate.tasks.single_agent import answer_messages  # noqa: F401  (the baseline's prompt)


def answer_questions(engine: SamplingEngine, tokenizer, questions: Sequence[Mapping[str, Any]], sp: SamplingParams,
                     *, seed: int, samples: int = 1, policy: str = "", decoding: str = "") -> list[dict[str, Any]]:
  """One record per (question, sample), question-major, in one batched engine call."""
  for i, q in enumerate(questions):
    if not isinstance(q.get("question"), str) or not q["question"].strip() or "id" not in q:
      raise ValueError(f"open question {q.get('id', i)!r}: needs an 'id' and a non-empty 'question' string")
  stop = tok_lib.stop_ids(tokenizer)
  prompts = [tok_lib.render_ids(tokenizer, answer_messages(q["question"]), stop=stop) for q in questions]
  requests = [Request(prompts[i], i * samples + j) for i in range(len(questions)) for j in range(samples)]
  outs = engine.generate(requests, sp, seed)
  return [{"policy": policy, "decoding": decoding, "id": questions[r.row_id // samples]["id"],
           "question": questions[r.row_id // samples]["question"], "sample": r.row_id % samples,
           "text": tokenizer.decode(o.tokens, skip_special_tokens=True).strip(), "tokens": len(o.tokens),
           "stop_reason": o.stop_reason} for r, o in zip(requests, outs)]


def score_answers(judge, records: list[dict[str, Any]]) -> None:
  """Adds 'score' (0-5, or None) and 'failure' to every record: the CA judge without personas."""
  kwargs = [dict(dilemma=r["question"], persona_a=None, persona_b=None, completion=r["text"]) for r in records]
  for r, res in zip(records, judge.map(judges.judge_ca, kwargs) if records else []):
    r["score"] = int(res.value) if res.ok else None
    r["failure"] = None if res.ok else res.reason


def answers_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  out: dict[str, Any] = {"answers": len(records),
                         "mean_tokens": float(np.mean([r["tokens"] for r in records])) if records else float("nan"),
                         "truncated_fraction": (sum(r["stop_reason"] == "length" for r in records) / len(records)
                                                if records else float("nan"))}
  if records and "score" in records[0]:
    out["ca"] = stats.score_summary([r["score"] for r in records])
  return out
