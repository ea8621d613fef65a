"""The batch schema: leaving out rows of zero advantage gives the same loss and gradient, with the same normaliser."""
import jax
import numpy as np
import pytest

from deliberate import trainer
from deliberate.rl import batch as batch_lib, loss as loss_lib, step as step_lib
from deliberate.rl.batch import Row


def _rows(vocab: int, n: int = 8, seed: int = 0) -> list[Row]:
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(n):
    p, r = int(rng.integers(3, 9)), int(rng.integers(2, 7))
    rows.append(Row(rng.integers(1, vocab, p).tolist(), rng.integers(1, vocab, r).tolist(),
                    (-rng.uniform(0.5, 4.0, r)).tolist(), sequence=i // 2, agent=1 + i % 2))
  return rows


ADV = np.array([0.7, 0.0, -1.1, 0.0], np.float32)  # sequences 1 and 3 carry no signal


@pytest.mark.parametrize("mode", ["token_sum", "seq_mean_token_mean", "constant"])
def test_skip_keeps_the_normaliser(mode):
  cfg = loss_lib.LossConfig(norm_mode=mode, norm_constant=37.0)
  kw = dict(pad_id=0, multiple=2, loss_cfg=cfg)
  full = trainer.step_batch(_rows(50), ADV, skip_zero=False, **kw)
  skip = trainer.step_batch(_rows(50), ADV, skip_zero=True, **kw)
  assert len(skip["tokens_BxT"]) < len(full["tokens_BxT"])
  assert set(skip["seq_ids_B"][skip["seq_ids_B"] >= 0]) == {0, 2}
  np.testing.assert_allclose(skip["norm_counts_B"].sum(), full["norm_counts_B"].sum(), rtol=1e-6)


def test_skip_gives_the_same_loss_and_gradient(tiny_policy):
  params, config = tiny_policy
  cfg = step_lib.StepConfig(model=config, loss=loss_lib.LossConfig(), temperature=0.7)
  grads_fn = jax.jit(step_lib._grads, static_argnums=(4, 5))  # compiled: far faster than op by op on CPU
  out = {}
  for skip in (False, True):
    b = trainer.step_batch(_rows(config.vocab_size), ADV, pad_id=0, multiple=2, loss_cfg=cfg.loss, skip_zero=skip)
    b = batch_lib.graph_batch(b)
    k = int(b["loss_mask_BxT"].sum(1).max())
    value, grads, _ = grads_fn(params, None, b, np.float32(b["norm_counts_B"].sum()), cfg, k)
    out[skip] = (float(value), grads)
  assert out[True][0] == pytest.approx(out[False][0], rel=1e-5, abs=1e-7)
  for a, b in zip(jax.tree.leaves(out[False][1]), jax.tree.leaves(out[True][1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


def test_no_signal_no_step():
  assert trainer.step_batch(_rows(50), np.zeros(4, np.float32), pad_id=0, multiple=2,
                            loss_cfg=loss_lib.LossConfig(), skip_zero=True) is None
