"""The training modes and the single-agent section of a run's config. Importable without JAX.

A mode is a Task (deliberate/tasks/base.py): it turns a step's prompts into a Rollout. A new mode is one module under
deliberate/tasks/ and one entry in MODES.
"""
from __future__ import annotations

import ml_collections

# mode -> (module holding `Task`, the config section that configures it, that section's sampling temperature of the
# trained tokens: the loss's log-probs are those of logits / T, as sampled)
MODES = {"negotiation": ("deliberate.tasks.negotiation", "negotiation", "turn_temperature"),
         "single_agent": ("deliberate.tasks.single_agent", "single_agent", "temperature"),
         "target_token": ("deliberate.tasks.target_token", "target_token", "temperature")}  # the learning test's


def training_temperature(c: ml_collections.ConfigDict) -> float:
  """The temperature at which the mode samples the tokens it trains on."""
  _, section, field = MODES[c.mode]
  return float(c[section][field])


def target_token_config() -> ml_collections.ConfigDict:
  """The learning test's mode (tasks/target_token.py); not in the base config: a run adds it with mode."""
  c = ml_collections.ConfigDict()
  c.group_size = 8
  c.max_tokens = 8
  c.temperature = 1.0
  c.every = 8                       # target tokens: ids divisible by this (a random policy starts near 1/every)
  return c


def single_agent_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.group_size = 8                  # candidates per open-ended question
  c.temperature = 1.0               # the predecessor paper samples at T=1, top-p 1
  c.top_p = 1.0
  c.max_tokens = 256                # not disclosed: ours
  c.failed_policy = "exclude"       # a candidate the judge could not score: 'exclude' | 'zero'
  return c


def validate_single_agent(c: ml_collections.ConfigDict, prefix: str = "config.single_agent") -> None:
  if c.group_size < 1:
    raise ValueError(f"{prefix}.group_size: must be >= 1, got {c.group_size}")
  if c.max_tokens < 1:
    raise ValueError(f"{prefix}.max_tokens: must be >= 1, got {c.max_tokens}")
  if not 0 < c.top_p <= 1:
    raise ValueError(f"{prefix}.top_p: must be in (0, 1], got {c.top_p}")
  if c.failed_policy not in ("exclude", "zero"):
    raise ValueError(f"{prefix}.failed_policy: {c.failed_policy!r} is not 'exclude' or 'zero'")
