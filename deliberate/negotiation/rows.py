"""Training rows: one per dialogue turn, prompt ids + sampled response ids, with a loss mask on the response.

The mask is 1 only on the response tokens of dialogue turns (both agents, or Agent 1 alone for the ablation): never on
the system message, persona, dilemma, context turns, padding or the final completion. Masks mark the position of the
target token, aligned with the sampling log-probs.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from deliberate.negotiation.episode import Dialogue


@dataclasses.dataclass
class Row:
  prompt_ids: list[int]
  response_ids: list[int]
  logprobs: list[float]
  dialogue: int                 # index of its dialogue: the advantage is the dialogue's
  agent: int
  trained: bool                 # False: kept for inspection but masked out (agent1_only ablation)


def dialogue_rows(dialogues: Sequence[Dialogue], agent1_only: bool = False) -> list[Row]:
  """Every turn of every dialogue that takes part in its group (excluded dialogues give no rows)."""
  return [Row(t.prompt_ids, t.response_ids, t.logprobs, d.index, t.agent, not (agent1_only and t.agent == 2))
          for d in dialogues if not d.excluded for t in d.turns]


def collate(rows: Sequence[Row], advantages: Sequence[float], *, pad_id: int = 0, length: int | None = None,
            batch: int | None = None, drop_untrained: bool = True) -> dict[str, np.ndarray]:
  """Right-padded arrays for the GRPO step. `advantages[d]` is dialogue d's advantage.

  Rows with nothing to train are dropped unless `drop_untrained=False`. `length` and `batch` pad to fixed shapes so
  the step compiles once; padding rows have an all-zero mask.
  """
  rows = [r for r in rows if r.trained] if drop_untrained else list(rows)
  need = max((len(r.prompt_ids) + len(r.response_ids) for r in rows), default=1)
  t = length or need
  if need > t:
    raise ValueError(f"collate: a row of {need} tokens exceeds the step's length {t}")
  b = max(batch or len(rows), len(rows))
  out = {"tokens_BxT": np.full((b, t), pad_id, np.int32), "positions_BxT": np.full((b, t), -1, np.int32),
         "loss_mask_BxT": np.zeros((b, t), np.float32), "old_logprobs_BxT": np.zeros((b, t), np.float32),
         "advantages_B": np.zeros((b,), np.float32), "seq_ids_B": np.full((b,), -1, np.int32)}
  for i, r in enumerate(rows):
    p, n = len(r.prompt_ids), len(r.response_ids)
    out["tokens_BxT"][i, :p + n] = r.prompt_ids + r.response_ids
    out["positions_BxT"][i, :p + n] = np.arange(p + n)
    if r.trained:
      out["loss_mask_BxT"][i, p:p + n] = 1.0
    out["old_logprobs_BxT"][i, p:p + n] = r.logprobs
    out["advantages_B"][i] = advantages[r.dialogue]
    out["seq_ids_B"][i] = r.dialogue
  return out
