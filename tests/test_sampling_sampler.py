"""The token chooser and the pure sampler: truncation rules, log-probs, determinism and the early-stopping loop."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deliberate.model import transformer
from deliberate.model.config import ModelConfig
from deliberate.sampling import sampler
from deliberate.sampling.sampler import SamplingParams

V = 128
CFG = ModelConfig(vocab_size=V, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128)


@pytest.fixture(scope="module")
def params():
  return sampler.decode_layout(transformer.init_params(CFG, jax.random.key(0)), CFG)


def _choose(logits, sp, seed=0):
  keys = jax.random.split(jax.random.key(seed), logits.shape[0])
  return jax.device_get(jax.jit(functools.partial(sampler._choose, sp=sp))(jnp.asarray(logits), keys))


def _logits(rows, scale, seed=0):
  return (np.random.RandomState(seed).randn(rows, V) * scale).astype(np.float32)


def _nucleus(logits_V, t, top_p, top_k=0):
  """Reference truncation by a full numpy sort: (kept ids, renormalised probs of the kept ids)."""
  logp = logits_V / t - np.logaddexp.reduce(logits_V / t)
  order = np.argsort(-logp, kind="stable")
  if top_k:
    order = order[:top_k]
  p = np.exp(logp[order])
  p = p / p.sum()
  keep = order[(np.cumsum(p) - p) < top_p]
  q = np.exp(logp[keep])
  return keep, q / q.sum()


def test_top_k_one_equals_greedy():
  logits = _logits(64, 3.0)
  tok_k, _, slp = _choose(logits, SamplingParams(temperature=0.9, top_k=1))
  tok_g, _, _ = _choose(logits, SamplingParams(greedy=True))
  np.testing.assert_array_equal(tok_k, np.argmax(logits, -1))
  np.testing.assert_array_equal(tok_g, np.argmax(logits, -1))
  np.testing.assert_allclose(slp, 0.0, atol=1e-6)  # one token left: probability 1


@pytest.mark.parametrize("candidates", [256, 4])  # 4: every row's nucleus is wider, so the exact fallback runs
def test_top_p_samples_only_the_nucleus_with_its_distribution(candidates):
  row = _logits(1, 1.5, seed=3)[0]
  n = 4000
  sp = SamplingParams(temperature=0.7, top_p=0.8, candidates=candidates)
  tok, lp, slp = _choose(np.tile(row, (n, 1)), sp, seed=1)
  keep, q = _nucleus(row, 0.7, 0.8)
  assert len(keep) > 4
  assert set(tok.tolist()) <= set(keep.tolist())
  freq = np.array([(tok == i).sum() for i in keep]) / n
  assert np.abs(freq - q).max() < 4 * np.sqrt(q.max() / n)
  logp = row / 0.7 - np.logaddexp.reduce(row / 0.7)
  np.testing.assert_allclose(lp, logp[tok], atol=1e-5)
  log_q = dict(zip(keep.tolist(), np.log(q)))
  np.testing.assert_allclose(slp, [log_q[t] for t in tok.tolist()], atol=1e-5)


def test_top_k_then_top_p_renormalises_inside_the_top_k():
  logits = _logits(32, 0.5, seed=4)  # flat rows: top-p over the full vocabulary would keep far more than 10
  sp = SamplingParams(temperature=1.0, top_k=10, top_p=0.5)
  tok, _, slp = _choose(logits, sp, seed=2)
  for row, t, s in zip(logits, tok, slp):
    keep, q = _nucleus(row, 1.0, 0.5, top_k=10)
    assert t in keep
    np.testing.assert_allclose(s, np.log(q[list(keep).index(t)]), atol=1e-5)


def test_plain_temperature_log_probs():
  logits = _logits(16, 2.0)
  tok, lp, slp = _choose(logits, SamplingParams(temperature=1.3))
  logp = logits / 1.3 - np.logaddexp.reduce(logits / 1.3, axis=-1, keepdims=True)
  np.testing.assert_allclose(lp, logp[np.arange(16), tok], atol=1e-5)
  np.testing.assert_allclose(slp, lp)


def test_a_rows_draw_ignores_other_rows_even_when_they_need_the_fallback():
  peaked, flat = _logits(1, 4.0, seed=5), _logits(1, 0.1, seed=6)
  keys = jax.random.split(jax.random.key(7), 2)
  sp = SamplingParams(temperature=0.7, top_p=0.95, candidates=8)
  fn = jax.jit(functools.partial(sampler._choose, sp=sp))
  alone = fn(jnp.asarray(np.concatenate([peaked, peaked])), keys)
  mixed = fn(jnp.asarray(np.concatenate([peaked, flat])), keys)  # the flat row sends the batch to the fallback
  assert int(alone[0][0]) == int(mixed[0][0])
  np.testing.assert_allclose(float(alone[2][0]), float(mixed[2][0]), atol=1e-6)


def test_nucleus_threshold_matches_a_full_sort():
  for scale in (0.1, 1.0, 5.0):
    probs = jax.nn.softmax(jnp.asarray(_logits(8, scale, seed=8)))
    t = np.asarray(sampler._nucleus_threshold(probs, 0.9))
    for row, thr in zip(np.asarray(probs), t):
      keep, _ = _nucleus(np.log(row), 1.0, 0.9)
      assert set(np.flatnonzero(row >= thr).tolist()) == set(keep.tolist())


@pytest.mark.parametrize("bad, field", [(dict(temperature=0.0), "temperature"), (dict(top_p=0.0), "top_p"),
                                        (dict(top_k=-1), "top_k"), (dict(max_new_tokens=0), "max_new_tokens")])
def test_bad_sampling_params_name_the_field(bad, field):
  with pytest.raises(ValueError, match=field):
    SamplingParams(**bad)


def _run(params, prompts, sp, row_ids=None, seed=0, stop_ids=(), active=None):
  lens = np.array([len(p) for p in prompts], np.int32)
  arr = np.zeros((len(prompts), 16), np.int32)
  for i, p in enumerate(prompts):
    arr[i, :len(p)] = p
  b = len(prompts)
  row_ids = np.arange(b, dtype=np.int32) if row_ids is None else np.asarray(row_ids, np.int32)
  active = np.ones(b, bool) if active is None else np.asarray(active)
  fn = sampler.jitted_sample(CFG, sp)
  return jax.device_get(fn(params, None, arr, lens, np.arange(b, dtype=np.int32), row_ids, active, np.uint32(seed),
                           np.isin(np.arange(CFG.vocab_size), stop_ids)))


PROMPTS = [[3, 14, 15, 92, 65], [35, 89, 79, 32, 38, 46, 26, 43, 38, 32, 79], [50, 28], [8, 41, 97, 16, 93, 99]]


def test_fixed_seed_repeats_and_another_seed_differs(params):
  sp = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=10)
  a, b, c = _run(params, PROMPTS, sp, seed=5), _run(params, PROMPTS, sp, seed=5), _run(params, PROMPTS, sp, seed=6)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.sampling_logprobs, b.sampling_logprobs)
  assert (a.tokens != c.tokens).any()


def test_loop_stops_once_every_row_is_done(params):
  sp = SamplingParams(greedy=True, max_new_tokens=12)
  free = _run(params, [PROMPTS[1]] * 2, sp)
  assert int(free.steps) == 11  # the last token is never fed back
  seq = free.tokens[0].tolist()
  j = next(j for j in range(1, 12) if seq[j] not in seq[:j])  # the first token not seen before
  stopped = _run(params, [PROMPTS[1]] * 2, sp, stop_ids=(seq[j],))
  assert int(stopped.steps) == j < 11
  np.testing.assert_array_equal(stopped.lengths, [j + 1] * 2)
  np.testing.assert_array_equal(stopped.stop_reason, [sampler.STOP_EOS] * 2)
  np.testing.assert_array_equal(stopped.tokens[:, :j + 1], free.tokens[:, :j + 1])
  np.testing.assert_array_equal(stopped.tokens[:, j + 1:], CFG.pad_id)


def test_inactive_rows_are_not_generated(params):
  out = _run(params, PROMPTS, SamplingParams(max_new_tokens=6), active=[True, False, True, False])
  np.testing.assert_array_equal(out.lengths, [6, 0, 6, 0])
  np.testing.assert_array_equal(out.stop_reason, [sampler.STOP_LENGTH, sampler.STOP_NONE] * 2)
