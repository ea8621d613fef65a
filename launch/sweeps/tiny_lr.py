"""An example sweep: learning rate x loss normalisation on the tiny config, two seeds zipped with the batch size.

  python launch/sweep.py --sweep launch/sweeps/tiny_lr.py --dry_run
"""
import ml_collections


def get_config():
  s = ml_collections.ConfigDict()
  s.name = "tiny_lr"
  s.config = "configs/tiny.py"
  s.fixed = {"num_steps": 3, "tensorboard": False}
  s.product = {"optim": {"learning_rate": [3e-4, 1e-3]}, "rl": {"norm_mode": ["token_sum", "seq_mean_token_mean"]}}
  s.zip = {"seed": [0, 1], "data": {"prompts_per_step": [2, 4]}}   # seed 0 with 2 prompts, seed 1 with 4
  return s
