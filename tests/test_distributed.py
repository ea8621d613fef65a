"""jax.distributed for real: two processes on 127.0.0.1 with CPU (gloo) collectives, each holding half the batch."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from deliberate import distributed

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORKER = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from deliberate import distributed
    port, pid = sys.argv[1], int(sys.argv[2])
    how = distributed.initialize(f"127.0.0.1:{port}", 2, pid, initialization_timeout_s=60)
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    full = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)            # the global batch: 8 rows
    rows = full[pid * 4:(pid + 1) * 4]                                  # this process's 4 rows
    batch = distributed.global_batch(mesh, {"x": rows, "w": rows[:, 0]})
    total = float(jax.jit(jnp.sum)(batch["x"]))
    weighted = float(jax.jit(lambda x, w: (x.sum(1) * w).sum())(batch["x"], batch["w"]))
    row_sums = jax.jit(lambda x: x.sum(1), out_shardings=jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))(batch["x"])                 # replicated: readable on every process
    try:
      distributed.check_divides(6, "config.data.prompts_per_step")
      refused = ""
    except ValueError as e:
      refused = str(e)
    print("RESULT " + json.dumps(dict(
        how=how, process_index=jax.process_index(), process_count=jax.process_count(),
        devices=jax.device_count(), local_devices=jax.local_device_count(), main=distributed.is_main_process(),
        shape=list(batch["x"].shape), total=total, weighted=weighted, row_sums=np.asarray(row_sums).tolist(),
        refused=refused, again=distributed.initialize(f"127.0.0.1:{port}", 2, pid))), flush=True)
    jax.distributed.shutdown()
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_assemble_and_sum_a_global_batch(tmp_path):
  script = tmp_path / "worker.py"
  script.write_text(_WORKER)
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
             PYTHONPATH=_ROOT + os.pathsep + env.get("PYTHONPATH", ""))
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=180)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{out[-3000:]}"
  results = [json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[7:]) for out in outs]
  full = [[3 * r + c for c in range(3)] for r in range(8)]
  want_rows = [float(sum(row)) for row in full]
  for i, r in enumerate(results):
    assert r["how"] == "explicit" and r["again"] == "already"
    assert (r["process_index"], r["process_count"], r["devices"], r["local_devices"]) == (i, 2, 4, 2)
    assert r["main"] == (i == 0)
    assert r["shape"] == [8, 3]
    assert r["total"] == sum(want_rows) == 276.0
    assert r["weighted"] == sum(s * row[0] for s, row in zip(want_rows, full))
    assert r["row_sums"] == want_rows
    assert r["refused"] == "config.data.prompts_per_step=6: 3 per process does not divide over 2 shards per " \
                           "process (2 processes x 2 local devices)"


@pytest.mark.parametrize("kwargs,missing", [
    (dict(coordinator_address="10.0.0.1:1234"), "--num_processes, --process_id"),
    (dict(num_processes=2, process_id=0), "--coordinator_address"),
    (dict(coordinator_address="10.0.0.1:1234", num_processes=2), "--process_id"),
])
def test_explicit_flags_come_together(kwargs, missing):
  with pytest.raises(ValueError, match=f"distributed: {missing} missing"):
    distributed.initialize(**kwargs)


def test_explicit_flags_are_checked():
  with pytest.raises(ValueError, match="not host:port"):
    distributed.initialize("10.0.0.1", 2, 0)
  with pytest.raises(ValueError, match=r"--process_id=2 is outside \[0, --num_processes=2\)"):
    distributed.initialize("10.0.0.1:1234", 2, 2)


def test_no_cluster_means_single_process(monkeypatch):
  for k in list(os.environ):
    if k.startswith(("SLURM_", "OMPI_", "TPU_", "KUBERNETES_")):
      monkeypatch.delenv(k)
  assert distributed.detect_cluster() is None
  assert distributed.initialize() == "single"


def test_slurm_is_detected(monkeypatch):
  for k, v in dict(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="gpu[01-02]", SLURM_NTASKS="2", SLURM_PROCID="0",
                   SLURM_LOCALID="0").items():
    monkeypatch.setenv(k, v)
  assert distributed.detect_cluster() == "SlurmCluster"


def test_slurm_one_task_per_node_keeps_every_gpu():
  assert distributed.slurm_local_device_ids({"SLURM_NTASKS_PER_NODE": "1", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}) \
      == [0, 1, 2, 3]
  assert distributed.slurm_local_device_ids({"SLURM_TASKS_PER_NODE": "1(x2)", "SLURM_STEP_GPUS": "4,5"}) == [0, 1]
  # One task per GPU: JAX's own choice (the GPU numbered SLURM_LOCALID) is right.
  assert distributed.slurm_local_device_ids({"SLURM_NTASKS_PER_NODE": "8", "CUDA_VISIBLE_DEVICES": "0,1"}) is None
  assert distributed.slurm_local_device_ids({"SLURM_NTASKS_PER_NODE": "1"}) is None


def test_single_process_helpers():
  assert distributed.is_main_process()
  assert distributed.per_process(12, "config.data.prompts_per_step") == 12
  distributed.check_divides(16, "x")  # 8 local devices (conftest)
  with pytest.raises(ValueError, match="x=12: 12 per process does not divide over 8 shards"):
    distributed.check_divides(12, "x")
