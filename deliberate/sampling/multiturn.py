"""Multi-turn chat sampling: many conversations, each with its own system prompt (a persona) and id history.

Histories hold the sampled ids themselves, so every later prompt is rendered around them (token-in/token-out).
Finished conversations are left out of the batch, and conversations whose prompts coincide (the G samples of one
dilemma and persona) are prefilled once by the engine.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from deliberate.model import tokenizer as tok_lib
from deliberate.sampling.engine import Completion, Request, SamplingEngine
from deliberate.sampling.sampler import SamplingParams

MAX_TURNS = 1 << 10  # row ids: conversation id * MAX_TURNS + turn


@dataclasses.dataclass
class Conversation:
  id: int                                   # stable: it seeds the conversation's randomness
  system: str                               # the persona
  messages: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # content: text or sampled ids
  done: bool = False

  @property
  def turn(self) -> int:
    return sum(m["role"] == "assistant" for m in self.messages)


def next_turns(engine: SamplingEngine, tokenizer, conversations: Sequence[Conversation], sp: SamplingParams,
               seed: int) -> dict[int, Completion]:
  """Samples the next assistant turn of every conversation not done, appends it (as ids), returns it by id."""
  active = [c for c in conversations if not c.done]
  requests = [Request(tok_lib.render_ids(tokenizer, [{"role": "system", "content": c.system}, *c.messages]),
                      c.id * MAX_TURNS + c.turn) for c in active]
  outs = engine.generate(requests, sp, seed)
  for c, o in zip(active, outs):
    c.messages.append({"role": "assistant", "content": o.tokens})
  return {c.id: o for c, o in zip(active, outs)}
