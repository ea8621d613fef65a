"""The loop learns: a tiny random model, trained by the real trainer on a reward it can reach (the fraction of
target tokens in its answers, tasks/target_token.py), raises its mean reward by a stated margin in fixed steps.

Checked by hand (`python bench/learning_faults.py`) to fail when the advantage's sign is flipped or the learning
rate is 0, under both sources of the ratio's denominator, and when the loss mask is shifted by one under
rl.old_logprobs='sampler': there the sampled log-probs no longer line up with the masked positions. Under the
default 'recompute' the ratio is 1 wherever the mask lands, and a mask shifted left by one still trains on all but
one sampled token of each row, so this reward still rises (the batch checks refuse a shift to the right).
"""
import pytest
import json
import os

import numpy as np

from configs import tiny
from deliberate import trainer
from deliberate.tasks.config import target_token_config

STEPS, SEED, MARGIN = 8, 0, 0.5  # the reward starts near 1/8 = 0.125 and can reach 1


def learning_config(seed: int = SEED, steps: int = STEPS, lr: float = 3e-2, old_logprobs: str = "sampler"):
  c = tiny.get_config()
  c.rl.old_logprobs = old_logprobs
  c.mode = "target_token"
  c.target_token = target_token_config()
  c.seed = seed
  c.num_steps = c.optim.total_steps = steps
  c.optim.learning_rate = lr
  c.optim.schedule = "constant"
  c.data.prompts_per_step = 2
  c.checkpoint_every = 10_000           # only the last step is saved
  c.tensorboard = False
  return c


def rewards(config, workdir) -> np.ndarray:
  t = trainer.Trainer(config, str(workdir))
  t.run()
  with open(os.path.join(str(workdir), "metrics.jsonl")) as f:
    return np.array([json.loads(line)["reward/group_mean"] for line in f])


@pytest.mark.parametrize("old_logprobs", ["sampler", "recompute"])
def test_mean_reward_rises(tmp_path, old_logprobs):
  """One seed (a run is deterministic on CPU): more seeds would each pay the step's compile (~1 min on 2 cores)."""
  r = rewards(learning_config(old_logprobs=old_logprobs), tmp_path)
  gain = r[-3:].mean() - r[:3].mean()
  assert gain > MARGIN, f"mean reward, last 3 steps minus first 3: {gain:.3f}, want > {MARGIN} (rewards {r})"
