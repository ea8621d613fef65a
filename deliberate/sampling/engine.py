"""Host side of sampling: bucketing, prompt de-duplication, compaction and sharding around the jitted sampler.

A rollout asks for many turns of many shapes. Padding the batch and the prompt length to a few buckets bounds the
number of compiled programs, and prompts shared by several rows (the G dialogues of one dilemma and persona) are
prefilled once.
"""
from __future__ import annotations

import dataclasses
import bisect
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from deliberate.model.config import ModelConfig
from deliberate.sampling.sampler import STOP_EOS, SamplingParams, decode_layout, jitted_sample

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
  blocks = -(-n // PROMPT_BUCKET)
  return PROMPT_BUCKET * (1 << (blocks - 1).bit_length())


class SamplingEngine:
  """Samples the next turn of a batch of conversations with one policy.

  The params may be swapped between calls (`engine.params = new`) without recompiling.
  """

  def __init__(self, params, config: ModelConfig, *, stop_ids: Sequence[int] = (), mesh: Mesh | None = None,
               max_context: int | None = None, dedup_prompts: bool = True):
    self.config, self.mesh, self.dedup_prompts = config, mesh, dedup_prompts
    self.params = params
    self.stop_ids = jnp.asarray(sorted(set(config.eos_ids) | set(stop_ids)) or [-1], jnp.int32)
    self.max_context = max_context or config.max_seq_len
    self.compiled_shapes: set[tuple] = set()  # (sampling params, U, P, B) programs used so far
    self._programs: dict[SamplingParams, object] = {}
    self.last_stats: dict[str, int] = {}      # shapes, decode steps and cache bytes of the latest call

  @property
  def params(self):
    return self._params

  @params.setter
  def params(self, params):
    """Swapping params never recompiles. The engine keeps them in the sampler's `decode_layout` (a copy of the layer
    weights), replicated once here on a mesh rather than on every call."""
    self._params = params
    self._decode_params = decode_layout(params, self.config)
    if self.mesh is not None:
      self._decode_params = jax.device_put(self._decode_params, NamedSharding(self.mesh, P()))

  @property
  def num_devices(self) -> int:
    return self.mesh.shape["data"] if self.mesh is not None else 1

  @property
  def compile_count(self) -> int:
    """Programs XLA actually compiled for the sampling params this engine used (shared with any engine of the same
    config and mesh, since programs are cached per config)."""
    return sum(fn._cache_size() for fn in self._programs.values())

  def _shardings(self):
    if self.mesh is None:
      return None
    rep, row = NamedSharding(self.mesh, P()), NamedSharding(self.mesh, P("data"))
    return (rep, rep, rep, row, row, row, rep, rep), None

  def cache_bytes(self, b: int, p: int, sp: SamplingParams) -> int:
    """KV bytes a call holds: the prefill cache of the unique prompts aside, P + N - 1 slots per row."""
    c = self.config
    slot = 2 * c.n_layers * c.n_kv_heads * c.head_dim * jnp.dtype(c.compute_dtype).itemsize
    return b * (p + max(sp.max_new_tokens - 1, 1)) * slot

  def generate(self, requests: Sequence[Request], sp: SamplingParams, seed: int) -> list[Completion]:
    """Sample one completion per request. Only the requests given are computed: callers pass active ones."""
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
    b = bucket_batch(n_rows, self.num_devices)
    u = bucket_batch(max(src) + 1)
    p = bucket_length(max(len(ids) for ids in prompts))
    prompts_UxP = np.full((u, p), self.config.pad_id, np.int32)
    lens_U = np.ones((u,), np.int32)
    for i, ids in zip(src, prompts):
      prompts_UxP[i, :len(ids)] = ids
      lens_U[i] = len(ids)
    src_B = np.zeros((b,), np.int32)
    src_B[:n_rows] = src
    row_ids_B = np.zeros((b,), np.int32)
    row_ids_B[:n_rows] = [r.row_id for r in requests]
    active_B = np.arange(b) < n_rows
    fn = self._programs.setdefault(sp, jitted_sample(self.config, sp, self._shardings()))
    self.compiled_shapes.add((sp, u, p, b))
    out = fn(self._decode_params, prompts_UxP, lens_U, src_B, row_ids_B, active_B, np.uint32(seed), self.stop_ids)
    tokens, lps, slps, lengths, reasons, steps = jax.device_get(
        (out.tokens, out.logprobs, out.sampling_logprobs, out.lengths, out.stop_reason, out.steps))
    self.last_stats = {"batch": b, "unique_prompts": u, "prompt_len": p, "decode_steps": int(steps),
                       "cache_bytes": self.cache_bytes(b, p, sp)}
    return [Completion(tokens[i, :lengths[i]].tolist(), lps[i, :lengths[i]].tolist(),
                       slps[i, :lengths[i]].tolist(), "stop" if reasons[i] == STOP_EOS else "length")
            for i in range(n_rows)]

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
