"""Print negotiation records for a human: `python -m deliberate.show RECORDS [--step N] [--index I] [--limit K]`."""
from __future__ import annotations

import argparse
import sys

from deliberate.negotiation.records import format_record, read_records


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
