"""Self-play negotiation episodes, batched across P prompts x G dialogues.

`negotiation.scheduler` picks how the episodes move (both in negotiation/scheduler.py, built from the per-dialogue
steps of negotiation/dialogue.py):
- 'lockstep': per turn, every active dialogue is sampled in one engine call, then every active dialogue is judged for
  agreement in one concurrent burst. Dialogues that agree (or whose judge fails) drop out, so later turns compute
  only what is left. Completions and Collective-Agency scores are batched the same way once the turns are over.
- 'async': each dialogue advances as soon as its own verdict is in, so the judge's latency hides behind the sampling
  of other dialogues.
Both key every sampled row by (dialogue, turn), never by batch position, so the two give the same tokens for the
same seed and judge. Their log-probs can differ in the last float32 bits: the engine's numerics depend on the shapes
of a call (rows, unique prompts, prompt bucket), which the two schedulers compose differently.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from deliberate.negotiation import scheduler
from deliberate.negotiation.dialogue import Dialogue, DialogueSteps, Turn, eval_items, turn_stop_ids

__all__ = ["Dialogue", "Negotiator", "Turn", "eval_items", "turn_stop_ids"]


class Negotiator(DialogueSteps):
  """Runs a step's episodes with one policy for both agents, under the configured scheduler."""

  def run(self, items: Sequence[Mapping[str, Any]], seed: int, *, evaluation: bool = False) -> list[Dialogue]:
    """items: dicts with 'dilemma' and 'pair'. Returns P*G dialogues, group-major."""
    g = self.config.group_size
    dialogues = [Dialogue(i * g + j, i, it["dilemma"], it["pair"]) for i, it in enumerate(items) for j in range(g)]
    if self.config.get("scheduler", "lockstep") == "async":
      scheduler.AsyncScheduler(self).run(dialogues, seed, evaluation)
    else:
      scheduler.run_lockstep(self, dialogues, seed, evaluation)
    self.finish(dialogues)
    return dialogues
