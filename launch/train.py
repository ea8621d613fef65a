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
  from deliberate.show import format_record
  from deliberate.negotiation.records import dialogue_record
  t = trainer.Trainer(FLAGS.config, FLAGS.workdir)
  t.run()
  dialogues = getattr(t, "last_dialogues", [])
  if dialogues and FLAGS.config.mode == "negotiation":
    best = max(dialogues, key=lambda d: (d.rounds > 1, d.agreed, d.reward, d.rounds))  # a real exchange
    print("\nA sample dialogue from the last step:\n" + format_record(dialogue_record(best, t.step)))
  print(f"\nmetrics:     {t.writer.path}\ncheckpoints: {t.checkpointer.directory}\n"
        f"records:     {t.records.directory} (read with: python -m deliberate.show {t.records.directory})")


if __name__ == "__main__":
  app.run(main)
