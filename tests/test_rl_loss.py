"""The clipped surrogate, k3 KL, the three normalisation modes and their (sum, count) exactness."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deliberate.rl import loss as L

B, T = 6, 10


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  pos = np.tile(np.arange(T), (B, 1)).astype(np.int32)
  pos[1, 8:] = -1
  mask = (np.arange(T) >= rng.integers(2, 6, B)[:, None]).astype(np.float32) * (pos >= 0)
  return {"tokens_BxT": rng.integers(0, 50, (B, T)), "positions_BxT": pos, "loss_mask_BxT": mask,
          "old_logprobs_BxT": rng.normal(-2.0, 0.3, (B, T)), "ref_logprobs_BxT": rng.normal(-2.0, 0.3, (B, T)),
          "advantages_B": rng.normal(size=B), "seq_ids_B": np.array([0, 0, 0, 1, 2, 2])}


def _per_token(lp, batch, eps_lo, eps_hi, beta):
  ratio = np.exp(lp - batch["old_logprobs_BxT"])
  a = batch["advantages_B"][:, None]
  loss = -np.minimum(ratio * a, np.clip(ratio, 1 - eps_lo, 1 + eps_hi) * a)
  d = batch["ref_logprobs_BxT"] - lp
  return loss + beta * (np.exp(d) - d - 1)


@pytest.mark.parametrize("mode", L.NORM_MODES)
def test_modes_match_their_definitions(mode):
  cfg = L.LossConfig(clip_eps_low=0.2, clip_eps_high=0.28, beta=0.04, norm_mode=mode, norm_constant=37.0)
  raw = _batch()
  batch = L.prepare_batch(raw, cfg)
  lp = raw["old_logprobs_BxT"] + np.random.default_rng(3).normal(0, 0.3, (B, T))
  per_tok = _per_token(lp, raw, 0.2, 0.28, 0.04) * batch["loss_mask_BxT"]
  if mode == "token_sum":
    want = per_tok.sum() / batch["loss_mask_BxT"].sum()
  elif mode == "constant":
    want = per_tok.sum() / 37.0
  else:
    seqs = raw["seq_ids_B"]
    want = np.mean([per_tok[seqs == s].sum() / batch["loss_mask_BxT"][seqs == s].sum() for s in np.unique(seqs)])
  loss_sum, metrics = L.policy_loss(jnp.asarray(lp, jnp.float32), jnp.zeros((B, T)), batch, cfg)
  np.testing.assert_allclose(float(loss_sum) / batch["norm_counts_B"].sum(), want, rtol=1e-5)
  assert L.finalize_metrics(metrics)["loss"] == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("mode", L.NORM_MODES)
def test_sum_count_pairs_are_exact_over_any_row_split(mode):
  """A sequence split across shards still counts once: shard metrics combine to the whole batch's."""
  cfg = L.LossConfig(norm_mode=mode, norm_constant=50.0)
  batch = L.prepare_batch(_batch(1), cfg)
  lp = jnp.asarray(batch["old_logprobs_BxT"] + 0.1, jnp.float32)
  ent = jnp.ones((B, T))
  _, whole = L.policy_loss(lp, ent, batch, cfg)
  parts = [L.policy_loss(lp[r], ent[r], {k: v[r] for k, v in batch.items()}, cfg)[1]
           for r in (np.array([0, 3]), np.array([1, 2, 4, 5]))]  # sequence 0 and 2 straddle both parts
  combined = L.combine_metrics(*parts)
  a, b = L.finalize_metrics(whole), L.finalize_metrics(combined)
  for name in a:
    assert a[name] == pytest.approx(b[name], rel=1e-6), name


def test_clipping_and_metrics_on_a_hand_made_batch():
  cfg = L.LossConfig(clip_eps_low=0.2, clip_eps_high=0.2)
  raw = {"tokens_BxT": np.zeros((2, 3)), "positions_BxT": np.tile(np.arange(3), (2, 1)),
         "loss_mask_BxT": np.array([[0, 1, 1], [0, 1, 1]]), "old_logprobs_BxT": np.zeros((2, 3)),
         "advantages_B": np.array([1.0, -1.0]), "seq_ids_B": np.array([0, 1])}
  batch = L.prepare_batch(raw, cfg)
  lp = jnp.log(jnp.array([[1.0, 1.5, 0.9], [1.0, 0.5, 1.1]]))  # ratios
  loss_sum, metrics = L.policy_loss(lp, jnp.zeros((2, 3)), batch, cfg)
  # A=+1: min(1.5, 1.2) = 1.2, min(0.9, 0.9) = 0.9.  A=-1: min(-0.5, -0.8) = -0.8, min(-1.1, -1.1) = -1.1.
  assert float(loss_sum) == pytest.approx(-(1.2 + 0.9 - 0.8 - 1.1), abs=1e-6)
  m = L.finalize_metrics(metrics)
  assert m["clip_high_frac"] == 0.25 and m["clip_low_frac"] == 0.25 and m["tokens"] == 4
  assert m["ratio_min"] == pytest.approx(0.5) and m["ratio_max"] == pytest.approx(1.5)
  assert m["kl"] == 0.0 and m["advantage_min"] == -1.0


def test_k3_kl_is_zero_at_reference_and_positive_elsewhere():
  cfg = L.LossConfig(beta=1.0)
  raw = _batch()
  raw["advantages_B"] = np.zeros(B)
  batch = L.prepare_batch(raw, cfg)
  at_ref, _ = L.policy_loss(jnp.asarray(batch["ref_logprobs_BxT"]), jnp.zeros((B, T)), batch, cfg)
  away, m = L.policy_loss(jnp.asarray(batch["ref_logprobs_BxT"] + 0.5), jnp.zeros((B, T)), batch, cfg)
  assert float(at_ref) == pytest.approx(0.0, abs=1e-6)
  assert L.finalize_metrics(m)["kl"] == pytest.approx(np.exp(-0.5) + 0.5 - 1, rel=1e-5)


def test_excluded_rows_leave_the_denominator():
  cfg = L.LossConfig(norm_mode="seq_mean_token_mean")
  raw = _batch()
  raw["sample_weights_B"] = np.array([1, 1, 1, 0, 1, 1])  # sequence 1 excluded
  batch = L.prepare_batch(raw, cfg)
  assert batch["loss_weights_B"][3] == 0 and batch["norm_counts_B"].sum() == pytest.approx(2.0)


@pytest.mark.parametrize("edit, match", [
    (lambda b: b.pop("advantages_B"), "missing field 'advantages_B'"),
    (lambda b: b.update(old_logprobs_BxT=np.zeros((B, T + 1))), "old_logprobs_BxT has shape"),
    (lambda b: b["loss_mask_BxT"].__setitem__((0, 0), 1.0), "position 0"),
    (lambda b: b["loss_mask_BxT"].__setitem__((1, 9), 1.0), "padding"),
    (lambda b: b["old_logprobs_BxT"].__setitem__((0, 9), np.nan), "old_logprobs_BxT holds non-finite"),
    (lambda b: b.pop("ref_logprobs_BxT"), "beta > 0 needs"),
])
def test_bad_batches_name_the_field(edit, match):
  raw = _batch()
  edit(raw)
  with pytest.raises(ValueError, match=match):
    L.prepare_batch(raw, L.LossConfig(beta=0.1))


def test_bad_config():
  with pytest.raises(ValueError, match="norm_mode"):
    L.LossConfig(norm_mode="mean")
  with pytest.raises(ValueError, match="norm_constant"):
    L.LossConfig(norm_mode="constant")


def test_recomputed_old_logprobs_give_ratio_one_and_the_on_policy_gradient():
  """old_logprobs='recompute': whatever the sampler's log-probs (here 0.3 nats off), the ratio is exactly 1, nothing
  is clipped, and the gradient is the one 'sampler' gives when the sampler agrees with the trainer; the gap is
  logged. Under 'sampler' the same gap clips tokens and changes the gradient."""
  raw = _batch(2)
  lp = jnp.asarray(raw["old_logprobs_BxT"], jnp.float32)
  skewed = dict(raw, old_logprobs_BxT=raw["old_logprobs_BxT"] - 0.3 * np.sign(raw["advantages_B"])[:, None])
  grad = lambda batch, cfg: jax.grad(lambda x: L.policy_loss(x, jnp.zeros((B, T)), batch, cfg)[0])(lp)
  rec, smp = L.LossConfig(old_logprobs="recompute"), L.LossConfig(old_logprobs="sampler")
  g_rec = grad(L.prepare_batch(skewed, rec), rec)
  g_on = grad(L.prepare_batch(raw, smp), smp)                      # the sampler agreeing exactly
  g_skew = grad(L.prepare_batch(skewed, smp), smp)
  np.testing.assert_allclose(np.asarray(g_rec), np.asarray(g_on), rtol=1e-6)
  assert np.abs(np.asarray(g_skew) - np.asarray(g_on)).max() > 1e-3
  m = L.finalize_metrics(L.policy_loss(lp, jnp.zeros((B, T)), L.prepare_batch(skewed, rec), rec)[1])
  assert m["ratio_min"] == m["ratio_max"] == 1.0 and m["clip_low_frac"] == m["clip_high_frac"] == 0.0
  assert m["sampler_log_ratio_abs_max"] == pytest.approx(0.3, rel=1e-5)
  m_smp = L.finalize_metrics(L.policy_loss(lp, jnp.zeros((B, T)), L.prepare_batch(skewed, smp), smp)[1])
  assert m_smp["clip_low_frac"] + m_smp["clip_high_frac"] > 0


def test_old_logprobs_source_is_checked():
  with pytest.raises(ValueError, match="LossConfig.old_logprobs"):
    L.LossConfig(old_logprobs="trainer")
