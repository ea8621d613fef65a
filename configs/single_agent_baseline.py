"""The single-agent baseline (Dynamic Alignment): self-rewarding GRPO on open-ended questions.

  python launch/train.py --config configs/single_agent_baseline.py --workdir /data/runs/single \
      --config.model.name=/data/ckpt/Qwen3-14B

beta 0.04, batch 32 (4 questions x 8 candidates), T=1.0, top-p 1.0, 2,150 steps. The policy scores its own candidates
with the CA rubric through the embedded judge server's `model` backend (self-rewarding); point config.judge at an
HTTP endpoint instead to use an external judge.
"""
from deliberate.config import base_config


def get_config():
  c = base_config()
  c.mode = "single_agent"
  c.model.name = "/path/to/Qwen3-14B"
  c.model.param_dtype = "bfloat16"
  c.model.compute_dtype = "bfloat16"
  c.judge.embedded = True
  c.judge.embedded_backend = "model"     # the policy judges itself, in-process
  c.judge.temperature = 0.0
  c.judge.max_tokens = 256
  c.single_agent.group_size = 8
  c.single_agent.temperature = 1.0
  c.single_agent.top_p = 1.0
  c.data.prompts_per_step = 4            # 4 x 8 = batch 32
  c.rl.beta = 0.04
  c.num_steps = 2150
  c.optim.total_steps = 2150
  c.rl.step = "sharded"
  c.rl.mesh_fsdp = 8
  return c
