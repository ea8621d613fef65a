"""Train on GPU machines: one host with several GPUs, several hosts over ssh with explicit coordinator flags, or a
SLURM allocation (JAX reads the job's environment).

  # one host, all (or some) of its GPUs: one process, pmap / the sharded step span the local GPUs
  python launch/gpu/launch.py --mode=local --gpus=0,1,2,3 --config=configs/quickstart.py --workdir=/data/runs/q1

  # several hosts you can ssh to, with this checkout at --remote_dir on each (shared or copied with --sync)
  python launch/gpu/launch.py --mode=hosts --hosts=gpu01,gpu02 --config=... --workdir=/shared/runs/q1 --dry_run

  # SLURM: writes an sbatch script (one task per GPU) and submits it
  python launch/gpu/launch.py --mode=slurm --nodes=2 --gpus_per_node=8 --config=... --workdir=/shared/runs/q1

Config overrides go after `--`. The judge's key travels as remote.py describes: a 0600 file on each host read into
the environment (hosts), or the submitting shell's environment / a key file read by the job script (SLURM); it never
appears in a command or in the sbatch script.
"""
import os
import shlex
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # launch/ for remote.py

import remote  # noqa: E402

flags.DEFINE_enum("mode", "local", ["local", "hosts", "slurm"], "Where the processes run.")
flags.DEFINE_string("config", None, "Run config file, relative to the repository (configs/*.py).")
flags.DEFINE_string("workdir", None, "Run directory; on several hosts it must be on a filesystem all of them share "
                    "(orbax writes every host's shards into one checkpoint).")
flags.DEFINE_list("gpus", [], "local: CUDA device ids to use (default: all visible).")
flags.DEFINE_list("hosts", [], "hosts: ssh names; the first runs process 0 and the coordinator.")
flags.DEFINE_integer("coordinator_port", 8476, "hosts: the coordinator's port on the first host.")
flags.DEFINE_string("remote_dir", "", "hosts: the checkout's path on every host (default: this checkout's path).")
flags.DEFINE_bool("sync", False, "hosts: rsync this checkout (without .git) to --remote_dir on every host first.")
flags.DEFINE_integer("nodes", 1, "slurm: nodes.")
flags.DEFINE_integer("gpus_per_node", 8, "slurm: GPUs per node.")
flags.DEFINE_bool("task_per_gpu", True, "slurm: one process per GPU (JAX's SLURM default); False = one process per "
                  "node owning all of its GPUs.")
flags.DEFINE_string("partition", "", "slurm: partition ('' = the cluster's default).")
flags.DEFINE_string("time", "24:00:00", "slurm: wall-clock limit.")
flags.DEFINE_string("sbatch_file", "", "slurm: where to write the job script (default: <workdir>/job.sbatch).")
flags.DEFINE_string("python", "python3", "Interpreter on the hosts.")
flags.DEFINE_string("api_key_env", "OPENAI_API_KEY", "NAME of the judge key's env var; '' = no key.")
flags.DEFINE_string("api_key_file", "", "Key file: copied to each host (hosts), read by the job script on a shared "
                    "home (slurm). '' = from $api_key_env.")
flags.DEFINE_bool("dry_run", False, "Print every command (and the sbatch script) and run none.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def local_steps(overrides):
  env = {"CUDA_VISIBLE_DEVICES": ",".join(FLAGS.gpus)} if FLAGS.gpus else {}
  argv = [FLAGS.python, "launch/train.py", f"--config={FLAGS.config}", f"--workdir={FLAGS.workdir}", *overrides]
  return [remote.Step(f"train on this host's GPUs{' ' + ','.join(FLAGS.gpus) if FLAGS.gpus else ''}", argv, env=env)]


def hosts_steps(overrides, key: remote.KeyFile):
  if len(FLAGS.hosts) < 2:
    raise app.UsageError("--mode=hosts needs at least two --hosts (one host: --mode=local)")
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  remote_dir = FLAGS.remote_dir or repo
  coordinator = f"{FLAGS.hosts[0]}:{FLAGS.coordinator_port}"
  steps = []
  for host in FLAGS.hosts:
    if FLAGS.sync:
      steps.append(remote.Step(f"copy the checkout to {host}", ["rsync", "-a", "--delete", "--exclude=.git",
                                                                 repo + "/", f"{host}:{remote_dir}/"]))
    if key.needed:
      steps += [remote.Step(f"secret directory on {host}", ["ssh", host, f"mkdir -p -m 700 {remote.REMOTE_KEY_DIR}"]),
                remote.Step(f"copy the judge key file to {host}", ["scp", "-q", remote.key_placeholder(key),
                                                                    f"{host}:.deliberate/judge_key"]),
                remote.Step(f"make the key file private on {host}", ["ssh", host,
                                                                     f"chmod 600 {remote.REMOTE_KEY_FILE}"])]
  commands = []
  for i, host in enumerate(FLAGS.hosts):
    train = remote.train_command(FLAGS.config, FLAGS.workdir, overrides, FLAGS.python, [
        f"--coordinator_address={coordinator}", f"--num_processes={len(FLAGS.hosts)}", f"--process_id={i}"])
    shell = remote.remote_shell(f"cd {shlex.quote(remote_dir)}", remote.export_key(FLAGS.api_key_env),
                                f"{train} 2>&1 | tee -a ~/deliberate-train-{i}.log")
    commands.append(["ssh", host, shell])
  # All processes must start together (each waits for the others at jax.distributed.initialize): one local step runs
  # them in parallel, prefixes every line with its host and fails when any of them fails.
  steps.append(remote.Step(f"train on {len(FLAGS.hosts)} hosts at once (process i on host i)",
                           [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "parallel.py"),
                            *[shlex.join(c) for c in commands]]))
  return steps


def sbatch_script(overrides) -> str:
  """The job script. It holds no key: the key is in the environment sbatch passes on (--export=ALL, its default)
  or in the key file it reads."""
  tasks = FLAGS.gpus_per_node if FLAGS.task_per_gpu else 1
  lines = ["#!/bin/bash", "#SBATCH --job-name=deliberate", f"#SBATCH --nodes={FLAGS.nodes}",
           f"#SBATCH --ntasks-per-node={tasks}", f"#SBATCH --gpus-per-node={FLAGS.gpus_per_node}",
           f"#SBATCH --time={FLAGS.time}", f"#SBATCH --output={FLAGS.workdir}/slurm-%j.out", "#SBATCH --export=ALL"]
  if FLAGS.partition:
    lines.append(f"#SBATCH --partition={FLAGS.partition}")
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  lines += ["set -eo pipefail", f"cd {shlex.quote(FLAGS.remote_dir or repo)}"]
  if FLAGS.api_key_env and FLAGS.api_key_file:
    lines.append(f'export {FLAGS.api_key_env}="$(cat {shlex.quote(FLAGS.api_key_file)})"')
  elif FLAGS.api_key_env:
    lines.append(f': "${{{FLAGS.api_key_env}:?set {FLAGS.api_key_env} in the shell that runs sbatch}}"')
  lines.append("# jax.distributed finds the job from SLURM's environment (one process per task)")
  lines.append("srun " + remote.train_command(FLAGS.config, FLAGS.workdir, overrides, FLAGS.python))
  return "\n".join(lines) + "\n"


def main(argv):
  overrides = argv[1:]
  try:
    remote.check_overrides(overrides)
  except ValueError as e:
    raise app.UsageError(str(e))
  key = remote.KeyFile(FLAGS.api_key_env, FLAGS.api_key_file)
  if FLAGS.mode == "local":
    remote.main_guard(lambda: remote.run_steps(local_steps(overrides), FLAGS.dry_run))
  if FLAGS.mode == "hosts":
    steps = hosts_steps(overrides, key)
    remote.main_guard(lambda: remote.run_steps(steps, FLAGS.dry_run, key if key.needed else None))
  script = sbatch_script(overrides)
  path = FLAGS.sbatch_file or os.path.join(FLAGS.workdir, "job.sbatch")
  try:
    remote.check_no_secret([], key.secret() if key.needed else "", script)
  except (FileNotFoundError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if FLAGS.dry_run:
    print(f"# job script ({path}):\n{script}# submit\n{shlex.join(['sbatch', path])}")
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(script)
  sys.exit(remote.run_steps([remote.Step("submit the job", ["sbatch", path])], False))


if __name__ == "__main__":
  app.run(main)
