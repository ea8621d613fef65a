"""Model config: a small frozen dataclass, independent of transformers objects."""
from __future__ import annotations

import dataclasses
from typing import Any

ARCHITECTURES = ("llama", "qwen2", "qwen3")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything the decoder needs. One class covers Llama, Qwen2 and Qwen3."""
  arch: str = "llama"            # "llama" | "qwen2" | "qwen3"
  vocab_size: int = 256
  d_model: int = 64
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int = 2            # grouped-query attention when < n_heads
  head_dim: int = 16             # independent of d_model (Qwen3)
  d_ff: int = 128
  rms_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: tuple[tuple[str, Any], ...] | None = None  # llama3: (("rope_type","llama3"),("factor",8.0),...)
  max_seq_len: int = 2048
  tie_embeddings: bool = True
  qkv_bias: bool = False         # Qwen2
  qk_norm: bool = False          # Qwen3
  bos_id: int | None = None
  eos_ids: tuple[int, ...] = ()
  pad_id: int = 0
  param_dtype: str = "float32"   # "float32" | "bfloat16": how params are stored
  compute_dtype: str = "float32" # "float32" | "bfloat16": activations and matmuls

  def __post_init__(self):
    if self.arch not in ARCHITECTURES:
      raise ValueError(f"ModelConfig.arch: unknown architecture {self.arch!r}; expected one of {ARCHITECTURES}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"ModelConfig: n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
    for f in ("param_dtype", "compute_dtype"):
      if getattr(self, f) not in ("float32", "bfloat16"):
        raise ValueError(f"ModelConfig.{f}: expected 'float32' or 'bfloat16', got {getattr(self, f)!r}")

  @property
  def rope_scaling_dict(self) -> dict[str, Any] | None:
    return dict(self.rope_scaling) if self.rope_scaling else None

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["rope_scaling"] = self.rope_scaling_dict
    d["eos_ids"] = list(self.eos_ids)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    d = dict(d)
    if d.get("rope_scaling") is not None:
      d["rope_scaling"] = tuple(sorted(d["rope_scaling"].items()))
    d["eos_ids"] = tuple(d.get("eos_ids", ()))
    return cls(**d)

  @property
  def num_params(self) -> int:
    attn = self.d_model * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
    mlp = 3 * self.d_model * self.d_ff
    emb = self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)
    return self.n_layers * (attn + mlp + 2 * self.d_model) + emb + self.d_model


def default_config():
  """The `model` section of a run's config (ml_collections, no JAX): which policy, and in which dtypes."""
  import ml_collections  # noqa: PLC0415  (keeps ModelConfig free of ml_collections for model-only users)
  c = ml_collections.ConfigDict()
  c.name = "smollm2-135m"       # short name, HF directory (safetensors), .gguf file, or 'tiny'
  c.param_dtype = "float32"     # storage of the (frozen) params: float32 | bfloat16
  c.compute_dtype = "float32"   # activations and matmuls: float32 | bfloat16
  c.tiny = ml_collections.ConfigDict(dict(  # name='tiny': a random model for tests and smoke runs
      vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=2048, seed=0))
  return c


def tiny_config(c, vocab_size: int | None = None, eos_ids: tuple[int, ...] = ()) -> ModelConfig:
  """The ModelConfig of a `config.model` section with name 'tiny' (the tokenizer's size, once trained, as vocab)."""
  t = c.tiny
  return ModelConfig(arch="llama", vocab_size=vocab_size or t.vocab_size, d_model=t.d_model, n_layers=t.n_layers,
                     n_heads=t.n_heads, n_kv_heads=t.n_kv_heads, head_dim=t.d_model // t.n_heads, d_ff=t.d_ff,
                     max_seq_len=t.max_seq_len, eos_ids=eos_ids, param_dtype=c.param_dtype,
                     compute_dtype=c.compute_dtype)


def validate_section(c, prefix: str = "config.model") -> None:
  """Checks of the `model` section that need no checkpoint; errors name the field."""
  if not c.name:
    raise ValueError(f"{prefix}.name: empty")
  for f in ("param_dtype", "compute_dtype"):
    if c[f] not in ("float32", "bfloat16"):
      raise ValueError(f"{prefix}.{f}: expected 'float32' or 'bfloat16', got {c[f]!r}")
  if c.name == "tiny":
    t = c.tiny
    if t.d_model % t.n_heads or t.n_heads % t.n_kv_heads:
      raise ValueError(f"{prefix}.tiny: d_model {t.d_model} must divide by n_heads {t.n_heads}, and n_heads by "
                       f"n_kv_heads {t.n_kv_heads}")
