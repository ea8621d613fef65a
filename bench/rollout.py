"""One step's rollout, lockstep against the async scheduler, against the local judge server with a per-call delay.

  python bench/rollout.py                       # SmolLM2-135M, 4 prompts x G=4, N=7, delays 0, 0.5, 2 s
  python bench/rollout.py --delays 2 --max_turn_tokens 16 --max_completion_tokens 16   # a slow CPU

The judge is the deterministic local judge (lexicon backend of deliberate.judge.serve, a real HTTP server on
127.0.0.1) answering each call after `delay` seconds. Printed next to each wall time, the two bounds measured in the
same run: the total sampling time, and the longest chain of judge calls of one dialogue (the sum of its verdict
latencies and its CA latency). A rollout cannot beat the larger of the two; lockstep pays roughly their sum.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deliberate import policy  # noqa: E402
from deliberate.data import schema  # noqa: E402
from deliberate.judge import serve  # noqa: E402
from deliberate.judge.config import default_judge_config  # noqa: E402
from deliberate.judge.runner import SyncJudge  # noqa: E402
from deliberate.model.config import default_config as model_config  # noqa: E402
from deliberate.negotiation import config as neg_config, episode  # noqa: E402


class DelayedLexicon(serve.LexiconBackend):
  """The deterministic local judge, each answer after `delay_s` (a remote judge's round trip)."""

  def __init__(self, delay_s: float):
    self.delay_s = delay_s

  async def complete(self, messages, max_tokens, temperature, verdict=None):
    await asyncio.sleep(self.delay_s)
    return await super().complete(messages, max_tokens, temperature, verdict)


def judge_chain_s(dialogues) -> float:
  return max(sum(t.judge_latency_s for t in d.turns) + d.ca_latency_s for d in dialogues)


def run_once(engine, tok, judge, cfg, items, seed):
  neg = episode.Negotiator(engine, tok, judge, cfg)
  t0 = time.time()
  ds = neg.run(items, seed)
  return time.time() - t0, neg, ds


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--model", default="smollm2-135m")
  p.add_argument("--delays", default="0,0.5,2")
  p.add_argument("--prompts", type=int, default=4)
  p.add_argument("--group", type=int, default=4)
  p.add_argument("--max_turns", type=int, default=7)
  p.add_argument("--max_turn_tokens", type=int, default=128)
  p.add_argument("--max_completion_tokens", type=int, default=256)
  p.add_argument("--max_batch", type=int, default=0, help="scheduler_max_batch (0: no cap)")
  p.add_argument("--fill_wait_s", type=float, default=0.02)
  p.add_argument("--speculate", type=int, default=1, help="overlap_judge in the async run (idle-time next turns)")
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args()

  mc = model_config()
  mc.name = a.model
  params, config, tok = policy.load_model(mc, tempfile.mkdtemp())
  engine = policy.build_engine(params, config, tok, sharded=False)
  pairs = schema.load_pairs()
  items = [{"dilemma": d, "pair": pairs[i % len(pairs)]} for i, d in enumerate(schema.load_dilemmas()[:a.prompts])]

  def cfg(kind: str):
    c = neg_config.default_config()
    c.group_size, c.max_turns = a.group, a.max_turns
    c.max_turn_tokens, c.max_completion_tokens = a.max_turn_tokens, a.max_completion_tokens
    c.scheduler = kind
    if kind == "async":
      c.scheduler_max_batch, c.scheduler_fill_wait_s, c.overlap_judge = a.max_batch, a.fill_wait_s, bool(a.speculate)
    return c

  print(f"model {a.model}, {a.prompts} prompts x G={a.group}, N={a.max_turns}, turn/completion tokens "
        f"{a.max_turn_tokens}/{a.max_completion_tokens}, async: max_batch={a.max_batch or 'none'}, "
        f"fill_wait={a.fill_wait_s}s, speculate={bool(a.speculate)}", flush=True)
  rows = []
  for delay in [float(x) for x in a.delays.split(",")]:
    jc = default_judge_config()
    with serve.start_server(DelayedLexicon(delay)) as server:
      jc.embedded, jc.base_url, jc.api_key_env = False, server.url, ""
      with SyncJudge(jc) as judge:
        if not rows:  # compile both schedulers' shapes once, outside the timings
          for kind in ("lockstep", "async"):
            run_once(engine, tok, judge, cfg(kind), items, a.seed)
        wall_l, neg_l, ds_l = run_once(engine, tok, judge, cfg("lockstep"), items, a.seed)
        wall_a, neg_a, ds_a = run_once(engine, tok, judge, cfg("async"), items, a.seed)
    same = [[t.response_ids for t in d.turns] for d in ds_l] == [[t.response_ids for t in d.turns] for d in ds_a]
    row = dict(delay=delay, lockstep=wall_l, new=wall_a, sample_l=neg_l.timings["sample_s"],
               sample_a=neg_a.timings["sample_s"], chain=judge_chain_s(ds_a), rounds=sum(d.rounds for d in ds_a),
               agreed=sum(d.agreed for d in ds_a), same=same, calls=len(neg_a.sample_calls))
    rows.append(row)
    print(row, flush=True)
  print("\n| judge delay (s) | lockstep wall (s) | async wall (s) | sampling total (s, lockstep / async) | longest "
        "judge chain (s) | async / max(bounds) | async / lockstep | turns, agreed | same tokens |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    bound = max(r["sample_l"], r["chain"])
    print(f"| {r['delay']:g} | {r['lockstep']:.1f} | {r['new']:.1f} | {r['sample_l']:.1f} / {r['sample_a']:.1f} | "
          f"{r['chain']:.1f} | {r['new'] / bound:.2f} | {r['new'] / r['lockstep']:.2f} | {r['rounds']}, "
          f"{r['agreed']} | {r['same']} |")


if __name__ == "__main__":
  main()
