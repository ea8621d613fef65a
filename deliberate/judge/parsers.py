"""Parsers that read only the judge's own final answer.

Accepted: the whole answer as a JSON object ({"score": 4}, optionally in a ```json block), a fenced ```json block
that ENDS the answer after reasoning (its content a JSON object or one `Score: 4` line), a JSON object on the last
non-empty line, or a last non-empty line `Score: 4` / `Verdict: yes` / `Winner: A` (markdown bold allowed).
Only the final line or the final block counts, so a "Score: 5" (or a ```json block) quoted from the judged text
earlier in the reasoning cannot decide, and neither can a block followed by more text.
"""
from __future__ import annotations

import json
import re
from typing import Any

from deliberate.judge.client import ParseError

_CODE_BLOCK = re.compile(r"^```(?:json)?\s*\n(.*)\n```$", re.S)
# The last fenced block of an answer, when nothing but whitespace follows its closing fence. Its content may not
# hold a fence line itself, so a block can only be the judge's final one.
_FINAL_BLOCK = re.compile(r"\n```(?:json)?[ \t]*\n((?:(?!```)[^\n]*\n)*?(?:(?!```)[^\n]*))\n```$")


def _fence_lines(text: str) -> int:
  """Fence markers in text: an odd count means the final block's opener may be an earlier block's closer."""
  return text.count("```")


def _json_value(candidate: str, key: str) -> tuple[bool, Any]:
  try:
    obj = json.loads(candidate)
  except ValueError:
    return False, None
  if isinstance(obj, dict):
    lowered = {str(k).lower(): v for k, v in obj.items()}
    if key in lowered:
      return True, lowered[key]
  return False, None


def final_field(text: str, key: str) -> Any:
  """The value the judge gave for `key` in its final answer; ParseError when there is none."""
  if not isinstance(text, str) or not text.strip():
    raise ParseError("empty judge answer")
  body = text.strip()
  m = _CODE_BLOCK.match(body)
  if m:
    body = m.group(1).strip()
  else:
    m = _FINAL_BLOCK.search(body)
    if m and _fence_lines(body[:m.start()]) % 2:
      raise ParseError("unbalanced ``` fences before the final block: cannot tell the judge's block from a quote")
    if m:  # reasoning, then a final fenced block: only the block is read, as if it were the whole answer
      inner = m.group(1).strip()
      found, value = _json_value(inner, key)
      if found:
        return value
      if "\n" not in inner:
        body = inner
      else:
        raise ParseError(f"final fenced block is neither a JSON object with {key!r} nor one line: {inner[-120:]!r}")
  found, value = _json_value(body, key)
  if found:
    return value
  last = body.splitlines()[-1].strip()
  found, value = _json_value(last, key)
  if found:
    return value
  m = re.fullmatch(rf"[*_#>\s]*(?:final\s+)?{key}[*_\s]*[:=][*_\s]*(.+?)[*_\s.]*", last, re.I)
  if m:
    return m.group(1).strip()
  raise ParseError(f"no final '{key.capitalize()}: ...' line or JSON {{\"{key}\": ...}} in judge answer "
                   f"ending {body[-120:]!r}")


def parse_score(text: str, lo: int = 0, hi: int = 5) -> int:
  """An integer in [lo, hi]; '4/5' is read as 4 when the denominator is `hi`. 3.5 or 'high' is an error."""
  v = final_field(text, "score")
  if isinstance(v, bool):
    raise ParseError(f"score is a boolean ({v}), not an integer")
  if isinstance(v, str):
    m = re.fullmatch(rf"([+-]?\d+(?:\.0+)?)(?:\s*/\s*{hi})?", v.strip())
    if not m:
      raise ParseError(f"score {v!r} is not an integer")
    v = float(m.group(1))
  if isinstance(v, float):
    if not v.is_integer():
      raise ParseError(f"score {v!r} is not an integer")
    v = int(v)
  if not isinstance(v, int):
    raise ParseError(f"score {v!r} is not an integer")
  if not lo <= v <= hi:
    raise ParseError(f"score {v} outside [{lo}, {hi}]")
  return v


def parse_verdict(text: str) -> bool:
  """yes/no (also true/false)."""
  v = final_field(text, "verdict")
  if isinstance(v, bool):
    return v
  s = str(v).strip().strip("'\"").lower()
  if s in ("yes", "true"):
    return True
  if s in ("no", "false"):
    return False
  raise ParseError(f"verdict {v!r} is neither yes nor no")


def parse_winner(text: str) -> str:
  """'A', 'B' or 'tie'."""
  v = final_field(text, "winner")
  s = str(v).strip().strip("'\"")
  for name in ("A", "B"):
    if s.upper() in (name, f"RESPONSE {name}", f"RESPONSE_{name}"):
      return name
  if s.lower() == "tie":
    return "tie"
  raise ParseError(f"winner {v!r} is not A, B or tie")
