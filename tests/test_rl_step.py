"""The GRPO step: pmap and Mesh-sharded jit agree with one device and with micro-batching; NaN skip; LoRA."""
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from deliberate.model import transformer
from deliberate.model.config import ModelConfig
from deliberate.rl import loss as L
from deliberate.rl import lora, optim
from deliberate.rl import step as S

CFG = ModelConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128)
B, T = 32, 24
MIN_SHARD = 256  # shard even the tiny test leaves


def _raw_batch(seed=0):
  rng = np.random.default_rng(seed)
  lens = rng.integers(12, T + 1, B)
  pos = np.where(np.arange(T) < lens[:, None], np.arange(T), -1).astype(np.int32)
  mask = ((np.arange(T) >= rng.integers(3, 10, B)[:, None]) & (pos >= 0)).astype(np.float32)
  return {"tokens_BxT": rng.integers(0, CFG.vocab_size, (B, T)), "positions_BxT": pos, "loss_mask_BxT": mask,
          "old_logprobs_BxT": rng.normal(-5.0, 0.1, (B, T)), "advantages_B": rng.normal(size=B),
          "seq_ids_B": np.arange(B) // 3}  # 3-row dialogues straddle shards and micro-batches


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.fixture(scope="module")
def sgd_steps():
  """One compiled step per layout. The normalisation mode lives in the host-side weights of `prepare_batch`, so
  one compiled step serves all three modes. SGD(1) makes the update the gradient itself (Adam's first step is
  ~lr * sign(g) and would amplify float noise in near-zero gradients)."""
  tx = optax.sgd(1.0)
  cfg = S.StepConfig(model=CFG, token_chunk=4)
  micro = S.StepConfig(model=CFG, token_chunk=4, num_micro_batches=4)
  meshes = {"one": (S.make_mesh(1, 1), cfg), "mesh4x2": (S.make_mesh(4, 2), cfg),
            "mesh8x1": (S.make_mesh(8, 1), cfg), "mesh4x2_micro4": (S.make_mesh(4, 2), micro)}
  steps = {name: (mesh, S.make_sharded_step(tx, c, mesh)) for name, (mesh, c) in meshes.items()}
  return tx, steps, S.make_pmap_step(tx, cfg)


@pytest.mark.parametrize("mode", L.NORM_MODES)
def test_pmap_sharded_and_micro_batched_steps_give_the_same_update(sgd_steps, mode):
  tx, steps, pmap_step = sgd_steps
  params = transformer.init_params(CFG, jax.random.key(0))
  batch = L.prepare_batch(_raw_batch(), L.LossConfig(norm_mode=mode, norm_constant=300.0))
  results = {}
  for name, (mesh, step) in steps.items():
    state = S.init_sharded_state(params, tx, mesh, MIN_SHARD)
    new, metrics = step(state, None, batch)
    results[name] = (_host(new["params"]), L.finalize_metrics(metrics))
  new, metrics = pmap_step(S.replicate({"params": params, "opt_state": tx.init(params)}, 8), None, batch)
  results["pmap8"] = (_host(S.unreplicate(new)["params"]), L.finalize_metrics(metrics))

  base_params, base_metrics = results.pop("one")
  assert base_metrics["skipped"] == 0.0 and base_metrics["tokens"] == batch["loss_mask_BxT"].sum()
  moved = max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(base_params), jax.tree.leaves(params)))
  assert moved > 1e-3
  for name, (p, m) in results.items():
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(base_params)):
      np.testing.assert_allclose(a, b, atol=1e-6, rtol=0, err_msg=name)
    for key in ("loss", "ratio", "entropy", "clip_low_frac", "ratio_max", "grad_norm"):
      assert m[key] == pytest.approx(base_metrics[key], rel=1e-5), (name, key)


def test_params_and_optimizer_state_are_sharded_along_fsdp():
  mesh = S.make_mesh(2, 4)
  tx, _ = optim.make_optimizer(optim.default_config())
  state = S.init_sharded_state(transformer.init_params(CFG, jax.random.key(0)), tx, mesh, MIN_SHARD)
  assert state["params"]["layers"]["w_up"].sharding.spec == P(None, None, "fsdp")  # [L, 64, 128]: 128 is largest
  assert state["params"]["embed"].sharding.spec == P("fsdp", None)
  assert state["params"]["final_norm"].sharding.spec == P()  # small leaves stay replicated
  mu = optax.tree_utils.tree_get(state["opt_state"], "mu")
  assert mu["layers"]["wq"].sharding.spec == P(None, "fsdp", None)
  assert mu["layers"]["wq"].addressable_shards[0].data.shape == (2, 16, 64)


def test_lora_step_trains_only_adapters_and_skips_nan_updates():
  mesh = S.make_mesh(4, 2)
  ocfg = optim.default_config()
  ocfg.learning_rate = 1e-2
  tx, _ = optim.make_optimizer(ocfg)
  cfg = S.StepConfig(model=CFG, lora=lora.LoraConfig(rank=4, alpha=8.0, targets=("wq", "wv", "w_up")),
                     token_chunk=8)
  base = transformer.cast_params(transformer.init_params(CFG, jax.random.key(0)), "bfloat16")
  state, frozen = S.init_state(base, tx, cfg, jax.random.key(1))
  base_before = _host(frozen)
  state = S.init_sharded_state(state["params"], tx, mesh, MIN_SHARD)
  frozen = jax.device_put(frozen, S.fsdp_shardings(frozen, mesh, MIN_SHARD))
  step = S.make_sharded_step(tx, cfg, mesh)
  batch = L.prepare_batch(_raw_batch(1), cfg.loss)

  poisoned = dict(batch, old_logprobs_BxT=batch["old_logprobs_BxT"].copy())
  poisoned["old_logprobs_BxT"][batch["loss_mask_BxT"] > 0] = np.nan
  before = _host(state)
  state, metrics = step(state, frozen, poisoned)
  assert L.finalize_metrics(metrics)["skipped"] == 1.0
  for a, b in zip(jax.tree.leaves(_host(state)), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)  # params and optimizer state (its step count included) untouched

  state, metrics = step(state, frozen, batch)
  m = L.finalize_metrics(metrics)
  assert m["skipped"] == 0.0 and np.isfinite(m["loss"]) and m["grad_norm"] > 0
  after = _host(state)
  assert np.abs(after["params"]["wq"]["b"]).max() > 1e-3  # b leaves zero: the adapters learn
  counts = optax.tree_utils.tree_get_all_with_path(after["opt_state"], "count")
  assert counts and all(int(c) == 1 for _, c in counts)  # the skipped step did not count
  for a, b in zip(jax.tree.leaves(_host(frozen)), jax.tree.leaves(base_before)):
    np.testing.assert_array_equal(a, b)  # the frozen base is never touched


def test_indivisible_batch_is_refused(sgd_steps):
  _, steps, pmap_step = sgd_steps
  batch = L.prepare_batch({k: v[:30] for k, v in _raw_batch().items()}, L.LossConfig())
  with pytest.raises(ValueError, match="30 rows do not split into 8 shards"):
    pmap_step(None, None, batch)
  with pytest.raises(ValueError, match="4 micro-batches"):
    steps["mesh4x2_micro4"][1](None, None, batch)
