"""The four judges the trainer and the evaluation call. Each returns a JudgeResult: `value` when ok, else a
`reason` ('unparseable' after max_parse_retries, 'length', or a transport failure). Never a silent default score.
Each request carries its rubric's final line, for format reminders and for verdicts read from probabilities
(`verdict_mode`), where `probs` (and, for scores, `mean`) come with the value."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from deliberate.judge import parsers, rubrics
from deliberate.judge.verdicts import SCORE, VERDICT, WINNER
from deliberate.judge.client import JudgeClient, JudgeRequest, JudgeResult
from deliberate.judge.rubrics import Dilemma, Persona


async def judge_agreement(client: JudgeClient, dilemma: Dilemma, persona_a: Persona, persona_b: Persona,
                          turns: Sequence[Mapping[str, Any]], *, recent: int | None = None) -> JudgeResult:
  """value: True when the parties agreed on the core resolution. `recent` keeps only the last turns."""
  shown = list(turns)[-recent:] if recent else list(turns)
  msgs = rubrics.agreement_messages(dilemma, persona_a, persona_b, shown)
  return await client.complete(JudgeRequest(msgs, rubrics.AGREEMENT_VERSION, final=VERDICT), parsers.parse_verdict)


async def judge_ca(client: JudgeClient, dilemma: Dilemma, persona_a: Persona | None, persona_b: Persona | None,
                   completion: str) -> JudgeResult:
  """value: integer Collective Agency score 0-5. Personas may be None for open-ended questions."""
  msgs = rubrics.ca_messages(dilemma, persona_a, persona_b, completion)
  return await client.complete(JudgeRequest(msgs, rubrics.CA_VERSION, final=SCORE), parsers.parse_score)


async def compare_ca(client: JudgeClient, dilemma: Dilemma, persona_a: Persona | None, persona_b: Persona | None,
                     response_a: str, response_b: str) -> JudgeResult:
  """value: 'A', 'B' or 'tie' for Collective Agency. The evaluation calls it in both orders."""
  msgs = rubrics.compare_ca_messages(dilemma, persona_a, persona_b, response_a, response_b)
  return await client.complete(JudgeRequest(msgs, rubrics.COMPARE_CA_VERSION, final=WINNER), parsers.parse_winner)


async def compare_resolution(client: JudgeClient, dilemma: Dilemma, persona_a: Persona, persona_b: Persona,
                             response_a: str, response_b: str) -> JudgeResult:
  """value: 'A', 'B' or 'tie' for conflict resolution. The evaluation calls it in both orders."""
  msgs = rubrics.compare_resolution_messages(dilemma, persona_a, persona_b, response_a, response_b)
  return await client.complete(JudgeRequest(msgs, rubrics.COMPARE_RESOLUTION_VERSION, final=WINNER), parsers.parse_winner)
