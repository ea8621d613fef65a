"""AdamW with warmup + cosine/constant schedules, global-norm clipping and no decay on norms."""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deliberate.rl import optim


def _cfg(**kw):
  cfg = optim.default_config()
  cfg.update(kw)
  return cfg


def test_warmup_then_cosine():
  _, schedule = optim.make_optimizer(_cfg(learning_rate=1.0, warmup_steps=10, total_steps=110, schedule="cosine"))
  assert float(schedule(0)) == 0.0 and float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(60)) == pytest.approx(0.5, abs=1e-6)
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-6)


def test_constant_schedule_without_warmup():
  _, schedule = optim.make_optimizer(_cfg(learning_rate=5e-6, schedule="constant"))
  assert float(schedule(0)) == pytest.approx(5e-6) and float(schedule(1000)) == pytest.approx(5e-6)


def test_clipping_and_decay_mask():
  tx, _ = optim.make_optimizer(_cfg(learning_rate=0.1, max_grad_norm=1.0, weight_decay=0.5))
  params = {"w": jnp.ones((2, 2)), "attn_norm": jnp.ones((2,))}
  grads = {"w": jnp.zeros((2, 2)), "attn_norm": jnp.zeros((2,))}
  updates, state = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.1 * 0.5, rtol=1e-6)  # decoupled decay only
  np.testing.assert_array_equal(updates["attn_norm"], 0.0)  # norms are not decayed
  big = {"w": jnp.full((2, 2), 100.0), "attn_norm": jnp.zeros((2,))}
  _, state = tx.update(big, state, params)
  mu = optax.tree_utils.tree_get(state, "mu")  # (1 - b1) * the clipped gradient
  assert float(optax.tree.norm(mu)) == pytest.approx(0.1 * 1.0, rel=1e-5)


def test_bad_schedule():
  with pytest.raises(ValueError, match="schedule"):
    optim.make_optimizer(_cfg(schedule="linear"))
  with pytest.raises(ValueError, match="total_steps"):
    optim.make_optimizer(_cfg(schedule="cosine", warmup_steps=10, total_steps=10))
