"""Train on a Cloud TPU VM slice: create it, install the package on every worker, bring data and checkpoints, start
launch/train.py on all workers at once (jax.distributed finds the pod by itself), stream the logs, delete the slice.

  python launch/tpu/launch.py --name=neg-v5e16 --zone=us-west4-a --accelerator_type=v5litepod-16 \\
      --config=configs/negotiation_qwen3_14b.py --workdir=/mnt/deliberate/runs/neg1 \\
      --bucket=gs://my-bucket/deliberate --data=gs://my-bucket/deliberate/tfds --spot --dry_run \\
      -- --config.num_steps=1900

Actions: all (default: create, setup, train, then delete per --delete_on), create, setup, train, logs, delete.
Cost knobs: --accelerator_type (chips), --spot (preemptible capacity, far cheaper), --queued with --valid_until
(wait for capacity instead of failing; bounded), --delete_on (never leave an idle slice running).
"""
import importlib.metadata
import os
import re
import shlex
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # launch/ for remote.py

import remote  # noqa: E402

flags.DEFINE_enum("action", "all", ["all", "create", "setup", "train", "logs", "delete"], "What to do.")
flags.DEFINE_string("name", None, "TPU VM (node) name; also the queued resource's name.")
flags.DEFINE_string("zone", None, "e.g. us-west4-a (v5e), us-central2-b (v4).")
flags.DEFINE_string("project", "", "GCP project ('' = gcloud's default).")
flags.DEFINE_string("accelerator_type", "v5litepod-16", "Slice type: v5litepod-16 is v5e-16 (4 hosts x 4 chips).")
flags.DEFINE_string("runtime_version", "v2-alpha-tpuv5-lite", "TPU VM image (v5e: v2-alpha-tpuv5-lite).")
flags.DEFINE_bool("spot", False, "Spot capacity: much cheaper, can be preempted (the run resumes from checkpoints).")
flags.DEFINE_bool("queued", False, "Create through a queued resource (waits for capacity) instead of tpu-vm create.")
flags.DEFINE_string("valid_until", "6h", "Queued resource: give up waiting for capacity after this long.")
flags.DEFINE_enum("delete_on", "failure", ["failure", "exit", "never"],
                  "Delete the slice when a step fails (failure), also when training ends (exit), or never.")
flags.DEFINE_string("config", None, "Run config file, relative to the repository (configs/*.py).")
flags.DEFINE_string("workdir", None, "Run directory on the workers; put it under --mount_point to keep it.")
flags.DEFINE_string("bucket", "", "gs://bucket[/dir] mounted (gcsfuse) at --mount_point on every worker: "
                    "checkpoints, metrics and records land in the bucket ('' = no mount).")
flags.DEFINE_string("mount_point", "/mnt/deliberate", "Where --bucket is mounted on the workers.")
flags.DEFINE_string("data", "", "gs:// TFDS data dir copied to every worker's disk and used as config.data.data_dir "
                    "('' = each worker prepares it under the workdir).")
flags.DEFINE_string("api_key_env", "OPENAI_API_KEY", "NAME of the judge key's env var (config.judge.api_key_env); "
                    "'' = the judge needs no key.")
flags.DEFINE_string("api_key_file", "", "Local file holding the judge key ('' = write one from $api_key_env).")
flags.DEFINE_string("jax_spec", "", "pip requirement for JAX on TPU ('' = jax[tpu] at this machine's JAX version).")
flags.DEFINE_string("ref", "HEAD", "git revision of this checkout shipped to the workers (git archive).")
flags.DEFINE_bool("dry_run", False, "Print every command and run none.")
flags.mark_flags_as_required(["name", "zone"])
FLAGS = flags.FLAGS

_LOG = "~/deliberate-train.log"


def _scope() -> list[str]:
  return [f"--zone={FLAGS.zone}"] + ([f"--project={FLAGS.project}"] if FLAGS.project else [])


def _ssh(what: str, command: str, worker: str = "all") -> remote.Step:
  return remote.Step(what, ["gcloud", "compute", "tpus", "tpu-vm", "ssh", FLAGS.name, *_scope(),
                            f"--worker={worker}", f"--command={command}"])


def _scp(what: str, local: str, remote_path: str) -> remote.Step:
  return remote.Step(what, ["gcloud", "compute", "tpus", "tpu-vm", "scp", local, f"{FLAGS.name}:{remote_path}",
                            *_scope(), "--worker=all"])


def create_steps() -> list[remote.Step]:
  cost = ["--spot"] if FLAGS.spot else []
  if FLAGS.queued:
    return [remote.Step(f"request a {FLAGS.accelerator_type} slice (queued resource)", [
        "gcloud", "compute", "tpus", "queued-resources", "create", FLAGS.name, f"--node-id={FLAGS.name}", *_scope(),
        f"--accelerator-type={FLAGS.accelerator_type}", f"--runtime-version={FLAGS.runtime_version}", *cost,
        f"--valid-until-duration={FLAGS.valid_until}"]),
            remote.Step("wait until the slice is ACTIVE", [
                "gcloud", "compute", "tpus", "queued-resources", "describe", FLAGS.name, *_scope(),
                "--format=value(state.state)"], poll="ACTIVE")]
  return [remote.Step(f"create a {FLAGS.accelerator_type} slice", [
      "gcloud", "compute", "tpus", "tpu-vm", "create", FLAGS.name, *_scope(),
      f"--accelerator-type={FLAGS.accelerator_type}", f"--version={FLAGS.runtime_version}", *cost])]


def setup_steps(key: remote.KeyFile) -> list[remote.Step]:
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  tarball = f"/tmp/deliberate-{FLAGS.name}.tar.gz"
  jax_spec = FLAGS.jax_spec or f"jax[tpu]=={importlib.metadata.version('jax')}"
  steps = [
      remote.Step(f"pack this checkout at {FLAGS.ref}", ["git", "-C", repo, "archive", "--format=tar.gz",
                                                          f"--output={tarball}", FLAGS.ref]),
      _scp("copy the code to every worker", tarball, "deliberate.tar.gz"),
      _ssh("install the package on every worker", remote.remote_shell(
          "rm -rf ~/deliberate", "mkdir -p ~/deliberate", "tar -xzf ~/deliberate.tar.gz -C ~/deliberate",
          f"python3 -m pip install --quiet -e ~/deliberate {shlex.quote(jax_spec)}")),
  ]
  if key.needed:
    steps += [_ssh("make the secret directory on every worker", f"mkdir -p -m 700 {remote.REMOTE_KEY_DIR}"),
              _scp("copy the judge key file to every worker", remote.key_placeholder(key), ".deliberate/judge_key"),
              _ssh("make the key file private", f"chmod 600 {remote.REMOTE_KEY_FILE}")]
  if FLAGS.bucket:
    bucket, _, subdir = FLAGS.bucket[len("gs://"):].partition("/")
    mount = shlex.quote(FLAGS.mount_point)
    steps.append(_ssh(f"mount {FLAGS.bucket} at {FLAGS.mount_point} on every worker", remote.remote_shell(
        "command -v gcsfuse >/dev/null || { echo 'gcsfuse is not installed on this image' >&2; exit 1; }",
        f"sudo mkdir -p {mount}", f"sudo chown $(id -u):$(id -g) {mount}",
        f"(mountpoint -q {mount} || gcsfuse --implicit-dirs" + (f" --only-dir={shlex.quote(subdir)}" if subdir else "")
        + f" {shlex.quote(bucket)} {mount})")))
  if FLAGS.data:
    steps.append(_ssh("copy the data to every worker's disk", remote.remote_shell(
        "mkdir -p /tmp/deliberate-data", f"gcloud storage rsync --recursive {shlex.quote(FLAGS.data)} "
                                         "/tmp/deliberate-data")))
  return steps


def train_step(overrides: list[str]) -> remote.Step:
  data = ["--config.data.data_dir=/tmp/deliberate-data"] if FLAGS.data else []
  command = remote.train_command(FLAGS.config, FLAGS.workdir, data + overrides)
  return _ssh("train on every worker at once (logs stream back; also in ~/deliberate-train.log)",
              remote.remote_shell("cd ~/deliberate", remote.export_key(FLAGS.api_key_env),
                                  f"{command} 2>&1 | tee -a {_LOG}"))


def delete_steps() -> list[remote.Step]:
  if FLAGS.queued:
    return [remote.Step("delete the slice", ["gcloud", "compute", "tpus", "queued-resources", "delete", FLAGS.name,
                                             *_scope(), "--force", "--quiet"])]
  return [remote.Step("delete the slice", ["gcloud", "compute", "tpus", "tpu-vm", "delete", FLAGS.name, *_scope(),
                                           "--quiet"])]


def main(argv):
  overrides = argv[1:]
  try:
    remote.check_overrides(overrides)
  except ValueError as e:
    raise app.UsageError(str(e))
  if FLAGS.bucket and not re.fullmatch(r"gs://[a-z0-9][a-z0-9._-]*(/.*)?", FLAGS.bucket):
    raise app.UsageError(f"--bucket={FLAGS.bucket!r} is not gs://bucket[/dir]")
  if FLAGS.action in ("all", "train") and not (FLAGS.config and FLAGS.workdir):
    raise app.UsageError("--config and --workdir are needed to train")
  key = remote.KeyFile(FLAGS.api_key_env, FLAGS.api_key_file)
  steps, on_failure = [], []
  if FLAGS.action in ("all", "create"):
    steps += create_steps()
  if FLAGS.action in ("all", "setup"):
    steps += setup_steps(key)
  if FLAGS.action in ("all", "train"):
    steps.append(train_step(overrides))
  if FLAGS.action == "logs":
    steps.append(_ssh("follow worker 0's log", f"tail -n 200 -f {_LOG}", worker="0"))
  if FLAGS.action == "delete" or (FLAGS.action == "all" and FLAGS.delete_on == "exit"):
    steps += delete_steps()
  if FLAGS.action in ("all", "create", "setup", "train") and FLAGS.delete_on != "never":
    on_failure = delete_steps()
  needs_key = any("judge_key" in " ".join(s.argv) for s in steps)
  remote.main_guard(lambda: remote.run_steps(steps, FLAGS.dry_run, key if needs_key else None, on_failure))


if __name__ == "__main__":
  app.run(main)
