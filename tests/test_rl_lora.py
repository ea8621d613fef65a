"""LoRA adapters: zero-initialised b, exact merge, a bf16 base."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deliberate.model import transformer
from deliberate.model.config import ModelConfig
from deliberate.rl import lora

CFG = ModelConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128)


def test_merge_at_init_is_the_base_model():
  base = transformer.init_params(CFG, jax.random.key(0))
  cfg = lora.LoraConfig(rank=4, alpha=8.0, targets=("wq", "wv", "w_down"))
  adapters = lora.init_lora(base, cfg, jax.random.key(1))
  assert set(adapters) == {"wq", "wv", "w_down"}
  assert adapters["w_down"]["a"].shape == (2, 128, 4) and adapters["w_down"]["b"].shape == (2, 4, 64)
  merged = lora.merge(base, adapters, cfg.alpha, cfg.rank)
  tokens = jnp.arange(12).reshape(2, 6)
  pos = jnp.tile(jnp.arange(6), (2, 1))
  apply = jax.jit(lambda p: transformer.apply(p, tokens, pos, config=CFG)[0])
  np.testing.assert_array_equal(apply(merged), apply(base))


def test_merge_adds_scaled_product_over_a_bf16_base():
  base = transformer.cast_params(transformer.init_params(CFG, jax.random.key(0)), "bfloat16")
  cfg = lora.LoraConfig(rank=2, alpha=6.0, targets=("wo",))
  adapters = lora.init_lora(base, cfg, jax.random.key(1))
  adapters["wo"]["b"] = jax.random.normal(jax.random.key(2), adapters["wo"]["b"].shape)
  merged = lora.merge(base, adapters, cfg.alpha, cfg.rank)
  want = (np.asarray(base["layers"]["wo"], np.float32)
          + 3.0 * np.einsum("lir,lro->lio", adapters["wo"]["a"], adapters["wo"]["b"]))
  assert merged["layers"]["wo"].dtype == jnp.float32
  np.testing.assert_allclose(merged["layers"]["wo"], want, rtol=1e-5, atol=1e-5)
  assert merged["layers"]["wq"] is base["layers"]["wq"]  # untouched matrices stay as they were


def test_bad_lora_config():
  with pytest.raises(ValueError, match="targets"):
    lora.LoraConfig(targets=("embed",))
  with pytest.raises(ValueError, match="rank"):
    lora.LoraConfig(rank=0)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_a_lora_policy_exported_to_hf_gives_the_same_logits_in_transformers(arch, tmp_path):
  """Export merges the adapters (in float32, the only merge); transformers' own model then computes the logits our
  forward computes with the adapters on their own path."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from deliberate.model.hf_io import export_hf
  cfg = CFG.replace(arch=arch, qk_norm=arch == "qwen3", tie_embeddings=arch == "llama", eos_ids=(1,))
  base = transformer.init_params(cfg, jax.random.key(0))
  lcfg = lora.LoraConfig(rank=4, alpha=8.0)
  adapters = lora.init_lora(base, lcfg, jax.random.key(1))
  for name, k in zip(adapters, jax.random.split(jax.random.key(2), len(adapters))):
    adapters[name]["b"] = 0.2 * jax.random.normal(k, adapters[name]["b"].shape)
  ad = lora.adapters(adapters, lcfg)
  tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 24))
  pos = np.broadcast_to(np.arange(24), tokens.shape)
  ours = np.asarray(transformer.apply(base, jnp.asarray(tokens), jnp.asarray(pos), config=cfg, lora=ad)[0])
  plain = np.asarray(transformer.apply(base, jnp.asarray(tokens), jnp.asarray(pos), config=cfg)[0])
  assert np.abs(ours - plain).max() > 0.05  # the adapters matter
  export_hf(base, cfg, tmp_path, lora=ad)
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
  with torch.no_grad():
    theirs = model(torch.tensor(tokens)).logits.numpy()
  assert np.abs(ours - theirs).max() <= 1e-4
