"""LoRA adapters on the stacked decoder matrices, merged into the base inside the jitted loss.

Merging (W + alpha/r * a @ b) inside the differentiated function means only the adapters are arguments of the
gradient, while the frozen base can stay in bf16 and never gets a gradient or optimizer state.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

LORA_TARGETS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
LoraParams = dict[str, dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int = 16
  alpha: float = 32.0
  targets: tuple[str, ...] = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")

  def __post_init__(self):
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


def merge(base_params: dict[str, Any], lora_params: LoraParams, alpha: float, rank: int) -> dict[str, Any]:
  """Base params with W + (alpha / rank) a @ b on the adapted matrices, in float32."""
  scale = alpha / rank
  layers = dict(base_params["layers"])
  for name, ab in lora_params.items():
    delta = jnp.einsum("lir,lro->lio", ab["a"], ab["b"])
    layers[name] = layers[name].astype(jnp.float32) + scale * delta
  return {**base_params, "layers": layers}
