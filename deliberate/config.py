"""The base run config and its validation. Experiment files under configs/ start from it and change what they need.

Each section's defaults live with the code they configure (model/config.py, judge/config.py, negotiation/config.py,
tasks/config.py, rl/config.py), all importable without JAX, and `validate` checks every field before anything is
loaded, naming the field at fault.
"""
from __future__ import annotations

import ml_collections

from deliberate.judge.config import default_judge_config, validate_judge_config
from deliberate.model.config import default_config as model_config, validate_section as validate_model
from deliberate.negotiation.config import default_config as negotiation_config, validate as validate_negotiation
from deliberate.rl.config import default_config as rl_config, optim_config, validate as validate_rl, validate_optim
from deliberate.tasks.config import MODES, single_agent_config, validate_single_agent


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "negotiation"              # 'negotiation' (the paper) | 'single_agent' (self-rewarding baseline)
  c.seed = 0                          # all randomness (data order, sampling, LoRA init) derives from it
  c.num_steps = 1900                  # GRPO steps
  c.sampling_sharded = True           # split rollouts over every local device ('data' mesh axis)
  c.sampling_share_prefixes = True    # prefill a prompt prefix shared by several prompts once (a group's system
                                      # message and dilemma in every later turn), when that costs fewer padded
                                      # prefill tokens; a row's cache then holds the prefix's bucket and its own
                                      # part's, which the memory check counts. On the quickstart: turns 6-9 s
                                      # instead of 9-16 s, the same tokens (bench/loop.py)
  c.sampling_compile_steps = 2        # the sampler compiles a program for each new call shape during this many
                                      # steps (after its task's largest calls, compiled before step 1); later calls
                                      # run padded in the cheapest program that holds them, so a long run compiles
                                      # nothing after them. 0: never settle (every new shape compiles)

  c.model = model_config()            # the policy: name, dtypes, tiny sizes
  c.judge = default_judge_config()
  c.negotiation = negotiation_config()
  c.single_agent = single_agent_config()

  c.data = ml_collections.ConfigDict()
  c.data.data_dir = ""                # TFDS data dir ('' = <workdir>/tfds, prepared offline on first use)
  c.data.prompts_per_step = 2         # P: (dilemma, persona pair) prompts per step; batch = P x G dialogues

  c.rl = rl_config()                  # GRPO objective, step kind and mesh, LoRA
  c.optim = optim_config()            # AdamW, lr 5e-6, constant after warmup, global-norm clip 1.0

  c.offpolicy_overlap = False         # sample the next step's rollout during this step's update (one step
                                      # off-policy; the clipped ratio uses the sampling policy's log-probs:
                                      # needs rl.old_logprobs = 'sampler')
  c.eval_every = 0                    # steps between evaluation-set negotiations (Figure 2); 0 = never
  c.eval_tasks = 16                   # the first K of the 100 fixed conflict-resolution eval tasks
  c.checkpoint_every = 50             # orbax, asynchronous
  c.keep_checkpoints = 3
  c.checkpoint_fallback = True        # a damaged newest checkpoint: resume from the newest intact one (False: refuse)
  c.memory_check = True               # before loading weights, compile the sampler and train step from abstract
                                      # shapes (deliberate/memory.py) and refuse a run that cannot fit, naming the
                                      # field to change; only where a limit is known (GPU/TPU, or the next field)
  c.memory_limit_gib = 0.0            # per device; 0 = the device's own limit (CPU reports none: no check)
  c.compilation_cache_dir = ""        # persistent XLA compilation cache ('' = none): a later run of the same shapes
                                      # (the next seed of a sweep, a restart) loads its programs instead of
                                      # compiling them
  c.records_max_mb = 64.0             # rotate dialogue JSONL files past this size
  c.tensorboard = True
  c.wandb_project = ""                # '' = no wandb
  return c


def policy_config(name: str = "smollm2-135m", workdir: str = "") -> ml_collections.ConfigDict:
  """A policy to evaluate or serve: a base model, or a trained run (its base model and LoRA alpha are read from the
  run's config.json; leave `model.name` '' to take the run's)."""
  c = ml_collections.ConfigDict()
  c.model = model_config()            # as a run's config.model: the base model of the run, dtypes, tiny sizes
  c.model.name = name
  c.workdir = workdir                 # a trained run's workdir ('' = evaluate the base model itself)
  c.step = 0                          # checkpoint step to restore (0 = the newest)
  c.lora_alpha = 0.0                  # LoRA alpha override (0 = read rl.lora_alpha from the run's config.json)
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  """Every check that needs no model, run before anything is loaded. Errors name the config field at fault."""
  if c.mode not in MODES:
    raise ValueError(f"config.mode: {c.mode!r} is not one of {tuple(MODES)}")
  if c.num_steps < 1:
    raise ValueError(f"config.num_steps: must be >= 1, got {c.num_steps}")
  if c.data.prompts_per_step < 1:
    raise ValueError(f"config.data.prompts_per_step: must be >= 1, got {c.data.prompts_per_step}")
  for f in ("eval_every", "eval_tasks", "checkpoint_every", "keep_checkpoints", "memory_limit_gib"):
    if c[f] < 0:
      raise ValueError(f"config.{f}: must be >= 0, got {c[f]}")
  validate_model(c.model)
  validate_negotiation(c.negotiation)
  validate_single_agent(c.single_agent)
  validate_rl(c.rl)
  validate_optim(c.optim)
  if c.offpolicy_overlap and c.rl.old_logprobs != "sampler":
    raise ValueError("config.rl.old_logprobs: config.offpolicy_overlap trains on a rollout of the previous policy, "
                     f"so the ratio needs the sampler's log-probs: set it to 'sampler' (got {c.rl.old_logprobs!r})")
  try:
    validate_judge_config(c.judge)
  except ValueError as e:
    raise ValueError(f"config.judge: {e}") from None
  section = MODES[c.mode][1]
  if c[section].group_size < 2:
    raise ValueError(f"config.{section}.group_size: GRPO needs at least 2 samples per group, got "
                     f"{c[section].group_size}")
