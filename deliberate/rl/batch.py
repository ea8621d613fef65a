"""The training batch: one typed definition of its rows, fields, shapes and padding, for collation, the loss and
both steps.

A `Row` is one sampled response with the prompt it answered (token ids as sampled, never re-tokenised), its
sampling log-probs and the index of the sequence whose advantage it takes (a dialogue, or a single-agent answer).
`collate` pads rows to a bucketed (B, T) so a run compiles a handful of programs; the loss mask marks the position
of each target token, aligned with the sampling log-probs, and padding rows have an all-zero mask.

`pack` lays the rows of a prepared padded batch end to end into S sequences of a fixed length L instead (segment
ids keep attention within a row, positions restart per row), so a step pays for its tokens, not for the longest
row's bucket, and its shape does not change from step to step. Rows that share a prompt prefix are laid out after
one copy of it, which they all attend to (`parents_BxT`), so the prefix is computed once. The per-row values the
loss reads (advantage, loss weight) become per-token fields and each row's normaliser share moves to its sequence:
the same loss and gradient.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from deliberate.sampling.shapes import bucket_batch, bucket_length  # the one bucketing rule of the codebase


@dataclasses.dataclass
class Row:
  prompt_ids: list[int]
  response_ids: list[int]
  logprobs: list[float]         # sampling (tempered-policy) log-probs of response_ids
  sequence: int                 # index of its sequence: the row takes that sequence's advantage
  agent: int = 1                # the speaker (negotiation), 1 elsewhere
  trained: bool = True          # False: kept for inspection but masked out (e.g. the agent1_only ablation)


# name -> (dtype, axes). B: rows, T: positions. What every producer writes and every consumer reads.
INPUT_FIELDS = {
    "tokens_BxT": (np.int32, "BT"),
    "positions_BxT": (np.int32, "BT"),       # -1 marks padding
    "loss_mask_BxT": (np.float32, "BT"),     # 1 on target positions that carry gradient
    "old_logprobs_BxT": (np.float32, "BT"),  # the sampler's log-probs at the target positions
    "advantages_B": (np.float32, "B"),
    "seq_ids_B": (np.int32, "B"),            # the row's sequence (-1 for padding rows)
}
OPTIONAL_FIELDS = {
    "ref_logprobs_BxT": (np.float32, "BT"),  # beta > 0: the reference policy's log-probs
    "sample_weights_B": (np.float32, "B"),   # per-row weights (default 1)
}
DERIVED_FIELDS = {                           # written by rl/loss.py:prepare_batch from the whole batch
    "loss_weights_B": (np.float32, "B"),
    "norm_counts_B": (np.float32, "B"),
}
PACKED_FIELDS = {                            # written by `pack`: B is then packed sequences, not rows
    "segments_BxT": (np.int32, "BT"),        # 1, 2, ... per row (or shared prefix) of a sequence; 0 marks padding
    "parents_BxT": (np.int32, "BT"),         # the shared-prefix segment a row's tokens also see; 0: none
    "advantages_BxT": (np.float32, "BT"),    # the row's advantage on each of its tokens
    "loss_weights_BxT": (np.float32, "BT"),  # the row's loss weight on each of its tokens
    "row_starts_BxT": (np.float32, "BT"),    # 1 on each row's first token (row counts and advantage metrics)
}
# What the compiled step reads; everything else stays on the host.
GRAPH_FIELDS = ("tokens_BxT", "positions_BxT", "loss_mask_BxT", "old_logprobs_BxT", "advantages_B",
                "loss_weights_B", "norm_counts_B", "ref_logprobs_BxT", *PACKED_FIELDS)


def check(batch: Mapping[str, Any], optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
  """The input fields (and the named optional ones), cast to their dtypes; errors name the faulty field."""
  out = {}
  specs = {**INPUT_FIELDS, **{k: OPTIONAL_FIELDS[k] for k in optional}}
  for name, (dtype, _) in specs.items():
    if name not in batch:
      raise ValueError(f"training batch: missing field {name!r}")
    out[name] = np.asarray(batch[name]).astype(dtype)
  b, t = out["tokens_BxT"].shape
  for name, (_, axes) in specs.items():
    want = (b, t) if axes == "BT" else (b,)
    if out[name].shape != want:
      raise ValueError(f"training batch: {name} has shape {out[name].shape}, expected {want}")
  return out


def graph_batch(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The fields the compiled step reads."""
  return {k: batch[k] for k in GRAPH_FIELDS if k in batch}


def padded_shape(rows: Sequence[Row], multiple: int) -> tuple[int, int]:
  """(B, T) buckets for the trained rows: B a multiple of `multiple` (shards x micro-batches)."""
  trained = [r for r in rows if r.trained]
  return (bucket_batch(len(trained), multiple),
          bucket_length(max(len(r.prompt_ids) + len(r.response_ids) for r in trained)))


def collate(rows: Sequence[Row], advantages: Sequence[float], *, pad_id: int = 0, length: int | None = None,
            batch: int | None = None, drop_untrained: bool = True) -> dict[str, np.ndarray]:
  """Right-padded arrays for the GRPO step. `advantages[s]` is sequence s's advantage.

  Rows with nothing to train are dropped unless `drop_untrained=False`. `length` and `batch` pad to fixed shapes so
  the step compiles once; padding rows have an all-zero mask.
  """
  rows = [r for r in rows if r.trained] if drop_untrained else list(rows)
  need = max((len(r.prompt_ids) + len(r.response_ids) for r in rows), default=1)
  t = length or need
  if need > t:
    raise ValueError(f"collate: a row of {need} tokens exceeds the step's length {t}")
  b = max(batch or len(rows), len(rows))
  out = {"tokens_BxT": np.full((b, t), pad_id, np.int32), "positions_BxT": np.full((b, t), -1, np.int32),
         "loss_mask_BxT": np.zeros((b, t), np.float32), "old_logprobs_BxT": np.zeros((b, t), np.float32),
         "advantages_B": np.zeros((b,), np.float32), "seq_ids_B": np.full((b,), -1, np.int32)}
  for i, r in enumerate(rows):
    p, n = len(r.prompt_ids), len(r.response_ids)
    out["tokens_BxT"][i, :p + n] = r.prompt_ids + r.response_ids
    out["positions_BxT"][i, :p + n] = np.arange(p + n)
    if r.trained:
      out["loss_mask_BxT"][i, p:p + n] = 1.0
    out["old_logprobs_BxT"][i, p:p + n] = r.logprobs
    out["advantages_B"][i] = advantages[r.sequence]
    out["seq_ids_B"][i] = r.sequence
  return out


def _pad_value(name: str, pad_id: int) -> int:
  return pad_id if name == "tokens_BxT" else -1 if name in ("positions_BxT", "seq_ids_B") else 0


def select(batch: Mapping[str, np.ndarray], keep: Sequence[int], *, batch_size: int, length: int,
           pad_id: int = 0) -> dict[str, np.ndarray]:
  """The rows `keep` of a prepared batch (rl/loss.py:prepare_batch), padded to (batch_size, length).

  Used to leave out rows that cannot move the loss (advantage 0 with beta 0) while keeping its normaliser exactly:
  the left-out rows' shares of `norm_counts_B` ride on row 0, so sum(norm_counts_B), the loss's divisor, is the
  whole batch's. Everything the step reads per row is otherwise unchanged.
  """
  keep = np.asarray(keep, np.int64)
  if len(keep) > batch_size:
    raise ValueError(f"select: {len(keep)} rows exceed the step's batch {batch_size}")
  specs = {**INPUT_FIELDS, **OPTIONAL_FIELDS, **DERIVED_FIELDS}
  out = {}
  for name, x in batch.items():
    dtype, axes = specs[name]
    shape = (batch_size, length) if axes == "BT" else (batch_size,)
    y = np.full(shape, _pad_value(name, pad_id), dtype)
    rows = np.asarray(x)[keep]
    if axes == "BT":
      used = np.asarray(batch["positions_BxT"])[keep] >= 0
      if used[:, length:].any():
        raise ValueError(f"select: a kept row is longer than the step's length {length}")
      rows = rows[:, :length]
      y[:len(keep), :rows.shape[1]] = rows
    else:
      y[:len(keep)] = rows
    out[name] = y
  if "norm_counts_B" in out:
    out["norm_counts_B"][0] += np.float32(np.sum(batch["norm_counts_B"], dtype=np.float64)
                                          - np.sum(batch["norm_counts_B"][keep], dtype=np.float64))
  return out


def targets_budget(length: int, targets: int = 0) -> int:
  """The most target tokens one packed sequence of `length` holds (`config.rl.pack_targets`; 0: a quarter of it).

  Fixed for a run, it is also the step's static targets bound, where the output layer runs: so that bound never
  changes from step to step and a packed step never compiles a new program."""
  return min(length - 1, targets or max(16, length // 4 // 16 * 16))


def pack_plan(lengths: Sequence[int], length: int, targets: Sequence[int] | None = None,
              budget: int | None = None) -> list[list[int]]:
  """First-fit decreasing: the indices of the items each sequence of `length` tokens (and at most `budget`
  targets) holds, longest first."""
  targets = targets if targets is not None else [0] * len(lengths)
  budget = budget if budget is not None else length
  bins: list[list[int]] = []
  room: list[list[int]] = []  # [tokens, targets] left
  for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
    if lengths[i] > length:
      raise ValueError(f"config.rl.pack_length={length}: a training row of {lengths[i]} tokens does not fit; raise it")
    if targets[i] > budget:
      raise ValueError(f"config.rl.pack_targets={budget}: a training row has {targets[i]} target tokens, more than "
                       f"a packed sequence holds; raise it")
    j = next((j for j, (r, k) in enumerate(room) if r >= lengths[i] and k >= targets[i]), None)
    if j is None:
      bins.append([])
      room.append([length, budget])
      j = len(bins) - 1
    bins[j].append(i)
    room[j][0] -= lengths[i]
    room[j][1] -= targets[i]
  return bins


Unit = tuple[int, list[int]]  # (shared prefix length, rows): the prefix is laid out once, then each row's rest


def _common(a: np.ndarray, b: np.ndarray) -> int:
  n = min(len(a), len(b))
  diff = np.flatnonzero(a[:n] != b[:n])
  return int(diff[0]) if len(diff) else n


def prefix_units(batch: Mapping[str, np.ndarray], keep: Sequence[int], length: int, share: bool = True,
                 budget: int | None = None) -> list[Unit]:
  """Rows grouped by a shared prompt prefix (the G dialogues of a group, the turns of one agent share its system
  message and the dilemma), each group with the prefix length its rows share.

  A row shares at most up to the token before its first target, so every target's predecessor is in the row's own
  segment: the prefix carries no loss, and its keys and values (computed once, gradient summed over the rows that
  read them) are what each row would have computed itself. Greedy over rows in token order: a row joins the group
  while that does not lower the tokens saved and the group still fits in `length` tokens and `budget` targets."""
  if not share:
    return [(0, [i]) for i in keep]
  used = np.asarray(batch["positions_BxT"]) >= 0
  mask = np.asarray(batch["loss_mask_BxT"]) > 0
  tokens = np.asarray(batch["tokens_BxT"])
  n = {i: int(used[i].sum()) for i in keep}
  n_targets = {i: int(mask[i].sum()) for i in keep}
  budget = length if budget is None else budget
  seqs = {i: tokens[i, :n[i]] for i in keep}
  cap = {i: max(0, (int(np.argmax(mask[i])) if mask[i].any() else n[i]) - 1) for i in keep}
  order = sorted(keep, key=lambda i: (tuple(seqs[i][:cap[i]]), i))
  units: list[Unit] = []
  for i in order:
    if units:
      shared, rows = units[-1]
      new = min(shared if len(rows) > 1 else cap[rows[0]], cap[i], _common(seqs[rows[-1]], seqs[i]))
      size = new + sum(n[r] - new for r in rows) + n[i] - new
      fits = size <= length and sum(n_targets[r] for r in rows) + n_targets[i] <= budget
      if new > 0 and len(rows) * new >= (len(rows) - 1) * shared and fits:
        units[-1] = (new, rows + [i])
        continue
    units.append((0, [i]))
  return [(shared if len(rows) > 1 else 0, rows) for shared, rows in units]


def unit_length(unit: Unit, lengths: Mapping[int, int]) -> int:
  shared, rows = unit
  return shared + sum(lengths[r] - shared for r in rows)


def pack_layout(batch: Mapping[str, np.ndarray], keep: Sequence[int], length: int, share_prefix: bool = True,
                budget: int | None = None) -> list[list[Unit]]:
  """The units (`prefix_units`) each packed sequence holds: at most `length` tokens and `budget` targets each."""
  used = np.asarray(batch["positions_BxT"]) >= 0
  mask = np.asarray(batch["loss_mask_BxT"]) > 0
  lengths = {int(i): int(used[i].sum()) for i in keep}
  units = prefix_units(batch, [int(i) for i in keep], length, share_prefix, budget)
  targets = [int(sum(mask[r].sum() for r in rows)) for _, rows in units]
  return [[units[j] for j in b] for b in pack_plan([unit_length(u, lengths) for u in units], length, targets, budget)]


def pack(batch: Mapping[str, np.ndarray], keep: Sequence[int], *, length: int, num_seqs: int | None = None,
         multiple: int = 1, pad_id: int = 0, share_prefix: bool = True, budget: int | None = None,
         plan: list[list[Unit]] | None = None) -> dict[str, np.ndarray]:
  """The rows `keep` of a prepared padded batch (rl/loss.py:prepare_batch) packed into (S, length) sequences.

  S is the packing's count rounded up to `multiple`, or `num_seqs` (at least that count; hosts agree on it).
  With `share_prefix`, rows that share a prompt prefix are laid out after one copy of it (its own segment, named
  by their `parents_BxT`). `norm_counts_B` holds each sequence's rows' shares, and the shares of rows left out
  ride on sequence 0, so sum(norm_counts_B), the loss's divisor, is the whole batch's (as in `select`).
  """
  keep = [int(i) for i in keep]
  used = np.asarray(batch["positions_BxT"]) >= 0
  plan = pack_layout(batch, keep, length, share_prefix, budget) if plan is None else plan  # a caller's, if it has one
  s = -(-max(len(plan), 1) // multiple) * multiple
  if num_seqs is not None:
    if num_seqs < len(plan):
      raise ValueError(f"pack: {len(plan)} sequences exceed the step's {num_seqs}")
    s = num_seqs
  bt = (s, length)
  out = {"tokens_BxT": np.full(bt, pad_id, np.int32), "positions_BxT": np.full(bt, -1, np.int32),
         "loss_mask_BxT": np.zeros(bt, np.float32), "old_logprobs_BxT": np.zeros(bt, np.float32),
         **{k: np.zeros(bt, dt) for k, (dt, _) in PACKED_FIELDS.items()},
         "norm_counts_B": np.zeros((s,), np.float32)}
  per_token = ["tokens_BxT", "positions_BxT", "loss_mask_BxT", "old_logprobs_BxT"]
  if "ref_logprobs_BxT" in batch:
    out["ref_logprobs_BxT"] = np.zeros(bt, np.float32)
    per_token.append("ref_logprobs_BxT")
  counts = np.asarray(batch["norm_counts_B"], np.float64)
  for b, units in enumerate(plan):
    at, seg = 0, 0
    for shared, rows in units:
      parent = 0
      if shared:
        seg += 1
        sl = slice(at, at + shared)
        for name in per_token:
          out[name][b, sl] = np.asarray(batch[name])[rows[0], :shared]
        out["segments_BxT"][b, sl] = parent = seg
        at += shared
      for i in rows:
        seg += 1
        n = int(used[i].sum()) - shared
        sl = slice(at, at + n)
        for name in per_token:
          out[name][b, sl] = np.asarray(batch[name])[i, shared:shared + n]
        out["segments_BxT"][b, sl] = seg
        out["parents_BxT"][b, sl] = parent
        out["advantages_BxT"][b, sl] = batch["advantages_B"][i]
        out["loss_weights_BxT"][b, sl] = batch["loss_weights_B"][i]
        out["row_starts_BxT"][b, at] = 1.0
        at += n
    out["norm_counts_B"][b] = np.float32(counts[[r for _, rows in units for r in rows]].sum())
  out["norm_counts_B"][0] += np.float32(counts.sum() - counts[keep].sum())
  return out
