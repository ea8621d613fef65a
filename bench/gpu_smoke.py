"""A short accelerator check: numerics, sampling throughput and GRPO-step throughput on whatever JAX sees.

  python bench/gpu_smoke.py [--quick]

Needs only jax, optax and numpy (no data, judge or checkpoint), so it runs on a bare accelerator image. The model is
SmolLM2-135M-shaped with random weights; sampling uses top-k 50 so flat random logits cost no full-vocabulary sort.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from deliberate.model import transformer
from deliberate.model.config import ModelConfig
from deliberate.rl import loss as loss_lib
from deliberate.rl import step as step_lib
from deliberate.sampling.engine import Request, SamplingEngine
from deliberate.sampling.sampler import SamplingParams

SMOLLM2 = ModelConfig(arch="llama", vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64,
                      d_ff=1536, rope_theta=1e5, rms_eps=1e-5, max_seq_len=2048, eos_ids=(2,))


def matmul_flops(dtype, n: int = 8192) -> float:
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t = time.perf_counter()
  for _ in range(10):
    out = f(a)
  out.block_until_ready()
  return 10 * 2 * n ** 3 / (time.perf_counter() - t)


def parity(params) -> None:
  cfg32, cfg16 = SMOLLM2, SMOLLM2.replace(compute_dtype="bfloat16")
  tokens = jax.random.randint(jax.random.key(1), (2, 64), 0, SMOLLM2.vocab_size)
  pos = jnp.broadcast_to(jnp.arange(64), (2, 64))
  l32, _ = jax.jit(lambda p, t, q: transformer.apply(p, t, q, config=cfg32))(params, tokens, pos)
  l16, _ = jax.jit(lambda p, t, q: transformer.apply(p, t, q, config=cfg16))(params, tokens, pos)
  cache = transformer.init_kv_cache(cfg32, 2, 64)
  step = jax.jit(lambda p, t, q, c: transformer.apply(p, t, q, c, config=cfg32))
  pre, cache = step(params, tokens[:, :48], pos[:, :48], cache)
  outs = [pre]
  for i in range(48, 64):
    o, cache = step(params, tokens[:, i:i + 1], pos[:, i:i + 1], cache)
    outs.append(o)
  cache_err = float(jnp.max(jnp.abs(jnp.concatenate(outs, 1) - l32)))
  print(f"parity: bf16-vs-f32 logits max|diff| {float(jnp.max(jnp.abs(l16 - l32))):.3g} "
        f"(scale {float(jnp.max(jnp.abs(l32))):.3g}); KV-cache decode vs full forward {cache_err:.3g}")


def sampling(params, batches, new_tokens: int) -> None:
  engine = SamplingEngine(params, SMOLLM2)
  sp = SamplingParams(temperature=0.7, top_k=50, max_new_tokens=new_tokens)
  for b in batches:
    reqs = [Request(list(range(10, 74)), i) for i in range(b)]
    engine.generate(reqs, sp, seed=0)  # compile
    t = time.perf_counter()
    outs = engine.generate(reqs, sp, seed=1)
    dt = time.perf_counter() - t
    n = sum(len(o.tokens) for o in outs)
    print(f"sampling: batch {b:4d}: {n / dt:9.1f} tok/s ({dt / new_tokens * 1e3:.2f} ms/step, {n} tokens)")


def train_step(params, rows: int, length: int, compute_dtype: str, peak: float, remat: bool = False) -> None:
  cfg = SMOLLM2.replace(compute_dtype=compute_dtype)
  step_cfg = step_lib.StepConfig(model=cfg, token_chunk=256, temperature=0.7, remat=remat)
  opt = optax.adamw(1e-6)
  state, frozen = step_lib.init_state(params, opt, step_cfg, jax.random.key(0))
  state = step_lib.replicate(state, 1)
  fn = step_lib.make_pmap_step(opt, step_cfg, jax.local_devices()[:1])
  rng = np.random.default_rng(0)
  mask = np.zeros((rows, length), np.float32)
  mask[:, length // 2:] = 1
  batch = {"tokens_BxT": rng.integers(0, cfg.vocab_size, (rows, length)).astype(np.int32),
           "positions_BxT": np.broadcast_to(np.arange(length), (rows, length)).astype(np.int32),
           "loss_mask_BxT": mask, "old_logprobs_BxT": -np.ones((rows, length), np.float32) * mask,
           "advantages_B": rng.normal(size=rows).astype(np.float32), "seq_ids_B": np.arange(rows, dtype=np.int32)}
  batch = loss_lib.prepare_batch(batch, step_cfg.loss)
  state, m = fn(state, None, batch)
  jax.block_until_ready(state)
  t = time.perf_counter()
  for _ in range(3):
    state, m = fn(state, None, batch)
  jax.block_until_ready(state)
  dt = (time.perf_counter() - t) / 3
  flops = 6 * cfg.num_params * rows * length
  print(f"train step ({compute_dtype}{', remat' if remat else ''}): {rows}x{length}: {dt * 1e3:.1f} ms, {rows * length / dt:.0f} tok/s, "
        f"MFU {flops / dt / peak:.1%} of the measured {compute_dtype} matmul rate")


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  args = ap.parse_args()
  print("devices:", jax.devices())
  peak32, peak16 = matmul_flops(jnp.float32), matmul_flops(jnp.bfloat16)
  print(f"matmul: f32 {peak32 / 1e12:.1f} TFLOP/s, bf16 {peak16 / 1e12:.1f} TFLOP/s")
  params = transformer.init_params(SMOLLM2, jax.random.key(0))
  parity(params)
  sampling(params, (1, 8, 32) if args.quick else (1, 8, 32, 128, 512), 128)
  train_step(params, 16, 256, "float32", peak32)
  train_step(params, 16, 256, "bfloat16", peak16)
  if not args.quick:
    train_step(params, 64, 1024, "bfloat16", peak16, remat=True)  # without remat: ~70 GB of attention scores


if __name__ == "__main__":
  main()
