"""Damaged checkpoints: real orbax checkpoints with a file truncated or garbled on disk, as a full disk or a partial
copy leaves them. The newest intact step is restored with a warning, or the restore refuses, naming step and file."""
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deliberate import checkpointing


def _state(step: int):
  """Random values (they do not compress, so the arrays' bytes live in data files, not inline in the b-tree)."""
  rng = np.random.default_rng(step)
  params = {"w": jnp.asarray(rng.normal(size=(16, 64)), jnp.float32), "b": jnp.asarray(rng.normal(size=8), jnp.float32)}
  opt = optax.adam(1e-3)
  opt_state = opt.init(params)
  _, opt_state = opt.update(params, opt_state, params)  # non-zero moments
  return {"params": params, "opt_state": opt_state}


def _write(directory, steps=(1, 2, 3)):
  ckpt = checkpointing.Checkpointer(str(directory), max_to_keep=5)
  for s in steps:
    ckpt.save(s, _state(s), {"data": {"position": s}, "step": s}, force=True)
  ckpt.close()


def _array_file(directory, step: int, item: str = "params") -> str:
  """The largest OCDBT data file of an item: the one holding the (16, 64) array's bytes."""
  root = os.path.join(str(directory), str(step), item)
  files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if os.sep + "d" + os.sep in os.path.join(d, f)
           and "ocdbt.process_" in d]
  return max(files, key=os.path.getsize)


def _truncate(path: str) -> None:
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _restore_logged(ckpt, caplog, **kwargs):
  with caplog.at_level(logging.WARNING, logger="absl"):
    return ckpt.restore(_state(0), **kwargs)


def test_intact_restore_is_unchanged(tmp_path):
  _write(tmp_path / "ckpt")
  step, state, meta = checkpointing.Checkpointer(str(tmp_path / "ckpt")).restore(_state(0))
  assert step == 3 and meta["data"] == {"position": 3}
  np.testing.assert_array_equal(state["params"]["w"], _state(3)["params"]["w"])


def test_truncated_array_file_falls_back_with_one_line_naming_step_and_file(tmp_path, caplog):
  directory = tmp_path / "ckpt"
  _write(directory)
  bad = _array_file(directory, 3)
  _truncate(bad)
  ckpt = checkpointing.Checkpointer(str(directory), max_to_keep=5)
  step, state, meta = _restore_logged(ckpt, caplog)
  assert step == 2 and meta["data"] == {"position": 2}
  np.testing.assert_array_equal(state["params"]["w"], _state(2)["params"]["w"])
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), state["opt_state"], _state(2)["opt_state"])
  damage = [r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage()]
  assert len(damage) == 1 and "\n" not in damage[0]
  rel = os.path.relpath(bad, directory / "3")
  assert "checkpoint step 3" in damage[0] and rel in damage[0] and "truncated" in damage[0], damage[0]
  assert any("restored checkpoint step 2 instead of the damaged step(s) 3" in r.getMessage() for r in caplog.records)
  # The damaged step is kept for inspection, out of orbax's sight, and the resumed run can write step 3 again.
  assert ckpt.latest_step == 2 and sorted(ckpt.manager.all_steps()) == [1, 2]
  moved = os.listdir(ckpt.corrupt_directory)
  assert len(moved) == 1 and moved[0].startswith("3-")
  ckpt.save(3, _state(33), {"data": {"position": 3}}, force=True)
  ckpt.wait()
  assert checkpointing.Checkpointer(str(directory)).restore(_state(0))[0] == 3
  ckpt.close()


def test_refuses_when_fallback_is_off(tmp_path):
  directory = tmp_path / "ckpt"
  _write(directory)
  bad = _array_file(directory, 3)
  _truncate(bad)
  ckpt = checkpointing.Checkpointer(str(directory), fallback=False)
  with pytest.raises(checkpointing.CorruptCheckpointError) as info:
    ckpt.restore(_state(0))
  message = str(info.value)
  assert "\n" not in message and "checkpoint step 3" in message and os.path.relpath(bad, directory / "3") in message
  assert "checkpoint_fallback" in message
  assert info.value.__cause__ is None and info.value.__suppress_context__  # no tensorstore traceback chained on
  assert sorted(ckpt.manager.all_steps()) == [1, 2, 3]  # nothing moved
  # The argument of restore overrides the Checkpointer's default.
  assert ckpt.restore(_state(0), fallback=True)[0] == 2


def test_corrupt_json_item_is_named(tmp_path, caplog):
  directory = tmp_path / "ckpt"
  _write(directory)
  _truncate(str(directory / "3" / "meta" / "metadata"))
  step, _, _ = _restore_logged(checkpointing.Checkpointer(str(directory)), caplog)
  assert step == 2
  assert any("checkpoint step 3" in r.getMessage() and "meta/metadata is not valid JSON" in r.getMessage()
             for r in caplog.records)


def test_truncated_optimizer_state_is_caught(tmp_path, caplog):
  directory = tmp_path / "ckpt"
  _write(directory)
  _truncate(_array_file(directory, 3, "opt_state"))
  step, state, _ = _restore_logged(checkpointing.Checkpointer(str(directory)), caplog)
  assert step == 2
  np.testing.assert_array_equal(state["params"]["b"], _state(2)["params"]["b"])


def test_every_step_damaged_names_each(tmp_path):
  directory = tmp_path / "ckpt"
  _write(directory, steps=(1, 2))
  for s in (1, 2):
    _truncate(_array_file(directory, s))
  with pytest.raises(checkpointing.CorruptCheckpointError, match=r"no intact checkpoint.*step 2.*step 1"):
    checkpointing.Checkpointer(str(directory)).restore(_state(0))


def test_explicit_damaged_step_never_falls_back(tmp_path):
  directory = tmp_path / "ckpt"
  _write(directory)
  _truncate(_array_file(directory, 2))
  ckpt = checkpointing.Checkpointer(str(directory))
  with pytest.raises(checkpointing.CorruptCheckpointError, match="checkpoint step 2"):
    ckpt.restore(_state(0), step=2)
  assert ckpt.restore(_state(0), step=3)[0] == 3
  with pytest.raises(FileNotFoundError, match="no checkpoint for step 7"):
    ckpt.restore(_state(0), step=7)
