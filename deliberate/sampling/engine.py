"""Host side of sampling: bucketing, prompt de-duplication, compaction and sharding around the jitted sampler.

A rollout asks for many turns of many shapes. Padding the batch and the prompt length to a few buckets bounds the
number of compiled programs, prompts shared by several rows (the G dialogues of one dilemma and persona) are
prefilled once, and so are prompt prefixes shared by several prompts (the system message and dilemma that the G
dialogues of a group repeat in every later turn): `prefix_plan`.
"""
from __future__ import annotations

import bisect
import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from deliberate.model.config import ModelConfig
from deliberate.sampling.sampler import STOP_EOS, SamplingParams, decode_layout, jitted_sample, split_adapters

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
PROMPT_BUCKET = 64  # prompt lengths round up to a multiple of this, then to a power-of-two multiple


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


def bucket_batch(n: int, multiple: int = 1) -> int:
  i = bisect.bisect_left(BATCH_BUCKETS, n)
  b = BATCH_BUCKETS[i] if i < len(BATCH_BUCKETS) else -(-n // 512) * 512
  return -(-b // multiple) * multiple


def bucket_length(n: int) -> int:
  """Training rows (padded batches) and scoring: a multiple of 64, rounded up to a power-of-two multiple."""
  blocks = -(-n // PROMPT_BUCKET)
  return PROMPT_BUCKET * (1 << (blocks - 1).bit_length())


def bucket_prompt(n: int) -> int:
  """The sampler's prompt (and shared-prefix) lengths: multiples of 64 up to 512, then four steps per doubling
  (multiples of 128 up to 1024, of 256 up to 2048, ...): under 64 ids of padding up to 512, then at most 25% (a
  power-of-two bucket pads a 300-id prompt to 512). Prefill cost is proportional to it; the price is more
  programs, each compiled once."""
  step = max(PROMPT_BUCKET, (1 << (max(n, 2) - 1).bit_length()) >> 3)
  return -(-n // step) * step


LAYOUTS = ("stacked", "split")
MIN_SHARED_PREFIX = 32  # ids: a shorter common prefix is not worth its own prefill row


def _common(a: Sequence[int], b: Sequence[int]) -> int:
  n = min(len(a), len(b))
  diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
  return int(diff[0]) if len(diff) else n


def prefix_plan(prompts: Sequence[Sequence[int]], min_shared: int = MIN_SHARED_PREFIX
                ) -> tuple[list[int], list[int]] | None:
  """Shared prefixes of distinct prompts, or None when prefilling them whole costs no more.

  Returns (prefix_of, cut): prompt u continues prefix prefix_of[u] after its first cut[u] ids (prompts sorted, then
  runs of neighbours sharing >= min_shared ids grouped; a prompt in no run gets the empty prefix, -1 is never used).
  Every prompt keeps at least one id of its own. Chosen when the padded prefill tokens (prefixes plus remainders,
  at their buckets) are fewer than those of the prompts whole.
  """
  u = len(prompts)
  if u < 2:
    return None
  order = sorted(range(u), key=lambda i: tuple(prompts[i]))
  prefix_of, cut, lengths = [0] * u, [0] * u, []
  start = 0
  for k in range(1, u + 1):
    if k < u and _common(prompts[order[k - 1]], prompts[order[k]]) >= min_shared:
      continue
    members = order[start:k]
    shared = 0
    if len(members) > 1:
      shared = min(min(_common(prompts[members[0]], prompts[m]) for m in members[1:]),
                   min(len(prompts[m]) for m in members) - 1)
    if shared:
      lengths.append(shared)
    for m in members:
      prefix_of[m], cut[m] = (len(lengths) - 1 if shared else -1), shared
    start = k
  if not lengths:
    return None
  empty = len(lengths)  # the prefix of prompts that share none
  prefix_of = [empty if q < 0 else q for q in prefix_of]
  q = len(lengths) + (empty in prefix_of)
  shared_cost = (bucket_batch(q) * bucket_prompt(max(lengths))
                 + bucket_batch(u) * bucket_prompt(max(len(p) - c for p, c in zip(prompts, cut))))
  whole_cost = bucket_batch(u) * bucket_prompt(max(len(p) for p in prompts))
  return (prefix_of, cut) if shared_cost < whole_cost else None


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
    self.stop_ids = jnp.asarray(sorted(set(config.eos_ids) | set(stop_ids)) or [-1], jnp.int32)
    self.max_context = max_context or config.max_seq_len
    self.compiled_shapes: set[tuple] = set()  # (sampling params, Q, A, U, P, B) programs used so far
    self._programs: dict[SamplingParams, object] = {}
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
    """Programs XLA actually compiled for the sampling params this engine used (shared with any engine of the same
    config and mesh, since programs are cached per config)."""
    return sum(fn._cache_size() for fn in self._programs.values())

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
    distinct, prefix_args = self._split_prefixes(distinct)
    q, a = prefix_args[0].shape if prefix_args else (0, 0)
    b = bucket_batch(n_rows, self.num_devices)
    u = bucket_batch(len(distinct))
    p = bucket_prompt(max(len(ids) for ids in distinct))
    prompts_UxP = np.full((u, p), self.config.pad_id, np.int32)
    lens_U = np.ones((u,), np.int32)
    for i, ids in enumerate(distinct):
      prompts_UxP[i, :len(ids)] = ids
      lens_U[i] = len(ids)
    src_B = np.zeros((b,), np.int32)
    src_B[:n_rows] = src
    row_ids_B = np.zeros((b,), np.int32)
    row_ids_B[:n_rows] = [r.row_id + self.row_offset for r in requests]
    active_B = np.arange(b) < n_rows
    fn = self._programs.setdefault(sp, jitted_sample(self.config, sp, self._cache_sharding()))
    self.compiled_shapes.add((sp, q, a, u, p, b))
    stops = (self.stop_ids if not stop_ids else
             jnp.asarray(sorted(set(np.asarray(self.stop_ids).tolist()) | set(int(i) for i in stop_ids)), jnp.int32))
    args = (prompts_UxP, lens_U, src_B, row_ids_B, active_B, np.uint32(seed), stops, *prefix_args)
    if self.mesh is not None:
      rep, row = NamedSharding(self.mesh, P()), NamedSharding(self.mesh, P(self.row_axes))
      args = jax.device_put(args, (rep, rep, row, row, row, rep, rep, *(rep,) * len(prefix_args)))
    out = fn(self._decode_params, self._decode_lora, *args)
    tokens, lps, slps, lengths, reasons, steps = jax.device_get(
        (out.tokens, out.logprobs, out.sampling_logprobs, out.lengths, out.stop_reason, out.steps))
    self.last_stats = {"batch": b, "unique_prompts": u, "prompt_len": p, "prefixes": q, "prefix_len": a,
                       "decode_steps": int(steps), "cache_bytes": self.cache_bytes(b, a + p, sp)}
    return [Completion(tokens[i, :lengths[i]].tolist(), lps[i, :lengths[i]].tolist(),
                       slps[i, :lengths[i]].tolist(), "stop" if reasons[i] == STOP_EOS else "length")
            for i in range(n_rows)]

  def _split_prefixes(self, distinct: list[tuple[int, ...]]) -> tuple[list[tuple[int, ...]], tuple]:
    """(each prompt's own part, the sampler's (prefixes_QxA, prefix_lens_Q, prefix_of_U)) under `prefix_plan`;
    the prompts whole and () when sharing is off or does not pay."""
    plan = prefix_plan(distinct) if self.share_prefixes else None
    if plan is None:
      return distinct, ()
    prefix_of, cut = plan
    q, a = bucket_batch(max(prefix_of) + 1), bucket_prompt(max(cut))
    prefixes_QxA, prefix_lens_Q = np.full((q, a), self.config.pad_id, np.int32), np.ones((q,), np.int32)
    for ids, j, k in zip(distinct, prefix_of, cut):
      prefixes_QxA[j, :k], prefix_lens_Q[j] = ids[:k], k
    prefix_of_U = np.zeros((bucket_batch(len(distinct)),), np.int32)
    prefix_of_U[:len(distinct)] = prefix_of
    return [ids[k:] for ids, k in zip(distinct, cut)], (prefixes_QxA, prefix_lens_Q, prefix_of_U)

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
