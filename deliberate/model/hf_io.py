"""HF checkpoint directories (config.json + safetensors) in and out, without torch.

Safetensors are parsed here rather than through `safe_open`: safe_open memory-maps a whole shard and every page it
touches stays in the process's RSS while the shard is open, so a 2 GB import peaked near two copies. Instead each
tensor is read with plain file reads, in row blocks of at most `_BLOCK_BYTES`, and written in place (donated jit
update) into preallocated stacked jax leaves: peak host memory is one copy of the params plus a few blocks.
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from deliberate.model.config import ModelConfig
from deliberate.model.hf_names import hf_tensor_slots
from deliberate.model.transformer import Adapters, Params, param_shapes

ARCH_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
_DEFAULTS = {  # transformers 5.24's config defaults where a config.json may omit a field
    "llama": {"max_position_embeddings": 2048, "head_dim": None},
    "qwen2": {"max_position_embeddings": 32768, "head_dim": None},
    "qwen3": {"max_position_embeddings": 32768, "head_dim": 128},
}
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
_ST_DTYPES = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16),
              "F64": np.dtype(np.float64)}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
_BLOCK_BYTES = 16 * 2**20
_REQUIRED = object()


def _field(cfg: dict[str, Any], name: str, path: Any, kind: type, default: Any = _REQUIRED) -> Any:
  if cfg.get(name) is None:
    if default is _REQUIRED:
      raise ValueError(f"{path}: missing field {name!r}")
    return default
  value = cfg[name]
  if kind is float and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
    raise ValueError(f"{path}: field {name!r} should be {kind.__name__}, got {value!r}")
  return value


def _rope_from_hf(cfg: dict[str, Any], path: Any) -> tuple[float, tuple | None]:
  """rope theta and llama3 scaling, from transformers-5 `rope_parameters` or legacy `rope_theta` + `rope_scaling`."""
  field = "rope_parameters" if isinstance(cfg.get("rope_parameters"), dict) else "rope_scaling"
  params = dict(cfg.get(field) or {})
  theta = params.pop("rope_theta", None)
  theta = float(theta) if theta is not None else _field(cfg, "rope_theta", path, float, 10000.0)
  kind = params.get("rope_type", params.get("type", "default"))
  if kind == "default":
    return theta, None
  if kind != "llama3":
    raise ValueError(f"{path}: field {field!r}: rope_type {kind!r} is not supported (supported: default, llama3)")
  missing = [k for k in _LLAMA3_KEYS if k not in params]
  if missing:
    raise ValueError(f"{path}: field {field!r}: llama3 rope scaling lacks {missing}")
  scaling = {k: float(params[k]) for k in _LLAMA3_KEYS}
  scaling["original_max_position_embeddings"] = int(params["original_max_position_embeddings"])
  return theta, tuple(sorted({**scaling, "rope_type": "llama3"}.items()))


def _ids(value: Any, path: Any, name: str) -> tuple[int, ...]:
  if value is None:
    return ()
  ids = [value] if isinstance(value, int) else value
  if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
    raise ValueError(f"{path}: field {name!r} should be an int or a list of ints, got {value!r}")
  return tuple(ids)


def config_from_hf(cfg: dict[str, Any], path: Any) -> ModelConfig:
  """A ModelConfig from a parsed config.json; `path` only names the file in errors."""
  archs = cfg.get("architectures")
  by_class = {v: k for k, v in ARCH_CLASSES.items()}
  if archs:
    if not isinstance(archs, list) or archs[0] not in by_class:
      raise ValueError(f"{path}: unknown architecture in field 'architectures': {archs!r}; "
                       f"supported: {sorted(by_class)}")
    arch = by_class[archs[0]]
  elif cfg.get("model_type") in ARCH_CLASSES:
    arch = cfg["model_type"]
  else:
    raise ValueError(f"{path}: unknown architecture: field 'architectures' is missing and field 'model_type' is "
                     f"{cfg.get('model_type')!r}; supported: {sorted(ARCH_CLASSES)}")
  if _field(cfg, "hidden_act", path, str, "silu") != "silu":
    raise ValueError(f"{path}: field 'hidden_act' is {cfg['hidden_act']!r}; only 'silu' is supported")
  for flag in ("mlp_bias", "use_sliding_window") + (("attention_bias",) if arch != "qwen2" else ()):
    if _field(cfg, flag, path, bool, False):
      raise ValueError(f"{path}: field {flag!r} is true, which this decoder does not support for {arch}")
  d_model = _field(cfg, "hidden_size", path, int)
  n_heads = _field(cfg, "num_attention_heads", path, int)
  head_dim = _field(cfg, "head_dim", path, int, _DEFAULTS[arch]["head_dim"]) or d_model // n_heads
  theta, scaling = _rope_from_hf(cfg, path)
  pad = cfg.get("pad_token_id")
  return ModelConfig(
      arch=arch, vocab_size=_field(cfg, "vocab_size", path, int), d_model=d_model,
      n_layers=_field(cfg, "num_hidden_layers", path, int), n_heads=n_heads,
      n_kv_heads=_field(cfg, "num_key_value_heads", path, int, n_heads), head_dim=head_dim,
      d_ff=_field(cfg, "intermediate_size", path, int), rms_eps=_field(cfg, "rms_norm_eps", path, float, 1e-6),
      rope_theta=theta, rope_scaling=scaling,
      max_seq_len=_field(cfg, "max_position_embeddings", path, int, _DEFAULTS[arch]["max_position_embeddings"]),
      tie_embeddings=_field(cfg, "tie_word_embeddings", path, bool, False),
      qkv_bias=arch == "qwen2", qk_norm=arch == "qwen3",
      bos_id=_field(cfg, "bos_token_id", path, int, None), eos_ids=_ids(cfg.get("eos_token_id"), path, "eos_token_id"),
      pad_id=pad if isinstance(pad, int) else 0)


@functools.partial(jax.jit, static_argnames=("transpose",), donate_argnums=0)
def _write_block(leaf, rows, start, transpose):
  block = rows.T if transpose else rows
  block = block.astype(leaf.dtype).reshape((1,) * (leaf.ndim - block.ndim) + block.shape)
  return jax.lax.dynamic_update_slice(leaf, block, start)


class ParamAssembler:
  """Fills zero-initialised jax params in place from HF-named tensors (HF (out, in) orientation), block by block."""

  def __init__(self, config: ModelConfig):
    self.slots = hf_tensor_slots(config)
    dtype = jnp.dtype(config.param_dtype)
    self.params: Params = jax.tree.map(lambda s: jnp.zeros(s, dtype), param_shapes(config),
                                       is_leaf=lambda s: isinstance(s, tuple))
    self.filled: set[str] = set()

  def hf_shape(self, name: str) -> tuple[int, ...]:
    slot = self.slots[name]
    shape = (self.params if slot.layer is None else self.params["layers"])[slot.key].shape
    shape = shape if slot.layer is None else shape[1:]
    return shape[::-1] if slot.transpose else shape

  def check(self, name: str, shape: tuple[int, ...], where: str) -> None:
    if name not in self.slots:
      raise ValueError(f"{where}: unexpected tensor {name!r} for this config (wrong architecture or config.json?)")
    if tuple(shape) != self.hf_shape(name):
      raise ValueError(f"{where}: tensor {name!r} has shape {tuple(shape)}, expected {self.hf_shape(name)}")

  def put(self, name: str, rows: np.ndarray, row_start: int = 0) -> None:
    """Writes rows [row_start, row_start + len(rows)) of HF tensor `name`."""
    slot = self.slots[name]
    tree = self.params if slot.layer is None else self.params["layers"]
    start = (0, row_start) if slot.transpose else (row_start,) + (0,) * (rows.ndim - 1)
    start = start if slot.layer is None else (slot.layer, *start)
    tree[slot.key] = _write_block(tree[slot.key], rows, start, transpose=slot.transpose)
    tree[slot.key].block_until_ready()  # one block in flight at a time keeps the host peak bounded
    self.filled.add(name)

  def finish(self, where: str) -> Params:
    missing = [n for n in self.slots if n not in self.filled]
    if missing:
      raise ValueError(f"{where}: missing tensor {missing[0]!r}" + (f" and {len(missing) - 1} more" if missing[1:]
                                                                     else ""))
    return self.params


def _read_header(file: Path) -> tuple[dict[str, Any], int]:
  size = file.stat().st_size
  with open(file, "rb") as f:
    head = f.read(8)
    n = int.from_bytes(head, "little") if len(head) == 8 else -1
    if n < 0 or n > size - 8:
      raise ValueError(f"{file}: truncated safetensors file ({size} bytes, header cut short)")
    try:
      header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ValueError(f"{file}: corrupt safetensors header: {e}") from e
  header.pop("__metadata__", None)
  end = 8 + n + max((t["data_offsets"][1] for t in header.values()), default=0)
  if end > size:
    raise ValueError(f"{file}: truncated safetensors file: its tensors need {end} bytes, the file has {size}")
  return header, 8 + n


def _read_tensor(f, file: Path, name: str, info: dict[str, Any], data_start: int, asm: ParamAssembler) -> None:
  if info["dtype"] not in _ST_DTYPES:
    raise ValueError(f"{file}: tensor {name!r} has dtype {info['dtype']}; expected one of {sorted(_ST_DTYPES)}")
  dtype, shape = _ST_DTYPES[info["dtype"]], tuple(info["shape"])
  asm.check(name, shape, str(file))
  begin, end = info["data_offsets"]
  row_bytes = math.prod(shape[1:]) * dtype.itemsize
  if end - begin != shape[0] * row_bytes:
    raise ValueError(f"{file}: tensor {name!r}: data_offsets span {end - begin} bytes, shape {shape} needs "
                     f"{shape[0] * row_bytes}")
  step = max(1, _BLOCK_BYTES // max(row_bytes, 1))
  for r0 in range(0, shape[0], step):
    r1 = min(shape[0], r0 + step)
    f.seek(data_start + begin + r0 * row_bytes)
    buf = np.empty((r1 - r0) * row_bytes, np.uint8)
    if f.readinto(buf) != buf.size:
      raise ValueError(f"{file}: truncated safetensors file while reading tensor {name!r}")
    asm.put(name, buf.view(dtype).reshape((r1 - r0, *shape[1:])), r0)


def _weight_files(path: Path) -> tuple[list[Path], Path]:
  """The safetensors files of a checkpoint, and the file that lists them (for error messages)."""
  index = path / "model.safetensors.index.json"
  if index.is_file():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise ValueError(f"{index}: not a safetensors index (needs a 'weight_map' object): {e}") from e
    files = [path / name for name in dict.fromkeys(weight_map.values())]
    for file in files:
      if not file.is_file():
        raise FileNotFoundError(f"{index}: lists shard {file.name!r}, which is missing from {path}")
    return files, index
  single = path / "model.safetensors"
  if not single.is_file():
    raise FileNotFoundError(f"{path}: neither model.safetensors nor model.safetensors.index.json found")
  return [single], single


def _read_json(file: Path) -> dict[str, Any]:
  try:
    return json.loads(file.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{file}: invalid JSON: {e}") from e


def load_hf(path: str | Path, param_dtype: str = "float32") -> tuple[Params, ModelConfig]:
  """Params and config from an HF directory (config.json + model.safetensors or a sharded index)."""
  path = Path(path)
  cfg_file = path / "config.json"
  if not cfg_file.is_file():
    raise FileNotFoundError(f"{cfg_file}: missing config.json; {path} is not an HF checkpoint directory")
  config = config_from_hf(_read_json(cfg_file), cfg_file).replace(param_dtype=param_dtype)
  gen_file = path / "generation_config.json"
  if gen_file.is_file():  # instruct models often list extra stop ids only here
    extra = _ids(_read_json(gen_file).get("eos_token_id"), gen_file, "eos_token_id")
    config = config.replace(eos_ids=tuple(dict.fromkeys(config.eos_ids + extra)))
  files, listing = _weight_files(path)
  asm = ParamAssembler(config)
  for file in files:
    header, data_start = _read_header(file)
    with open(file, "rb") as f:
      for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        if name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and config.tie_embeddings):
          continue
        _read_tensor(f, file, name, info, data_start, asm)
  return asm.finish(str(listing)), config


def hf_config_dict(config: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
  """config.json for transformers 5 (`rope_parameters`, `dtype`) and older readers such as vLLM's (`rope_theta`,
  `rope_scaling`, `torch_dtype`)."""
  c = config
  expected = {"llama": (False, False), "qwen2": (True, False), "qwen3": (False, True)}[c.arch]
  if (c.qkv_bias, c.qk_norm) != expected:
    raise ValueError(f"ModelConfig: arch={c.arch!r} with qkv_bias={c.qkv_bias}, qk_norm={c.qk_norm} has no HF "
                     f"equivalent (HF {ARCH_CLASSES[c.arch]} has qkv_bias={expected[0]}, qk_norm={expected[1]})")
  scaling = c.rope_scaling_dict
  eos = list(c.eos_ids)
  out = {
      "architectures": [ARCH_CLASSES[c.arch]], "model_type": c.arch, "vocab_size": c.vocab_size,
      "hidden_size": c.d_model, "intermediate_size": c.d_ff, "num_hidden_layers": c.n_layers,
      "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads, "head_dim": c.head_dim,
      "hidden_act": "silu", "max_position_embeddings": c.max_seq_len, "rms_norm_eps": c.rms_eps,
      "rope_theta": c.rope_theta, "rope_scaling": scaling,
      "rope_parameters": {"rope_theta": c.rope_theta, "rope_type": "default", **(scaling or {})},
      "tie_word_embeddings": c.tie_embeddings, "bos_token_id": c.bos_id,
      "eos_token_id": eos[0] if len(eos) == 1 else (eos or None), "pad_token_id": c.pad_id,
      "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True, "torch_dtype": dtype, "dtype": dtype,
  }
  if c.arch == "llama":
    out.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
  else:
    out.update(use_sliding_window=False, sliding_window=None, max_window_layers=c.n_layers,
               layer_types=["full_attention"] * c.n_layers)
    if c.arch == "qwen3":
      out["attention_bias"] = False
  return out


def _write_safetensors(file: Path, tensors: list[tuple[str, Any]], np_dtype: np.dtype) -> None:
  """Streams (name, (HF shape, thunk -> HF-oriented array)) pairs into one file, one tensor in memory at a time."""
  header, offset = {"__metadata__": {"format": "pt"}}, 0
  for name, (shape, _) in tensors:
    size = math.prod(shape) * np_dtype.itemsize
    header[name] = {"dtype": _ST_NAMES[np_dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
    offset += size
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  with open(file, "wb") as f:
    f.write(len(blob).to_bytes(8, "little") + blob)
    for _, (_, get) in tensors:
      f.write(np.ascontiguousarray(get()).view(np.uint8).data)


def export_hf(params: Params, config: ModelConfig, out_dir: str | Path, tokenizer: Any = None,
              dtype: str = "float32", max_shard_bytes: int = 2 * 2**30, lora: Adapters | None = None) -> Path:
  """Writes an HF directory that transformers and vLLM load: config.json, generation_config.json, safetensors
  (sharded with an index above `max_shard_bytes`) and the tokenizer files when a tokenizer is given. Stale weight
  files of an earlier export into the same directory are removed.

  `lora`: adapters over `params`, merged here (the one place a merge happens), one layer at a time in float32,
  W + scale a b, then rounded once to `dtype`. HF has no side path, so a bf16 export rounds what a float32 one keeps.
  """
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"export_hf: dtype should be 'float32' or 'bfloat16', got {dtype!r}")
  np_dtype = np.dtype(np.float32) if dtype == "float32" else np.dtype(ml_dtypes.bfloat16)
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  hf_cfg = hf_config_dict(config, dtype)
  for stale in [*out.glob("model-*-of-*.safetensors"), out / "model.safetensors", out / "model.safetensors.index.json"]:
    stale.unlink(missing_ok=True)

  def getter(slot):
    def get():
      leaf = params[slot.key] if slot.layer is None else params["layers"][slot.key][slot.layer]
      if lora is not None and slot.layer is not None and slot.key in lora.params:
        ab = lora.params[slot.key]
        a_IxR, b_RxO = (np.asarray(ab[k][slot.layer], np.float32) for k in ("a", "b"))
        leaf = np.asarray(leaf, np.float32) + np.float32(lora.scale) * (a_IxR @ b_RxO)
      a = np.asarray(jnp.asarray(leaf).astype(dtype))
      return a.T if slot.transpose else a
    return get

  slots = hf_tensor_slots(config)
  shapes = param_shapes(config)
  shards: list[list[tuple[str, Any]]] = [[]]
  shard_bytes = 0
  for name, slot in slots.items():
    shape = shapes[slot.key] if slot.layer is None else shapes["layers"][slot.key][1:]
    shape = shape[::-1] if slot.transpose else shape
    size = math.prod(shape) * np_dtype.itemsize
    if shards[-1] and shard_bytes + size > max_shard_bytes:
      shards.append([])
      shard_bytes = 0
    shards[-1].append((name, (shape, getter(slot))))
    shard_bytes += size
  if len(shards) == 1:
    _write_safetensors(out / "model.safetensors", shards[0], np_dtype)
  else:
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
      fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      _write_safetensors(out / fname, shard, np_dtype)
      weight_map.update({name: fname for name, _ in shard})
      total += sum(math.prod(shape) * np_dtype.itemsize for _, (shape, _) in shard)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
  (out / "config.json").write_text(json.dumps(hf_cfg, indent=2))
  gen = {"bos_token_id": hf_cfg["bos_token_id"], "eos_token_id": hf_cfg["eos_token_id"],
         "pad_token_id": hf_cfg["pad_token_id"]}
  (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
  if tokenizer is not None:
    tokenizer.save_pretrained(str(out))
  return out
