"""A random tiny model and the deterministic local judge: for tests and smoke runs of the whole loop.

  python launch/train.py --config configs/tiny.py --workdir /tmp/deliberate-tiny
"""
from deliberate.config import base_config


def get_config():
  c = base_config()
  c.model.name = "tiny"
  c.judge.embedded = True
  c.judge.embedded_backend = "lexicon"   # deterministic local judge
  c.judge.api_key_env = ""
  c.negotiation.group_size = 2
  c.negotiation.max_turns = 3
  c.negotiation.max_turn_tokens = 8
  c.negotiation.max_completion_tokens = 8
  c.data.prompts_per_step = 2
  c.num_steps = 3
  c.optim.learning_rate = 1e-3
  c.optim.total_steps = 3
  c.checkpoint_every = 1
  c.rl.lora_rank = 0                     # full fine-tuning
  c.tensorboard = True
  return c
