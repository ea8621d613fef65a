"""Policies to evaluate: a base model (short name, HF directory or GGUF), or a trained run's checkpoint on top of it.

A run's checkpoint holds only the trainable params (trainer.Trainer saves its host state): the full params after
full fine-tuning, or the LoRA adapters alone. Adapters are recognised by their structure and merged into the base
with W + (alpha / rank) a @ b; the rank is read from the adapters, but alpha is not stored, so the policy config must
repeat the run's `config.rl.lora_alpha`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from deliberate import checkpointing, trainer
from deliberate.config import base_config
from deliberate.model.config import ModelConfig
from deliberate.rl import lora as lora_lib


def policy_config(name: str = "smollm2-135m", workdir: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = base_config().model        # as a run's config.model: the base model of the run, dtypes, tiny sizes
  c.model.name = name
  c.workdir = workdir                  # a trained run's workdir ('' = evaluate the base model itself)
  c.step = 0                           # checkpoint step to restore (0 = the newest)
  c.lora_alpha = 32.0                  # the run's config.rl.lora_alpha (used only when the checkpoint holds LoRA)
  return c


@dataclasses.dataclass
class Policy:
  params: Any
  config: ModelConfig
  tokenizer: Any
  info: dict[str, Any]                 # where the params came from, for the summary


def _is_lora(tree: Any) -> bool:
  return (isinstance(tree, dict) and bool(tree) and set(tree) <= set(lora_lib.LORA_TARGETS)
          and all(isinstance(v, dict) and set(v) == {"a", "b"} for v in tree.values()))


def restore_params(run_workdir: str, base_params: Any, *, step: int = 0,
                   lora_alpha: float = 32.0) -> tuple[Any, dict[str, Any]]:
  """(params to sample with, info) from `<run_workdir>/checkpoints`, restored onto one device."""
  directory = os.path.join(run_workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"policy workdir {run_workdir}: no checkpoints/ directory")
  ckpt = checkpointing.Checkpointer(directory)
  try:
    step = step or ckpt.latest_step
    if step is None or step not in ckpt.manager.all_steps():
      raise FileNotFoundError(f"policy workdir {run_workdir}: no checkpoint for step {step or 'latest'} "
                              f"(have {list(ckpt.manager.all_steps())})")
    meta = ckpt.manager.item_metadata(step)["params"]
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            getattr(meta, "tree", meta))
    trainable = ckpt.manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract)))["params"]
  finally:
    ckpt.close()
  info = {"workdir": os.path.abspath(run_workdir), "step": int(step)}
  if _is_lora(trainable):
    ranks = {v["a"].shape[-1] for v in trainable.values()}
    if len(ranks) != 1:
      raise ValueError(f"policy workdir {run_workdir}: LoRA adapters of several ranks {sorted(ranks)}")
    for name, ab in trainable.items():
      if ab["a"].shape[:2] != base_params["layers"][name].shape[:2]:
        raise ValueError(f"policy workdir {run_workdir}: adapter {name} {ab['a'].shape} does not fit the base "
                         f"model's {base_params['layers'][name].shape} (is policy.model the run's base model?)")
    rank = ranks.pop()
    info.update(kind="lora", rank=int(rank), alpha=float(lora_alpha))
    merged = lora_lib.merge(base_params, trainable, lora_alpha, rank)  # float32 sums, back to the base's dtypes
    return jax.tree.map(lambda m, b: m.astype(b.dtype), merged, base_params), info
  want = jax.tree.map(lambda x: (x.shape, x.dtype), base_params)
  got = jax.tree.map(lambda x: (x.shape, x.dtype), trainable)
  if jax.tree.structure(want) != jax.tree.structure(got) or jax.tree.leaves(want) != jax.tree.leaves(got):
    raise ValueError(f"policy workdir {run_workdir}: the checkpoint's params are neither LoRA adapters nor the "
                     "base model's params in shape and dtype (is policy.model the run's base model?)")
  info["kind"] = "full"
  return trainable, info


def load_policy(spec: ml_collections.ConfigDict, scratch_dir: str) -> Policy:
  """The base model of `spec.model`, with `spec.workdir`'s checkpoint applied when one is given.

  scratch_dir receives what loading writes (the tiny model's tokenizer), so a run's workdir is never written to.
  """
  params, cfg, tok = trainer.load_model(spec.model, scratch_dir)
  info: dict[str, Any] = {"model": spec.model.name, "kind": "base"}
  if spec.workdir:
    params, restored = restore_params(spec.workdir, params, step=spec.step, lora_alpha=spec.lora_alpha)
    info.update(restored)
  return Policy(params, cfg, tok, info)
