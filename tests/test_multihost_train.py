"""Two real processes on 127.0.0.1 (jax.distributed, gloo CPU collectives) train as one process with the same
global batch would, for both step kinds, and a run killed in one process resumes on both to the same params."""
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from deliberate import checkpointing
from deliberate.data import loader
from deliberate.judge import serve
from deliberate.judge.testing import hashing_judge

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  loader.PromptIterator(data_dir, 0, 1)  # prepared once, so the processes never race to build it
  server = serve.start_server("model", generate_fn=hashing_judge)
  yield data_dir, server.url
  server.stop()


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, setup, *, devices, step_kind, process=None, steps=2):
  data_dir, url = setup
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=os.path.join(data_dir, "..", "jax_cache"))
  cmd = [sys.executable, os.path.join(ROOT, "launch", "train.py"), "--config", os.path.join(ROOT, "configs", "tiny.py"),
         "--workdir", workdir, f"--config.num_steps={steps}", "--config.tensorboard=False",
         "--config.judge.embedded=False", f"--config.judge.base_url={url}", f"--config.data.data_dir={data_dir}",
         "--config.data.prompts_per_step=2", f"--config.rl.step={step_kind}", "--config.rl.lora_rank=4"]
  if process is not None:
    cmd += [f"--coordinator_address={process[0]}", "--num_processes=2", f"--process_id={process[1]}"]
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _two_hosts(workdir, setup, step_kind, steps=2):
  address = f"127.0.0.1:{_port()}"
  return [_launch(workdir, setup, devices=2, step_kind=step_kind, process=(address, i), steps=steps) for i in (0, 1)]


def _wait(procs, timeout=600):
  outs = [p.communicate(timeout=timeout)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  return outs


def _params(workdir):
  directory = os.path.join(workdir, "checkpoints")
  ckpt = checkpointing.Checkpointer(directory)
  step = ckpt.latest_step
  ckpt.close()
  return step, jax.tree.map(np.asarray, checkpointing.read_params(directory, step))  # whatever mesh saved it


def _records(workdir):
  from deliberate.negotiation.records import read_records
  recs = sorted(read_records(os.path.join(workdir, "records")), key=lambda r: (r["step"], r["dilemma_id"], r["index"]))
  return [(r["step"], r["dilemma_id"], [t["ids"] for t in r["turns"]], r["completion_ids"], r["reward"]) for r in recs]


@pytest.fixture(scope="module")
def two_hosts_pmap(tmp_path_factory, setup):
  """One uninterrupted two-process pmap run: the parity test's run and the kill test's reference."""
  workdir = str(tmp_path_factory.mktemp("two_hosts_pmap"))
  return workdir, _wait(_two_hosts(workdir, setup, "pmap"))


@pytest.mark.parametrize("step_kind", ["pmap", "sharded"])
def test_two_processes_train_like_one(tmp_path, setup, two_hosts_pmap, step_kind):
  one = str(tmp_path / "one")
  _wait([_launch(one, setup, devices=4, step_kind=step_kind)])
  if step_kind == "pmap":
    two, outs = two_hosts_pmap
  else:
    two = str(tmp_path / "two")
    outs = _wait(_two_hosts(two, setup, step_kind))
  assert "metrics:" in outs[0] and "metrics:" not in outs[1]        # process 0 alone reports
  assert sorted(os.listdir(os.path.join(two, "records"))) == ["dialogues-host0-00000.jsonl",
                                                              "dialogues-host1-00000.jsonl"]
  assert _records(two) == _records(one)                              # the same dialogues, whichever host
  (s1, p1), (s2, p2) = _params(one), _params(two)
  assert s1 == s2 == 2
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), p2, jax.tree.map(np.zeros_like, p2))
  assert max(jax.tree.leaves(moved)) > 0                             # LoRA b moved away from 0: it trained
  # The same update up to float summation order (each host pads its own rows): Adam scales a near-zero gradient's
  # rounding up to a fraction of a step, so differences stay under 1 % of one lr-sized (1e-3) move.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), p2, p1)


def test_kill_one_process_then_resume_both(tmp_path, setup, two_hosts_pmap):
  (ref, _), killed = two_hosts_pmap, str(tmp_path / "killed")
  procs = _two_hosts(killed, setup, "pmap", steps=2)
  first = os.path.join(killed, "checkpoints", "1")
  deadline = time.time() + 600
  while not os.path.isdir(first) and procs[0].poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert procs[1].poll() is None, "the run finished before it could be killed"
  procs[1].send_signal(signal.SIGKILL)
  procs[1].wait()
  try:  # its peer is gone: it fails or hangs in a collective (until a heartbeat times out) and is stopped, which
    procs[0].wait(timeout=10)  # is one more crash for the resume to survive
  except subprocess.TimeoutExpired:
    procs[0].kill()
    procs[0].wait()
  outs = _wait(_two_hosts(killed, setup, "pmap", steps=2))
  assert "resumed from" in outs[0]
  (s_ref, p_ref), (s, p) = _params(ref), _params(killed)
  assert s_ref == s == 2
  jax.tree.map(np.testing.assert_array_equal, p, p_ref)
