"""The importance ratio at step 0: log(pi_train / pi_sample) on freshly sampled tokens, in float32 and in bf16.

  python bench/ratio.py [--model smollm2] [--rows 16] [--new-tokens 64] [--dtypes float32,bfloat16]

The old log-probs come from the sampler's forward (KV cache, one token at a time) and the new ones from the
trainer's (the whole row at once, packed chunked log-probs): at step 0 the policy is the same, so the ratio should
be 1 and any spread is numerics. Both run the model's one matmul (`transformer.dense`: float32 accumulation, one
rounding) and LoRA adapters at init on their own path, as in training. Prints, per dtype, the mean, p99 and max of
|log ratio| and the fraction of tokens a PPO clip at eps = 0.2 would clip; then the ratio the loss forms under
each `rl.old_logprobs`: 'sampler' (these log-probs) and 'recompute' (the step's own forward, the default), which
makes the on-policy ratio exactly 1 whatever the sampler's numerics.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def measure(params, config, prompts, rows: int, new_tokens: int, temperature: float = 0.7, seed: int = 0,
            lora_rank: int = 16) -> dict[str, float]:
  import jax
  import jax.numpy as jnp
  from deliberate.model import transformer
  from deliberate.rl import logprobs, lora
  from deliberate.sampling.engine import Request, SamplingEngine
  from deliberate.sampling.shapes import bucket_length
  from deliberate.sampling.sampler import SamplingParams

  lcfg = lora.LoraConfig(rank=lora_rank, alpha=2.0 * lora_rank)
  adapters = lora.adapters(lora.init_lora(params, lcfg, jax.random.key(seed)), lcfg)
  engine = SamplingEngine(params, config, lora=adapters)
  sp = SamplingParams(temperature=temperature, max_new_tokens=new_tokens)
  reqs = [Request(prompts[i % len(prompts)], i) for i in range(rows)]
  t0 = time.time()
  outs = engine.generate(reqs, sp, seed=seed)
  t_sample = time.time() - t0
  length = bucket_length(max(len(r.prompt_ids) + len(o.tokens) for r, o in zip(reqs, outs)))
  tokens = np.zeros((rows, length), np.int32)
  pos = np.full((rows, length), -1, np.int32)
  mask = np.zeros((rows, length), np.float32)
  old = np.zeros((rows, length), np.float32)
  for i, (r, o) in enumerate(zip(reqs, outs)):
    ids = list(r.prompt_ids) + o.tokens
    tokens[i, :len(ids)], pos[i, :len(ids)] = ids, np.arange(len(ids))
    mask[i, len(r.prompt_ids):len(ids)] = 1.0
    old[i, len(r.prompt_ids):len(ids)] = o.logprobs
  k = logprobs.targets_per_row(mask)
  fn = jax.jit(lambda p, a, t, q, m: logprobs.token_logprobs(p, t, q, m, config=config, targets_per_row=k,
                                                             token_chunk=64, temperature=temperature, lora=a)[0])
  new = np.asarray(fn(params, adapters, jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(mask)))
  log_ratio = (new - old)[mask > 0]
  a = np.abs(log_ratio)
  out = {"tokens": int(a.size), "mean": float(log_ratio.mean()), "mean_abs": float(a.mean()),
         "p99_abs": float(np.quantile(a, 0.99)), "max_abs": float(a.max()),
         "clip_frac_0.2": float(np.mean(np.abs(np.exp(log_ratio) - 1.0) > 0.2)), "sample_s": t_sample}
  # The ratio as the loss forms it, under each source of its denominator (rl.old_logprobs), with advantages of
  # both signs so that clipping on either side counts.
  from deliberate.rl import loss as loss_lib
  raw = {"tokens_BxT": tokens, "positions_BxT": pos, "loss_mask_BxT": mask, "old_logprobs_BxT": old,
         "advantages_B": np.where(np.arange(rows) % 2 == 0, 1.0, -1.0).astype(np.float32),
         "seq_ids_B": np.arange(rows)}
  for src in loss_lib.OLD_LOGPROBS:
    cfg = loss_lib.LossConfig(old_logprobs=src)
    m = loss_lib.finalize_metrics(loss_lib.policy_loss(jnp.asarray(new), jnp.zeros_like(jnp.asarray(new)),
                                                       loss_lib.prepare_batch(raw, cfg), cfg)[1])
    out[src] = (m["ratio_min"], m["ratio_max"], m["clip_low_frac"] + m["clip_high_frac"])
  return out


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--model", default="smollm2", help="smollm2 (its wheel's GGUF, dequantised) or an HF directory")
  ap.add_argument("--rows", type=int, default=16)
  ap.add_argument("--new-tokens", type=int, default=64)
  ap.add_argument("--dtypes", default="float32,bfloat16")
  a = ap.parse_args(argv)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from deliberate.model import registry, transformer
  from deliberate.model import tokenizer as tok_lib
  name = "smollm2-135m" if a.model == "smollm2" else a.model
  params, config, tok = registry.load_policy(name)
  questions = ["Two neighbours share a driveway and disagree about who should pay to repair it. What is fair?",
               "A team must choose between shipping on time and fixing a known bug. How should they decide?",
               "My friend asked me to keep a secret that could hurt someone else. What should I do?",
               "Should a city spend its budget on a new park or on repairing old schools?"]
  prompts = [tok_lib.render_ids(tok, [{"role": "user", "content": q}]) for q in questions]
  for dtype in a.dtypes.split(","):
    cfg = config.replace(param_dtype=dtype, compute_dtype=dtype)
    r = measure(transformer.cast_params(params, dtype), cfg, prompts, a.rows, a.new_tokens)
    print(f"{dtype:9s} tokens {r['tokens']:5d}  log-ratio mean {r['mean']:+.2e}  |.| mean {r['mean_abs']:.2e}  "
          f"p99 {r['p99_abs']:.2e}  max {r['max_abs']:.2e}  clip fraction at 0.2: {r['clip_frac_0.2']:.4f}",
          flush=True)
    for src in ("sampler", "recompute"):
      lo, hi, clipped = r[src]
      print(f"{'':9s} in the loss, rl.old_logprobs={src!r}: ratio in [{lo:.4f}, {hi:.4f}], clipped {clipped:.4f}",
            flush=True)


if __name__ == "__main__":
  main()
