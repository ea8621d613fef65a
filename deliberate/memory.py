"""Will a run fit? Per-device memory and a roofline of one GRPO step from abstract shapes: no weight is loaded.

Params, adapters, optimizer state, batches and caches are `jax.ShapeDtypeStruct`s with shardings on the run's mesh
(real devices, or simulated CPU ones in bench/memory.py), and each program (the sampler's whole turn and
completion, the train step) is `.lower().compile()`d for XLA's memory analysis. One prefill and one decode step
are lowered only, with their layers unrolled, for XLA's cost analysis. The trainer calls `check_fits` before it
loads any weight; bench/memory.py prints the tables.
"""
from __future__ import annotations

import json
import math
import os
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


def model_config(c):
  """The ModelConfig of a run config, from config.json when the checkpoint is here, else from KNOWN by name."""
  from deliberate.model.config import ModelConfig, tiny_config
  dtypes = dict(param_dtype=c.model.param_dtype, compute_dtype=c.model.compute_dtype)
  name = c.model.name
  if name == "tiny":
    return tiny_config(c.model)
  cfg_file = os.path.join(name, "config.json")
  if os.path.isfile(cfg_file):
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
  """A step's shapes, bounded as its task bounds its prompts: a negotiation's turns and completions, or (other
  modes) one answer of `max_tokens` to the opening prompt."""
  from deliberate.sampling.shapes import bucket_batch, bucket_length
  from deliberate.tasks.config import MODES
  if c.mode != "negotiation":
    s = c[MODES[c.mode][1]]
    p = bucket_length(opening)
    return dict(rows=bucket_batch(s.group_size * c.data.prompts_per_step), turns=0, turn_prompt=p,
                turn_new=s.max_tokens, final_prompt=p, final_new=s.max_tokens,
                train_len=bucket_length(opening + s.max_tokens), opening=opening, prefix=p)
  n = c.negotiation
  rows = n.group_size * c.data.prompts_per_step
  turn_prompt = opening + (n.context_turns + 1) * (n.max_turn_tokens + 16)
  final_prompt = opening + n.max_turns * (n.max_turn_tokens + 16)
  return dict(rows=bucket_batch(rows), turns=n.max_turns, turn_prompt=bucket_length(turn_prompt),
              turn_new=n.max_turn_tokens, final_prompt=bucket_length(final_prompt), final_new=n.max_completion_tokens,
              train_len=bucket_length(final_prompt + n.max_completion_tokens), opening=opening,
              prefix=bucket_length(opening))


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
            row_axes: tuple[str, ...] = ("data",), costs: bool = True, devices=None) -> dict[str, Any]:
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
                       devices=(devices or jax.devices())[:mesh_data * mesh_fsdp])
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
  from deliberate.sampling.shapes import bucket_batch
  b = bucket_batch(sh["rows"], math.prod(mesh.shape[a] for a in row_axes))
  i32 = lambda shape, s: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=s)

  def compile_sample(p, n):
    """The sampler at prompt bucket p; with shared prefixes (config.sampling_share_prefixes) at its bound too: a
    prefix of at most the opening's bucket before an own part of at most p, whichever needs more."""
    sp = sampler.SamplingParams(temperature=0.7, max_new_tokens=n)
    fn = jax.jit(functools.partial(sampler.sample, config=cfg, sp=sp, cache_sharding=cache_sharding))
    args = (s_params, s_lora, i32((b, p), rep), i32((b,), rep), i32((b,), row), i32((b,), row),
            jax.ShapeDtypeStruct((b,), jnp.bool_, sharding=row), jax.ShapeDtypeStruct((), jnp.uint32, sharding=rep),
            jax.ShapeDtypeStruct((cfg.vocab_size,), jnp.bool_, sharding=rep))
    whole = _stats(fn.lower(*args))
    if not c.sampling_share_prefixes:
      return whole
    shared = _stats(fn.lower(*args, i32((b, sh["prefix"]), rep), i32((b,), rep), i32((b,), rep)))
    return max(whole, shared, key=lambda s: s["peak"])

  results["sample_turn"] = compile_sample(sh["turn_prompt"], sh["turn_new"])
  results["sample_final"] = compile_sample(sh["final_prompt"], sh["final_new"])

  cdt = jnp.dtype(cfg.compute_dtype)
  if costs:
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
  if costs:
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


def device_limit(devices) -> int | None:
  """The smallest memory limit the devices report (GPU, TPU), or None (CPU reports none)."""
  limits = []
  for d in devices:
    try:
      stats = d.memory_stats() or {}
    except Exception:  # a backend without memory stats
      stats = {}
    if stats.get("bytes_limit"):
      limits.append(int(stats["bytes_limit"]))
  return min(limits) if limits else None


def check_fits(c, limit_bytes: int | None = None) -> dict[str, Any] | None:
  """Raises before any weight is loaded when run config `c` cannot fit its devices, naming the field to change:
  a mesh that does not divide the model's heads, or programs over the memory limit.

  The limit is `limit_bytes`, else `config.memory_limit_gib`, else the devices' own; with none (CPU) nothing is
  checked and None is returned. The mesh is the run's: the sharded step's (data, fsdp), or the pmap step's
  replicas (data = every device, fsdp = 1). The analysis compiles each program once for its memory, on the real
  devices: a TPU's or GPU's own compiler, not the CPU's.
  """
  import jax
  from deliberate.sampling.engine import check_layout
  from deliberate.mesh import mesh_shape
  n = jax.device_count()
  data, fsdp = mesh_shape(c.rl.mesh_data, c.rl.mesh_fsdp, n) if c.rl.step == "sharded" else (n, 1)
  row_axes = tuple(c.rl.sampling_row_axes.split(","))
  try:
    cfg = model_config(c)
  except ValueError:  # a GGUF file or a registry name this table does not know: the check needs the weights
    return None
  check_layout(cfg, {"data": data, "fsdp": fsdp}, row_axes,
               {"data": "config.rl.mesh_data", "fsdp": "config.rl.mesh_fsdp"})
  if limit_bytes is None:
    limit_bytes = int(c.memory_limit_gib * GIB) if c.memory_limit_gib > 0 else device_limit(jax.devices())
  if limit_bytes is None:
    return None
  r = analyze(c, data, fsdp, costs=False, row_axes=row_axes)
  fixes = {"train_step": "config.rl.micro_batches (or rl.remat, rl.token_chunk, rl.mesh_fsdp)",
           "sample_turn": "config.rl.mesh_fsdp (or the group size, data.prompts_per_step)",
           "sample_final": "config.rl.mesh_fsdp (or the completion's max tokens)"}
  for program, field in fixes.items():
    need = r[program]["peak"]
    if need > limit_bytes:
      raise ValueError(f"{field}: the {program.replace('_', ' ')} needs {need / GIB:.2f} GiB a device on mesh "
                       f"{r['mesh']} (XLA's memory analysis, before loading weights), over the limit of "
                       f"{limit_bytes / GIB:.2f} GiB (config.memory_limit_gib, or the device's own)")
  return r
