"""Train with GRPO: `python launch/train.py --config configs/quickstart.py --workdir /tmp/run [--config.x=y]`.

On TPU pods and SLURM clusters JAX finds the other processes itself; elsewhere pass --coordinator_address,
--num_processes and --process_id to every process (docs/launch.md)."""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout, too

config_flags.DEFINE_config_file("config", None, "An ml-collections config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, records, TensorBoard.")
flags.DEFINE_string("coordinator_address", "", "Multi-host without a detected cluster: process 0's host:port.")
flags.DEFINE_integer("num_processes", 0, "Multi-host without a detected cluster: the number of processes.")
flags.DEFINE_integer("process_id", -1, "Multi-host without a detected cluster: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:  # orbax and tfds log every file at INFO; --verbosity=0 brings them back
    logging.set_verbosity(logging.WARNING)
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
  from deliberate import config as config_lib, distributed  # after flag parsing: JAX reads XLA_FLAGS at import
  config_lib.validate(FLAGS.config)  # every field, before any process group or model
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from deliberate import trainer
  t = trainer.Trainer(FLAGS.config, FLAGS.workdir)
  t.run()
  if not t.is_main:
    return
  sample = t.sample_text()
  if sample:
    print("\n" + sample)
  print(f"\nmetrics:     {t.writer.path}\ncheckpoints: {t.checkpointer.directory}\n"
        f"records:     {t.records.directory} (read with: python -m deliberate.show {t.records.directory})")


if __name__ == "__main__":
  app.run(main)
