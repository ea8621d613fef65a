"""Print negotiation records for a human: `python -m deliberate.show RECORDS [--step N] [--index I] [--limit K]`."""
from __future__ import annotations

import argparse
import sys
import textwrap

from deliberate.negotiation.records import read_records


def format_record(r: dict) -> str:
  lines = [f"== step {r['step']} dialogue {r['index']} (group {r['group']}) | dilemma {r['dilemma_id']} | "
           f"pair {r['pair_id']}: {r['agent1']} vs {r['agent2']}"]
  for i, t in enumerate(r["turns"], 1):
    verdict = {True: "agreed", False: "no agreement", None: f"judge failed ({t.get('judge_failure')})"}[t["agreed"]]
    lines.append(f"-- turn {i}, Agent {t['agent']} [{verdict}]")
    lines.append(textwrap.fill(t["text"], 100, initial_indent="   ", subsequent_indent="   "))
  if r.get("completion"):
    lines.append("-- final completion (Agent 1)")
    lines.append(textwrap.fill(r["completion"], 100, initial_indent="   ", subsequent_indent="   "))
  status = "FAILED: " + r["failure"] if r["failed"] else ("agreed" if r["agreed"] else "no agreement")
  lines.append(f"-- {status} after {r['rounds']} turns | CA score {r['score']} | reward {r['reward']}")
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("records", help="a records .jsonl file or a directory of them")
  ap.add_argument("--step", type=int, default=None)
  ap.add_argument("--index", type=int, default=None)
  ap.add_argument("--limit", type=int, default=1)
  args = ap.parse_args(argv)
  shown = 0
  for r in read_records(args.records):
    if (args.step is None or r["step"] == args.step) and (args.index is None or r["index"] == args.index):
      print(format_record(r) + "\n")
      shown += 1
      if shown >= args.limit:
        break
  if not shown:
    print(f"no matching record in {args.records}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
