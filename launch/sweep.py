"""Run a sweep of launch/train.py runs, print its commands for a cluster, or summarise it.

  python launch/sweep.py --sweep launch/sweeps/tiny_lr.py --dry_run           # print one command per run
  python launch/sweep.py --sweep launch/sweeps/tiny_lr.py                     # run them here, one after another
  python launch/sweep.py --sweep launch/sweeps/tiny_lr.py --only 3            # one run (e.g. a SLURM array task)
  python launch/sweep.py --summary /tmp/deliberate-sweeps/tiny_lr             # one table across the sweep's runs

The sweep file format is described in deliberate/sweeps.py. Every run's workdir gets a sweep.json (sweep, index,
overrides, command) before the run starts; the summary finds runs by it and reads their metrics.jsonl. A run that
already has checkpoints resumes, so running a sweep again finishes what is missing.
"""
import os
import shlex
import subprocess
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout, too

from deliberate import sweeps  # noqa: E402

flags.DEFINE_string("sweep", None, "A sweep file (an ml-collections config: name, config, fixed, product, zip).")
flags.DEFINE_string("sweep_dir", "", "Parent of the sweep's directory (default: the sweep's workdir_root, else "
                    "/tmp/deliberate-sweeps); runs go in <sweep_dir>/<name>/<index>-<fields>.")
flags.DEFINE_bool("dry_run", False, "Print one launch/train.py command per run and write nothing.")
flags.DEFINE_list("only", [], "Run only these run indices (comma-separated).")
flags.DEFINE_bool("keep_going", False, "Go on with the next run when one fails (default: stop at the first).")
flags.DEFINE_string("python", sys.executable, "Interpreter for the runs (printed commands use 'python' unless set).")
flags.DEFINE_string("summary", None, "Print the summary table of the sweep in this directory (or, with --sweep and "
                    "an empty value, of that sweep) and exit.")
flags.DEFINE_list("metrics", ["reward/group_mean", "negotiation/agreement_rate", "loss"],
                  "Metrics (metrics.jsonl names) to show in the summary.")
flags.DEFINE_integer("last", 10, "Summary: average each metric over each run's last N logged steps.")
FLAGS = flags.FLAGS


def _summary(directory: str, sweep: "sweeps.Sweep | None" = None) -> None:
  header, rows = sweeps.summary_rows(directory, FLAGS.metrics, FLAGS.last, sweep)
  print(sweeps.format_table(header, rows))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]} (config overrides belong in the sweep file's 'fixed')")
  if FLAGS.summary is not None and (FLAGS.summary or not FLAGS.sweep):
    _summary(FLAGS.summary)
    return
  if not FLAGS.sweep:
    raise app.UsageError("--sweep is required (or --summary DIR)")
  try:
    sweep = sweeps.load(FLAGS.sweep, FLAGS.sweep_dir)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if FLAGS.summary is not None:
    _summary(sweep.directory, sweep)
    return
  only = {int(i) for i in FLAGS.only}
  bad = sorted(i for i in only if not 0 <= i < len(sweep.runs))
  if bad:
    raise app.UsageError(f"--only {bad}: the sweep has runs 0..{len(sweep.runs) - 1}")
  runs = [r for r in sweep.runs if not only or r.index in only]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  train = os.path.relpath(os.path.join(repo, "launch", "train.py")) if FLAGS.dry_run else \
      os.path.join(repo, "launch", "train.py")
  if FLAGS.dry_run:
    python = FLAGS.python if FLAGS["python"].present else "python"
    print(f"# sweep {sweep.name}: {len(sweep.runs)} runs under {sweep.directory} (from {sweep.path})")
    for r in runs:
      print(shlex.join(sweep.command(r, python, train)))
    return
  failed = []
  for r in runs:
    command = sweep.command(r, FLAGS.python, train)
    sweeps.write_record(sweep, r, command)
    print(f"\n=== sweep {sweep.name}: run {r.index + 1}/{len(sweep.runs)} -> {r.workdir}\n{shlex.join(command)}",
          flush=True)
    rc = subprocess.run(command, cwd=repo, check=False).returncode
    if rc:
      failed.append(r.index)
      print(f"=== run {r.index} ({r.workdir}) exited with {rc}", file=sys.stderr, flush=True)
      if not FLAGS.keep_going:
        break
  print()
  _summary(sweep.directory, sweep)
  if failed:
    print(f"failed runs: {failed}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
