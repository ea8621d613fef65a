"""Training rows of a negotiation: one per dialogue turn, prompt ids + sampled response ids (rl/batch.py's `Row`).

The loss mask is 1 only on the response tokens of dialogue turns (both agents, or Agent 1 alone for the ablation):
never on the system message, persona, dilemma, context turns, padding or the final completion.
"""
from __future__ import annotations

from typing import Sequence

from deliberate.negotiation.dialogue import Dialogue
from deliberate.rl.batch import Row


def dialogue_rows(dialogues: Sequence[Dialogue], agent1_only: bool = False, mask_truncated: bool = False
                  ) -> list[Row]:
  """Every turn of every dialogue that takes part in its group (excluded dialogues give no rows).

  `mask_truncated` (negotiation.truncated_turns='mask', DAPO's overlong filtering): a turn cut at the token limit
  stays in the record but leaves the loss, its tokens out of the normaliser too.
  """
  return [Row(t.prompt_ids, t.response_ids, t.logprobs, d.index, t.agent,
              not (agent1_only and t.agent == 2) and not (mask_truncated and t.stop_reason == "length"))
          for d in dialogues if not d.excluded for t in d.turns]
