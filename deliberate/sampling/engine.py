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
from deliberate.sampling.sampler import SamplingParams, jitted_sample

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
               max_context: int | None = None):
    self.params, self.config, self.mesh = params, config, mesh
    self.stop_ids = jnp.asarray(sorted(set(config.eos_ids) | set(stop_ids)) or [-1], jnp.int32)
    self.max_context = max_context or config.max_seq_len
    self.compiled_shapes: set[tuple] = set()  # (sampling params, U, P, B) programs built so far

  @property
  def num_devices(self) -> int:
    return self.mesh.shape["data"] if self.mesh is not None else 1

  def _shardings(self):
    if self.mesh is None:
      return None
    rep, row = NamedSharding(self.mesh, P()), NamedSharding(self.mesh, P("data"))
    ins = (rep, rep, rep, row, row, row, rep, rep)
    return ins, row

  def generate(self, requests: Sequence[Request], sp: SamplingParams, seed: int) -> list[Completion]:
    """Sample one completion per request. Only the requests given are computed: callers pass active ones."""
    if not requests:
      return []
    prompts = [tuple(int(t) for t in r.prompt_ids) for r in requests]
    for r, ids in zip(requests, prompts):
      if not ids:
        raise ValueError(f"request row_id={r.row_id}: empty prompt")
      if len(ids) + sp.max_new_tokens > self.max_context:
        raise ValueError(f"request row_id={r.row_id}: prompt of {len(ids)} tokens + max_new_tokens "
                         f"{sp.max_new_tokens} exceeds the context of {self.max_context}")
    unique: dict[tuple, int] = {}
    src = [unique.setdefault(ids, len(unique)) for ids in prompts]
    n_rows, n_unique = len(requests), len(unique)
    b = bucket_batch(n_rows, self.num_devices)
    u = bucket_batch(n_unique)
    p = bucket_length(max(len(ids) for ids in unique))
    prompts_UxP = np.full((u, p), self.config.pad_id, np.int32)
    lens_U = np.ones((u,), np.int32)
    for ids, i in unique.items():
      prompts_UxP[i, :len(ids)] = ids
      lens_U[i] = len(ids)
    src_B = np.zeros((b,), np.int32)
    src_B[:n_rows] = src
    row_ids_B = np.zeros((b,), np.int32)
    row_ids_B[:n_rows] = [r.row_id for r in requests]
    active_B = np.arange(b) < n_rows
    fn = jitted_sample(self.config, sp, self._shardings())
    self.compiled_shapes.add((sp, u, p, b))
    out = fn(self.params, prompts_UxP, lens_U, src_B, row_ids_B, active_B, jax.random.key(seed), self.stop_ids)
    tokens, lps, slps, lengths, reasons = jax.device_get(
        (out.tokens, out.logprobs, out.sampling_logprobs, out.lengths, out.stop_reason))
    return [Completion(tokens[i, :lengths[i]].tolist(), lps[i, :lengths[i]].tolist(),
                       slps[i, :lengths[i]].tolist(), "stop" if reasons[i] == 1 else "length")
            for i in range(n_rows)]
