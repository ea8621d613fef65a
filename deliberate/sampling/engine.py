"""Host side of sampling: bucketing, prompt de-duplication, compaction and sharding around the jitted sampler.

A rollout asks for many turns of many shapes. Padding the batch and the prompt length to a few buckets bounds the
number of compiled programs, prompts shared by several rows (the G dialogues of one dilemma and persona) are
prefilled once, and so are prompt prefixes shared by several prompts (the system message and dilemma that the G
dialogues of a group repeat in every later turn): `prefix_plan`.

Programs are compiled ahead of their call, one per (sampling params, `Shape`). A call may run in a larger program
already compiled (padded: more rows, longer prompts or prefixes) rather than compile its own, and after `settle()`
always does when one holds it, so that a run that compiled its task's largest calls (`precompile`) compiles nothing
more.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import threading
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from deliberate.model.config import ModelConfig
from deliberate.sampling.shapes import REUSE_COST, Shape, bucket_batch, bucket_prompt, prefix_plan
from deliberate.sampling.sampler import STOP_EOS, SamplingParams, decode_layout, jitted_sample, split_adapters


@dataclasses.dataclass
class Request:
  """One conversation's next turn: its prompt ids (already rendered) and a stable id for its randomness."""
  prompt_ids: Sequence[int]
  row_id: int


@dataclasses.dataclass
class Completion:
  tokens: list[int]
  logprobs: list[float]            # tempered-policy log-probs (what the trainer recomputes)
  sampling_logprobs: list[float]   # under the truncated distribution actually sampled
  stop_reason: str                 # "stop" (EOS or a stop id) | "length"


LAYOUTS = ("stacked", "split")


def _on_mesh(x, mesh: Mesh) -> bool:
  return isinstance(getattr(x, "sharding", None), NamedSharding) and x.sharding.mesh == mesh


def _nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def check_layout(config: ModelConfig, mesh_shape: dict[str, int], row_axes: Sequence[str] = ("data",),
                 fields: dict[str, str] | None = None) -> None:
  """Before any weight loads: the weight axes (mesh axes other than the row axes) must divide the heads and kv heads
  (the cache is split over them by kv head); errors name the config field of the axis at fault (`fields`)."""
  fields = fields or {}
  for axis, size in mesh_shape.items():
    if axis in row_axes or size == 1:
      continue
    name = fields.get(axis, f"mesh axis {axis!r}")
    for what, n in (("n_kv_heads", config.n_kv_heads), ("n_heads", config.n_heads)):
      if n % size:
        raise ValueError(f"{name}: {size} does not divide the model's {what} = {n}")


class SamplingEngine:
  """Samples the next turn of a batch of conversations with one policy.

  Params: `set_params(base, lora=None)` sets the frozen base once (its layout is made then) and the LoRA adapters
  per step; `engine.params = p` is `set_params(p)`. Neither recompiles. On a mesh, rows are split over `row_axes`
  and params are used as they come sharded (the trainer's shardings; the other mesh axes hold weight shards, and
  the KV cache is split over them by kv head); params not yet on the mesh are replicated once.

  layout: "stacked" samples from the trainer's stacked params (no copy; the default on a mesh) and "split" from a
  per-layer copy (`decode_layout`, 2-3x faster decoding on CPU; the default without a mesh). The switch is made
  once per base, and its bytes per device are in `layout_bytes`.
  """

  def __init__(self, params, config: ModelConfig, *, stop_ids: Sequence[int] = (), mesh: Mesh | None = None,
               max_context: int | None = None, dedup_prompts: bool = True, row_axes: Sequence[str] = ("data",),
               layout: str | None = None, lora=None, share_prefixes: bool = False):
    self.config, self.mesh, self.dedup_prompts = config, mesh, dedup_prompts
    self.share_prefixes = share_prefixes
    self.layout = layout or ("split" if mesh is None else "stacked")
    if self.layout not in LAYOUTS:
      raise ValueError(f"SamplingEngine.layout: {self.layout!r} is not one of {LAYOUTS}")
    self.row_axes = tuple(row_axes)
    if mesh is not None:
      bad = [a for a in self.row_axes if a not in mesh.shape]
      if bad:
        raise ValueError(f"SamplingEngine.row_axes: {bad} are not axes of the mesh {dict(mesh.shape)}")
      check_layout(config, dict(mesh.shape), self.row_axes)
    self._base = None
    # Added to every request's row id: on host h of a multi-host run, the first row id of its share of the global
    # rollout, so that a dialogue draws the same tokens whichever host samples it (deliberate/trainer.py sets it).
    self.row_offset = 0
    self.layout_bytes = 0
    self.set_params(params, lora)
    self.stop_ids = tuple(sorted(set(config.eos_ids) | set(int(i) for i in stop_ids)))
    self._stop_masks: dict[tuple[int, ...], np.ndarray] = {}
    self.max_context = max_context or config.max_seq_len
    self.compiled_shapes: set[tuple] = set()  # (sampling params, Q, A, U, P, B) programs compiled so far
    self._executables: dict[tuple, Any] = {}  # (sampling params, Shape, params signature) -> compiled program
    self._compiling = threading.Lock()        # a judge thread may sample with this engine during a rollout
    # After `settle()` a call runs in the cheapest compiled program that holds it and compiles only when none does
    # (counted in `overflow_compiles`): the trainer settles after a run's first steps, so later steps compile nothing.
    self.settled = False
    self.overflow_compiles = 0
    self.last_stats: dict[str, int] = {}      # shapes, decode steps and cache bytes of the latest call

  @property
  def params(self):
    return self._base

  @params.setter
  def params(self, params):
    self.set_params(params)

  @property
  def lora(self):
    return self._lora

  def set_params(self, base, lora=None) -> None:
    """The frozen base (laid out only when it is a new object) and the adapters (`transformer.Adapters` or None,
    copied: they are small, and a sharded train step donates its state's buffers)."""
    if base is not self._base:
      self._base = base
      placed = self._place(base)
      if self.layout == "split":
        split = decode_layout(placed, self.config)
        per_device = lambda t: sum(s.data.nbytes for x in jax.tree.leaves(t) for s in x.addressable_shards[:1])
        self.layout_bytes = per_device(split["layers"])
        placed = split
      else:
        self.layout_bytes = 0
      self._decode_params = placed
    if lora is not None:  # the engine's own copy: `lora` reads it (e.g. a local judge scoring with the policy)
      lora = jax.tree.map(jnp.copy, self._place(lora))
    self._lora = lora
    self._decode_lora = (split_adapters(lora, self.config.n_layers) if self.layout == "split" else lora
                         ) if lora is not None else None
    # What a compiled program is specialised to besides its Shape: the params' and adapters' structure, shapes,
    # dtypes and shardings (new adapters of another rank, or a base in another dtype, compile anew)
    leaves, tree = jax.tree.flatten((self._decode_params, self._decode_lora))
    self._signature = (tree, tuple((x.shape, x.dtype, getattr(x, "sharding", None)) for x in leaves))

  def _place(self, tree):
    """Leaves already on this engine's mesh stay as they are; the others are replicated over it once."""
    if self.mesh is None:
      return tree
    rep = NamedSharding(self.mesh, P())
    return jax.tree.map(lambda x: x if _on_mesh(x, self.mesh) else jax.device_put(x, rep), tree)

  @property
  def num_devices(self) -> int:
    """Devices the rows are split over (the batch is padded to a multiple of it)."""
    return math.prod(self.mesh.shape[a] for a in self.row_axes) if self.mesh is not None else 1

  @property
  def compile_count(self) -> int:
    """Programs this engine compiled."""
    return len(self._executables)

  def settle(self) -> None:
    """From now on, run every call in a program already compiled when one holds it (`_fit`), whatever its
    padding: a long run's later steps then compile nothing (see `precompile` for the shapes no step has met yet)."""
    self.settled = True

  def _cache_sharding(self) -> NamedSharding | None:
    """One layer's [B, K, S, D] cache: rows over the row axes, kv heads over the weight axes."""
    if self.mesh is None:
      return None
    weight_axes = tuple(a for a in self.mesh.axis_names if a not in self.row_axes and self.mesh.shape[a] > 1)
    return NamedSharding(self.mesh, P(self.row_axes, weight_axes or None, None, None))

  def cache_bytes(self, b: int, p: int, sp: SamplingParams) -> int:
    """KV bytes a call holds: the prefill cache of the unique prompts aside, P + N - 1 slots per row (P: a shared
    prefix's bucket and the prompt's own)."""
    c = self.config
    slot = 2 * c.n_layers * c.n_kv_heads * c.head_dim * jnp.dtype(c.compute_dtype).itemsize
    return b * (p + max(sp.max_new_tokens - 1, 1)) * slot

  def generate(self, requests: Sequence[Request], sp: SamplingParams, seed: int,
               stop_ids: Sequence[int] = ()) -> list[Completion]:
    """Sample one completion per request. Only the requests given are computed: callers pass active ones.
    `stop_ids`: more ids that end a row for this call (e.g. a negotiation turn's paragraph break); the sampled ids,
    the stop id included, are returned as drawn."""
    if not requests:
      return []
    if not 0 <= seed < 2**32:
      raise ValueError(f"generate: seed must be in [0, 2**32), got {seed}")
    prompts = [self._check(r, sp) for r in requests]
    seen: set[int] = set()
    for r in requests:
      if r.row_id in seen:
        raise ValueError(f"request row_id={r.row_id}: the id appears twice; rows sharing an id draw the same tokens")
      seen.add(r.row_id)
    unique: dict[tuple, int] = {}
    src = ([unique.setdefault(ids, len(unique)) for ids in prompts] if self.dedup_prompts
           else list(range(len(prompts))))
    n_rows = len(requests)
    distinct = [()] * (max(src) + 1)
    for i, ids in zip(src, prompts):
      distinct[i] = ids
    shape, plan = self._program(sp, distinct, self._forms(distinct, n_rows))
    prompt_args, prefix_args = self._prompt_arrays(shape, distinct, plan)
    src_B = np.zeros((shape.b,), np.int32)
    src_B[:n_rows] = src
    row_ids_B = np.zeros((shape.b,), np.int32)
    row_ids_B[:n_rows] = [r.row_id + self.row_offset for r in requests]
    active_B = np.arange(shape.b) < n_rows
    args = (*prompt_args, src_B, row_ids_B, active_B, np.uint32(seed), self._stop_mask(stop_ids), *prefix_args)
    out = self._executable(sp, shape, args)(self._decode_params, self._decode_lora, *self._put(args))
    tokens, lps, slps, lengths, reasons, steps = jax.device_get(
        (out.tokens, out.logprobs, out.sampling_logprobs, out.lengths, out.stop_reason, out.steps))
    self.last_stats = {"batch": shape.b, "unique_prompts": shape.u, "prompt_len": shape.p, "prefixes": shape.q,
                       "prefix_len": shape.a, "decode_steps": int(steps),
                       "cache_bytes": self.cache_bytes(shape.b, shape.a + shape.p, sp)}
    return [Completion(tokens[i, :lengths[i]].tolist(), lps[i, :lengths[i]].tolist(),
                       slps[i, :lengths[i]].tolist(), "stop" if reasons[i] == STOP_EOS else "length")
            for i in range(n_rows)]

  def precompile(self, sp: SamplingParams, rows: int, prompt_len: int, unique: int | None = None,
                 prefixes: int = 0, prefix_len: int = 0) -> Shape:
    """Compile, without running, the program of a call of `rows` rows and `unique` distinct prompts (default: one a
    row) of at most `prompt_len` ids, each after one of `prefixes` shared prefixes of at most `prefix_len` ids when
    prefixes > 0. A task declares the bounds of its calls (`sampler_bounds`) and the trainer compiles them before
    the first step, so that a settled engine holds every call."""
    b = bucket_batch(rows, self.num_devices)
    shape = Shape(bucket_batch(prefixes) if prefixes else 0, bucket_prompt(prefix_len) if prefixes else 0,
                  bucket_batch(unique or rows), bucket_prompt(prompt_len), b)
    prompt_args = (np.zeros((shape.u, shape.p), np.int32), np.ones((shape.u,), np.int32))
    prefix_args = ((np.zeros((shape.q, shape.a), np.int32), np.ones((shape.q,), np.int32),
                    np.zeros((shape.u,), np.int32)) if prefixes else ())
    zeros_B = np.zeros((b,), np.int32)
    self._executable(sp, shape, (*prompt_args, zeros_B, zeros_B, zeros_B > 0, np.uint32(0),
                                 self._stop_mask(()), *prefix_args))
    return shape

  def _forms(self, distinct: list[tuple[int, ...]], n_rows: int) -> list[tuple[Shape, tuple | None]]:
    """The ways to run a call at its own buckets, as (Shape, prefix plan): the prompts whole, and (with
    `share_prefixes`) split after the prefixes they share, when they share any (`prefix_plan`)."""
    b, u = bucket_batch(n_rows, self.num_devices), bucket_batch(len(distinct))
    forms = [(Shape(0, 0, u, bucket_prompt(max(len(ids) for ids in distinct)), b), None)]
    plan = prefix_plan(distinct, always=True) if self.share_prefixes else None
    if plan is not None:
      prefix_of, cut = plan
      forms.append((Shape(bucket_batch(max(prefix_of) + 1), bucket_prompt(max(cut)), u,
                          bucket_prompt(max(len(ids) - k for ids, k in zip(distinct, cut))), b), plan))
    return forms

  def _program(self, sp: SamplingParams, distinct: list[tuple[int, ...]], forms: list[tuple[Shape, tuple | None]]
               ) -> tuple[Shape, tuple | None]:
    """The shape a call runs at: its cheapest own form, or a compiled program that holds it (`_fit`), when that
    costs at most REUSE_COST times more (settled: whatever it costs)."""
    n = sp.max_new_tokens
    own = min(forms, key=lambda f: f[0].cost(n))  # ties: the prompts whole
    if (sp, own[0], self._signature) in self._executables:
      return own
    fits = []
    for i, (have_sp, have, signature) in enumerate(list(self._executables)):
      if have_sp == sp and signature == self._signature:
        plan = self._fit(have, distinct, forms)
        if plan is not False:
          fits.append((have.cost(n), i, have, plan))
    if fits:
      cost, _, have, plan = min(fits, key=lambda f: f[:2])
      if self.settled or cost <= REUSE_COST * own[0].cost(n):
        return have, plan
    if self.settled:
      self.overflow_compiles += 1
      print(f"sampler: a call of shape {own[0]} exceeds every program compiled so far; compiling it "
            f"(a task declares its calls' bounds in sampler_bounds)", file=sys.stderr, flush=True)
    return own

  @staticmethod
  def _fit(have: Shape, distinct: list[tuple[int, ...]], forms: list[tuple[Shape, tuple | None]]):
    """The prefix plan (None: prompts whole) under which the call runs in program `have`, or False.

    A whole-prompt program holds the call's whole form. A prefix program holds it after a re-cut: a group's shared
    prefix is cut at most at `have.a` ids (any shorter cut of a shared prefix is still shared), and a prompt that
    shares none (or every prompt, without a plan) becomes its own prefix, up to `have.a` ids, one id kept."""
    whole = forms[0][0]
    if have.b < whole.b or have.u < whole.u:
      return False
    if have.q == 0:
      return None if have.p >= whole.p else False
    plan = forms[1][1] if len(forms) > 1 else None
    prefix_of, cut = plan if plan is not None else ([0] * len(distinct), [0] * len(distinct))
    rows: dict[tuple, int] = {}
    new_of, new_cut = [], []
    for i, (ids, j, k) in enumerate(zip(distinct, prefix_of, cut)):
      if k:
        key, k = ("group", j), min(k, have.a)
      elif len(ids) <= have.p:  # shares nothing and fits whole: the empty prefix
        key = ("empty",)
      else:
        key, k = ("own", i), min(len(ids) - 1, have.a)
      new_of.append(rows.setdefault(key, len(rows)))
      new_cut.append(k)
      if len(ids) - k > have.p:
        return False
    return (new_of, new_cut) if len(rows) <= have.q else False

  def _prompt_arrays(self, shape: Shape, distinct: list[tuple[int, ...]], plan) -> tuple[tuple, tuple]:
    """((prompts_UxP, lens_U), (prefixes_QxA, prefix_lens_Q, prefix_of_U) or ()) at `shape`: each prompt whole, or
    its part after its shared prefix under `plan` (`prefix_plan`)."""
    pad = self.config.pad_id
    prefix_args = ()
    if plan is not None:
      prefix_of, cut = plan
      prefixes_QxA, prefix_lens_Q = np.full((shape.q, shape.a), pad, np.int32), np.ones((shape.q,), np.int32)
      for ids, j, k in zip(distinct, prefix_of, cut):
        prefixes_QxA[j, :k], prefix_lens_Q[j] = ids[:k], k
      prefix_of_U = np.zeros((shape.u,), np.int32)
      prefix_of_U[:len(distinct)] = prefix_of
      distinct = [ids[k:] for ids, k in zip(distinct, cut)]
      prefix_args = (prefixes_QxA, prefix_lens_Q, prefix_of_U)
    prompts_UxP, lens_U = np.full((shape.u, shape.p), pad, np.int32), np.ones((shape.u,), np.int32)
    for i, ids in enumerate(distinct):
      prompts_UxP[i, :len(ids)], lens_U[i] = ids, len(ids)
    return (prompts_UxP, lens_U), prefix_args

  def _stop_mask(self, extra: Sequence[int]) -> np.ndarray:
    """[V] bool: the engine's stop ids and `extra` (a mask, so a set of stop ids is no new program shape)."""
    key = tuple(sorted(set(int(i) for i in extra)))
    if key not in self._stop_masks:
      mask = np.zeros((self.config.vocab_size,), bool)
      mask[[i for i in self.stop_ids + key if 0 <= i < self.config.vocab_size]] = True
      self._stop_masks[key] = mask
    return self._stop_masks[key]

  def _put(self, args: tuple) -> tuple:
    """The call's arrays on the mesh: prompts and scalars replicated, rows (src, row ids, active) split."""
    if self.mesh is None:
      return args
    rep, row = NamedSharding(self.mesh, P()), NamedSharding(self.mesh, P(self.row_axes))
    return jax.device_put(args, (rep, rep, row, row, row, rep, rep, *(rep,) * (len(args) - 7)))

  def _executable(self, sp: SamplingParams, shape: Shape, args: tuple):
    """The compiled program of (sp, shape), compiled ahead of its call on first use."""
    key = (sp, shape, self._signature)
    with self._compiling:
      if key not in self._executables:
        fn = jitted_sample(self.config, sp, self._cache_sharding())
        self._executables[key] = fn.lower(self._decode_params, self._decode_lora, *self._put(args)).compile()
        self.compiled_shapes.add((sp, *dataclasses.astuple(shape)))
      return self._executables[key]

  def _check(self, r: Request, sp: SamplingParams) -> tuple[int, ...]:
    ids = tuple(int(t) for t in r.prompt_ids)
    if not 0 <= r.row_id < 2**31:
      raise ValueError(f"request row_id={r.row_id}: row_id must be in [0, 2**31)")
    if not ids:
      raise ValueError(f"request row_id={r.row_id}: empty prompt")
    bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
    if bad:
      raise ValueError(f"request row_id={r.row_id}: token ids {bad[:5]} outside the vocabulary of "
                       f"{self.config.vocab_size}")
    if len(ids) + sp.max_new_tokens > self.max_context:
      raise ValueError(f"request row_id={r.row_id}: prompt of {len(ids)} tokens + max_new_tokens "
                       f"{sp.max_new_tokens} exceeds the context of {self.max_context}")
    return ids
