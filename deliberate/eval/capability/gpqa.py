"""GPQA-style multiple choice, scored two ways: by the log-likelihood of each option's text after the question
(no generation, so no answer extraction can fail), and by the letter the model writes.

Reads the CSV GPQA's authors distribute (gpqa_diamond.csv, ...): the columns `Question`, `Correct Answer`,
`Incorrect Answer 1`..`Incorrect Answer 3` (other columns are ignored; `Record ID` names an item when present). The
four options are shuffled per item by a generator seeded with (seed, item index), so an order is reproducible and
the correct letter is spread evenly over A-D instead of always first.

Letter extraction (documented, as answer formats vary): the last "answer is (X)" / "answer: X" in the response;
failing that, a response that starts with the letter alone or closed by ')', '.' or ':' ("B", "(B)", "B)",
"B. ..."; not "A bit of both"). Anything else is no answer, which
scores 0.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

from deliberate.eval.capability.files import FormatError, read_csv

LETTERS = "ABCD"
COLUMNS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
INSTRUCTION = "Answer the multiple-choice question. End your response with 'The answer is (X)' where X is the letter."
_STATED = re.compile(r"answer\s*(?:is|:)\s*[:\s]*\(?\s*([A-D])\s*\)?(?![A-Za-z])", re.I)
_LEADING = re.compile(r"^\s*\(?([A-D])(?:[).:]|\s*$|\s*\n)")  # "B", "(B)", "B)", "B." but not "A bit"


def load(path: str, seed: int = 0) -> list[dict[str, Any]]:
  """Items {'id', 'question', 'options' (4 texts, shuffled), 'answer' (letter)} from a GPQA CSV."""
  out = []
  for i, (line, row) in enumerate(read_csv(path, COLUMNS)):
    texts = []
    for name in COLUMNS:
      value = (row.get(name) or "").strip()
      if not value:
        raise FormatError(path, line, name, "empty")
      texts.append(value)
    question, options = texts[0], texts[1:]
    if len(set(options)) < 4:
      raise FormatError(path, line, "Correct Answer", "two options have the same text")
    order = np.random.default_rng([seed, i]).permutation(4)
    out.append({"id": (row.get("Record ID") or "").strip() or f"row{i}", "question": question,
                "options": [options[j] for j in order], "answer": LETTERS[int(np.argmax(order == 0))]})
  if not out:
    raise FormatError(path, None, None, "no questions")
  return out


def prompt(item: Mapping[str, Any]) -> str:
  options = "\n".join(f"({L}) {text}" for L, text in zip(LETTERS, item["options"]))
  return f"{INSTRUCTION}\n\nQuestion: {item['question']}\n\n{options}"


def extract_letter(response: str) -> str | None:
  stated = _STATED.findall(response)
  if stated:
    return stated[-1].upper()
  m = _LEADING.match(response)
  return m.group(1) if m else None


def score_generated(item: Mapping[str, Any], response: str) -> dict[str, Any]:
  letter = extract_letter(response)
  return {"letter": letter, "correct": letter == item["answer"]}


def score_loglik(item: Mapping[str, Any], logliks: Sequence[float], lengths: Sequence[int]) -> dict[str, Any]:
  """Picks the option of highest total log-likelihood, and (lm-eval's acc_norm) of highest per-character one."""
  if len(logliks) != 4 or len(lengths) != 4:
    raise ValueError(f"item {item['id']}: need 4 option log-likelihoods, got {len(logliks)}")
  best = LETTERS[int(np.argmax(logliks))]
  norm = LETTERS[int(np.argmax([lp / max(n, 1) for lp, n in zip(logliks, lengths)]))]
  return {"loglik_letter": best, "loglik_correct": best == item["answer"], "loglik_norm_letter": norm,
          "loglik_norm_correct": norm == item["answer"], "logliks": [float(x) for x in logliks]}


def summary(scored: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  pct = lambda key: (100.0 * sum(bool(r[key]) for r in scored if key in r) / sum(key in r for r in scored)
                     if any(key in r for r in scored) else float("nan"))
  return {"questions": len(scored), "generated_accuracy": pct("correct"), "loglik_accuracy": pct("loglik_correct"),
          "loglik_norm_accuracy": pct("loglik_norm_correct"),
          "no_letter": sum(r.get("letter", "") is None for r in scored)}
