"""Evaluate policies and write the paper's tables:

  python launch/evaluate.py --config configs/eval.py --workdir /tmp/eval [--config.x=y] [--report_with=DIR,...]

Writes per-policy JSONL outputs and summary.json per evaluation run (several under --workdir with
--config.decoding=greedy,sampled or --config.repeats=N), then report.json and report.md (the paper's tables, mean ±
SD over the runs found under --workdir and the --report_with workdirs) in --workdir.
"""
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout, too

config_flags.DEFINE_config_file("config", None, "An ml-collections eval config file (configs/eval.py, or "
                                "configs/eval.py:tiny for a smoke run).", lock_config=True)
flags.DEFINE_string("workdir", None, "Eval directory: per-policy JSONL outputs, pairwise verdicts, summary.json, "
                    "report.json and report.md.")
flags.DEFINE_list("report_with", [], "Other eval workdirs whose runs the report pools with this one's (e.g. the "
                  "other decoding, or repeats run on other machines).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per judge request otherwise
  from deliberate.eval import report, suite  # after flag parsing: JAX reads XLA_FLAGS at import
  for workdir, summary in suite.run_grid(FLAGS.config, FLAGS.workdir):
    print(f"[evaluate] {summary['decoding']} seed {summary.get('seed')}: {os.path.join(workdir, 'summary.json')}")
    for label, p in summary["policies"].items():
      c = p.get("conflict", {})
      print(f"  {label}: agreement {c.get('agreement_rate')} | rounds {c.get('mean_rounds_to_agreement')} | "
            f"conflict CA {c.get('ca', {}).get('mean')} | open CA {p.get('open', {}).get('ca', {}).get('mean')}")
    for name, result in summary.get("comparisons", {}).items():
      print(f"  {name}: " + ", ".join(f"{k} {v.get('win_rate')}" for k, v in result.items()))
  json_path, md_path, _ = report.write(FLAGS.workdir, [FLAGS.workdir] + list(FLAGS.report_with))
  with open(md_path, encoding="utf-8") as f:
    print("\n" + f.read())
  print(f"report: {md_path}\n        {json_path}")


if __name__ == "__main__":
  app.run(main)
