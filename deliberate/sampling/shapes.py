"""Shapes of sampler calls: the batch and prompt buckets, shared-prompt-prefix plans, and the program `Shape` a
call runs at. Host-side and pure (no JAX): the engine, the trainer's batches and the memory check share these
rules."""
from __future__ import annotations

import bisect
import dataclasses
import math
from typing import Sequence

import numpy as np

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
PROMPT_BUCKET = 64  # prompt lengths round up to a multiple of this, then to a power-of-two multiple


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


MIN_SHARED_PREFIX = 32  # ids: a shorter common prefix is not worth its own prefill row


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
  """How many leading ids a and b share."""
  n = min(len(a), len(b))
  diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
  return int(diff[0]) if len(diff) else n


def prefix_plan(prompts: Sequence[Sequence[int]], min_shared: int = MIN_SHARED_PREFIX, always: bool = False
                ) -> tuple[list[int], list[int]] | None:
  """Shared prefixes of distinct prompts, or None when prefilling them whole costs no more (`always`: None only
  when nothing is shared).

  Returns (prefix_of, cut): prompt u continues prefix prefix_of[u] after its first cut[u] ids. The prompts are
  sorted and cut into runs of neighbours (a run's shared prefix is the least common prefix of its neighbours) so
  that the fewest ids are prefilled: two groups whose prompts share only a system message stay two prefixes, not
  one short one. A run shares >= min_shared ids or none (its prompts then take the empty prefix, cut 0), and every
  prompt keeps at least one id of its own. Chosen when the padded prefill tokens (prefixes plus remainders, at
  their buckets) are fewer than those of the prompts whole.
  """
  u = len(prompts)
  if u < 2:
    return None
  order = sorted(range(u), key=lambda i: tuple(prompts[i]))
  lens = [len(prompts[i]) for i in order]
  common = [common_prefix(prompts[order[k - 1]], prompts[order[k]]) for k in range(1, u)]
  # best[k]: fewest ids prefilled for the first k prompts; run[k]: where the last run of those starts
  best, run = [0] + [math.inf] * u, [0] * (u + 1)
  for k in range(1, u + 1):
    shared, shortest, total = math.inf, math.inf, 0
    for start in range(k - 1, -1, -1):  # the run order[start:k]
      total += lens[start]
      shortest = min(shortest, lens[start])
      if start < k - 1:
        shared = min(shared, common[start])
      s = min(shared, shortest - 1) if start < k - 1 else 0
      cost = best[start] + (s + total - (k - start) * s if s >= min_shared else total)
      if cost < best[k]:
        best[k], run[k] = cost, start
  prefix_of, cut, lengths = [0] * u, [0] * u, []
  k = u
  while k:
    members, k = order[run[k]:k], run[k]
    shared = min(common_prefix(prompts[members[0]], prompts[m]) for m in members[1:]) if len(members) > 1 else 0
    shared = min(shared, min(len(prompts[m]) for m in members) - 1) if len(members) > 1 else 0
    if shared < min_shared:
      shared = 0
    if shared:
      lengths.append(shared)
    for m in members:
      prefix_of[m], cut[m] = (len(lengths) - 1 if shared else -1), shared
  if not lengths:
    return None
  empty = len(lengths)  # the prefix of prompts that share none
  prefix_of = [empty if q < 0 else q for q in prefix_of]
  q = len(lengths) + (empty in prefix_of)
  shared_cost = (bucket_batch(q) * bucket_prompt(max(lengths))
                 + bucket_batch(u) * bucket_prompt(max(len(p) - c for p, c in zip(prompts, cut))))
  whole_cost = bucket_batch(u) * bucket_prompt(max(len(p) for p in prompts))
  return (prefix_of, cut) if always or shared_cost < whole_cost else None


@dataclasses.dataclass(frozen=True)
class Shape:
  """A sampler program's input shape: Q shared prefixes of A ids (0, 0: the prompts whole), U unique prompts (or
  their parts after the prefix) of P ids, B rows. One compiled program per (sampling params, Shape)."""
  q: int
  a: int
  u: int
  p: int
  b: int

  def cost(self, new_tokens: int) -> int:
    """Rough work in prefilled ids: the prefill's, plus one per row and new token (on a CPU a decode step of 8 rows
    costs about as much as prefilling 30 ids; the rule only has to rank programs)."""
    return self.q * self.a + self.u * self.p + self.b * new_tokens


REUSE_COST = 1.5  # before `settle`: a call runs in a compiled program that costs at most this much more than its
                  # own bucket, rather than compiling that bucket
