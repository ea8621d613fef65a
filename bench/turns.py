"""Truncated-turn fraction of the quickstart's negotiation (SmolLM2-135M, sampling only) for each turn stop.

  python bench/turns.py                    # 4 dilemmas x G=4, 4 turns of <= 64 tokens: turn_stop none/paragraph/newline/sentence

Each variant runs the same dialogues (same seed, same prompts) with the deterministic local judge (lexicon backend,
a real HTTP server on 127.0.0.1) deciding agreement; a turn counts as truncated when it hit max_turn_tokens.
Printed per variant: the truncated fraction, the mean turn length in tokens, the turns, the agreements, the
sampling seconds, and the fraction next to the 'none' peer measured in the same run. Issue 16's target: <= 30%.
"""
from __future__ import annotations

import argparse
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
import quickstart  # noqa: E402


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--prompts", type=int, default=4)
  p.add_argument("--stops", default="none,paragraph,newline,sentence")
  p.add_argument("--max_turn_tokens", type=int, default=0, help="0: the quickstart's")
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args()
  qs = quickstart.get_config()
  mc = model_config()
  mc.name = qs.model.name
  params, config, tok = policy.load_model(mc, tempfile.mkdtemp())
  engine = policy.build_engine(params, config, tok, sharded=False)
  pairs = schema.load_pairs()
  items = [{"dilemma": d, "pair": pairs[i % len(pairs)]} for i, d in enumerate(schema.load_dilemmas()[:a.prompts])]
  results = {}
  jc = default_judge_config()
  with serve.start_server(serve.LexiconBackend()) as server:
    jc.embedded, jc.base_url, jc.api_key_env = False, server.url, ""
    with SyncJudge(jc) as judge:
      for stop in a.stops.split(","):
        c = neg_config.default_config()
        c.update({k: v for k, v in qs.negotiation.items()})
        c.turn_stop = stop
        if a.max_turn_tokens:
          c.max_turn_tokens = a.max_turn_tokens
        neg = episode.Negotiator(engine, tok, judge, c)
        t0 = time.time()
        ds = neg.run(items, a.seed)
        wall = time.time() - t0
        turns = [t for d in ds for t in d.turns]
        cut = sum(t.stop_reason == "length" for t in turns) / len(turns)
        mean_len = sum(len(t.response_ids) for t in turns) / len(turns)
        results[stop] = cut
        n_cut = sum(t.stop_reason == "length" for t in turns)
        peer = f" | vs none: {cut / results['none']:.2f}" if stop != "none" and results.get("none") else ""
        print(f"turn_stop={stop:<9} max_turn_tokens={c.max_turn_tokens} truncated {cut:.2f} ({n_cut}/{len(turns)} "
              f"turns) | mean turn {mean_len:.1f} tokens | agreed {sum(d.agreed for d in ds)}/{len(ds)} | "
              f"{wall:.0f} s (the first variant compiles){peer}", flush=True)
        for t in ds[0].turns[:3]:
          print(f"    agent {t.agent} ({len(t.response_ids)} tokens, {t.stop_reason}): {t.text[:200]!r}", flush=True)


if __name__ == "__main__":
  main()
