"""Packed, chunked target log-probs against a naive full-logits log_softmax: values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deliberate.model import transformer
from deliberate.model.config import ModelConfig
from deliberate.rl import logprobs

CFG = ModelConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128)
B, T = 4, 20


def _batch():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
  lens = np.array([20, 15, 12, 18])
  pos = np.where(np.arange(T) < lens[:, None], np.arange(T), -1).astype(np.int32)
  mask = ((np.arange(T) >= np.array([5, 3, 8, 2])[:, None]) & (pos >= 0)).astype(np.float32)
  mask[0, 9] = 0.0  # a hole inside a response (the other agent's turn)
  return tokens, pos, mask


def _naive(params, tokens, pos, mask):
  logits, _ = transformer.apply(params, tokens, pos, config=CFG)
  logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  lp = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
  pad = jnp.zeros((B, 1))
  return jnp.concatenate([pad, lp], 1) * mask, jnp.concatenate([pad, ent], 1) * mask


def _values_and_grads(fn):
  """(log-probs, entropies) and the gradient of a fixed random linear function of both, in one compile."""
  params = transformer.init_params(CFG, jax.random.key(0))
  tokens, pos, mask = _batch()
  rng = np.random.default_rng(1)
  w_lp, w_ent = (jnp.asarray(rng.normal(size=(B, T)), jnp.float32) for _ in range(2))

  def objective(p):
    lp, ent = fn(p, tokens, pos, mask)
    return jnp.sum(lp * w_lp) + jnp.sum(ent * w_ent), (lp, ent)

  (_, values), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(params)
  return values, grads, mask


@pytest.fixture(scope="module")
def naive():
  return _values_and_grads(_naive)


@pytest.mark.parametrize("kw", [
    dict(),
    dict(targets_per_row=16, token_chunk=3, recompute=True),
    dict(targets_per_row=16, token_chunk=5, recompute=False, remat=True),
])
def test_matches_naive_log_softmax_values_and_grads(naive, kw):
  values, grads, mask = _values_and_grads(
      lambda p, *batch: logprobs.token_logprobs(p, *batch, config=CFG, **kw))
  for got, want in zip(values, naive[0]):
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert np.all(np.asarray(got)[mask == 0] == 0.0)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(naive[1])):
    np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.abs(b).max()) + 1e-6)


def test_targets_per_row_bound():
  _, _, mask = _batch()
  assert logprobs.targets_per_row(mask, multiple=4) == 16  # the longest row has 16 targets
  assert logprobs.targets_per_row(mask, multiple=64) == T  # never above the row length
  assert logprobs.targets_per_row(np.zeros((2, 8)), multiple=4) == 4
