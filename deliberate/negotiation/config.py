"""The negotiation section of a run's config: the protocol of docs/protocol.md. Importable without JAX."""
from __future__ import annotations

import ml_collections

FAILED_POLICIES = ("exclude", "zero")
TRUNCATED_POLICIES = ("keep", "mask", "penalize")
SCHEDULERS = ("lockstep", "async")
TURN_STOPS = ("none", "paragraph", "newline", "sentence")


def default_config() -> ml_collections.ConfigDict:
  """The paper's protocol; values the paper does not disclose are marked as ours (docs/protocol.md)."""
  c = ml_collections.ConfigDict()
  c.group_size = 8                  # G dialogues per (dilemma, persona pair)
  c.max_turns = 7                   # N: at most 7 turns, Agent 1 first
  c.context_turns = 2               # each turn sees only the two most recent turns
  c.turn_temperature = 0.7
  c.turn_top_p = 0.95
  c.max_turn_tokens = 128           # not disclosed: ours
  c.turn_stop = "none"              # a turn also ends at a 'paragraph' break (a token holding "\n\n"), any
                                    # 'newline', or the end of a 'sentence' (a token of . ! ? alone, as "3." or
                                    # "Mr." are not); the stop token stays in the sampled ids. Ours (issue 16)
  c.completion_temperature = 0.1
  c.completion_top_p = 0.95
  c.max_completion_tokens = 256     # not disclosed: ours
  c.agreement_judge_turns = 0       # turns shown to the agreement judge (0 = the whole dialogue); not disclosed
  c.failed_policy = "exclude"       # a dialogue whose judge failed: 'exclude' from its group, or score 'zero'
  c.agent1_only = False             # ablation: mask Agent 2's turns out of the loss
  # A turn cut at max_turn_tokens: 'keep' it in the loss (default), 'mask' it out of the loss and its normaliser
  # (DAPO's overlong filtering), or 'penalize' the dialogue's reward by truncation_penalty x its cut-turn fraction
  # (DAPO's overlong punishment). 'keep' because the paper sums over every dialogue token, because the agreement
  # verdict reads a turn's opening ("I agree ...") which a cut does not remove (masking would drop the very turns
  # that earned the reward), and because the short-turn prompt and the budget keep cuts rare (issue 16: <= 30%).
  c.truncated_turns = "keep"
  c.truncation_penalty = 1.0        # 'penalize' only: reward points for a dialogue whose every turn was cut
  c.overlap_judge = False           # sample the next turn while the agreement judge runs (speculative; pays off
                                    # with a slow remote judge, wastes compute with a fast local one)
  c.scheduler = "lockstep"          # 'lockstep': a turn for every active dialogue, then every verdict; 'async': each
                                    # dialogue advances as soon as its own verdict is in (negotiation/scheduler.py)
  c.scheduler_max_batch = 0         # async: most dialogues in one sampler call (0 = no cap)
  c.scheduler_fill_wait_s = 0.02    # async: how long a ready batch waits for more verdicts to fill it
  return c


def validate(c: ml_collections.ConfigDict, prefix: str = "config.negotiation") -> None:
  """Errors name the field at fault."""
  if c.group_size < 1:
    raise ValueError(f"{prefix}.group_size: must be >= 1, got {c.group_size}")
  for f in ("max_turns", "max_turn_tokens", "max_completion_tokens"):
    if c[f] < 1:
      raise ValueError(f"{prefix}.{f}: must be >= 1, got {c[f]}")
  for f in ("context_turns", "agreement_judge_turns"):
    if c[f] < 0:
      raise ValueError(f"{prefix}.{f}: must be >= 0, got {c[f]}")
  for f in ("turn_top_p", "completion_top_p"):
    if not 0 < c[f] <= 1:
      raise ValueError(f"{prefix}.{f}: must be in (0, 1], got {c[f]}")
  if c.get("truncated_turns", "keep") not in TRUNCATED_POLICIES:
    raise ValueError(f"{prefix}.truncated_turns: {c.truncated_turns!r} is not one of {TRUNCATED_POLICIES}")
  if c.get("truncation_penalty", 0.0) < 0:
    raise ValueError(f"{prefix}.truncation_penalty: must be >= 0, got {c.truncation_penalty}")
  if c.get("turn_stop", "none") not in TURN_STOPS:
    raise ValueError(f"{prefix}.turn_stop: {c.turn_stop!r} is not one of {TURN_STOPS}")
  if c.failed_policy not in FAILED_POLICIES:
    raise ValueError(f"{prefix}.failed_policy: {c.failed_policy!r} is not 'exclude' or 'zero'")
  if c.scheduler_max_batch < 0 or c.scheduler_fill_wait_s < 0:
    raise ValueError(f"{prefix}.scheduler_max_batch and scheduler_fill_wait_s: must be >= 0")
  if c.scheduler not in SCHEDULERS:
    raise ValueError(f"{prefix}.scheduler: {c.scheduler!r} is not one of {SCHEDULERS}")
