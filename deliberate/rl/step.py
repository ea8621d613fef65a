"""The GRPO update, twice: a pmapped step (params replicated) and a jitted step over a ('data', 'fsdp') Mesh.

Both run the same per-shard loss: a loss *sum* divided by the global count of the whole batch (psum'd, or summed
over the global array), so one device, N devices and M micro-batches give the same update. A non-finite loss or
gradient leaves params and optimizer state untouched and reports `skipped` = 1.

state = {"params": trainable params, "opt_state": ...}; `frozen` is the base model under LoRA, else None.
Micro-batch m holds rows m, m+M, m+2M, ... of each shard, so every micro-batch keeps the batch sharding.

A step is three compiled programs: zero accumulators, accumulate the gradient of `rows_per_call` rows (called once
per slice of the batch), apply the update. With a fixed call shape (packed batches, rl/batch.py:pack), the number
of rows a step trains changes the number of calls, never the programs.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from deliberate.mesh import BATCH_AXES, agree_max, make_mesh  # noqa: F401  (make_mesh: the one mesh helper)
from deliberate.model.config import ModelConfig
from deliberate.rl import logprobs, lora
from deliberate.rl.batch import graph_batch, targets_budget
from deliberate.rl import loss as loss_lib

State = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class StepConfig:
  model: ModelConfig
  loss: loss_lib.LossConfig = loss_lib.LossConfig()
  lora: lora.LoraConfig | None = None  # None: full fine-tuning
  num_micro_batches: int = 1
  remat: bool = False                  # rematerialise decoder layers in the backward pass
  token_chunk: int | None = None       # output-layer chunk (packed positions per row); None: all at once
  recompute: bool = True               # recompute output-layer logits in the backward pass
  temperature: float = 1.0             # sampling temperature of the trained tokens (log-probs of logits / T)
  targets_multiple: int = 16           # rounding of the static targets-per-row bound (padded batches)
  pack_targets: int = 0                # packed batches: the fixed bound (rl/batch.py:targets_budget)
  rows_per_call: int = 0               # rows (per host) of one gradient call; 0: the whole batch (a packed batch:
                                       # one sequence per shard and micro-batch), see `_call_rows`


def init_state(params: dict[str, Any], optimizer: optax.GradientTransformation, cfg: StepConfig,
               key: jax.Array) -> tuple[State, dict[str, Any] | None]:
  """(state, frozen): LoRA adapters over a frozen base, or all params trainable."""
  if cfg.lora is None:
    trainable, frozen = params, None
  else:
    trainable, frozen = lora.init_lora(params, cfg.lora, key), params
  return {"params": trainable, "opt_state": optimizer.init(trainable)}, frozen


def _loss(trainable, frozen, batch, denom, cfg: StepConfig, k: int):
  """Under LoRA the frozen base is read as stored and the adapters run on their own path: nothing is merged."""
  params, adapters = (trainable, None) if cfg.lora is None else (frozen, lora.adapters(trainable, cfg.lora))
  lp, ent = logprobs.token_logprobs(
      params, batch["tokens_BxT"], batch["positions_BxT"], batch["loss_mask_BxT"], config=cfg.model,
      targets_per_row=k, token_chunk=cfg.token_chunk, recompute=cfg.recompute, remat=cfg.remat,
      temperature=cfg.temperature, lora=adapters, segments_BxT=batch.get("segments_BxT"),
      parents_BxT=batch.get("parents_BxT"))
  loss_sum, metrics = loss_lib.policy_loss(lp, ent, batch, cfg.loss)
  return loss_sum / denom, metrics


def _grads(trainable, frozen, batch, denom, cfg: StepConfig, k: int, constrain: Callable = lambda x: x):
  """Loss, gradients and metrics of this shard, accumulated over micro-batches."""
  grad_fn = jax.value_and_grad(_loss, has_aux=True)
  m = cfg.num_micro_batches
  if m == 1:
    (value, metrics), grads = grad_fn(trainable, frozen, batch, denom, cfg, k)
    return value, grads, metrics
  micro = jax.tree.map(lambda x: constrain(jnp.swapaxes(x.reshape(x.shape[0] // m, m, *x.shape[1:]), 0, 1)), batch)
  first = jax.tree.map(lambda x: x[0], micro)
  (_, shapes), _ = jax.eval_shape(lambda *a: grad_fn(*a, cfg, k), trainable, frozen, first, denom)
  fill = {"sum": 0.0, "count": 0.0, "min": jnp.inf, "max": -jnp.inf}
  metrics0 = {g: jax.tree.map(lambda s, v=fill[g]: jnp.full(s.shape, v, s.dtype), t) for g, t in shapes.items()}
  grads0 = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)

  def body(carry, mb):
    value, grads, metrics = carry
    (v, met), g = grad_fn(trainable, frozen, mb, denom, cfg, k)
    grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)
    return (value + v, grads, loss_lib.combine_metrics(metrics, met)), None

  (value, grads, metrics), _ = jax.lax.scan(body, (jnp.zeros(()), grads0, metrics0), micro)
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, trainable)
  return value, grads, metrics


def _update(state: State, grads, value, optimizer: optax.GradientTransformation):
  finite = jnp.isfinite(value) & jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  keep = lambda new, old: jnp.where(finite, new, old)
  new_state = {"params": jax.tree.map(keep, params, state["params"]),
               "opt_state": jax.tree.map(keep, opt_state, state["opt_state"])}
  return new_state, {"skipped": 1.0 - finite.astype(jnp.float32), "grad_norm": optax.tree.norm(grads)}


def _check_rows(rows: int, shards: int, cfg: StepConfig, per_call: int) -> None:
  if rows % (shards * cfg.num_micro_batches):
    raise ValueError(f"training batch: {rows} rows do not split into {shards} shards x "
                     f"{cfg.num_micro_batches} micro-batches")
  if rows % per_call or per_call % (shards * cfg.num_micro_batches):
    raise ValueError(f"StepConfig.rows_per_call={per_call}: must divide the batch's {rows} rows and be a "
                     f"multiple of {shards} shards x {cfg.num_micro_batches} micro-batches")


def _call_rows(batch: Mapping[str, np.ndarray], cfg: StepConfig, shards: int) -> int:
  """Rows of one gradient call: `rows_per_call`, else one sequence per shard and micro-batch for a packed batch
  (its fixed shape then needs one program), else the whole batch."""
  if cfg.rows_per_call:
    return cfg.rows_per_call
  return shards * cfg.num_micro_batches if "segments_BxT" in batch else batch["tokens_BxT"].shape[0]


def _calls(batch: Mapping[str, np.ndarray], r: int) -> list[dict[str, np.ndarray]]:
  """The batch's graph fields in slices of r rows."""
  g = graph_batch(batch)
  rows = g["tokens_BxT"].shape[0]
  return [{n: np.asarray(x)[i:i + r] for n, x in g.items()} for i in range(0, rows, r)]


def _targets_bound(batch: Mapping[str, np.ndarray], cfg: StepConfig) -> int:
  """The static targets-per-row bound K. Packed batches (fixed T) use the packer's fixed budget, so every step of a
  run reuses its programs; padded ones round the batch's own count up (a new bucket compiles)."""
  k = logprobs.targets_per_row(batch["loss_mask_BxT"], cfg.targets_multiple)
  if "segments_BxT" in batch:
    budget = targets_budget(batch["tokens_BxT"].shape[1], cfg.pack_targets)
    most = int((np.asarray(batch["loss_mask_BxT"]) > 0).sum(-1).max())
    if most > budget:
      raise ValueError(f"packed batch: a sequence holds {most} targets, more than config.rl.pack_targets allows "
                       f"({budget}); pack with rl/loss.py:packed_batch")
    return budget
  return k


def _accumulate(trainable, frozen, batch, denom, acc, cfg: StepConfig, k: int, constrain: Callable = lambda x: x):
  """acc = (value, float32 grads, metrics) plus this call's share."""
  value, grads, metrics = _grads(trainable, frozen, batch, denom, cfg, k, constrain)
  v0, g0, m0 = acc
  return (v0 + value, jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g0, grads),
          loss_lib.combine_metrics(m0, metrics))


def _zeros(trainable, frozen, batch, cfg: StepConfig, k: int, constrain: Callable = lambda x: x):
  """The accumulator (value, float32 grads, metrics) at zero, made on the devices: every gradient call of a step
  then sees inputs of one kind and reuses one program."""
  shapes = jax.eval_shape(lambda: _grads(trainable, frozen, batch, jnp.ones(()), cfg, k, constrain)[2])
  fill = {"sum": 0.0, "count": 0.0, "min": jnp.inf, "max": -jnp.inf}
  metrics = {g: jax.tree.map(lambda s, v=fill[g]: jnp.full(s.shape, v, s.dtype), t) for g, t in shapes.items()}
  return jnp.zeros((), jnp.float32), jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable), metrics


# ----------------------------------------------------------------------------------------------- pmap (replicated)

def replicate(tree: Any, n: int | None = None) -> Any:
  """One copy per local device (the first n), placed once, so that pmap does not re-send it on every call. Across
  hosts, the stacked host copies themselves (pmap places them on the global device set on its first call)."""
  devices = jax.local_devices()[:n or jax.local_device_count()]
  if jax.process_count() > 1:
    return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (len(devices), *np.shape(x))), tree)
  sharding = NamedSharding(Mesh(np.array(devices), ("data",)), P("data"))
  stack = lambda x: np.broadcast_to(np.asarray(x), (len(devices), *np.shape(x)))
  return jax.tree.map(lambda x: jax.device_put(stack(x), sharding), tree)


def unreplicate(tree: Any) -> Any:
  """The first local copy (across hosts, device 0 of the global array is not this host's)."""
  def first(x):
    if not isinstance(x, jax.Array):
      return x[0]
    d = x.addressable_data(0)
    return d[0] if d.ndim == x.ndim else d
  return jax.tree.map(first, tree)


def make_pmap_step(optimizer: optax.GradientTransformation, cfg: StepConfig, devices: list | None = None
                   ) -> Callable[[State, Any, Mapping[str, np.ndarray]], tuple[State, loss_lib.Metrics]]:
  """step(replicated state, replicated frozen, host batch from `prepare_batch`) -> (state, metrics).

  Across hosts, pmap maps over every device of every host (each host passes the rows of its own devices), so the
  psums reduce over the global batch."""
  devices = devices or (jax.local_devices() if jax.process_count() == 1 else None)
  n = len(devices) if devices else jax.local_device_count()

  def device_grads(params, frozen, batch, count, acc, k):
    return _accumulate(params, frozen, batch, jax.lax.psum(count, "data"), acc, cfg, k)

  def device_update(state, acc):
    value, grads, metrics = acc
    grads = jax.tree.map(lambda g, p: jax.lax.psum(g, "data").astype(p.dtype), grads, state["params"])
    state, extra = _update(state, grads, jax.lax.psum(value, "data"), optimizer)
    return state, {**loss_lib.reduce_metrics(metrics, "data"), "value": extra}

  pgrads = jax.pmap(device_grads, axis_name="data", static_broadcasted_argnums=(5,), donate_argnums=(4,),
                    devices=devices)
  pupdate = jax.pmap(device_update, axis_name="data", donate_argnums=(0,), devices=devices)
  pzeros = jax.pmap(lambda p, f, b, k: _zeros(p, f, b, cfg, k), static_broadcasted_argnums=(3,), devices=devices)

  def step(state, frozen, batch):
    rows, per_call = batch["tokens_BxT"].shape[0], _call_rows(batch, cfg, n)
    _check_rows(rows, n, cfg, per_call)
    k, = agree_max(_targets_bound(batch, cfg))
    split = lambda x: np.asarray(x).reshape(n, x.shape[0] // n, *x.shape[1:])
    # each device's share of the divisor (a fixed shape whatever the rows); psum'd in the gradient call
    count = np.asarray(batch["norm_counts_B"], np.float64).reshape(n, -1).sum(1).astype(np.float32)
    calls = [jax.tree.map(split, c) for c in _calls(batch, per_call)]
    acc = pzeros(state["params"], frozen, calls[0], k)
    for c in calls:
      acc = pgrads(state["params"], frozen, c, count, acc, k)
    return pupdate(state, acc)

  return step


# ------------------------------------------------------------------------------------------------ jit over a Mesh

def fsdp_spec(path: str, shape: tuple[int, ...], fsdp: int, min_size: int = 4096) -> P:
  """Shards the largest fsdp-divisible dim; never the stacked layer axis, which lax.scan slices."""
  if fsdp == 1 or math.prod(shape) < min_size:
    return P()
  first = 1 if (len(shape) >= 3 or "layers" in path) else 0
  dims = [i for i in range(first, len(shape)) if shape[i] % fsdp == 0]
  if not dims:
    return P()
  spec = [None] * len(shape)
  spec[max(dims, key=lambda i: shape[i])] = "fsdp"
  return P(*spec)


def fsdp_shardings(tree: Any, mesh: Mesh, min_size: int = 4096) -> Any:
  """NamedShardings for params, optimizer state or their eval_shape."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(mesh, fsdp_spec(jax.tree_util.keystr(path), np.shape(x), fsdp, min_size)), tree)


def init_sharded_state(trainable: Any, optimizer: optax.GradientTransformation, mesh: Mesh,
                       min_size: int = 4096) -> State:
  """Places trainable params along fsdp and builds the optimizer state already sharded."""
  # A copy, because steps donate the state and the caller may still hold `trainable`.
  params = jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=fsdp_shardings(trainable, mesh, min_size))(
      trainable)
  opt_shardings = fsdp_shardings(jax.eval_shape(optimizer.init, params), mesh, min_size)
  return {"params": params, "opt_state": jax.jit(optimizer.init, out_shardings=opt_shardings)(params)}


def make_sharded_step(optimizer: optax.GradientTransformation, cfg: StepConfig, mesh: Mesh
                      ) -> Callable[[State, Any, Mapping[str, np.ndarray]], tuple[State, loss_lib.Metrics]]:
  """step(sharded state, sharded frozen, host batch from `prepare_batch`) -> (state, metrics).

  Rows are split over data x fsdp (every device computes on its own rows, FSDP-style), params and optimizer state
  keep the shardings they came in with (see `init_sharded_state`), and XLA inserts the gathers and reductions.
  """
  rows_sharding = NamedSharding(mesh, P(BATCH_AXES))
  micro_sharding = NamedSharding(mesh, P(None, BATCH_AXES))
  constrain = lambda x: jax.lax.with_sharding_constraint(x, micro_sharding)

  def grads_fn(params, frozen, batch, counts, acc, k):
    return _accumulate(params, frozen, batch, jnp.sum(counts), acc, cfg, k, constrain)

  def update_fn(state, acc, param_shardings):
    value, grads, metrics = acc
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state["params"])
    grads = jax.lax.with_sharding_constraint(grads, param_shardings)
    state, extra = _update(state, grads, value, optimizer)
    return state, {**metrics, "value": extra}

  cache: dict = {}
  local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  replicated = NamedSharding(mesh, P())

  def place(x):
    x = np.asarray(x)
    return (jax.device_put(x, rows_sharding) if jax.process_count() == 1 else
            jax.make_array_from_process_local_data(rows_sharding, x))

  def step(state, frozen, batch):
    rows = batch["tokens_BxT"].shape[0]  # this host's rows: the whole batch on one host
    per_call = _call_rows(batch, cfg, local_devices)
    _check_rows(rows, local_devices, cfg, per_call)
    k, = agree_max(_targets_bound(batch, cfg))
    if "update" not in cache:
      shardings = jax.tree.map(lambda x: x.sharding, state)
      grad_shardings = shardings["params"]
      cache["grads"] = jax.jit(grads_fn, static_argnums=(5,), donate_argnums=(4,),
                               out_shardings=(replicated, grad_shardings, replicated))
      cache["update"] = jax.jit(functools.partial(update_fn, param_shardings=shardings["params"]),
                                donate_argnums=(0,), out_shardings=(shardings, replicated))
      cache["zeros"] = jax.jit(lambda p, f, b, k: _zeros(p, f, b, cfg, k, constrain), static_argnums=(3,),
                               out_shardings=(replicated, grad_shardings, replicated))
    calls = [{n: place(x) for n, x in c.items()} for c in _calls(batch, per_call)]
    # each device's share of the divisor: a fixed shape whatever the rows; summed in the gradient call
    count = place(np.asarray(batch["norm_counts_B"], np.float64).reshape(local_devices, -1).sum(1)
                  .astype(np.float32))
    acc = cache["zeros"](state["params"], frozen, calls[0], k)
    for c in calls:
      acc = cache["grads"](state["params"], frozen, c, count, acc, k)
    return cache["update"](state, acc)

  return step
