"""The one mapping between HF tensor names and deliberate's params layout (see transformer.py)."""
from __future__ import annotations

from typing import NamedTuple

from deliberate.model.config import ModelConfig

_LAYER_TENSORS = {  # our per-layer name -> (HF suffix, stored transposed in HF)
    "attn_norm": ("input_layernorm.weight", False),
    "wq": ("self_attn.q_proj.weight", True),
    "wk": ("self_attn.k_proj.weight", True),
    "wv": ("self_attn.v_proj.weight", True),
    "wo": ("self_attn.o_proj.weight", True),
    "bq": ("self_attn.q_proj.bias", False),
    "bk": ("self_attn.k_proj.bias", False),
    "bv": ("self_attn.v_proj.bias", False),
    "q_norm": ("self_attn.q_norm.weight", False),
    "k_norm": ("self_attn.k_norm.weight", False),
    "mlp_norm": ("post_attention_layernorm.weight", False),
    "w_gate": ("mlp.gate_proj.weight", True),
    "w_up": ("mlp.up_proj.weight", True),
    "w_down": ("mlp.down_proj.weight", True),
}


class Slot(NamedTuple):
  """Where one HF tensor goes: params[key] (or params['layers'][key][layer]), transposed if `transpose`."""
  key: str
  layer: int | None
  transpose: bool


def hf_tensor_slots(config: ModelConfig) -> dict[str, Slot]:
  """Every HF tensor name the config needs, mapped to its slot in our params."""
  from deliberate.model.transformer import layer_shapes  # local: avoid a cycle at import time
  slots = {"model.embed_tokens.weight": Slot("embed", None, False), "model.norm.weight": Slot("final_norm", None, False)}
  if not config.tie_embeddings:
    slots["lm_head.weight"] = Slot("lm_head", None, True)
  for name in layer_shapes(config):
    suffix, transpose = _LAYER_TENSORS[name]
    for i in range(config.n_layers):
      slots[f"model.layers.{i}.{suffix}"] = Slot(name, i, transpose)
  return slots
