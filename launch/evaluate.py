"""Evaluate policies: `python launch/evaluate.py --config configs/eval.py --workdir /tmp/eval [--config.x=y]`."""
import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout, too

config_flags.DEFINE_config_file("config", None, "An ml-collections eval config file (configs/eval.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Eval directory: per-policy JSONL outputs, pairwise verdicts, summary.json.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per judge request otherwise
  from deliberate.eval import suite  # after flag parsing: JAX reads XLA_FLAGS at import
  summary = suite.run(FLAGS.config, FLAGS.workdir)
  for label, p in summary["policies"].items():
    c = p.get("conflict", {})
    print(f"{label}: agreement {c.get('agreement_rate')} | rounds {c.get('mean_rounds_to_agreement')} | "
          f"conflict CA {c.get('ca', {}).get('mean')} | open CA {p.get('open', {}).get('ca', {}).get('mean')}")
  for name, result in summary.get("comparisons", {}).items():
    print(f"{name}: " + json.dumps({k: v.get("win_rate") for k, v in result.items()}))
  print(f"\nsummary: {os.path.join(os.path.abspath(FLAGS.workdir), 'summary.json')}")


if __name__ == "__main__":
  app.run(main)
