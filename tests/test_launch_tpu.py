"""launch/tpu/launch.py: the printed commands for a v5e-16 slice, and a real execution against stand-in gcloud and git
executables that record their arguments, to check that the judge's key is on no command line and the slice is
deleted when a step fails."""
import os
import shlex
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LAUNCH = os.path.join(_ROOT, "launch", "tpu", "launch.py")
_KEY = "sk-test-1f2e3d4c5b6a-DO-NOT-PRINT"
_BASE = ["--name=neg-v5e16", "--zone=us-west4-a", "--accelerator_type=v5litepod-16", "--config=configs/tiny.py",
         "--workdir=/mnt/deliberate/runs/neg1", "--bucket=gs://my-bucket/deliberate",
         "--data=gs://my-bucket/deliberate/tfds"]


def _run(*args, env_extra=None, path_prefix=""):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(OPENAI_API_KEY=_KEY, **(env_extra or {}))
  if path_prefix:
    env["PATH"] = path_prefix + os.pathsep + env["PATH"]
  return subprocess.run([sys.executable, _LAUNCH, *args], capture_output=True, text=True, env=env, timeout=60)


def _commands(stdout: str) -> list[list[str]]:
  return [shlex.split(l) for l in stdout.splitlines() if l and not l.startswith("#")]


def _remote(cmd: list[str]) -> str:
  return next(a[len("--command="):] for a in cmd if a.startswith("--command="))


def test_v5e16_dry_run_commands():
  r = _run(*_BASE, "--spot", "--dry_run", "--", "--config.num_steps=1900", "--config.rl.step=sharded")
  assert r.returncode == 0, r.stderr
  assert _KEY not in r.stdout and _KEY not in r.stderr
  cmds = _commands(r.stdout)
  create = cmds[0]
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "neg-v5e16"]
  assert {"--zone=us-west4-a", "--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite", "--spot"} \
      <= set(create)
  assert cmds[1][:2] == ["git", "-C"] and "archive" in cmds[1]
  gcloud = [c for c in cmds[2:] if c[0] == "gcloud"]
  ssh = [c for c in gcloud if c[4] == "ssh"]
  scp = [c for c in gcloud if c[4] == "scp"]
  assert all("--worker=all" in c and "--zone=us-west4-a" in c for c in ssh + scp)  # every worker of the slice
  install = _remote(ssh[0])
  assert "pip install" in install and "-e ~/deliberate" in install and "jax[tpu]==" in install
  key_copy = next(c for c in scp if c[-3].endswith(":.deliberate/judge_key") or "judge_key" in " ".join(c))
  assert "neg-v5e16:.deliberate/judge_key" in key_copy
  assert any("chmod 600 ~/.deliberate/judge_key" in _remote(c) for c in ssh)
  assert any("gcsfuse --implicit-dirs --only-dir=deliberate my-bucket /mnt/deliberate" in _remote(c) for c in ssh)
  assert any("gcloud storage rsync --recursive gs://my-bucket/deliberate/tfds /tmp/deliberate-data" in _remote(c)
             for c in ssh)
  train = _remote(ssh[-1])
  assert 'export OPENAI_API_KEY="$(cat ~/.deliberate/judge_key)"' in train  # read on the worker, from the file
  train_argv = shlex.split(train.split(" && ")[-1].split(" 2>&1")[0])
  assert train_argv == ["python3", "launch/train.py", "--config=configs/tiny.py",
                        "--workdir=/mnt/deliberate/runs/neg1", "--config.data.data_dir=/tmp/deliberate-data",
                        "--config.num_steps=1900", "--config.rl.step=sharded"]
  assert "--coordinator_address" not in train  # a pod is found by jax.distributed itself
  assert cmds[-1] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "neg-v5e16", "--zone=us-west4-a", "--quiet"]
  assert "# on failure: delete the slice" in r.stdout


def test_queued_resources_and_delete_policies():
  r = _run(*_BASE, "--queued", "--valid_until=3h", "--delete_on=exit", "--project=my-proj", "--dry_run")
  assert r.returncode == 0, r.stderr
  cmds = _commands(r.stdout)
  assert cmds[0][:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "neg-v5e16"]
  assert {"--node-id=neg-v5e16", "--runtime-version=v2-alpha-tpuv5-lite", "--valid-until-duration=3h",
          "--project=my-proj"} <= set(cmds[0])
  assert cmds[1][4] == "describe" and "until the output shows ACTIVE" in r.stdout
  deletes = [c for c in cmds if "delete" in c]
  assert len(deletes) == 2 and all("--force" in c for c in deletes)  # after training, and on failure
  never = _run(*_BASE, "--delete_on=never", "--dry_run")
  assert "delete" not in never.stdout.replace("--delete", "")
  only = _run("--name=neg-v5e16", "--zone=us-west4-a", "--action=delete", "--dry_run")
  assert _commands(only.stdout) == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "neg-v5e16",
                                     "--zone=us-west4-a", "--quiet"]]


def test_key_file_and_no_key(tmp_path):
  key_file = tmp_path / "judge.key"
  key_file.write_text("sk-from-a-file-0123456789\n")
  r = _run(*_BASE, f"--api_key_file={key_file}", "--dry_run")
  assert f"{key_file} neg-v5e16:.deliberate/judge_key" in r.stdout and "sk-from-a-file" not in r.stdout
  r = _run(*_BASE, f"--api_key_file={tmp_path / 'missing'}", "--dry_run")
  assert r.returncode == 2 and "--api_key_file" in r.stderr and "no such file" in r.stderr
  r = _run(*_BASE, "--api_key_env=", "--dry_run")
  assert "judge_key" not in r.stdout and "export" not in r.stdout


def test_bad_arguments_fail_early():
  r = _run(*_BASE, "--dry_run", "--", "--num_steps=3")
  assert r.returncode != 0 and "only --config.x=y overrides" in r.stderr
  r = _run(*_BASE[:-2], "--bucket=my-bucket", "--dry_run")
  assert r.returncode != 0 and "is not gs://bucket" in r.stderr


_FAKE = """#!/bin/bash
printf '%s\\0' "$(basename "$0")" "$@" >> "$FAKE_LOG"; printf '\\n' >> "$FAKE_LOG"
for a in "$@"; do [ -f "$a" ] && echo "$a $(stat -c %a "$a") $(cat "$a")" >> "$FAKE_FILES"; done
case "$*" in *"$FAKE_FAIL"*) exit 3;; esac
exit 0
"""


@pytest.fixture
def fake_bin(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in ("gcloud", "git"):
    (bin_dir / name).write_text(_FAKE)
    (bin_dir / name).chmod(0o755)
  return bin_dir


def test_real_run_keeps_the_key_off_command_lines_and_deletes_on_failure(tmp_path, fake_bin):
  log, files = tmp_path / "argv.log", tmp_path / "files.log"
  r = _run(*_BASE, env_extra=dict(FAKE_LOG=str(log), FAKE_FILES=str(files), FAKE_FAIL="launch/train.py"),
           path_prefix=str(fake_bin))
  assert r.returncode == 3, r.stderr
  calls = [c.split("\0")[:-1] for c in log.read_text().splitlines() if c]
  assert all(_KEY not in a for c in calls for a in c)      # on no command line, ever
  assert _KEY not in r.stdout + r.stderr
  assert calls[0][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
  assert calls[-1][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "delete"]  # the failed training deleted the slice
  assert any("launch/train.py" in a for a in calls[-2])
  # The key went over as a private temporary file, removed afterwards.
  shipped = [l.split(" ", 2) for l in files.read_text().splitlines() if _KEY in l]
  assert len(shipped) == 1 and shipped[0][1] == "600" and not os.path.exists(shipped[0][0])
