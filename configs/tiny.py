"""A random tiny model and the deterministic local judge: for tests and smoke runs of the whole loop.

  python launch/train.py --config configs/tiny.py --workdir /tmp/deliberate-tiny
  python launch/train.py --config configs/tiny.py --workdir /tmp/deliberate-tiny-learn --config.mode=target_token \
      --config.optim.learning_rate=3e-2 --config.num_steps=8

Negotiation: completions of 48 tokens can reach the lexicon's 20-word minimum for a score, but a random model
almost never writes an acceptance that answers a proposal (the two-party agreement rule), so its rewards are
nearly always 0 and a broken update goes unnoticed there. `--config.mode=target_token` runs the same loop on a
reward the random model can reach (tasks/target_token.py; the learning test): its reward/group_mean climbs from
about 0.12 to about 0.9 within 8 steps at learning rate 3e-2 when the update is right.
"""
from deliberate.config import base_config
from deliberate.tasks.config import target_token_config


def get_config():
  c = base_config()
  c.model.name = "tiny"
  c.judge.embedded = True
  c.judge.embedded_backend = "lexicon"   # deterministic local judge
  c.judge.api_key_env = ""
  c.negotiation.group_size = 2
  c.negotiation.max_turns = 3
  c.negotiation.max_turn_tokens = 8
  c.negotiation.max_completion_tokens = 48  # the lexicon scores completions of >= 20 words only
  c.target_token = target_token_config()
  c.data.prompts_per_step = 2
  c.num_steps = 3
  c.optim.learning_rate = 1e-3
  c.optim.total_steps = 3
  c.checkpoint_every = 1
  c.rl.lora_rank = 0                     # full fine-tuning
  c.tensorboard = True
  return c
