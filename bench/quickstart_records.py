"""Real negotiation records from the embedded SmolLM2 with the quickstart's negotiation settings: sampling only.

  python bench/quickstart_records.py --n 50 --out /tmp/records50.jsonl [--batch 16]

The quickstart (configs/quickstart.py) writes only 8 dialogues a step and trains between steps; judge studies such
as bench/judge_llamacpp.py need more real dialogues from the same untrained policy. This runs the training
Negotiator (turn and completion sampling, the quickstart's temperatures and token budgets, its embedded
deterministic local judge: lexicon heuristic, not an LLM) over the first ceil(n / group_size) prompts of the
training prompt stream, --batch dialogues per episode call, and writes the trainer's dialogue records (one JSON
object a line). Prints the wall time and the lexicon's agreement rate.
"""
import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
import time

from deliberate import policy
from deliberate.data import loader
from deliberate.judge.runner import SyncJudge
from deliberate.negotiation import episode, records


def quickstart_config():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "quickstart.py")
  spec = importlib.util.spec_from_file_location("quickstart_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--n", type=int, default=50, help="dialogue records to write")
  p.add_argument("--out", default="/tmp/records50.jsonl")
  p.add_argument("--batch", type=int, default=16, help="dialogues per batched episode call (a multiple of the "
                 "group size); 52 at once reached 12.3 GB RSS here and was OOM-killed on a shared 24 GB machine")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--data-dir", default="", help="prepared TFDS data ('' = a scratch folder, prepared offline)")
  args = p.parse_args()
  c = quickstart_config()
  g = c.negotiation.group_size
  if args.n < 1 or args.batch < g or args.batch % g:
    raise SystemExit(f"--n must be >= 1 and --batch a multiple of the group size {g}, got {args.n}, {args.batch}")
  scratch = tempfile.mkdtemp(prefix="qs-records-")
  t0 = time.perf_counter()
  params, cfg, tok = policy.load_model(c.model, scratch)
  engine = policy.build_engine(params, cfg, tok, sharded=False)
  data = loader.PromptIterator(args.data_dir or os.path.join(scratch, "tfds"), c.seed, c.data.prompts_per_step)
  prompts = [data.prompt_at(i) for i in range(math.ceil(args.n / g))]
  print(f"model loaded in {time.perf_counter() - t0:.0f}s; {len(prompts)} prompts x group size {g}", file=sys.stderr)
  out = []
  with SyncJudge(c.judge) as judge, open(args.out, "w") as f:  # written per batch: a killed run keeps its records
    negotiator = episode.Negotiator(engine, tok, judge, c.negotiation)
    name = records.judge_name(judge)
    per_call = args.batch // g
    for b, start in enumerate(range(0, len(prompts), per_call)):
      t1 = time.perf_counter()
      dialogues = negotiator.run(prompts[start:start + per_call], args.seed + b)
      batch = [records.dialogue_record(d, step=0, judge=name) for d in dialogues][:args.n - len(out)]
      f.writelines(json.dumps(r) + "\n" for r in batch)
      f.flush()
      out += batch
      print(f"  batch {b + 1}: {len(dialogues)} dialogues in {time.perf_counter() - t1:.0f}s", file=sys.stderr)
  agreed = sum(bool(r["agreed"]) for r in out)
  print(f"{len(out)} records -> {args.out} in {time.perf_counter() - t0:.0f}s wall (model {c.model.name}, "
        f"max_turns {c.negotiation.max_turns}, max_turn_tokens {c.negotiation.max_turn_tokens}); agreed by the "
        f"deterministic local judge (lexicon heuristic): {agreed}/{len(out)}")


if __name__ == "__main__":
  main()
