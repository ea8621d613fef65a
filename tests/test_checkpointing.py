"""Damaged checkpoints: real orbax checkpoints with a file truncated or garbled on disk, as a full disk or a partial
copy leaves them. The newest intact step is restored with a warning, or the restore refuses, naming step and file."""
import json
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


_TWO_HOSTS = '''
import json, sys
import jax, numpy as np
from deliberate import checkpointing, distributed
port, pid, directory, phase = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
distributed.initialize(f"127.0.0.1:{port}", 2, pid, initialization_timeout_s=60)
mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
def state(s):  # random rows (they land in per-process data files), each process holding its half
  rows = np.random.default_rng(s).normal(size=(8, 512)).astype(np.float32)[pid * 4:(pid + 1) * 4]
  w = distributed.global_batch(mesh, {"w": rows})["w"]
  return {"params": {"w": w}, "opt_state": {"m": w * 2}}
ckpt = checkpointing.Checkpointer(directory, max_to_keep=5)
if phase == "save":
  for s in (1, 2, 3):
    ckpt.save(s, state(s), {"step": s}, force=True)
else:
  step, restored, meta = ckpt.restore(state(0))
  total = jax.jit(lambda a: a.sum(), out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))(
      restored["params"]["w"])
  print("RESULT " + json.dumps({"step": step, "meta": meta, "sum": float(total)}), flush=True)
ckpt.close()
jax.distributed.shutdown()
'''


def _two_hosts(script, directory, phase):
  import socket
  import subprocess
  import sys
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
             PYTHONPATH=root + os.pathsep + env.get("PYTHONPATH", ""))
  procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i), str(directory), phase], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=180)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f"process {i} ({phase}) exited {p.returncode}:\n{out[-3000:]}"
  return outs


def test_two_hosts_fall_back_together(tmp_path):
  """A file of process 1's shards truncated: both hosts see it before orbax reads anything, agree, and restore the
  same older step (a host failing alone inside orbax's restore would leave the other in a collective)."""
  script, directory = tmp_path / "hosts.py", tmp_path / "ckpt"
  script.write_text(_TWO_HOSTS)
  _two_hosts(script, directory, "save")
  data = os.path.join(directory, "3", "params", "ocdbt.process_1", "d")
  bad = max((os.path.join(data, f) for f in os.listdir(data)), key=os.path.getsize)
  _truncate(bad)
  outs = _two_hosts(script, directory, "restore")
  want = float(np.random.default_rng(2).normal(size=(8, 512)).astype(np.float32).sum())
  for out in outs:
    result = json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[7:])
    assert result["step"] == 2 and result["meta"] == {"step": 2}
    np.testing.assert_allclose(result["sum"], want, rtol=1e-5)
    assert f"checkpoint step 3 in {directory} cannot be restored: {os.path.relpath(bad, directory / '3')} is " \
           "truncated" in out
  assert sorted(os.listdir(directory)) == ["1", "2"] and len(os.listdir(f"{directory}.corrupt")) == 1


def test_garbled_bytes_of_the_right_size_are_traced_to_their_file(tmp_path, caplog):
  """The file checks pass (sizes are right); the read fails; the tensorstore key is mapped back to its file."""
  directory = tmp_path / "ckpt"
  _write(directory)
  bad = _array_file(directory, 3)
  with open(bad, "r+b") as f:
    f.write(b"\xff" * os.path.getsize(bad))
  step, _, _ = _restore_logged(checkpointing.Checkpointer(str(directory)), caplog)
  assert step == 2
  line = next(r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage())
  assert "checkpoint step 3" in line and os.path.relpath(bad, directory / "3") in line and "unreadable data" in line
