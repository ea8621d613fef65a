"""Policies from a trained run: real orbax checkpoints written as the trainer writes them; LoRA adapters stay apart."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deliberate import checkpointing
from deliberate import policy
from deliberate.model import transformer
from deliberate.rl import lora, step as step_lib


def _save(workdir, steps_states):
  ckpt = checkpointing.Checkpointer(str(workdir / "checkpoints"), max_to_keep=5)
  for step, state in steps_states:
    ckpt.save(step, state, {"step": step, "seed": 0}, force=True)
  ckpt.close()


def _lora_state(params, model_config, b_value, key=0):
  cfg = step_lib.StepConfig(model=model_config, lora=lora.LoraConfig(rank=4, alpha=8.0, targets=("wq", "w_up")))
  opt = optax.adamw(1e-3)
  state, _ = step_lib.init_state(params, opt, cfg, jax.random.key(key))
  for name in state["params"]:
    state["params"][name]["b"] = jnp.full_like(state["params"][name]["b"], b_value)
  state["opt_state"] = opt.init(state["params"])
  return state


def test_lora_checkpoint_restores_adapters_on_their_own_path(tiny_policy, tmp_path):
  """The base comes back as given and the adapters beside it (never merged into the base's dtype); the forward with
  them is the float32 merge's forward."""
  params, config = tiny_policy
  s3, s5 = _lora_state(params, config, 0.01), _lora_state(params, config, 0.02)
  _save(tmp_path, [(3, s3), (5, s5)])
  base, adapters, info = policy.restore_params(str(tmp_path), params, lora_alpha=8.0)
  assert info == {"workdir": str(tmp_path), "step": 5, "kind": "lora", "rank": 4, "alpha": 8.0}
  assert base is params and adapters.scale == 8.0 / 4 and adapters.dtype == "float32"
  jax.tree.map(np.testing.assert_array_equal, adapters.params, s5["params"])
  tokens = jnp.arange(12, dtype=jnp.int32)[None] % config.vocab_size
  positions = jnp.arange(12, dtype=jnp.int32)[None]
  with_adapters = transformer.apply(base, tokens, positions, config=config, lora=adapters)[0]
  merged = transformer.apply(lora.merge(params, s5["params"], 8.0, 4), tokens, positions, config=config)[0]
  plain = transformer.apply(params, tokens, positions, config=config)[0]
  np.testing.assert_allclose(with_adapters, merged, rtol=1e-4, atol=1e-4)
  assert np.abs(np.asarray(with_adapters) - np.asarray(plain)).max() > 1e-3     # the adapters moved it
  _, older, info = policy.restore_params(str(tmp_path), params, step=3, lora_alpha=8.0)
  assert info["step"] == 3
  np.testing.assert_array_equal(older.params["w_up"]["b"], s3["params"]["w_up"]["b"])


def test_full_finetune_checkpoint(tiny_policy, tmp_path):
  params, config = tiny_policy
  trained = jax.tree.map(lambda x: x + 0.5, params)
  _save(tmp_path, [(2, {"params": trained, "opt_state": optax.sgd(0.1).init(trained)})])
  restored, adapters, info = policy.restore_params(str(tmp_path), params)
  assert info["kind"] == "full" and info["step"] == 2 and adapters is None
  jax.tree.map(np.testing.assert_array_equal, restored, trained)


def test_mismatches_are_named(tiny_policy, tmp_path):
  params, config = tiny_policy
  with pytest.raises(FileNotFoundError, match="no checkpoints/ directory"):
    policy.restore_params(str(tmp_path / "nowhere"), params)
  other = {"embed": jnp.zeros((3, 4))}
  _save(tmp_path / "other", [(1, {"params": other, "opt_state": optax.sgd(0.1).init(other)})])
  with pytest.raises(ValueError, match="neither LoRA adapters nor the base model's params"):
    policy.restore_params(str(tmp_path / "other"), params)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 7 \(have \[1\]\)"):
    policy.restore_params(str(tmp_path / "other"), params, step=7)
  one_layer = jax.tree.map(lambda x: x, params)
  one_layer["layers"] = {k: v[:1] for k, v in params["layers"].items()}
  _save(tmp_path / "deeper", [(1, _lora_state(params, config, 0.01))])
  with pytest.raises(ValueError, match=r"adapter w\w+ \(2, 64, 4\) does not fit the base model"):
    policy.restore_params(str(tmp_path / "deeper"), one_layer)
