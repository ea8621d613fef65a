"""Sampling benchmark (a script, not a test): deliberate's engine against HF transformers `generate`, same weights.

  python bench/sampling.py [--batches 1 8 32] [--prompt-len 64] [--new-tokens 128] [--no-hf]

Workload (issue 3): SmolLM2-135M-Instruct in f32; distinct chat prompts of exactly --prompt-len tokens; exactly
--new-tokens new tokens per row on both sides (deliberate gets no stop ids, HF gets min_new_tokens); T=0.7, top-p
0.95, no top-k. HF runs LlamaForCausalLM loaded from an `export_hf` of deliberate's params, on torch CPU.

tok/s counts every generated token over the wall time of the whole call, prefill included. "decode tok/s" leaves the
prefill out (the call's time minus that of a one-token call) and is the figure the per-step roofline bounds:
  roofline tok/s = B * min(bandwidth / (weight bytes + KV bytes), peak FLOP/s / (2 * params * B)),
with KV bytes at the mean context of the generation, and matmul FLOP/s and read bandwidth measured in this run.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from deliberate.model.hf_io import export_hf
from deliberate.model.registry import load_policy
from deliberate.model.tokenizer import render_ids
from deliberate.sampling.engine import Request, SamplingEngine
from deliberate.sampling.sampler import SamplingParams

PERSONAS = ["You value keeping costs as low as possible.", "You value the highest possible quality.",
            "You speak for the people most affected.", "You care about what is fair over time."]
QUESTIONS = ["Should a hospital delay a costly upgrade to hire more nurses?",
             "A friend asks you to cover for a mistake at work. What do you do?",
             "Is it fine to keep extra change a cashier gave you by error?",
             "Should a startup ship a product it knows has a minor safety flaw?",
             "How should two roommates split chores when one works nights?",
             "Should a teacher raise a grade for a struggling student's effort?",
             "A city must choose between a park and affordable housing. Which?",
             "Should you tell a colleague their idea was taken by the manager?"]
FILLER = ("The people involved have different needs, limited time and money, and a history of disagreement. Some "
          "of them will carry the consequences for years, others only for a day. Nobody has all the facts, and the "
          "decision has to be made this week, in a way that everyone can accept and explain to others later on. ")


def rss_mb() -> float:
  """Peak RSS so far (VmHWM)."""
  for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) / 1024
  raise RuntimeError("/proc/self/status has no VmHWM line (Linux only)")


def make_prompts(tokenizer, n: int, length: int) -> list[list[int]]:
  """n distinct chat prompts of exactly `length` ids: a persona, a question, and context ids cut to fit."""
  filler = tokenizer.encode(FILLER * 4, add_special_tokens=False)
  out = []
  for i in range(n):
    msgs = lambda ctx: [{"role": "system", "content": PERSONAS[i // len(QUESTIONS) % len(PERSONAS)]},
                        {"role": "user", "content": [QUESTIONS[i % len(QUESTIONS)] + " Context:", ctx]}]
    need = length - len(render_ids(tokenizer, msgs([])))
    if need < 0 or need + i > len(filler):
      raise ValueError(f"--prompt-len {length}: cannot build prompt {i} of that length")
    ids = render_ids(tokenizer, msgs(filler[i:i + need]))
    assert len(ids) == length, (len(ids), length)
    out.append(ids)
  return out


def best_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def machine_peaks() -> tuple[float, float]:
  """(f32 matmul FLOP/s on 2048x2048, read bandwidth in bytes/s over 512 MB), measured with JAX here and now."""
  a = jnp.ones((2048, 2048), jnp.float32)
  mm = jax.jit(lambda x: x @ x)
  mm(a).block_until_ready()
  flops = 2 * 2048**3 / best_time(lambda: mm(a).block_until_ready(), 5)
  big = jnp.ones((128 * 2**20,), jnp.float32)
  total = jax.jit(jnp.sum)
  total(big).block_until_ready()
  bw = big.nbytes / best_time(lambda: total(big).block_until_ready(), 5)
  del big
  return flops, bw


def hf_model(params, config, tmp: str):
  import torch
  from transformers import AutoModelForCausalLM
  torch.set_num_threads(os.cpu_count() or 1)
  export_hf(params, config, tmp)
  return AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()


def hf_generate(model, prompts: list[list[int]], new_tokens: int) -> None:
  import torch
  ids = torch.tensor(prompts)
  with torch.inference_mode():
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.7,
                         top_p=0.95, top_k=0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         pad_token_id=0)
  assert out.shape[1] == ids.shape[1] + new_tokens, out.shape


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
  ap.add_argument("--prompt-len", type=int, default=64)
  ap.add_argument("--new-tokens", type=int, default=128)
  ap.add_argument("--repeats", type=int, default=1, help="timed runs per figure (best is kept)")
  ap.add_argument("--no-hf", action="store_true", help="skip HF generate")
  args = ap.parse_args(argv)
  n_new, plen = args.new_tokens, args.prompt_len

  t = time.perf_counter()
  params, config, tokenizer = load_policy("smollm2-135m")
  print(f"loaded smollm2-135m ({config.num_params / 1e6:.1f} M params, f32) in {time.perf_counter() - t:.1f} s; "
        f"{os.cpu_count()} cpus, jax {jax.__version__}, load average {os.getloadavg()[0]:.1f}")
  prompts = make_prompts(tokenizer, max(args.batches), plen)
  engine = SamplingEngine(params, config.replace(eos_ids=()))  # no stop: every row makes exactly n_new tokens
  sp = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=n_new)
  sp1 = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=1)
  weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  kv_token = 2 * config.n_layers * config.n_kv_heads * config.head_dim * 4

  rows = {}
  for b in args.batches:
    reqs = [Request(p, i) for i, p in enumerate(prompts[:b])]
    t = time.perf_counter()
    engine.generate(reqs, sp, seed=0)
    engine.generate(reqs, sp1, seed=0)
    compile_s = time.perf_counter() - t
    full = best_time(lambda: engine.generate(reqs, sp, seed=1), args.repeats)
    stats = dict(engine.last_stats)
    prefill = best_time(lambda: engine.generate(reqs, sp1, seed=1), args.repeats)
    assert stats["cache_bytes"] == b * (plen + n_new - 1) * kv_token, stats  # sized to the need
    rows[b] = dict(ours=b * n_new / full, decode=b * (n_new - 1) / (full - prefill), step_ms=
                   (full - prefill) / (n_new - 1) * 1e3, compile_s=compile_s, cache_mb=stats["cache_bytes"] / 2**20)
    print(f"B={b}: deliberate {rows[b]['ours']:.1f} tok/s ({full:.2f} s, prefill {prefill:.2f} s, "
          f"{rows[b]['step_ms']:.1f} ms/step, compile+warm-up {compile_s:.0f} s), KV cache {rows[b]['cache_mb']:.1f} "
          f"MiB = B x (P {plen} + N-1 {n_new - 1}) slots", flush=True)
  rss_ours = rss_mb()
  flops, bw = machine_peaks()  # after the RSS reading: its 512 MB probe would set the peak
  print(f"measured: matmul {flops / 1e9:.0f} GFLOP/s, read bandwidth {bw / 1e9:.1f} GB/s; load average "
        f"{os.getloadavg()[0]:.1f} (other processes share these cores)")

  # Multi-turn: a bounded context keeps the prompt bucket, so the KV cache and the program count stay put.
  b = min(8, max(args.batches))
  compiles, turn_bytes = engine.compile_count, []
  history = [p[:plen // 2] for p in prompts[:b]]
  sp_turn = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=plen // 2)
  for turn in range(3):
    out = engine.generate([Request(h, 100 * turn + i) for i, h in enumerate(history)], sp_turn, seed=turn)
    history = [p[:plen // 2] + o.tokens for p, o in zip(prompts, out)]
    turn_bytes.append(engine.last_stats["cache_bytes"])
  print(f"multi-turn B={b}: KV cache per turn {[x // 1024 for x in turn_bytes]} KiB, "
        f"{engine.compile_count - compiles} new program(s) over 3 turns")

  if not args.no_hf:
    with tempfile.TemporaryDirectory() as tmp:
      model = hf_model(params, config, tmp)
      hf_generate(model, prompts[:1], 2)
      for b in args.batches:
        t = best_time(lambda: hf_generate(model, prompts[:b], n_new), args.repeats)
        rows[b]["hf"] = b * n_new / t
        print(f"B={b}: HF generate {rows[b]['hf']:.1f} tok/s ({t:.2f} s)", flush=True)

  print(f"\npeak RSS: {rss_ours:.0f} MB after deliberate's runs, {rss_mb():.0f} MB at the end (with the bandwidth "
        f"probe{'' if args.no_hf else ' and the HF model'})")
  print(f"| B | deliberate tok/s | decode tok/s | ms/step | HF tok/s | ratio | roofline tok/s | deliberate % | "
        f"decode % | HF % |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for b, r in rows.items():
    kv_bytes = b * (plen + n_new / 2) * kv_token  # at the mean context of the generation
    r["roof"] = b * min(bw / (weight_bytes + kv_bytes), flops / (2 * config.num_params * b))
    hf = r.get("hf", float("nan"))
    print(f"| {b} | {r['ours']:.1f} | {r['decode']:.1f} | {r['step_ms']:.0f} | {hf:.1f} | {r['ours'] / hf:.2f} | "
          f"{r['roof']:.0f} | {100 * r['ours'] / r['roof']:.0f} | {100 * r['decode'] / r['roof']:.0f} | "
          f"{100 * hf / r['roof']:.0f} |")


if __name__ == "__main__":
  sys.exit(main())
