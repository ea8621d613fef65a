"""AIME-style math: exact match of the final integer answer (0-999).

Reads JSONL or CSV with one problem per line/row, as AIME sets are commonly distributed on the Hugging Face hub:
the problem under `problem` (also `question`, `Problem`), the integer answer under `answer` (also `Answer`; an int or
a string such as "033"), and an optional `id` (also `ID`, `url`). A '.csv' suffix selects CSV; anything else JSONL.

Answer extraction rule: the content of the last `\\boxed{...}` in the response; failing that, the number after the
last "answer is" / "answer:"; failing that, the last integer in the response. The extracted text must be an integer
(commas, spaces, '$' and a trailing '.' are dropped; "033" is 33); anything else is no answer, which scores 0.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from deliberate.eval.capability.files import FormatError, field, read_csv, read_jsonl

INSTRUCTION = "Solve the problem. The answer is an integer from 0 to 999; put it in \\boxed{} at the end."
_BOXED = re.compile(r"\\boxed\s*\{")
_STATED = re.compile(r"answer\s*(?:is|:)\s*[:\s]*\$?\s*(-?[\d,]+)", re.I)
_INTEGER = re.compile(r"-?\d[\d,]*")


def _parse_answer(path: str, line: int, name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, str)):
    raise FormatError(path, line, name, f"expected an integer, got {type(value).__name__}")
  try:
    answer = int(str(value).strip())
  except ValueError:
    raise FormatError(path, line, name, f"{value!r} is not an integer") from None
  if not 0 <= answer <= 999:
    raise FormatError(path, line, name, f"{answer} is outside AIME's 0-999")
  return answer


def load(path: str) -> list[dict[str, Any]]:
  """Items {'id', 'problem', 'answer' (int)}."""
  if path.lower().endswith(".csv"):
    rows = read_csv(path, ())  # which spelling of each column is present is checked per row, by field()
  else:
    rows = read_jsonl(path)
  out = []
  for i, (line, row) in enumerate(rows):
    problem = field(path, line, row, ("problem", "Problem", "question"))
    name = next((n for n in ("answer", "Answer") if n in row), "answer")
    answer = _parse_answer(path, line, name, field(path, line, row, (name,), (int, str)))
    ident = next((str(row[n]) for n in ("id", "ID", "url") if row.get(n) not in (None, "")), f"row{i}")
    out.append({"id": ident, "problem": problem, "answer": answer})
  if not out:
    raise FormatError(path, None, None, "no problems")
  return out


def prompt(item: Mapping[str, Any]) -> str:
  return f"{INSTRUCTION}\n\n{item['problem']}"


def _last_boxed(text: str) -> str | None:
  """Content of the last \\boxed{...}, braces balanced (\\boxed{\\frac{1}{2}} keeps its inner braces)."""
  starts = [m.end() for m in _BOXED.finditer(text)]
  if not starts:
    return None
  i, depth = starts[-1], 1
  for j in range(i, len(text)):
    depth += {"{": 1, "}": -1}.get(text[j], 0)
    if depth == 0:
      return text[i:j]
  return None


def _to_int(text: str) -> int | None:
  body = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
  return int(body) if re.fullmatch(r"-?\d+", body) else None


def extract_answer(response: str) -> int | None:
  boxed = _last_boxed(response)
  if boxed is not None:
    return _to_int(boxed)
  stated = _STATED.findall(response)
  if stated:
    return _to_int(stated[-1])
  integers = _INTEGER.findall(response)
  return _to_int(integers[-1]) if integers else None


def score(item: Mapping[str, Any], response: str) -> dict[str, Any]:
  got = extract_answer(response)
  return {"extracted": got, "correct": got is not None and got == item["answer"]}


def summary(scored: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  return {"problems": len(scored),
          "accuracy": 100.0 * sum(r["correct"] for r in scored) / len(scored) if scored else float("nan"),
          "no_answer": sum(r["extracted"] is None for r in scored)}
