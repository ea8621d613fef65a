"""launch/gpu/launch.py: one host with several GPUs, several hosts with explicit coordinator flags (run for real
against recording ssh/scp stand-ins), and a SLURM job script; the judge's key is on no command line and in no script."""
import os
import shlex
import subprocess
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LAUNCH = os.path.join(_ROOT, "launch", "gpu", "launch.py")
_KEY = "sk-test-9a8b7c6d-DO-NOT-PRINT"


def _run(*args, env_extra=None, path_prefix=""):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(OPENAI_API_KEY=_KEY, **(env_extra or {}))
  if path_prefix:
    env["PATH"] = path_prefix + os.pathsep + env["PATH"]
  return subprocess.run([sys.executable, _LAUNCH, *args], capture_output=True, text=True, env=env, timeout=60)


def test_one_host_several_gpus():
  r = _run("--mode=local", "--gpus=0,1,2,3", "--config=configs/tiny.py", "--workdir=/tmp/q", "--dry_run", "--",
           "--config.rl.step=sharded")
  assert r.returncode == 0, r.stderr
  assert r.stdout.splitlines()[1] == ("CUDA_VISIBLE_DEVICES=0,1,2,3 python3 launch/train.py --config=configs/tiny.py "
                                      "--workdir=/tmp/q --config.rl.step=sharded")


def _train_commands(stdout: str) -> list[list[str]]:
  line = next(l for l in stdout.splitlines() if "parallel.py" in l)
  return [shlex.split(c) for c in shlex.split(line)[2:]]


def test_several_hosts_with_explicit_coordinator():
  r = _run("--mode=hosts", "--hosts=gpu01,gpu02,gpu03", "--coordinator_port=9999", "--remote_dir=/srv/deliberate",
           "--config=configs/tiny.py", "--workdir=/shared/runs/q1", "--dry_run", "--", "--config.num_steps=5")
  assert r.returncode == 0, r.stderr
  assert _KEY not in r.stdout + r.stderr
  per_host = _train_commands(r.stdout)
  assert [c[:2] for c in per_host] == [["ssh", "gpu01"], ["ssh", "gpu02"], ["ssh", "gpu03"]]
  for i, (_, _, shell) in enumerate(per_host):
    assert shell.startswith("set -eo pipefail && cd /srv/deliberate && "
                            'export OPENAI_API_KEY="$(cat ~/.deliberate/judge_key)" && ')
    train = shlex.split(shell.split(" && ")[-1].split(" 2>&1")[0])
    assert train == ["python3", "launch/train.py", "--config=configs/tiny.py", "--workdir=/shared/runs/q1",
                     "--coordinator_address=gpu01:9999", "--num_processes=3", f"--process_id={i}",
                     "--config.num_steps=5"]
  assert r.stdout.count(":.deliberate/judge_key") == 3
  one = _run("--mode=hosts", "--hosts=gpu01", "--config=c", "--workdir=w", "--dry_run")
  assert one.returncode != 0 and "at least two --hosts" in one.stderr


def test_slurm_script(tmp_path):
  r = _run("--mode=slurm", "--nodes=2", "--gpus_per_node=8", "--partition=a100", "--config=configs/tiny.py",
           f"--workdir={tmp_path}/run", "--dry_run", "--", "--config.rl.step=sharded")
  assert r.returncode == 0, r.stderr
  out = r.stdout
  assert _KEY not in out
  for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
               "#SBATCH --partition=a100", "#SBATCH --export=ALL",
               f"srun python3 launch/train.py --config=configs/tiny.py --workdir={tmp_path}/run "
               "--config.rl.step=sharded", f"sbatch {tmp_path}/run/job.sbatch"):
    assert line in out.splitlines(), line
  assert "--coordinator_address" not in out  # JAX reads SLURM's environment
  assert not (tmp_path / "run").exists()     # a dry run writes nothing
  per_node = _run("--mode=slurm", "--nodes=2", "--notask_per_gpu", f"--api_key_file={tmp_path}/k",
                  "--config=c.py", "--workdir=/w", "--dry_run")
  assert per_node.returncode == 2 and "no such file" in per_node.stderr
  (tmp_path / "k").write_text(_KEY)
  per_node = _run("--mode=slurm", "--nodes=2", "--notask_per_gpu", f"--api_key_file={tmp_path}/k",
                  "--config=c.py", "--workdir=/w", "--dry_run")
  assert "#SBATCH --ntasks-per-node=1" in per_node.stdout
  assert f'export OPENAI_API_KEY="$(cat {tmp_path}/k)"' in per_node.stdout and _KEY not in per_node.stdout


# Each call is logged in a file of its own (concurrent calls cannot interleave). Host 1 fails only once host 0's
# call is logged: the launcher stops the others when one fails, and on a slow machine it could stop host 0's
# stand-in before that stand-in had logged anything.
_FAKE = """#!/bin/bash
printf '%s\\0' "$(basename "$0")" "$@" > "$(mktemp -p "$FAKE_LOG")"
for a in "$@"; do [ -f "$a" ] && echo "$a $(stat -c %a "$a") $(cat "$a")" >> "$FAKE_FILES"; done
case "$*" in *"process_id=1"*)
  for _ in $(seq 200); do grep -rqa "process_id=0" "$FAKE_LOG" && break; sleep 0.1; done
  echo "host 1 says hi"; exit 4;; esac
exit 0
"""


def test_hosts_run_for_real_against_ssh_stand_ins(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in ("ssh", "scp"):
    (bin_dir / name).write_text(_FAKE)
    (bin_dir / name).chmod(0o755)
  log, files = tmp_path / "argv", tmp_path / "files.log"
  log.mkdir()
  r = _run("--mode=hosts", "--hosts=h0,h1", "--config=configs/tiny.py", "--workdir=/shared/w",
           env_extra=dict(FAKE_LOG=str(log), FAKE_FILES=str(files)), path_prefix=str(bin_dir))
  assert r.returncode == 4, r.stderr            # process 1 failed, so the launch fails
  assert "[1] host 1 says hi" in r.stdout       # its output came back, tagged with its index
  calls = [f.read_text().split("\0")[:-1] for f in log.iterdir()]
  assert all(_KEY not in a for c in calls for a in c)
  assert sum(1 for c in calls if c[0] == "ssh" and "launch/train.py" in c[-1]) == 2
  shipped = [l.split(" ", 2) for l in files.read_text().splitlines() if _KEY in l]
  assert len(shipped) == 2 and all(s[1] == "600" and not os.path.exists(s[0]) for s in shipped)
