"""Train with GRPO: `python launch/train.py --config configs/quickstart.py --workdir /tmp/run [--config.x=y]`."""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout, too

config_flags.DEFINE_config_file("config", None, "An ml-collections config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, records, TensorBoard.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:  # orbax and tfds log every file at INFO; --verbosity=0 brings them back
    logging.set_verbosity(logging.WARNING)
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
  from deliberate import trainer  # after flag parsing: JAX reads XLA_FLAGS at import
  t = trainer.Trainer(FLAGS.config, FLAGS.workdir)
  t.run()
  sample = t.sample_text()
  if sample:
    print("\n" + sample)
  print(f"\nmetrics:     {t.writer.path}\ncheckpoints: {t.checkpointer.directory}\n"
        f"records:     {t.records.directory} (read with: python -m deliberate.show {t.records.directory})")


if __name__ == "__main__":
  app.run(main)
