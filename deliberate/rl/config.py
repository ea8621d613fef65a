"""The rl and optim sections of a run's config: the GRPO objective, the step kind, LoRA, AdamW. Without JAX."""
from __future__ import annotations

import ml_collections

STEP_KINDS = ("pmap", "sharded")   # the runners of rl/runner.py
NORM_MODES = ("token_sum", "seq_mean_token_mean", "constant")
OLD_LOGPROBS = ("recompute", "sampler")  # the importance ratio's denominator (rl/loss.py)
SCHEDULES = ("cosine", "constant")
LORA_TARGETS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")  # the layer matrices an adapter may wrap


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.step = "pmap"                  # 'pmap' (params replicated) | 'sharded' (jit over a (data, fsdp) mesh)
  c.mesh_data = 0                  # sharded: data axis size (0 = devices / mesh_fsdp)
  c.mesh_fsdp = 1                  # sharded: fsdp axis size (params and optimizer state split along it; 0 = the
                                   # devices mesh_data leaves, so a config fits 8 chips and one GPU alike)
  c.clip_eps_low = 0.2             # not disclosed: the usual PPO/GRPO value
  c.clip_eps_high = 0.2
  c.old_logprobs = "recompute"     # the ratio's denominator. 'recompute': the step's own forward, stop-gradient:
                                   # with one update per rollout (ours) the ratio is exactly 1 and the gradient is
                                   # the policy gradient, whatever the sampler's numerics (bf16 decode against a
                                   # cache clips ~0.5% of tokens at step 0: bench/ratio.py). 'sampler': the
                                   # sampler's log-probs, required off policy (config.offpolicy_overlap)
  c.beta = 0.0                     # KL to the reference (k3); the paper uses 0 and loads no reference
  c.norm_mode = "token_sum"        # 'token_sum' (DAPO, the paper) | 'seq_mean_token_mean' (GRPO) | 'constant'
  c.norm_constant = 0.0            # 'constant' mode (Dr.GRPO) divisor
  c.scale_by_std = True            # False: Dr.GRPO advantages (no division by the group std)
  c.micro_batches = 1              # gradient accumulation
  c.remat = False                  # rematerialise decoder layers in the backward pass
  c.token_chunk = 0                # output-layer chunk size (0 = all target positions at once)
  c.lora_rank = 16                 # 0 = full fine-tuning; the paper trains (Q)LoRA adapters
  c.lora_alpha = 32.0
  c.lora_targets = "wq,wk,wv,wo,w_gate,w_up,w_down"
  c.skip_zero_advantage = True     # beta 0: rows of advantage 0 are not computed (the normaliser keeps their
                                   # tokens, so the update is unchanged); a step with none makes no AdamW update
                                   # (moments neither decayed nor applied, count not advanced). False: step anyway
  c.pack_length = 0                # > 0: rows are packed into sequences of this many tokens (segment ids keep
                                   # attention within a row): fixed train shapes, no bucket padding. 0: each row
                                   # padded to the batch's length bucket
  c.pack_targets = 0               # packed: most target tokens a sequence holds (0: pack_length // 4). Fixed, it is
                                   # the step's output-layer bound, so packed steps never recompile
  c.share_prefix = True            # packed: rows sharing a prompt prefix (one agent's turns in a group: its
                                   # system message and the dilemma) attend to one copy of it, computed once
  c.lora_dtype = "float32"         # the adapter path's dtype; bfloat16 loses small updates, as a merge into bf16 does
  c.sampling_row_axes = "data"     # sharded: mesh axes the sampler splits rollout rows over (the others hold
                                   # weight and KV-cache shards); the sampler uses the step's params as sharded
  return c


def optim_config() -> ml_collections.ConfigDict:
  """AdamW, lr 5e-6, constant after warmup, global-norm clip 1.0."""
  return ml_collections.ConfigDict({
      "learning_rate": 5e-6, "warmup_steps": 0, "total_steps": 1900, "schedule": "constant",
      "end_lr_ratio": 0.0,  # cosine: final lr as a fraction of the peak
      "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "max_grad_norm": 1.0,
  })


def validate(c: ml_collections.ConfigDict, prefix: str = "config.rl") -> None:
  if c.step not in STEP_KINDS:
    raise ValueError(f"{prefix}.step: {c.step!r} is not 'pmap' or 'sharded'")
  if c.norm_mode not in NORM_MODES:
    raise ValueError(f"{prefix}.norm_mode: {c.norm_mode!r} is not one of {NORM_MODES}")
  if c.norm_mode == "constant" and c.norm_constant <= 0:
    raise ValueError(f"{prefix}.norm_constant: must be > 0 in 'constant' mode")
  for f in ("clip_eps_low", "clip_eps_high", "beta", "lora_rank", "token_chunk", "mesh_data", "mesh_fsdp",
            "pack_length", "pack_targets"):
    if c.get(f, 0) < 0:
      raise ValueError(f"{prefix}.{f}: must be >= 0, got {c[f]}")
  for f in ("micro_batches",):
    if c[f] < 1:
      raise ValueError(f"{prefix}.{f}: must be >= 1, got {c[f]}")
  if c.old_logprobs not in OLD_LOGPROBS:
    raise ValueError(f"{prefix}.old_logprobs: {c.old_logprobs!r} is not one of {OLD_LOGPROBS}")
  if c.lora_dtype not in ("float32", "bfloat16"):
    raise ValueError(f"{prefix}.lora_dtype: expected 'float32' or 'bfloat16', got {c.lora_dtype!r}")
  bad_axes = [a for a in c.sampling_row_axes.split(",") if a not in ("data", "fsdp")]
  if bad_axes:
    raise ValueError(f"{prefix}.sampling_row_axes: {bad_axes} are not axes of the ('data', 'fsdp') mesh")
  if c.lora_rank > 0:
    bad = [t for t in c.lora_targets.split(",") if t not in LORA_TARGETS]
    if bad:
      raise ValueError(f"{prefix}.lora_targets: {bad} are not among {LORA_TARGETS}")


def validate_optim(c: ml_collections.ConfigDict, prefix: str = "config.optim") -> None:
  if c.schedule not in SCHEDULES:
    raise ValueError(f"{prefix}.schedule: {c.schedule!r} is not one of {SCHEDULES}")
  if c.learning_rate <= 0:
    raise ValueError(f"{prefix}.learning_rate: must be > 0, got {c.learning_rate}")
  if c.warmup_steps < 0:
    raise ValueError(f"{prefix}.warmup_steps: must be >= 0, got {c.warmup_steps}")
  if c.schedule == "cosine" and c.total_steps <= c.warmup_steps:
    raise ValueError(f"{prefix}.total_steps: ({c.total_steps}) must exceed warmup_steps ({c.warmup_steps})")
