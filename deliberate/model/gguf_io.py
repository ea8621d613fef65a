"""GGUF checkpoints (llama.cpp's format) in, dequantised through the `gguf` package.

Tensor names come from gguf's own TensorNameMap applied to hf_names' HF names, so HF naming stays the single map.
llama.cpp's converter permutes the rows of Llama q/k projections for its interleaved rotary layout; undoing that
here lets one (HF half-split) RoPE serve both formats. Qwen2/Qwen3 GGUFs are not permuted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np

from deliberate.model.config import ModelConfig
from deliberate.model.hf_io import ParamAssembler
from deliberate.model.hf_names import hf_tensor_slots
from deliberate.model.transformer import Params, rope_inv_freq

_ARCHS = ("llama", "qwen2", "qwen3")
_REQUIRED = object()


def open_gguf(path: str | Path) -> gguf.GGUFReader:
  """A GGUFReader, with truncated or corrupt files turned into an error that names the file."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such GGUF file")
  try:
    reader = gguf.GGUFReader(path)
  except Exception as e:  # the reader fails deep inside numpy on a cut-short file
    raise ValueError(f"{path}: not a readable GGUF file (truncated or corrupt?): {e}") from e
  size = path.stat().st_size
  end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
  if end > size:
    raise ValueError(f"{path}: truncated GGUF file: its tensors need {end} bytes, the file has {size}")
  return reader


def gguf_meta(reader: gguf.GGUFReader, key: str, path: Any, default: Any = _REQUIRED) -> Any:
  field = reader.fields.get(key)
  if field is None:
    if default is _REQUIRED:
      raise ValueError(f"{path}: missing GGUF metadata field {key!r}")
    return default
  return field.contents()


def _f32(x: float) -> float:
  """GGUF stores floats as f32: 9.99999974e-06 reads back as the 1e-05 it was written from."""
  return float(str(np.float32(x)))


def _unpermute(w_OxI: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of convert_hf_to_gguf's LlamaModel.permute on q/k projection rows."""
  return w_OxI.reshape(n_head, w_OxI.shape[0] // n_head // 2, 2, *w_OxI.shape[1:]).swapaxes(1, 2).reshape(w_OxI.shape)


def _llama3_scaling(config: ModelConfig, factors: np.ndarray, reader: gguf.GGUFReader, path: Any) -> tuple:
  """llama.cpp stores llama3 rope scaling as per-frequency divisors (`rope_freqs`); recover the HF parameters,
  accepting them only if they reproduce the stored divisors."""
  orig = int(gguf_meta(reader, f"{config.arch}.rope.scaling.original_context_length", path, 8192))
  scaling = dict(rope_type="llama3", factor=float(np.round(factors.max(), 4)), low_freq_factor=1.0,
                 high_freq_factor=4.0, original_max_position_embeddings=orig)
  scaled = config.replace(rope_scaling=tuple(sorted(scaling.items())))
  if factors.shape != (config.head_dim // 2,) or not np.allclose(
      rope_inv_freq(config) / rope_inv_freq(scaled), factors, rtol=1e-4):
    raise ValueError(f"{path}: tensor 'rope_freqs.weight' is not llama3 rope scaling with {scaling}; unsupported")
  return scaled.rope_scaling


def config_from_gguf(reader: gguf.GGUFReader, path: Any) -> ModelConfig:
  """A ModelConfig from GGUF metadata; tied embeddings when there is no `output.weight`."""
  arch = gguf_meta(reader, "general.architecture", path)
  if arch not in _ARCHS:
    raise ValueError(f"{path}: unknown architecture in GGUF field 'general.architecture': {arch!r}; "
                     f"supported: {list(_ARCHS)}")
  meta = lambda key, default=_REQUIRED: gguf_meta(reader, f"{arch}.{key}", path, default)
  tensors = {t.name: t for t in reader.tensors}
  if "token_embd.weight" not in tensors:
    raise ValueError(f"{path}: missing tensor 'token_embd.weight'")
  d_model, n_heads = int(meta("embedding_length")), int(meta("attention.head_count"))
  head_dim = int(meta("attention.key_length", d_model // n_heads))
  if int(meta("rope.dimension_count", head_dim)) != head_dim:
    raise ValueError(f"{path}: field '{arch}.rope.dimension_count' != head_dim {head_dim}: partial rotary is "
                     "not supported")
  if meta("rope.scaling.type", "none") not in ("none", None):
    raise ValueError(f"{path}: field '{arch}.rope.scaling.type' is {meta('rope.scaling.type')!r}; unsupported")
  tok = lambda key: gguf_meta(reader, f"tokenizer.ggml.{key}", path, None)
  eos = tuple(dict.fromkeys(int(i) for i in (tok("eos_token_id"), tok("eot_token_id")) if i is not None))
  config = ModelConfig(
      arch=arch, vocab_size=int(tensors["token_embd.weight"].shape[-1]), d_model=d_model,
      n_layers=int(meta("block_count")), n_heads=n_heads, n_kv_heads=int(meta("attention.head_count_kv", n_heads)),
      head_dim=head_dim, d_ff=int(meta("feed_forward_length")),
      rms_eps=_f32(meta("attention.layer_norm_rms_epsilon")), rope_theta=_f32(meta("rope.freq_base", 10000.0)),
      max_seq_len=int(meta("context_length", 2048)), tie_embeddings="output.weight" not in tensors,
      qkv_bias=arch == "qwen2", qk_norm=arch == "qwen3",
      bos_id=None if tok("bos_token_id") is None else int(tok("bos_token_id")), eos_ids=eos,
      pad_id=int(tok("padding_token_id") or 0))
  if "rope_freqs.weight" in tensors:
    t = tensors["rope_freqs.weight"]
    factors = gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1)
    config = config.replace(rope_scaling=_llama3_scaling(config, factors, reader, path))
  return config


def load_gguf(path: str | Path, param_dtype: str = "float32",
              reader: gguf.GGUFReader | None = None) -> tuple[Params, ModelConfig]:
  """Dequantised params and config from a GGUF file (pass `reader` to reuse an already-open file)."""
  reader = reader or open_gguf(path)
  config = config_from_gguf(reader, path).replace(param_dtype=param_dtype)
  arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[config.arch]
  name_map = gguf.get_tensor_name_map(arch_enum, config.n_layers)
  hf_of = {name_map.get_name(hf, try_suffixes=(".weight", ".bias")): hf for hf in hf_tensor_slots(config)}
  asm = ParamAssembler(config)
  for t in reader.tensors:
    if t.name == "rope_freqs.weight":
      continue
    where = f"{path}: GGUF tensor {t.name!r}"
    if t.name not in hf_of:
      raise ValueError(f"{where}: unexpected tensor for a {config.arch} config (wrong architecture metadata?)")
    hf_name, shape = hf_of[t.name], tuple(int(d) for d in reversed(t.shape.tolist()))
    asm.check(hf_name, shape, where)
    w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32, copy=False)
    if config.arch == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
      w = _unpermute(w, config.n_heads if "q_proj" in hf_name else config.n_kv_heads)
    asm.put(hf_name, w)
  missing = [n for n in hf_of if hf_of[n] not in asm.filled]
  if missing:
    raise ValueError(f"{path}: missing GGUF tensor {missing[0]!r}" + (f" and {len(missing) - 1} more"
                                                                      if missing[1:] else ""))
  return asm.finish(str(path)), config
