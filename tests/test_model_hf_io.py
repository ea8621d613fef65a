"""HF import/export against HF transformers' own PyTorch models (tiny random configs, CPU)."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from deliberate.model import transformer as T
from deliberate.model.hf_io import config_from_hf, export_hf, load_hf

_apply = jax.jit(T.apply, static_argnames="config")
_COMMON = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=256, bos_token_id=1,
               eos_token_id=2)
_LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 32}
_SPECS = {
    "llama_llama3_untied_gqa": (transformers.LlamaConfig, dict(
        rope_theta=500000.0, rope_scaling=_LLAMA3, tie_word_embeddings=False)),
    "llama_tied_mha": (transformers.LlamaConfig, dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "qwen2_bias_tied": (transformers.Qwen2Config, dict(tie_word_embeddings=True)),
    "qwen3_qknorm_headdim24": (transformers.Qwen3Config, dict(head_dim=24, tie_word_embeddings=False)),
}
_cache = {}


def tiny_hf(name, tmp_path_factory):
  """A random HF model (torch) saved with save_pretrained, built once per module."""
  if name not in _cache:
    cfg_cls, extra = _SPECS[name]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg_cls(**{**_COMMON, **extra})).eval()
    with torch.no_grad():
      for pname, p in model.named_parameters():
        p.copy_(1 + 0.3 * torch.randn_like(p) if "norm" in pname else 0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    _cache[name] = (path, model)
  return _cache[name]


def torch_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()


def our_logits(params, config, tokens):
  pos = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  return np.asarray(_apply(params, jnp.asarray(tokens), jnp.asarray(pos), None, config=config)[0])


_TOKENS = np.random.RandomState(0).randint(0, 97, (2, 40))


@pytest.mark.parametrize("name", list(_SPECS))
def test_load_hf_logits_match_torch(name, tmp_path_factory):
  path, model = tiny_hf(name, tmp_path_factory)
  params, config = load_hf(path)
  assert config.arch == name.split("_")[0] and config.tie_embeddings == ("_tied" in name)
  assert np.abs(our_logits(params, config, _TOKENS) - torch_logits(model, _TOKENS)).max() <= 1e-4


@pytest.mark.parametrize("name", ["llama_llama3_untied_gqa", "qwen3_qknorm_headdim24"])
def test_kv_cache_decoding_equals_full_forward(name, tmp_path_factory):
  params, config = load_hf(tiny_hf(name, tmp_path_factory)[0])
  full = our_logits(params, config, _TOKENS[:, :20])
  cache = T.init_kv_cache(config, 2, 32)
  pos = np.broadcast_to(np.arange(20), (2, 20))
  logits, cache = _apply(params, jnp.asarray(_TOKENS[:, :12]), jnp.asarray(pos[:, :12]), cache, config=config)
  steps = [np.asarray(logits)]
  for i in range(12, 20):
    logits, cache = _apply(params, jnp.asarray(_TOKENS[:, i:i + 1]), jnp.asarray(pos[:, i:i + 1]), cache,
                           config=config)
    steps.append(np.asarray(logits))
  assert np.abs(np.concatenate(steps, axis=1) - full).max() <= 1e-5


@pytest.mark.parametrize("name,shard_bytes", [("llama_llama3_untied_gqa", 2**30), ("qwen2_bias_tied", 40_000),
                                              ("qwen3_qknorm_headdim24", 40_000)])
def test_export_loads_in_transformers_and_roundtrips(name, shard_bytes, tmp_path_factory, tmp_path):
  params, config = load_hf(tiny_hf(name, tmp_path_factory)[0])
  export_hf(params, config, tmp_path, max_shard_bytes=shard_bytes)
  assert (tmp_path / "model.safetensors.index.json").is_file() == (shard_bytes < 2**30)
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
  assert np.abs(our_logits(params, config, _TOKENS) - torch_logits(hf_model, _TOKENS)).max() <= 1e-4
  assert transformers.GenerationConfig.from_pretrained(tmp_path).eos_token_id == 2
  params2, config2 = load_hf(tmp_path)
  assert config2 == config
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, params2))


def test_export_bfloat16_roundtrips_and_writes_tokenizer(tmp_path_factory, tmp_path):
  params, config = load_hf(tiny_hf("qwen3_qknorm_headdim24", tmp_path_factory)[0])
  vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "hello", "world"])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")
  export_hf(params, config, tmp_path, tokenizer=hf_tok, dtype="bfloat16")
  assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
  params2, config2 = load_hf(tmp_path, param_dtype="bfloat16")
  assert config2 == config.replace(param_dtype="bfloat16")
  assert jax.tree.all(jax.tree.map(lambda a, b: b.dtype == jnp.bfloat16 and bool(jnp.array_equal(
      a.astype(jnp.bfloat16), b)), params, params2))
  assert transformers.AutoTokenizer.from_pretrained(tmp_path)("hello world")["input_ids"] == [3, 4]


def test_config_from_hf_reads_v5_and_legacy_rope_fields():
  base = dict(architectures=["LlamaForCausalLM"], vocab_size=97, hidden_size=64, intermediate_size=96,
              num_hidden_layers=2, num_attention_heads=4, eos_token_id=[2, 7])
  legacy = config_from_hf({**base, "rope_theta": 5e5, "rope_scaling": _LLAMA3}, "legacy/config.json")
  v5 = config_from_hf({**base, "rope_parameters": {**_LLAMA3, "rope_theta": 5e5}}, "v5/config.json")
  assert legacy == v5 and v5.rope_theta == 5e5 and v5.rope_scaling_dict["factor"] == 8.0
  assert v5.eos_ids == (2, 7) and v5.head_dim == 16 and v5.n_kv_heads == 4 and not v5.tie_embeddings
  qwen3 = config_from_hf({**base, "architectures": ["Qwen3ForCausalLM"]}, "q/config.json")
  assert qwen3.head_dim == 128 and qwen3.qk_norm and not qwen3.qkv_bias  # transformers' Qwen3 default head_dim
  with pytest.raises(ValueError, match=r"x/config.json: field 'rope_scaling': rope_type 'yarn'"):
    config_from_hf({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "x/config.json")
  with pytest.raises(ValueError, match=r"x/config.json: missing field 'hidden_size'"):
    config_from_hf({k: v for k, v in base.items() if k != "hidden_size"}, "x/config.json")


def _copy_ckpt(src, dst, edit):
  """A copy of a single-file checkpoint whose tensors went through `edit(dict) -> dict`."""
  shutil.copytree(src, dst)
  with safe_open(str(src / "model.safetensors"), "numpy") as f:
    tensors = {k: f.get_tensor(k) for k in f.keys()}
  save_file(edit(tensors), str(dst / "model.safetensors"), metadata={"format": "pt"})
  return dst


def test_bad_checkpoints_name_file_and_tensor(tmp_path_factory, tmp_path):
  src, _ = tiny_hf("llama_llama3_untied_gqa", tmp_path_factory)
  with pytest.raises(FileNotFoundError, match=r"nowhere/config.json: missing config.json"):
    load_hf(tmp_path / "nowhere")

  unknown = tmp_path / "unknown"
  shutil.copytree(src, unknown)
  cfg = json.loads((unknown / "config.json").read_text())
  (unknown / "config.json").write_text(json.dumps({**cfg, "architectures": ["MistralForCausalLM"]}))
  with pytest.raises(ValueError, match=r"unknown/config.json: unknown architecture in field 'architectures'"):
    load_hf(unknown)

  name = "model.layers.1.self_attn.k_proj.weight"
  bad = _copy_ckpt(src, tmp_path / "shape", lambda t: {**t, name: t[name][:16]})
  with pytest.raises(ValueError, match=rf"shape/model.safetensors: tensor '{name}' has shape \(16, 64\), "
                                       r"expected \(32, 64\)"):
    load_hf(bad)

  missing = _copy_ckpt(src, tmp_path / "missing", lambda t: {k: v for k, v in t.items() if k != name})
  with pytest.raises(ValueError, match=rf"missing/model.safetensors: missing tensor '{name}'"):
    load_hf(missing)

  for cut, what in [(-100, "tensors need"), (50, "header cut short")]:
    trunc = tmp_path / f"trunc{cut}"
    shutil.copytree(src, trunc)
    data = (src / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[:cut])
    with pytest.raises(ValueError, match=rf"trunc{cut}/model.safetensors: truncated safetensors file.*{what}"):
      load_hf(trunc)
