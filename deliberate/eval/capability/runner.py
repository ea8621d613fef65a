"""General-capability evaluation of one policy: prompts rendered with the policy's chat template (thinking off for
Qwen3: `tokenizer.render_ids` passes enable_thinking=False whenever the template knows it), answers sampled in
batches through the sampling engine (greedy or sampled), GPQA options also ranked by log-likelihood."""
from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deliberate.eval.capability import aime, files, gpqa, ifeval
from deliberate.model import tokenizer as tok_lib
from deliberate.model.config import ModelConfig
from deliberate.rl import logprobs as lp_lib
from deliberate.sampling.engine import Request, SamplingEngine
from deliberate.sampling.shapes import bucket_batch, bucket_length
from deliberate.sampling.sampler import SamplingParams

BENCHMARKS = ("ifeval", "gpqa", "aime")
NAMES = {"ifeval": "IFEval", "gpqa": "GPQA-Diamond", "aime": "AIME"}


def default_config() -> ml_collections.ConfigDict:
  """Paths '' read the shipped sample sets (project-written, for smoke runs: reported as samples, not benchmarks)."""
  c = ml_collections.ConfigDict()
  c.benchmarks = "ifeval,gpqa,aime"   # comma-separated subset of BENCHMARKS ('' = skip general capability)
  c.ifeval_path = ""                  # IFEval's input_data.jsonl
  c.gpqa_path = ""                    # GPQA's gpqa_diamond.csv
  c.aime_path = ""                    # AIME 2024/2025 problems as JSONL or CSV (problem, answer)
  c.limit = -1                        # the first N items of each benchmark (-1 = all)
  c.samples = 1                       # answers per item (sampled decoding; greedy repeats are identical)
  c.temperature = 0.6                 # sampled decoding (not disclosed: ours, Qwen3's non-thinking default 0.7)
  c.top_p = 0.95
  c.ifeval_max_tokens = 512           # not disclosed: ours
  c.gpqa_max_tokens = 256
  c.aime_max_tokens = 1024
  c.gpqa_seed = 0                     # option shuffle
  c.batch = 64                        # rows per engine call and per log-likelihood batch
  return c


def benchmarks(c: ml_collections.ConfigDict) -> list[str]:
  names = [s.strip() for s in c.benchmarks.split(",") if s.strip()]
  bad = [n for n in names if n not in BENCHMARKS]
  if bad:
    raise ValueError(f"config.capability.benchmarks: {bad} not among {BENCHMARKS}")
  return names


def load_items(c: ml_collections.ConfigDict) -> dict[str, tuple[str, list[dict[str, Any]]]]:
  """{benchmark: (source, items)}; source is the file path, or 'sample' for a shipped sample set. Every file is read
  (and validated) before any model is loaded."""
  out = {}
  for name in benchmarks(c):
    path = c[f"{name}_path"] or files.sample_path(name)
    items = gpqa.load(path, c.gpqa_seed) if name == "gpqa" else (ifeval if name == "ifeval" else aime).load(path)
    out[name] = ("sample" if not c[f"{name}_path"] else os.path.abspath(path),
                 items if c.limit < 0 else items[:c.limit])
  return out


def _prompt(name: str, item: dict[str, Any]) -> str:
  return item["prompt"] if name == "ifeval" else gpqa.prompt(item) if name == "gpqa" else aime.prompt(item)


def generate(engine: SamplingEngine, tokenizer, prompts: Sequence[str], sp: SamplingParams, *, seed: int,
             samples: int, batch: int) -> list[tuple[int, int, str, int, str]]:
  """(item, sample, text, tokens, stop_reason) for every item x sample; row ids are global, so the tokens do not
  depend on `batch`."""
  stop = tok_lib.stop_ids(tokenizer)
  ids = [tok_lib.render_ids(tokenizer, [{"role": "user", "content": p}], stop=stop) for p in prompts]
  requests = [Request(ids[i], i * samples + j) for i in range(len(prompts)) for j in range(samples)]
  out = []
  for start in range(0, len(requests), batch):
    chunk = requests[start:start + batch]
    for r, o in zip(chunk, engine.generate(chunk, sp, seed)):
      out.append((r.row_id // samples, r.row_id % samples,
                  tokenizer.decode(o.tokens, skip_special_tokens=True).strip(), len(o.tokens), o.stop_reason))
  return out


@functools.lru_cache(maxsize=8)
def _sum_logprobs(config: ModelConfig):
  @jax.jit
  def fn(params, lora, tokens, positions, mask):
    lp, _ = lp_lib.token_logprobs(params, tokens, positions, mask, config=config, lora=lora)
    return jnp.sum(lp, axis=-1)
  return fn


def continuation_logliks(params, config: ModelConfig, prompts: Sequence[Sequence[int]],
                         continuations: Sequence[Sequence[int]], batch: int = 64, lora=None) -> np.ndarray:
  """Sum of log p(continuation | prompt) per row, under the base params and LoRA adapters when given. Rows are right-padded (causal attention never sees the padding)
  to bucketed shapes, so a benchmark compiles a few programs."""
  rows = [list(p) + list(c) for p, c in zip(prompts, continuations)]
  out = np.zeros(len(rows), np.float64)
  for start in range(0, len(rows), batch):
    chunk = rows[start:start + batch]
    b, t = bucket_batch(len(chunk)), bucket_length(max(len(r) for r in chunk))
    tokens = np.full((b, t), config.pad_id, np.int32)
    mask = np.zeros((b, t), np.float32)
    for i, (r, p) in enumerate(zip(chunk, prompts[start:start + batch])):
      tokens[i, :len(r)] = r
      mask[i, len(p):len(r)] = 1.0
    positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t))
    out[start:start + len(chunk)] = np.asarray(_sum_logprobs(config)(params, lora, tokens, positions, mask))[:len(chunk)]
  return out


def gpqa_logliks(params, config: ModelConfig, tokenizer, items: Sequence[dict[str, Any]],
                 batch: int = 64, lora=None) -> list[tuple[list[float], list[int]]]:
  """(log-likelihoods, option lengths in characters) per item: each option's text as the start of the reply."""
  stop = tok_lib.stop_ids(tokenizer)
  prompts, conts = [], []
  for it in items:
    ids = tok_lib.render_ids(tokenizer, [{"role": "user", "content": gpqa.prompt(it)}], stop=stop)
    for text in it["options"]:
      prompts.append(ids)
      conts.append(tokenizer.encode(text, add_special_tokens=False))
  lls = continuation_logliks(params, config, prompts, conts, batch, lora)
  return [(lls[4 * i:4 * i + 4].tolist(), [len(t) for t in it["options"]]) for i, it in enumerate(items)]


def evaluate(engine: SamplingEngine, tokenizer, c: ml_collections.ConfigDict, loaded, *, decoding: str, seed: int,
             policy: str = "") -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
  """({benchmark: records}, {benchmark: summary}) of one policy; `loaded` is load_items(c)."""
  records: dict[str, list[dict[str, Any]]] = {}
  summaries: dict[str, Any] = {}
  for k, (name, (source, items)) in enumerate(loaded.items()):
    sp = SamplingParams(greedy=decoding == "greedy", temperature=c.temperature, top_p=c.top_p,
                        max_new_tokens=c[f"{name}_max_tokens"])
    samples = 1 if decoding == "greedy" else c.samples
    outs = generate(engine, tokenizer, [_prompt(name, it) for it in items], sp, seed=seed + k, samples=samples,
                    batch=c.batch)
    lls = (gpqa_logliks(engine.params, engine.config, tokenizer, items, c.batch, getattr(engine, "lora", None))
           if name == "gpqa" else None)  # the engine's own policy: its base and adapters
    recs = []
    for i, j, text, n_tokens, stop in outs:
      it = items[i]
      if name == "ifeval":
        scored = ifeval.score(it, text)
      elif name == "gpqa":
        scored = {**gpqa.score_generated(it, text), **gpqa.score_loglik(it, *lls[i])}
      else:
        scored = aime.score(it, text)
      recs.append({"policy": policy, "decoding": decoding, "benchmark": name, "id": it["id"], "sample": j,
                   "response": text, "tokens": n_tokens, "stop_reason": stop, **scored})
    module = {"ifeval": ifeval, "gpqa": gpqa, "aime": aime}[name]
    summaries[name] = {"source": source, "name": NAMES[name], **module.summary(recs),
                       "truncated_fraction": sum(r["stop_reason"] == "length" for r in recs) / max(len(recs), 1)}
    records[name] = recs
  return records, summaries
