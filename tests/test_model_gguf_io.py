"""GGUF import (and the GGUF tokenizer) on tiny files written with gguf.GGUFWriter the way llama.cpp converts."""
import json
import math

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from deliberate.model import transformer as T
from deliberate.model.gguf_io import load_gguf
from deliberate.model.tokenizer_gguf import tokenizer_from_gguf

_apply = jax.jit(T.apply, static_argnames="config")
_COMMON = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=256)
_SPECS = {  # llama3 scaling with the values convert_hf_to_gguf assumes (it stores only the per-frequency factors)
    "llama": (transformers.LlamaConfig, dict(rope_theta=500000.0, tie_word_embeddings=False, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192})),
    "qwen2": (transformers.Qwen2Config, dict(tie_word_embeddings=True)),
    "qwen3": (transformers.Qwen3Config, dict(head_dim=24, tie_word_embeddings=True)),
}
_Q8_TENSOR = "model.layers.0.mlp.gate_proj.weight"


def _permute(w, n_head, n_head_kv):
  """convert_hf_to_gguf's LlamaModel.permute, verbatim in behaviour."""
  if n_head_kv is not None and n_head != n_head_kv:
    n_head = n_head_kv
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_rope_factors(hf_cfg):
  """convert_hf_to_gguf's rope_freqs for llama3 scaling."""
  s, hd = hf_cfg.rope_parameters, hf_cfg.head_dim
  freqs = 1.0 / (s["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
  old, low, high = s["original_max_position_embeddings"], s["low_freq_factor"], s["high_freq_factor"]
  out = []
  for freq in freqs:
    wavelen = 2 * math.pi / freq
    if wavelen < old / high:
      out.append(1)
    elif wavelen > old / low:
      out.append(s["factor"])
    else:
      smooth = (old / wavelen - low) / (high - low)
      out.append(1 / ((1 - smooth) / s["factor"] + smooth))
  return np.array(out, np.float32)


def write_tiny_gguf(arch, path):
  """A random HF model, written to GGUF like llama.cpp does (one tensor Q8_0); returns the torch model."""
  cfg_cls, extra = _SPECS[arch]
  hf_cfg = cfg_cls(**_COMMON, **extra)
  torch.manual_seed(1)
  model = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(1 + 0.3 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
    q8 = gguf.quants.quantize(model.get_parameter(_Q8_TENSOR).numpy(), gguf.GGMLQuantizationType.Q8_0)
    model.get_parameter(_Q8_TENSOR).copy_(torch.from_numpy(
        gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0).reshape(96, 64)))
  w = gguf.GGUFWriter(str(path), arch)
  hd = getattr(hf_cfg, "head_dim", None) or 16  # Qwen2Config has no head_dim
  w.add_context_length(256)
  w.add_embedding_length(64)
  w.add_block_count(2)
  w.add_feed_forward_length(96)
  w.add_head_count(4)
  w.add_head_count_kv(2)
  w.add_key_length(hd)
  w.add_value_length(hd)
  w.add_rope_dimension_count(hd)
  w.add_layer_norm_rms_eps(1e-5)
  w.add_rope_freq_base(hf_cfg.rope_parameters["rope_theta"])
  w.add_eos_token_id(2)
  if arch == "llama":
    w.add_tensor("rope_freqs.weight", _llama3_rope_factors(hf_cfg))
  names = gguf.get_tensor_name_map({v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch], 2)
  for name, t in model.state_dict().items():
    if name == "lm_head.weight" and hf_cfg.tie_word_embeddings:
      continue
    data = t.numpy()
    if arch == "llama" and name.endswith("q_proj.weight"):
      data = _permute(data, 4, 4)
    if arch == "llama" and name.endswith("k_proj.weight"):
      data = _permute(data, 4, 2)
    gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
    if name == _Q8_TENSOR:
      w.add_tensor(gname, q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
      w.add_tensor(gname, data)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return model


@pytest.mark.parametrize("arch", list(_SPECS))
def test_load_gguf_logits_match_torch(arch, tmp_path):
  model = write_tiny_gguf(arch, tmp_path / "m.gguf")
  params, config = load_gguf(tmp_path / "m.gguf")
  assert config.tie_embeddings == (arch != "llama") and config.eos_ids == (2,) and config.rms_eps == 1e-5
  assert (config.rope_scaling_dict or {}).get("factor") == (8.0 if arch == "llama" else None)
  tokens = np.random.RandomState(0).randint(0, 97, (2, 40))
  with torch.no_grad():
    ref = model(torch.tensor(tokens)).logits.numpy()
  pos = np.broadcast_to(np.arange(40), tokens.shape)
  logits = np.asarray(_apply(params, jnp.asarray(tokens), jnp.asarray(pos), None, config=config)[0])
  assert np.abs(logits - ref).max() <= 1e-4


def test_bad_gguf_files_name_the_file(tmp_path):
  write_tiny_gguf("qwen2", tmp_path / "ok.gguf")
  data = (tmp_path / "ok.gguf").read_bytes()
  for cut in (len(data) - 1000, 3000):
    (tmp_path / "cut.gguf").write_bytes(data[:cut])
    with pytest.raises(ValueError, match=r"cut.gguf: (truncated GGUF file|not a readable GGUF file)"):
      load_gguf(tmp_path / "cut.gguf")
  w = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
  w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(ValueError, match=r"gpt2.gguf: unknown architecture in GGUF field 'general.architecture'"):
    load_gguf(tmp_path / "gpt2.gguf")


_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
_TEXTS = ["The year 2024 had 366 days.", "  spaced   out\ttabs\nnewlines", "naïve café ünïcödé 東京",
          "<|im_start|>user\nhi 42<|im_end|>", "don't stop, it's 3.14159!"]


def test_tokenizer_from_gguf_matches_the_original_bpe(tmp_path):
  ref = Tokenizer(models.BPE())
  ref.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False)])
  ref.decoder = decoders.ByteLevel()
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  ref.train_from_iterator(_TEXTS * 20, trainers.BpeTrainer(
      vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  vocab = ref.get_vocab()
  tokens = sorted(vocab, key=vocab.get)
  merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(ref.to_str())["model"]["merges"]]
  assert len(merges) > 50
  w = gguf.GGUFWriter(str(tmp_path / "tok.gguf"), "llama")
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("smollm")
  w.add_token_list(tokens)
  w.add_token_merges(merges)
  w.add_token_types([3 if t in specials else 1 for t in tokens])
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_pad_token_id(0)
  w.add_chat_template(_TEMPLATE)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()

  tok = tokenizer_from_gguf(tmp_path / "tok.gguf")
  assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
  for text in _TEXTS:
    ids = tok(text)["input_ids"]
    assert ids == ref.encode(text).ids
    assert tok.decode(ids) == text
  assert tok("<|im_end|>")["input_ids"] == [2]
  tok.save_pretrained(tmp_path / "saved")
  again = transformers.AutoTokenizer.from_pretrained(tmp_path / "saved")
  chat = [{"role": "user", "content": "2 + 2?"}]
  assert again(_TEXTS[0])["input_ids"] == tok(_TEXTS[0])["input_ids"]
  assert again.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
      "<|im_start|>user\n2 + 2?<|im_end|>\n<|im_start|>assistant\n")
