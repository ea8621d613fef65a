"""One step's rollout, lockstep against the async scheduler, against the local judge server with a per-call delay.

  python bench/rollout.py                       # SmolLM2-135M, 4 prompts x G=4, N=7, delays 2, 0.5, 0 s, short turns
  python bench/rollout.py --delays 2 --max_turn_tokens 16 --max_completion_tokens 32   # a slow, busy CPU

The judge is the deterministic local judge (lexicon backend of deliberate.judge.serve, a keyword heuristic, a real
HTTP server on 127.0.0.1) answering each call after `delay` seconds. Printed next to each wall time, the two bounds
measured in the same run: the total sampling time (of the lockstep run: the fewest, fullest engine calls), and the
longest chain of judge calls of one dialogue (the sum of its verdict latencies and its CA latency). No rollout beats
the larger bound; lockstep pays roughly their sum. Where sampling dominates (a CPU), no schedule can halve lockstep,
so the table also gives the share of the judge's time the async rollout hid: (lockstep - async) / (lockstep - sampling),
and, robust to a CPU shared with other work (each run's sampling measured in that run), the wall time each run spent
beyond its own sampling: the judge time it left exposed.

Efficiency: one engine (one set of compiled programs) serves every run, the XLA programs persist in a compilation
cache directory across invocations, and a warm-up (one rollout of each scheduler at delay 0, untimed) compiles the
shapes the timed runs use; programs compiled during a timed run are counted in the table.

Numerics (`--numerics`, on by default): the lockstep and async rollouts at each delay share seed and judge, so the
token ids should be identical; the table gives whether they are and the largest log-prob difference on tokens both
sampled, and the first diverging turn is printed with the batch shapes that sampled it in each run.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

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
  """The longest serial chain of judge calls of one dialogue: no rollout can finish before it."""
  return max(sum(t.judge_latency_s for t in d.turns) + d.ca_latency_s for d in dialogues)


def compare(ds_a, ds_b) -> dict:
  """Same tokens? The largest |log-prob difference| over tokens both runs sampled, and the first diverging turn."""
  same, max_lp, first = True, 0.0, None
  for da, db in zip(ds_a, ds_b):
    pairs = [(t.response_ids, u.response_ids, t.logprobs, u.logprobs) for t, u in zip(da.turns, db.turns)]
    pairs.append((da.completion_ids, db.completion_ids, None, None))
    if len(da.turns) != len(db.turns):
      same = False
    for k, (x, y, lx, ly) in enumerate(pairs):
      n = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
      if lx is not None:
        max_lp = max([max_lp] + [abs(p - q) for p, q in zip(lx[:n], ly[:n])])
      if x != y:
        same = False
        if first is None:
          first = (da.index, k, n)
  return dict(same=same, max_lp=max_lp, first=first)


def run_once(engine, tok, judge, cfg, items, seed):
  neg = episode.Negotiator(engine, tok, judge, cfg)
  compiled = engine.compile_count
  t0 = time.time()
  ds = neg.run(items, seed)
  return dict(wall=time.time() - t0, neg=neg, ds=ds, compiles=engine.compile_count - compiled)


def batch_probe(engine, tok, cfg, items, seed: int, splits=(16, 8, 4)) -> None:
  """Batch-dependent numerics on the real model: the same turn-0 requests (same row ids) sampled in batches of
  different sizes; the tokens should match and the log-probs differ only by float rounding of the call's shapes."""
  neg = episode.Negotiator(engine, tok, None, cfg)
  g = cfg.group_size
  ds = [episode.Dialogue(i * g + j, i, it["dilemma"], it["pair"]) for i, it in enumerate(items) for j in range(g)]
  reqs = [neg.turn_request(d) for d in ds]
  runs = {}
  for size in splits:
    t0 = time.time()
    runs[size] = [o for k in range(0, len(reqs), size) for o in engine.generate(reqs[k:k + size], neg.turn_sp, seed)]
    print(f"probe: {len(reqs)} turn-0 rows in calls of {size}: {time.time() - t0:.1f}s, last {engine.last_stats}",
          flush=True)
  ref = runs[splits[0]]
  for size in splits[1:]:
    same = sum(a.tokens == b.tokens for a, b in zip(ref, runs[size]))
    diffs = []
    for a, b in zip(ref, runs[size]):
      n = next((i for i, (x, y) in enumerate(zip(a.tokens, b.tokens)) if x != y), min(len(a.tokens), len(b.tokens)))
      diffs += [abs(x - y) for x, y in zip(a.logprobs[:n], b.logprobs[:n])]
    print(f"probe: calls of {size} vs {splits[0]}: {same}/{len(ref)} rows with identical tokens, max |log-prob "
          f"diff| on shared prefixes {max(diffs, default=0.0):.2e}, mean {sum(diffs) / max(len(diffs), 1):.2e}",
          flush=True)


def parse_async(spec: str) -> list[tuple[int, bool]]:
  """'0:1,8:0' -> [(max_batch 0, speculate), (max_batch 8, no speculation)]."""
  out = []
  for part in spec.split(","):
    mb, _, spec_ = part.partition(":")
    out.append((int(mb), bool(int(spec_ or 0))))
  return out


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--model", default="smollm2-135m")
  p.add_argument("--delays", default="2,0.5,0", help="judge delays (s), the target's first")
  p.add_argument("--prompts", type=int, default=4)
  p.add_argument("--group", type=int, default=4)
  p.add_argument("--max_turns", type=int, default=7)
  p.add_argument("--max_turn_tokens", type=int, default=64, help="configs/quickstart.py's short turns")
  p.add_argument("--max_completion_tokens", type=int, default=64)
  p.add_argument("--async", dest="asyncs", default="0:1,8:0",
                 help="async runs as max_batch:speculate pairs (max_batch 0: no cap; speculate: overlap_judge)")
  p.add_argument("--fill_wait_s", type=float, default=0.02)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--probe", default="", help="only the batch-numerics probe: call sizes, e.g. '16,8,4'")
  p.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "deliberate-bench-xla-cache"),
                 help="persistent XLA compilation cache ('' to disable)")
  a = p.parse_args()
  if a.cache_dir:
    jax.config.update("jax_compilation_cache_dir", a.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  asyncs = parse_async(a.asyncs)

  t0 = time.time()
  mc = model_config()
  mc.name = a.model
  params, config, tok = policy.load_model(mc, tempfile.mkdtemp())
  engine = policy.build_engine(params, config, tok, sharded=False)
  pairs = schema.load_pairs()
  items = [{"dilemma": d, "pair": pairs[i % len(pairs)]} for i, d in enumerate(schema.load_dilemmas()[:a.prompts])]
  print(f"loaded {a.model} in {time.time() - t0:.0f}s", flush=True)

  def cfg(kind: str, max_batch: int = 0, speculate: bool = False):
    c = neg_config.default_config()
    c.group_size, c.max_turns = a.group, a.max_turns
    c.max_turn_tokens, c.max_completion_tokens = a.max_turn_tokens, a.max_completion_tokens
    c.scheduler = kind
    if kind == "async":
      c.scheduler_max_batch, c.scheduler_fill_wait_s, c.overlap_judge = max_batch, a.fill_wait_s, speculate
    return c

  if a.probe:
    batch_probe(engine, tok, cfg("lockstep"), items, a.seed, tuple(int(x) for x in a.probe.split(",")))
    return
  name = lambda mb, sp: f"async(max_batch={mb or 'none'}, speculate={int(sp)})"
  print(f"model {a.model}, {a.prompts} prompts x G={a.group}, N={a.max_turns}, turn/completion tokens "
        f"{a.max_turn_tokens}/{a.max_completion_tokens}, fill_wait={a.fill_wait_s}s, judge: deterministic local "
        f"judge (lexicon keyword heuristic) behind a real HTTP server", flush=True)
  rows = []
  for n, delay in enumerate(float(x) for x in a.delays.split(",")):
    jc = default_judge_config()
    with serve.start_server(DelayedLexicon(delay)) as server:
      jc.embedded, jc.base_url, jc.api_key_env = False, server.url, ""
      with SyncJudge(jc) as judge:
        if n == 0:  # compile both schedulers' shapes once, outside the timings
          t0 = time.time()
          with serve.start_server(DelayedLexicon(0.0)) as s0:
            jc0 = default_judge_config()
            jc0.embedded, jc0.base_url, jc0.api_key_env = False, s0.url, ""
            with SyncJudge(jc0) as j0:
              for kind, (mb, sp) in [("lockstep", (0, False))] + [("async", x) for x in asyncs]:
                run_once(engine, tok, j0, cfg(kind, mb, sp), items, a.seed)
          print(f"warm-up: {time.time() - t0:.0f}s, {engine.compile_count} programs", flush=True)
        lock = run_once(engine, tok, judge, cfg("lockstep"), items, a.seed)
        print(f"delay {delay:g}s lockstep: {lock['wall']:.1f}s, sampling {lock['neg'].timings['sample_s']:.1f}s, "
              f"calls {lock['neg'].sample_calls}", flush=True)
        for mb, sp in asyncs:
          r = run_once(engine, tok, judge, cfg("async", mb, sp), items, a.seed)
          cmp = compare(lock["ds"], r["ds"])
          row = dict(delay=delay, name=name(mb, sp), lock=lock["wall"], new=r["wall"],
                     sample_l=lock["neg"].timings["sample_s"], sample_a=r["neg"].timings["sample_s"],
                     chain=judge_chain_s(r["ds"]), chain_l=judge_chain_s(lock["ds"]),
                     rounds=sum(d.rounds for d in r["ds"]), agreed=sum(d.agreed for d in r["ds"]),
                     compiles=lock["compiles"] + r["compiles"], **cmp)
          rows.append(row)
          print(f"  {row['name']}: {r['wall']:.1f}s, sampling {row['sample_a']:.1f}s, chain {row['chain']:.1f}s, "
                f"calls {r['neg'].sample_calls}, {cmp}", flush=True)
          if cmp["first"] is not None:
            d, k, i = cmp["first"]
            print(f"    first divergence: dialogue {d}, turn {k} (== {a.max_turns}: completion), token {i}", flush=True)
  print("\n| judge delay (s) | scheduler | lockstep wall (s) | async wall (s) | sampling total (s, lockstep / async) "
        "| longest judge chain (s) | async / max(bounds) | async / lockstep | judge time hidden "
        "| wall - own sampling (s, lockstep / async) | turns, agreed | same tokens | max abs log-prob diff "
        "| compiles in timed runs |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    bound = max(r["sample_l"], r["chain"])
    judge_time = r["lock"] - r["sample_l"]
    hidden = (r["lock"] - r["new"]) / judge_time if judge_time > 0.5 else float("nan")
    print(f"| {r['delay']:g} | {r['name']} | {r['lock']:.1f} | {r['new']:.1f} | {r['sample_l']:.1f} / "
          f"{r['sample_a']:.1f} | {r['chain']:.1f} | {r['new'] / bound:.2f} | {r['new'] / r['lock']:.2f} | "
          f"{hidden:.0%} | {r['lock'] - r['sample_l']:.1f} / {r['new'] - r['sample_a']:.1f} | {r['rounds']}, "
          f"{r['agreed']} | {r['same']} | {r['max_lp']:.1e} | {r['compiles']} |")


if __name__ == "__main__":
  main()
