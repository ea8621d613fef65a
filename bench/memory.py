"""Memory and a roofline of one GRPO step, proved without the hardware: AOT compiles from abstract shapes only.

  python bench/memory.py --config configs/negotiation_qwen3_14b.py [--devices 8] [--mesh-data 1 --mesh-fsdp 8]
                         [--before]

No weight is loaded or allocated: params, adapters, optimizer state, batches and caches are `jax.ShapeDtypeStruct`s
with shardings on a mesh of simulated CPU devices, and each program is `.lower().compile()`d. Printed per program
(the sampler's whole turn: prefill + decode loop; the train step), per device: XLA's memory analysis (arguments,
outputs, temporaries, aliased) next to the memory of TPU v5e / v4 / v5p and H100 / H200 chips; then XLA's cost
analysis (FLOPs and bytes) of the prefill, of one decode step and of the train step, turned into a roofline
estimate of one paper step: `max_turns` turns plus the completions for P x G dialogues, and the train step.
The judge's time is excluded. Communication is not modelled (XLA CPU schedules no collectives' overlap), so on
several chips the estimate is a lower bound. `--before` compiles what the code did before LoRA got its own path:
the loss merges the adapters into a float32 copy of every adapted matrix, and the sampler gets that float32 merge
replicated on every device in the split layout.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
from typing import Any

GIB = 2 ** 30
# name: (HBM bytes, peak bf16 dense FLOP/s, HBM bytes/s) per chip
TARGETS = {"v5e": (16 * GIB, 197e12, 819e9), "v4": (32 * GIB, 275e12, 1228e9), "v5p": (95 * GIB, 459e12, 2765e9),
           "H100": (80 * GIB, 989e12, 3350e9), "H200": (141 * GIB, 989e12, 4800e9)}
# Architectures by checkpoint directory name, for a config whose model path is not on this machine.
KNOWN = {
    "qwen3-14b": dict(arch="qwen3", vocab_size=151936, d_model=5120, n_layers=40, n_heads=40, n_kv_heads=8,
                      head_dim=128, d_ff=17408, tie_embeddings=False, qk_norm=True, rope_theta=1e6, rms_eps=1e-6,
                      max_seq_len=40960),
    "smollm2-135m": dict(arch="llama", vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                         head_dim=64, d_ff=1536, tie_embeddings=True, rope_theta=1e5, rms_eps=1e-5, max_seq_len=8192),
}


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("run_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def model_config(c):
  """The ModelConfig of a run config, from config.json when the checkpoint is here, else from KNOWN by name."""
  from deliberate.model.config import ModelConfig
  dtypes = dict(param_dtype=c.model.param_dtype, compute_dtype=c.model.compute_dtype)
  name = c.model.name
  if name == "tiny":
    t = c.model.tiny
    return ModelConfig(vocab_size=t.vocab_size, d_model=t.d_model, n_layers=t.n_layers, n_heads=t.n_heads,
                       n_kv_heads=t.n_kv_heads, head_dim=t.d_model // t.n_heads, d_ff=t.d_ff,
                       max_seq_len=t.max_seq_len, **dtypes)
  cfg_file = os.path.join(name, "config.json")
  if os.path.isfile(cfg_file):
    import json
    from deliberate.model.hf_io import config_from_hf
    return config_from_hf(json.load(open(cfg_file)), cfg_file).replace(**dtypes)
  key = os.path.basename(name.rstrip("/")).lower()
  if key not in KNOWN:
    raise ValueError(f"config.model.name: {name!r} is neither an HF directory here nor one of {sorted(KNOWN)}")
  return ModelConfig(**KNOWN[key], **dtypes)


def opening_tokens() -> int:
  """The longest opening prompt of the packaged dilemmas and persona pairs, estimated at 3.5 characters a token
  (English BPE gives about 4) plus 64 tokens of chat template: no tokenizer of the big model is needed."""
  from deliberate.data import schema
  from deliberate.negotiation import prompts
  dilemmas, pairs = schema.load_dilemmas(), schema.load_pairs()
  longest_d = max(dilemmas, key=lambda d: len(d["text"]))
  longest_p = max(pairs, key=lambda p: len(str(p["a"])) + len(str(p["b"])))
  chars = max(sum(len(str(m["content"])) for m in prompts.turn_messages(longest_d, longest_p[s], longest_p[o], []))
              for s, o in (("a", "b"), ("b", "a")))
  return int(chars / 3.5) + 64


def shapes(c, opening: int) -> dict[str, int]:
  """The paper step's shapes, bounded as the negotiation task bounds its prompts."""
  from deliberate.sampling.engine import bucket_batch, bucket_length
  n = c.negotiation
  rows = n.group_size * c.data.prompts_per_step
  turn_prompt = opening + (n.context_turns + 1) * (n.max_turn_tokens + 16)
  final_prompt = opening + n.max_turns * (n.max_turn_tokens + 16)
  return dict(rows=bucket_batch(rows), turns=n.max_turns, turn_prompt=bucket_length(turn_prompt),
              turn_new=n.max_turn_tokens, final_prompt=bucket_length(final_prompt), final_new=n.max_completion_tokens,
              train_len=bucket_length(final_prompt + n.max_completion_tokens), opening=opening)


def _abstract(tree, shardings):
  import jax
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _cost(analysis) -> dict[str, float]:
  cost = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return dict(flops=float(cost.get("flops", 0.0)), bytes=float(cost.get("bytes accessed", 0.0)))


def _stats(lowered) -> dict[str, float]:
  """XLA's per-device memory analysis of the compiled program."""
  m = lowered.compile().memory_analysis()
  out = dict(args=m.argument_size_in_bytes, out=m.output_size_in_bytes, temp=m.temp_size_in_bytes,
             alias=m.alias_size_in_bytes)
  out["peak"] = out["args"] + out["out"] + out["temp"] - out["alias"]
  return out


def analyze(c, mesh_data: int, mesh_fsdp: int, before: bool = False, opening: int | None = None,
            row_axes: tuple[str, ...] = ("data",)) -> dict[str, Any]:
  """Compile the sampler and the train step of run config `c` on a (data, fsdp) mesh; per-device stats."""
  import functools
  import jax
  import jax.numpy as jnp
  import optax
  from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
  from deliberate.model import transformer
  from deliberate.rl import logprobs, lora as lora_lib, loss as loss_lib, optim, step as step_lib
  from deliberate.sampling import sampler
  from deliberate.sampling.engine import check_layout

  cfg = model_config(c)
  check_layout(cfg, {"data": mesh_data, "fsdp": mesh_fsdp}, row_axes,
               {"data": "config.rl.mesh_data", "fsdp": "config.rl.mesh_fsdp"})
  sh = shapes(c, opening if opening is not None else opening_tokens())
  mesh = jax.make_mesh((mesh_data, mesh_fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=jax.devices()[:mesh_data * mesh_fsdp])
  rep = NamedSharding(mesh, P())
  base = jax.eval_shape(lambda: transformer.init_params(cfg, jax.random.key(0)))
  base_abs = _abstract(base, step_lib.fsdp_shardings(base, mesh))
  lcfg = lora_lib.LoraConfig(rank=c.rl.lora_rank, alpha=c.rl.lora_alpha, targets=tuple(c.rl.lora_targets.split(","))) \
      if c.rl.lora_rank > 0 else None
  results: dict[str, Any] = {"shapes": sh, "model_params": cfg.num_params, "mesh": dict(mesh.shape)}

  # --------------------------------------------------------------------------------------------- the sampler
  if lcfg is not None:
    ad = jax.eval_shape(lambda: lora_lib.init_lora(base, lcfg, jax.random.key(0)))
    ad_abs = lora_lib.adapters(_abstract(ad, step_lib.fsdp_shardings(ad, mesh)), lcfg)
  if before:  # the float32 merge, split per layer and replicated on every device
    merged = jax.eval_shape(lambda b, a: sampler.decode_layout(lora_lib.merge(b, a, lcfg.alpha, lcfg.rank), cfg),
                            base, ad) if lcfg is not None else jax.eval_shape(lambda b: sampler.decode_layout(b, cfg),
                                                                              base)
    s_params, s_lora = _abstract(merged, jax.tree.map(lambda _: rep, merged)), None
  else:
    s_params, s_lora = base_abs, (ad_abs if lcfg is not None else None)
  row = NamedSharding(mesh, P(row_axes))
  weight_axes = tuple(a for a in mesh.axis_names if a not in row_axes and mesh.shape[a] > 1)
  cache_sharding = NamedSharding(mesh, P(row_axes, weight_axes or None, None, None)) if not before else None
  from deliberate.sampling.engine import bucket_batch
  b = bucket_batch(sh["rows"], math.prod(mesh.shape[a] for a in row_axes))
  i32 = lambda shape, s: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=s)

  def compile_sample(p, n):
    sp = sampler.SamplingParams(temperature=0.7, max_new_tokens=n)
    fn = jax.jit(functools.partial(sampler.sample, config=cfg, sp=sp, cache_sharding=cache_sharding))
    args = (s_params, s_lora, i32((b, p), rep), i32((b,), rep), i32((b,), row), i32((b,), row),
            jax.ShapeDtypeStruct((b,), jnp.bool_, sharding=row), jax.ShapeDtypeStruct((), jnp.uint32, sharding=rep),
            i32((1,), rep))
    return _stats(fn.lower(*args))

  results["sample_turn"] = compile_sample(sh["turn_prompt"], sh["turn_new"])
  results["sample_final"] = compile_sample(sh["final_prompt"], sh["final_new"])

  cdt = jnp.dtype(cfg.compute_dtype)
  # Costs of one prefill and one decode step, lowered only (never compiled): layers unrolled (the split layout), so
  # no loop body is counted once for all layers, and the HLO is taken before the CPU backend's passes (it has no
  # bf16 matmul and would add float32 copies of the weights that a TPU or GPU never makes). Those costs are for
  # the whole mesh; `roofline` divides them over the chips.
  split_base = jax.eval_shape(lambda b: sampler.decode_layout(b, cfg), base)
  split_abs = _abstract(split_base, step_lib.fsdp_shardings(split_base, mesh))
  split_lora = None
  if lcfg is not None:
    split_ad = jax.eval_shape(lambda a: sampler.split_adapters(lora_lib.adapters(a, lcfg), cfg.n_layers).params, ad)
    split_lora = transformer.Adapters(_abstract(split_ad, step_lib.fsdp_shardings(split_ad, mesh)), lcfg.alpha /
                                      lcfg.rank, c.rl.lora_dtype)
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  results["weight_bytes"] = nbytes(split_base) + (nbytes(split_ad) if lcfg is not None else 0)
  results["weight_shards"] = mesh.shape["fsdp"]
  if before:  # the sampler's float32 merge, replicated: every chip reads all of it
    split_abs, split_lora = s_params, None
    results["weight_bytes"], results["weight_shards"] = nbytes(s_params), 1

  def cost_forward(t, s):  # prefill of t tokens (s = 0) or one decode step over an s-slot cache, with the logits
    x = jax.ShapeDtypeStruct((b, t, cfg.d_model), cdt, sharding=row)
    pos, mask = i32((b, t), row), jax.ShapeDtypeStruct((b, t, max(s, t)), jnp.bool_, sharding=row)
    def fn(p, a, x, pos, mask, caches):
      h, kv = sampler._forward(p, x, pos, mask, cfg, caches, s - 1 if s else None, lora=a)
      return sampler._logits(p, h[:, -1], cfg), kv
    one = jax.ShapeDtypeStruct((b, cfg.n_kv_heads, s, cfg.head_dim), cdt, sharding=cache_sharding or row)
    caches = [(one, one)] * cfg.n_layers if s else None
    return _cost(jax.jit(fn, donate_argnums=5).lower(split_abs, split_lora, x, pos, mask, caches).cost_analysis())

  results["prefill_turn"] = cost_forward(sh["turn_prompt"], 0)
  results["decode_turn"] = cost_forward(1, sh["turn_prompt"] + sh["turn_new"] - 1)
  results["prefill_final"] = cost_forward(sh["final_prompt"], 0)
  results["decode_final"] = cost_forward(1, sh["final_prompt"] + sh["final_new"] - 1)

  # ------------------------------------------------------------------------------------------ the train step
  step_cfg = step_lib.StepConfig(model=cfg, loss=loss_lib.LossConfig(), lora=lcfg,
                                 num_micro_batches=c.rl.micro_batches, remat=c.rl.remat,
                                 token_chunk=c.rl.token_chunk or None, temperature=c.negotiation.turn_temperature)
  optimizer, _ = optim.make_optimizer(c.optim)
  trainable = ad if lcfg is not None else base
  opt = jax.eval_shape(optimizer.init, trainable)
  state = {"params": _abstract(trainable, step_lib.fsdp_shardings(trainable, mesh)),
           "opt_state": _abstract(opt, step_lib.fsdp_shardings(opt, mesh))}
  frozen = base_abs if lcfg is not None else None
  rows_sharding = NamedSharding(mesh, P(("data", "fsdp")))
  t, b = sh["train_len"], bucket_batch(sh["rows"], mesh.size)
  k = sh["train_len"] - sh["opening"]  # targets per row: every new token of the dialogue at most
  k = min(t - 1, 16 * math.ceil(k / 16))
  f32 = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=rows_sharding)
  batch = {"tokens_BxT": i32((b, t), rows_sharding), "positions_BxT": i32((b, t), rows_sharding),
           "loss_mask_BxT": f32((b, t)), "old_logprobs_BxT": f32((b, t)), "advantages_B": f32((b,)),
           "loss_weights_B": f32((b,)), "norm_counts_B": f32((b,))}
  micro = NamedSharding(mesh, P(None, ("data", "fsdp")))
  constrain = lambda x: jax.lax.with_sharding_constraint(x, micro)
  param_shardings = jax.tree.map(lambda x: x.sharding, state["params"])
  old_loss = step_lib._loss
  if before:  # the loss as it was: merge into float32, then the forward over the merged params
    def merged_loss(trainable, frozen, batch, denom, cfg, k):
      params = trainable if cfg.lora is None else lora_lib.merge(frozen, trainable, cfg.lora.alpha, cfg.lora.rank)
      lp, ent = logprobs.token_logprobs(params, batch["tokens_BxT"], batch["positions_BxT"], batch["loss_mask_BxT"],
                                        config=cfg.model, targets_per_row=k, token_chunk=cfg.token_chunk,
                                        recompute=cfg.recompute, remat=cfg.remat, temperature=cfg.temperature)
      loss_sum, metrics = loss_lib.policy_loss(lp, ent, batch, cfg.loss)
      return loss_sum / denom, metrics
    step_lib._loss = merged_loss

  def step_fn(state, frozen, batch):
    denom = jnp.sum(batch["norm_counts_B"])
    value, grads, metrics = step_lib._grads(state["params"], frozen, batch, denom, step_cfg, k, constrain)
    grads = jax.lax.with_sharding_constraint(grads, param_shardings)
    return step_lib._update(state, grads, value, optimizer)

  try:
    results["train_step"] = _stats(jax.jit(step_fn, donate_argnums=0).lower(state, frozen, batch))
  finally:
    step_lib._loss = old_loss
  results["roofline"] = roofline(results, sh, cfg, dict(mesh.shape), c.rl.remat)
  return results


def roofline(r: dict[str, Any], sh: dict[str, int], cfg, mesh: dict[str, int], remat: bool
             ) -> dict[str, dict[str, float]]:
  """Seconds of one paper step per target: each program at max(FLOPs / peak, bytes / bandwidth) per chip.

  Sampling is costed from XLA's cost analysis of one prefill and one decode step (whole mesh, layers unrolled, the
  logits included): FLOPs are split over all chips; of the bytes, the weights' are split over the chips that hold
  a shard (fsdp; each data-parallel replica reads its own copy) and the rest (cache, activations) over all chips.
  Every decode step is costed at the turn's longest cache, and the bytes are counted before fusion (every
  intermediate goes to memory), so the sampling estimate is an upper bound. The train step is compute-bound and
  costed analytically: 2 FLOPs per weight per token forward, twice that backward, once more forward under remat,
  plus causal attention and the output layer on the targets.
  """
  c, devices = cfg, math.prod(mesh.values())
  head_w = c.d_model * c.vocab_size
  layer_w = (cfg.num_params - head_w * (1 if c.tie_embeddings else 2)) / c.n_layers
  w = r["weight_bytes"]
  out = {}
  for name, (_, peak, bw) in TARGETS.items():
    t = lambda p: max(r[p]["flops"] / devices / peak, (w / r["weight_shards"] + max(r[p]["bytes"] - w, 0) / devices) / bw)
    sample = sh["turns"] * (t("prefill_turn") + sh["turn_new"] * t("decode_turn")) + \
        t("prefill_final") + sh["final_new"] * t("decode_final")
    tokens = sh["rows"] * sh["train_len"]
    passes = 4 if remat else 3
    attn = 2 * 2 * c.n_layers * c.n_heads * c.head_dim * sh["train_len"] * tokens / 2  # causal QK^T and PV
    train = (passes * (2 * layer_w * c.n_layers * tokens + attn) + 4 * 2 * head_w * tokens) / devices / peak
    out[name] = {"sample_s": sample, "train_s": train, "step_s": sample + train,
                 "decode_ms": 1e3 * t("decode_turn")}
  return out


def table(r: dict[str, Any], title: str) -> str:
  gb = lambda x: f"{x / GIB:7.2f}"
  lines = [f"## {title}: mesh {r['mesh']}, {r['model_params'] / 1e9:.2f}B params, shapes {r['shapes']}",
           f"{'program':14s} {'args':>7s} {'out':>7s} {'temp':>7s} {'alias':>7s} {'peak':>7s} GiB/device  "
           + "  ".join(f"{k}({v[0] // GIB})" for k, v in TARGETS.items())]
  for p in ("sample_turn", "sample_final", "train_step"):
    s = r[p]
    fits = "  ".join(f"{'fits' if s['peak'] <= v[0] else 'NO':>{len(k) + 2 + len(str(v[0] // GIB))}s}"
                     for k, v in TARGETS.items())
    lines.append(f"{p:14s} {gb(s['args'])} {gb(s['out'])} {gb(s['temp'])} {gb(s['alias'])} {gb(s['peak'])}"
                 f"             {fits}")
  lines.append("(compiled for the CPU backend, which has no bf16 matmul and keeps float32 copies of bf16 weights in "
               "temp: an upper bound for a TPU or GPU)")
  lines.append("cost per program, whole mesh (XLA cost analysis, layers unrolled, before backend passes): " + ", ".join(
      f"{p} {r[p]['flops'] / 1e12:.2f} TFLOP {r[p]['bytes'] / 1e9:.2f} GB"
      for p in ("prefill_turn", "decode_turn", "prefill_final", "decode_final")) +
      f"; weights {r['weight_bytes'] / 1e9:.2f} GB")
  lines.append("roofline of one step (judge excluded; no communication modelled): " + ", ".join(
      f"{k} {v['step_s']:.1f}s (sample {v['sample_s']:.1f} + train {v['train_s']:.1f}; decode step "
      f"{v['decode_ms']:.1f} ms)" for k, v in r["roofline"].items()))
  return "\n".join(lines)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", required=True)
  ap.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
  ap.add_argument("--mesh-data", type=int, default=0, help="0: the config's rl.mesh_data (0 = devices / fsdp)")
  ap.add_argument("--mesh-fsdp", type=int, default=0, help="0: the config's rl.mesh_fsdp")
  ap.add_argument("--before", action="store_true", help="the code before: merged float32 LoRA, replicated sampler")
  ap.add_argument("--opening-tokens", type=int, default=0, help="0: estimated from the packaged data")
  ap.add_argument("--one-gpu", action="store_true", help="also analyse a 1-device mesh (H100/H200)")
  a = ap.parse_args(argv)
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={a.devices}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  c = load_config(a.config)
  fsdp = a.mesh_fsdp or c.rl.mesh_fsdp
  data = a.mesh_data or c.rl.mesh_data or a.devices // fsdp
  meshes = [(data, fsdp)] + ([(1, 1)] if a.one_gpu else [])
  for d, f in meshes:
    r = analyze(c, d, f, before=a.before, opening=a.opening_tokens or None)
    print(table(r, ("before" if a.before else "after") + f": {a.config}"), flush=True)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main()
