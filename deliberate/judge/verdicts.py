"""Verdicts read from probabilities instead of text: the final-line prefix and allowed answers of each rubric, and the
reading of an OpenAI `logprobs` answer or of deliberate's own logit verdict.

A judge that cannot follow the format (a small local model) still has a distribution over the allowed answers after
`Score:`. The verdict is the most probable allowed answer; for scores the probability-weighted mean is reported too,
as G-Eval does (Liu et al., 2023).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class FinalLine:
  """The line a rubric's answer must end with: `prefix answer`, answer one of `answers`."""
  prefix: str                      # e.g. 'Score:'
  answers: tuple[str, ...]         # e.g. ('0', ..., '5')
  numeric: bool = False            # answers are integers: report the probability-weighted mean

  def line(self, answer: str) -> str:
    return f"{self.prefix} {answer}"

  def reminder(self) -> str:
    """The re-ask's format reminder (parse_retry='reminder')."""
    return (f"Reminder of the required format: end your answer with exactly one final line `{self.prefix} X`, "
            f"X one of {', '.join(self.answers)}, and write nothing after it.")

  def wire(self, reasoning_tokens: int) -> dict[str, Any]:
    """The `deliberate_verdict` request field understood by deliberate's judge server."""
    return {"prefix": self.prefix, "answers": list(self.answers), "reasoning_tokens": int(reasoning_tokens)}


SCORE = FinalLine("Score:", tuple(str(i) for i in range(6)), numeric=True)
VERDICT = FinalLine("Verdict:", ("yes", "no"))
WINNER = FinalLine("Winner:", ("A", "B", "tie"))
GENERIC_REMINDER = ("Reminder of the required format: end your answer with exactly the one final line the "
                    "instructions ask for, and write nothing after it.")


def normalise(logprobs: Mapping[str, float]) -> dict[str, float]:
  """Probabilities over the answers that have a log-prob, summing to 1."""
  finite = {a: lp for a, lp in logprobs.items() if lp is not None and math.isfinite(lp)}
  if not finite:
    return {}
  top = max(finite.values())
  z = sum(math.exp(lp - top) for lp in finite.values())
  return {a: math.exp(lp - top) / z for a, lp in finite.items()}


def best(probs: Mapping[str, float]) -> str:
  return max(probs, key=lambda a: probs[a])


def mean(final: FinalLine, probs: Mapping[str, float]) -> float | None:
  return sum(p * int(a) for a, p in probs.items()) if final.numeric and probs else None


def _norm_token(token: str) -> str:
  return token.strip().strip("*_`'\".").lower()


def from_openai_logprobs(final: FinalLine, content: Sequence[Mapping[str, Any]]) -> dict[str, float] | None:
  """Answer probabilities at the first non-blank token after the LAST occurrence of the prefix in an OpenAI
  `choices[0].logprobs.content` list; None when the prefix is absent or no allowed answer is among top_logprobs.

  Answers are matched on the token with whitespace and markdown stripped, case-insensitively; variants of one answer
  (' 3' and '3') are summed."""
  tokens = [str(t.get("token", "")) for t in content]
  text = "".join(tokens)
  at = text.lower().rfind(final.prefix.lower())
  if at < 0:
    return None
  end, pos = at + len(final.prefix), 0
  for i, tok in enumerate(tokens):
    start, pos = pos, pos + len(tok)
    if start < end:
      continue
    if not _norm_token(tok) and not tok.strip("*_` \t\n"):  # blank or markdown-only: the answer comes later
      continue
    wanted = {a.lower(): a for a in final.answers}
    mass: dict[str, float] = {}
    for alt in content[i].get("top_logprobs") or [{"token": tok, "logprob": content[i].get("logprob")}]:
      a = wanted.get(_norm_token(str(alt.get("token", ""))))
      lp = alt.get("logprob")
      if a is not None and isinstance(lp, (int, float)):
        mass[a] = mass.get(a, 0.0) + math.exp(lp)
    return normalise({a: math.log(p) for a, p in mass.items() if p > 0}) or None
  return None


def from_wire(final: FinalLine, field: Any) -> dict[str, float] | None:
  """Probabilities from deliberate's `deliberate_verdict` response field ({'logprobs': {answer: lp}})."""
  if not isinstance(field, Mapping) or not isinstance(field.get("logprobs"), Mapping):
    return None
  lps = {a: float(v) for a, v in field["logprobs"].items() if a in final.answers and isinstance(v, (int, float))}
  return normalise(lps) or None
