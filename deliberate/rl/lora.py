"""LoRA adapters on the stacked decoder matrices, run on their own path: y = x W + (alpha / r) (x a) b.

Only the adapters are arguments of the gradient; the frozen base stays in its storage dtype (bf16 for big models)
and never gets a gradient, an optimizer state or a merged copy. The adapter path computes in `LoraConfig.dtype`
(float32 by default): a per-step update of about 1e-6 is far under half an ulp of a bf16 weight, so W + delta merged
into bf16 would round back to W. Merging is for export only (`merge`, in float32).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from deliberate.model.transformer import Adapters

from deliberate.rl.config import LORA_TARGETS  # noqa: F401  (one definition, importable without JAX)
LoraParams = dict[str, dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int = 16
  alpha: float = 32.0
  targets: tuple[str, ...] = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
  dtype: str = "float32"  # the adapter path's compute dtype; bfloat16 loses small updates like a merge does

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def __post_init__(self):
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"LoraConfig.dtype: expected 'float32' or 'bfloat16', got {self.dtype!r}")
    if self.rank < 1:
      raise ValueError(f"LoraConfig.rank: must be >= 1, got {self.rank}")
    bad = [t for t in self.targets if t not in LORA_TARGETS]
    if bad or not self.targets:
      raise ValueError(f"LoraConfig.targets: {bad or 'empty'}; choose from {LORA_TARGETS}")


def init_lora(base_params: dict[str, Any], cfg: LoraConfig, key: jax.Array) -> LoraParams:
  """a ~ N(0, 1/in), b = 0: the adapted model starts exactly at the base model."""
  layers = base_params["layers"]
  out = {}
  for name, k in zip(cfg.targets, jax.random.split(key, len(cfg.targets))):
    n_layers, d_in, d_out = layers[name].shape
    a = jax.random.normal(k, (n_layers, d_in, cfg.rank), jnp.float32) / math.sqrt(d_in)
    out[name] = {"a": a, "b": jnp.zeros((n_layers, cfg.rank, d_out), jnp.float32)}
  return out


def adapters(lora_params: LoraParams, cfg: LoraConfig) -> Adapters:
  """The trainable adapter dict as the forward's side path (scale and dtype from the config)."""
  return Adapters(lora_params, cfg.scale, cfg.dtype)


def merge(base_params: dict[str, Any], lora_params: LoraParams, alpha: float, rank: int) -> dict[str, Any]:
  """Base params with W + (alpha / rank) a @ b on the adapted matrices, in float32: for export (HF) only. Cast back
  to a bf16 storage dtype, a merge loses every delta under half an ulp of W; the forward takes `Adapters` instead."""
  scale = alpha / rank
  layers = dict(base_params["layers"])
  for name, ab in lora_params.items():
    delta = jnp.einsum("lir,lro->lio", ab["a"], ab["b"])
    layers[name] = layers[name].astype(jnp.float32) + scale * delta
  return {**base_params, "layers": layers}
