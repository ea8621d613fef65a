"""LoRA in bf16: an adapter whose delta is far below the ulp of a bf16 weight must still move the policy.

Merged into bf16 storage (today's `W + delta` cast per forward), such a delta rounds back to W for nearly every
element, and the few elements that do flip move by a whole ulp: the policy's change is mostly lost and what is left
is noise (on the code before adapters got their own path, the slope below was 0.31). On their own float32 path the
adapters' effect reaches the logits through one rounding of each bf16 activation, which is unbiased: the change of
the logits, regressed on the float32 reference change, has slope 1.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deliberate.model import transformer
from deliberate.model.config import ModelConfig
from deliberate.rl import logprobs, lora

CFG = ModelConfig(vocab_size=256, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32, d_ff=256)
C16 = CFG.replace(param_dtype="bfloat16", compute_dtype="bfloat16")
B, T = 16, 128
SLOPE_TOL = 0.15  # the slope's sampling noise at this size is about 0.03 (seed to seed)


def _ulp(w_bf16: jax.Array) -> np.ndarray:
  w = np.abs(np.asarray(w_bf16, np.float32))
  return np.exp2(np.floor(np.log2(np.maximum(w, 1e-30))) - 7)


@pytest.fixture(scope="module")
def setup():
  base = transformer.cast_params(transformer.init_params(CFG, jax.random.key(0)), "bfloat16")
  cfg = lora.LoraConfig(rank=4, alpha=8.0)
  ad = lora.init_lora(base, cfg, jax.random.key(1))
  for name, k in zip(ad, jax.random.split(jax.random.key(2), len(ad))):
    ad[name]["b"] = 1e-4 * jax.random.normal(k, ad[name]["b"].shape)
  tokens = jax.random.randint(jax.random.key(3), (B, T), 0, CFG.vocab_size)
  return base, cfg, ad, tokens, jnp.broadcast_to(jnp.arange(T), (B, T))


def _slope(got, ref):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  return float(np.sum(got * ref) / np.sum(ref * ref))


def test_the_delta_is_far_below_half_an_ulp(setup):
  base, cfg, ad, _, _ = setup
  for name, ab in ad.items():
    delta = cfg.scale * np.einsum("lir,lro->lio", ab["a"], ab["b"])
    ratio = np.abs(delta) / _ulp(base["layers"][name])
    assert np.median(ratio) < 0.1 and np.mean(ratio < 0.5) > 0.9, name  # small weights have small ulps
    merged = (np.asarray(base["layers"][name], np.float32) + delta).astype(base["layers"][name].dtype)
    assert np.mean(merged == np.asarray(base["layers"][name])) > 0.85  # a bf16 merge keeps W almost everywhere


def test_bf16_logits_move_like_the_float32_reference(setup):
  base, cfg, ad, tokens, pos = setup
  logits = jax.jit(lambda p, a, c: transformer.apply(p, tokens, pos, config=c, lora=a)[0], static_argnums=2)
  b32 = transformer.cast_params(base, "float32")
  adapters = lora.adapters(ad, cfg)
  ref = logits(b32, adapters, CFG) - logits(b32, None, CFG)
  got = logits(base, adapters, C16) - logits(base, None, C16)
  assert float(jnp.sqrt(jnp.mean(ref ** 2))) > 1e-3  # a change the reference sees
  assert abs(_slope(got, ref) - 1.0) < SLOPE_TOL


def test_bf16_log_probs_of_the_trainer_move_like_the_float32_reference(setup):
  """The same through the trainer's packed, chunked log-probs (the loss's forward)."""
  base, cfg, ad, tokens, pos = setup
  mask = jnp.ones((B, T), jnp.float32)
  lp = jax.jit(lambda p, a, c: logprobs.token_logprobs(p, tokens, pos, mask, config=c, lora=a, token_chunk=32)[0],
               static_argnums=2)
  b32 = transformer.cast_params(base, "float32")
  adapters = lora.adapters(ad, cfg)
  ref = lp(b32, adapters, CFG) - lp(b32, None, CFG)
  got = lp(base, adapters, C16) - lp(base, None, C16)
  assert abs(_slope(got, ref) - 1.0) < SLOPE_TOL


def test_adapters_at_init_leave_the_bf16_model_exact(setup):
  base, cfg, _, tokens, pos = setup
  fresh = lora.adapters(lora.init_lora(base, cfg, jax.random.key(5)), cfg)
  logits = jax.jit(lambda p, a: transformer.apply(p, tokens, pos, config=C16, lora=a)[0])
  np.testing.assert_array_equal(logits(base, fresh), logits(base, None))


def test_the_adapter_gradient_in_bf16_matches_float32(setup):
  """The gradient the adapters train on, bf16 base and compute against the float32 reference: same direction."""
  base, cfg, ad, tokens, pos = setup
  mask = jnp.ones((B, T), jnp.float32)

  def objective(a, p, c):
    return jnp.sum(logprobs.token_logprobs(p, tokens, pos, mask, config=c, lora=lora.adapters(a, cfg))[0])

  grad = jax.jit(jax.grad(objective), static_argnums=2)
  g16 = grad(ad, base, C16)
  g32 = grad(ad, transformer.cast_params(base, "float32"), CFG)
  for x, y in zip(jax.tree.leaves(g16), jax.tree.leaves(g32)):
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    assert x.dtype == np.float64 and np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y) > 0.99
