"""Packed batches (rows end to end, segment ids, positions restarting per row) give the padded batch's loss and
gradient, in every norm mode and through both step kinds; without the segment mask they would not."""
import jax
import numpy as np
import optax
import pytest

from deliberate import trainer
from deliberate.model import transformer
from deliberate.model.config import ModelConfig
from deliberate.rl import batch as batch_lib, loss as loss_lib, step as step_lib
from deliberate.rl.batch import Row

CFG = ModelConfig(vocab_size=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
                  max_seq_len=256)
LENGTH = 40


def _rows(n: int = 12, seed: int = 0) -> list[Row]:
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(n):
    p, r = int(rng.integers(3, 14)), int(rng.integers(2, 9))
    rows.append(Row(rng.integers(1, CFG.vocab_size, p).tolist(), rng.integers(1, CFG.vocab_size, r).tolist(),
                    (-rng.uniform(0.5, 4.0, r)).tolist(), sequence=i // 3, agent=1 + i % 2))
  return rows


ADV = np.array([0.7, 0.0, -1.1, 0.4], np.float32)  # sequence 1 carries no signal


def _both(mode: str, skip_zero: bool, multiple: int = 1):
  cfg = loss_lib.LossConfig(norm_mode=mode, norm_constant=37.0)
  kw = dict(pad_id=0, multiple=multiple, loss_cfg=cfg, skip_zero=skip_zero)
  return (trainer.step_batch(_rows(), ADV, **kw), trainer.step_batch(_rows(), ADV, pack_length=LENGTH, **kw))


def test_pack_layout_restarts_positions_and_keeps_every_token():
  padded, packed = _both("token_sum", skip_zero=False)
  assert packed["tokens_BxT"].shape[1] == LENGTH
  assert len(packed["tokens_BxT"]) < len(padded["tokens_BxT"])  # fewer, fuller sequences
  seg, pos = packed["segments_BxT"], packed["positions_BxT"]
  starts = (pos == 0)
  np.testing.assert_array_equal(starts, packed["row_starts_BxT"] > 0)
  assert starts.sum() == 12 and (seg[pos < 0] == 0).all() and (seg[pos >= 0] > 0).all()
  assert packed["loss_mask_BxT"].sum() == padded["loss_mask_BxT"].sum()
  np.testing.assert_allclose(packed["norm_counts_B"].sum(), padded["norm_counts_B"].sum(), rtol=1e-6)
  # every packed token's advantage is its row's
  np.testing.assert_allclose(sorted(packed["advantages_BxT"][starts]), sorted(padded["advantages_B"][:12]))


def test_a_row_longer_than_the_pack_length_is_refused_naming_the_field():
  with pytest.raises(ValueError, match="config.rl.pack_length=8"):
    trainer.step_batch(_rows(), ADV, pad_id=0, multiple=1, loss_cfg=loss_lib.LossConfig(), skip_zero=False,
                       pack_length=8)


_GRADS = jax.jit(step_lib._grads, static_argnums=(4, 5))  # one compiled function for every test of this file
# The norm mode lives in the host-side weights (loss.prepare_batch): one compiled config serves all three.
STEP_CFG = step_lib.StepConfig(model=CFG, loss=loss_lib.LossConfig(), temperature=0.7)


@pytest.fixture(scope="module")
def params():
  return transformer.init_params(CFG, jax.random.key(1))


def _value_and_grads(fn, params, b, cfg):
  g = batch_lib.graph_batch(b)
  k = int(g["loss_mask_BxT"].sum(1).max())
  value, grads, metrics = fn(params, None, g, np.float32(b["norm_counts_B"].sum()), cfg, k)
  return float(value), grads, loss_lib.finalize_metrics(metrics)


def test_no_sequence_holds_more_targets_than_its_budget_and_an_oversized_row_names_the_field():
  """The budget is the step's fixed output-layer bound (rl/step.py), so the packer must never exceed it."""
  cfg = loss_lib.LossConfig()
  kw = dict(pad_id=0, multiple=1, loss_cfg=cfg, skip_zero=False, pack_length=LENGTH)
  for budget in (8, 12, 0):
    packed = trainer.step_batch(_rows(), ADV, pack_targets=budget, **kw)
    per_seq = packed["loss_mask_BxT"].sum(-1)
    assert per_seq.max() <= batch_lib.targets_budget(LENGTH, budget), (budget, per_seq)
    assert packed["loss_mask_BxT"].sum() == sum(len(r.response_ids) for r in _rows())
  assert trainer.step_batch(_rows(), ADV, pack_targets=8, **kw)["tokens_BxT"].shape[0] > \
      trainer.step_batch(_rows(), ADV, pack_targets=0, **kw)["tokens_BxT"].shape[0]
  with pytest.raises(ValueError, match="config.rl.pack_targets=4"):
    trainer.step_batch(_rows(), ADV, pack_targets=4, **kw)


@pytest.mark.parametrize("skip_zero", [False, True])
@pytest.mark.parametrize("mode", loss_lib.NORM_MODES)
def test_packed_and_padded_give_the_same_loss_and_gradient(params, mode, skip_zero):
  padded, packed = _both(mode, skip_zero)
  v0, g0, m0 = _value_and_grads(_GRADS, params, padded, STEP_CFG)
  v1, g1, m1 = _value_and_grads(_GRADS, params, packed, STEP_CFG)
  assert v1 == pytest.approx(v0, rel=1e-5, abs=1e-7)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-7)
  for name in ("tokens", "entropy", "ratio", "advantage", "advantage_min", "advantage_max"):
    assert m1[name] == pytest.approx(m0[name], rel=1e-5, abs=1e-6), name
  assert m1["rows"] == (9 if skip_zero else 12)


def test_without_the_segment_mask_rows_would_see_each_other(params):
  padded, packed = _both("token_sum", skip_zero=False)
  leaky = {**packed, "segments_BxT": (packed["segments_BxT"] > 0).astype(np.int32)}
  v0, _, _ = _value_and_grads(_GRADS, params, padded, STEP_CFG)
  v1, _, _ = _value_and_grads(_GRADS, params, leaky, STEP_CFG)
  assert abs(v1 - v0) > 1e-3 * abs(v0)


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.mark.parametrize("kind", ["pmap", "sharded"])
def test_both_step_kinds_give_the_padded_update_in_fixed_shape_calls(params, kind):
  """SGD(1): the update is the gradient. Two devices; a packed step runs in calls of one sequence per device."""
  tx = optax.sgd(1.0)
  cfg = STEP_CFG
  padded, packed = _both("seq_mean_token_mean", skip_zero=True, multiple=2)
  assert len(packed["tokens_BxT"]) > 2  # several calls
  out = []
  mesh = step_lib.make_mesh(2, 1)
  step = (step_lib.make_pmap_step(tx, cfg, jax.local_devices()[:2]) if kind == "pmap" else
          step_lib.make_sharded_step(tx, cfg, mesh))  # one step for both layouts: only the gradient call recompiles
  for b in (padded, packed):
    if kind == "pmap":
      new, metrics = step(step_lib.replicate({"params": params, "opt_state": tx.init(params)}, 2), None, b)
      new = step_lib.unreplicate(new)
    else:
      new, metrics = step(step_lib.init_sharded_state(params, tx, mesh), None, b)
    out.append((_host(new["params"]), loss_lib.finalize_metrics(metrics)))
  (p0, m0), (p1, m1) = out
  assert m1["loss"] == pytest.approx(m0["loss"], rel=1e-5, abs=1e-7)
  assert m1["grad_norm"] == pytest.approx(m0["grad_norm"], rel=1e-4)
  for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


def _group_rows(seed: int = 0) -> list[Row]:
  """Two agents x three dialogues x two turns: an agent's rows share its system prefix, and its opening turns
  share their whole prompt (as the G dialogues of a negotiation group do)."""
  rng = np.random.default_rng(seed)
  rows = []
  for agent in (1, 2):
    system = rng.integers(1, CFG.vocab_size, 9).tolist()
    opening = rng.integers(1, CFG.vocab_size, 3).tolist()
    for d in range(3):
      for turn in range(2):
        prompt = system + (opening if turn == 0 else rng.integers(1, CFG.vocab_size, 6).tolist())
        r = int(rng.integers(2, 7))
        rows.append(Row(prompt, rng.integers(1, CFG.vocab_size, r).tolist(), (-rng.uniform(0.5, 4.0, r)).tolist(),
                        sequence=d, agent=agent))
  return rows


def _shared(share: bool):
  kw = dict(pad_id=0, multiple=1, loss_cfg=loss_lib.LossConfig(norm_mode="seq_mean_token_mean"), skip_zero=True)
  return (trainer.step_batch(_group_rows(), ADV[:3], **kw),
          trainer.step_batch(_group_rows(), ADV[:3], pack_length=LENGTH * 2, share_prefix=share, **kw))


def test_rows_sharing_a_prompt_prefix_pay_for_it_once():
  padded, unshared = _shared(False)
  _, shared = _shared(True)
  tokens = lambda b: int((b["positions_BxT"] >= 0).sum())
  rows = [r for r in _group_rows() if ADV[r.sequence] != 0]
  assert tokens(unshared) == sum(len(r.prompt_ids) + len(r.response_ids) for r in rows)
  # each agent's 4 trained rows (2 dialogues of advantage != 0, 2 turns) lay out its 9-token system prefix once
  assert tokens(shared) == tokens(unshared) - 2 * 3 * 9
  assert (shared["parents_BxT"] > 0).any() and not unshared["parents_BxT"].any()
  assert shared["loss_mask_BxT"].sum() == padded["loss_mask_BxT"].sum() == unshared["loss_mask_BxT"].sum()
  assert shared["row_starts_BxT"].sum() == len(rows)
  # a prefix token never carries a target, and a row's first target's predecessor is in the row itself
  prefix = np.isin(shared["segments_BxT"], shared["parents_BxT"][shared["parents_BxT"] > 0])
  assert not (shared["loss_mask_BxT"][prefix] > 0).any()


def test_a_shared_prefix_gives_the_padded_loss_and_gradient_and_is_read_through_the_parent_ids(params):
  padded, _ = _shared(False)
  _, shared = _shared(True)
  v0, g0, m0 = _value_and_grads(_GRADS, params, padded, STEP_CFG)
  v1, g1, m1 = _value_and_grads(_GRADS, params, shared, STEP_CFG)
  assert v1 == pytest.approx(v0, rel=1e-5, abs=1e-7)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-7)
  for name in ("tokens", "entropy", "rows", "advantage"):
    assert m1[name] == pytest.approx(m0[name], rel=1e-5, abs=1e-6), name
  orphaned = {**shared, "parents_BxT": np.zeros_like(shared["parents_BxT"])}  # rows blind to their prefix
  v2, _, _ = _value_and_grads(_GRADS, params, orphaned, STEP_CFG)
  assert abs(v2 - v0) > 1e-3 * abs(v0)
