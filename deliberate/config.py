"""The base run config. Experiment files under configs/ start from it and change what they need."""
from __future__ import annotations

import ml_collections

from deliberate.judge.config import default_judge_config
from deliberate.negotiation.episode import default_config as negotiation_config
from deliberate.rl.optim import default_config as optim_config


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "negotiation"              # 'negotiation' (the paper) | 'single_agent' (self-rewarding baseline)
  c.seed = 0                          # all randomness (data order, sampling, LoRA init) derives from it
  c.num_steps = 1900                  # GRPO steps
  c.sampling_sharded = True           # split rollouts over every local device ('data' mesh axis)

  c.model = ml_collections.ConfigDict()
  c.model.name = "smollm2-135m"       # short name, HF directory (safetensors) or .gguf file
  c.model.param_dtype = "float32"     # storage of the (frozen) params: float32 | bfloat16
  c.model.compute_dtype = "float32"   # activations and matmuls: float32 | bfloat16
  c.model.tiny = ml_collections.ConfigDict(dict(  # name='tiny': a random model for tests and smoke runs
      vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=2048, seed=0))

  c.judge = default_judge_config()
  c.negotiation = negotiation_config()

  c.single_agent = ml_collections.ConfigDict()
  c.single_agent.group_size = 8       # candidates per open-ended question
  c.single_agent.temperature = 1.0    # the predecessor paper samples at T=1, top-p 1
  c.single_agent.top_p = 1.0
  c.single_agent.max_tokens = 256     # not disclosed: ours
  c.single_agent.failed_policy = "exclude"  # a candidate the judge could not score: 'exclude' | 'zero'

  c.data = ml_collections.ConfigDict()
  c.data.data_dir = ""                # TFDS data dir ('' = <workdir>/tfds, prepared offline on first use)
  c.data.prompts_per_step = 2         # P: (dilemma, persona pair) prompts per step; batch = P x G dialogues

  c.rl = ml_collections.ConfigDict()
  c.rl.step = "pmap"                  # 'pmap' (params replicated) | 'sharded' (jit over a (data, fsdp) mesh)
  c.rl.mesh_data = 0                  # sharded: data axis size (0 = devices / mesh_fsdp)
  c.rl.mesh_fsdp = 1                  # sharded: fsdp axis size (params and optimizer state split along it)
  c.rl.clip_eps_low = 0.2             # not disclosed: the usual PPO/GRPO value
  c.rl.clip_eps_high = 0.2
  c.rl.beta = 0.0                     # KL to the reference (k3); the paper uses 0 and loads no reference
  c.rl.norm_mode = "token_sum"        # 'token_sum' (DAPO, the paper) | 'seq_mean_token_mean' (GRPO) | 'constant'
  c.rl.norm_constant = 0.0            # 'constant' mode (Dr.GRPO) divisor
  c.rl.scale_by_std = True            # False: Dr.GRPO advantages (no division by the group std)
  c.rl.micro_batches = 1              # gradient accumulation
  c.rl.remat = False                  # rematerialise decoder layers in the backward pass
  c.rl.token_chunk = 0                # output-layer chunk size (0 = all target positions at once)
  c.rl.lora_rank = 16                 # 0 = full fine-tuning; the paper trains (Q)LoRA adapters
  c.rl.lora_alpha = 32.0
  c.rl.lora_targets = "wq,wk,wv,wo,w_gate,w_up,w_down"

  c.optim = optim_config()            # AdamW, lr 5e-6, constant after warmup, global-norm clip 1.0

  c.eval_every = 0                    # steps between evaluation-set negotiations (Figure 2); 0 = never
  c.eval_tasks = 16                   # the first K of the 100 fixed conflict-resolution eval tasks
  c.checkpoint_every = 50             # orbax, asynchronous
  c.keep_checkpoints = 3
  c.records_max_mb = 64.0             # rotate dialogue JSONL files past this size
  c.tensorboard = True
  c.wandb_project = ""                # '' = no wandb
  return c
