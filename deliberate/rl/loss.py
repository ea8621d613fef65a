"""The GRPO objective: clipped surrogate, optional k3 KL, and normalisation as (sum, count) pairs.

Every normalisation mode is `sum_t w_row * mask_t * loss_t / sum_rows c_row`, with per-row weights w and count
shares c computed on the host from the whole batch (`prepare_batch`). Both sums are additive over rows, so a step
that psums them across shards and micro-batches before dividing gets the same number as one device would:
  token_sum            w = 1,        c = tokens of the row           (DAPO; the paper's)
  seq_mean_token_mean  w = 1 / n_s,  c = tokens of the row / n_s     (GRPO; n_s = tokens of the row's sequence, so
                                                                      a sequence's shares sum to 1 wherever its
                                                                      rows land)
  constant             w = 1,        c = norm_constant / rows        (Dr.GRPO)
Metrics are (sum, count), min and max trees, reduced the same way (`reduce_metrics`, `combine_metrics`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deliberate.mesh import agree_max
from deliberate.rl import batch as batch_lib
from deliberate.rl.config import NORM_MODES, OLD_LOGPROBS

Metrics = dict[str, dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class LossConfig:
  clip_eps_low: float = 0.2
  clip_eps_high: float = 0.2
  beta: float = 0.0                 # k3 KL weight; 0 needs no reference log-probs
  norm_mode: str = "token_sum"
  norm_constant: float = 0.0        # `constant` mode only, e.g. max_tokens * num_seqs
  old_logprobs: str = "sampler"     # the ratio's denominator: the batch's 'sampler' log-probs, or 'recompute': this
                                    # forward's own, stop-gradient (ratio exactly 1; for one update per rollout)

  def __post_init__(self):
    if self.norm_mode not in NORM_MODES:
      raise ValueError(f"LossConfig.norm_mode: {self.norm_mode!r} is not one of {NORM_MODES}")
    if self.norm_mode == "constant" and self.norm_constant <= 0:
      raise ValueError("LossConfig.norm_constant: must be > 0 in 'constant' mode")
    if self.old_logprobs not in OLD_LOGPROBS:
      raise ValueError(f"LossConfig.old_logprobs: {self.old_logprobs!r} is not one of {OLD_LOGPROBS}")
    if self.clip_eps_low < 0 or self.clip_eps_high < 0 or self.beta < 0:
      raise ValueError("LossConfig: clip_eps_low, clip_eps_high and beta must be >= 0")


def prepare_batch(batch: Mapping[str, Any], cfg: LossConfig) -> dict[str, np.ndarray]:
  """Checks a host batch (rl/batch.py's schema) and adds `loss_weights_B` and `norm_counts_B`; errors name the
  faulty field."""
  if cfg.beta > 0 and "ref_logprobs_BxT" not in batch:
    raise ValueError("training batch: beta > 0 needs field 'ref_logprobs_BxT'")
  out = batch_lib.check(batch, optional=[k for k in ("ref_logprobs_BxT", "sample_weights_B")
                                         if k in batch and (cfg.beta > 0 or k != "ref_logprobs_BxT")])
  b = out["tokens_BxT"].shape[0]
  sample_w = out.pop("sample_weights_B", np.ones(b, np.float32))
  mask = out["loss_mask_BxT"]
  if np.any(mask[:, 0] != 0):
    raise ValueError("training batch: loss_mask_BxT marks position 0, which has no preceding token to predict it")
  pad = out["positions_BxT"] < 0
  if np.any((mask != 0) & (pad | np.roll(pad, 1, axis=1))):
    raise ValueError("training batch: loss_mask_BxT marks a padding position or a token right after padding")
  for name in ("old_logprobs_BxT", "ref_logprobs_BxT", "advantages_B"):
    if name in out:
      vals = out[name] if name == "advantages_B" else out[name][mask != 0]
      if not np.all(np.isfinite(vals)):
        raise ValueError(f"training batch: {name} holds non-finite values where the loss reads it")

  row_tokens = (mask * sample_w[:, None]).sum(axis=1)
  if cfg.norm_mode == "token_sum":
    weights, counts = sample_w, row_tokens
  elif cfg.norm_mode == "seq_mean_token_mean":
    _, inv = np.unique(out["seq_ids_B"], return_inverse=True)
    seq_tokens = np.bincount(inv, row_tokens)[inv]
    inv_n = np.where(seq_tokens > 0, 1.0 / np.maximum(seq_tokens, 1e-30), 0.0)
    weights, counts = sample_w * inv_n, row_tokens * inv_n
  else:
    weights, counts = sample_w, np.full(b, cfg.norm_constant / b)
  out["loss_weights_B"] = weights.astype(np.float32)
  out["norm_counts_B"] = counts.astype(np.float32)
  return out


def packed_batch(trained: Sequence[batch_lib.Row], adv: np.ndarray, cfg: LossConfig, *, length: int, pad_id: int,
                 multiple: int, skip_zero: bool, add_reference=lambda b: b, share_prefix: bool = True,
                 targets: int = 0) -> dict[str, np.ndarray] | None:
  """A step's trained rows prepared over the whole batch (normaliser, weights), then packed into (S, length)
  sequences of at most `batch.targets_budget(length, targets)` targets each, S agreed across hosts; with
  `skip_zero` only rows of non-zero advantage are packed. None when no host has a row to pack."""
  full = prepare_batch(add_reference(batch_lib.collate(trained, adv, pad_id=pad_id)), cfg) if trained else None
  keep = (np.zeros(0, np.int64) if full is None else
          np.flatnonzero(full["advantages_B"] != 0) if skip_zero else np.arange(len(trained)))
  if not agree_max(len(keep))[0]:
    return None
  budget = batch_lib.targets_budget(length, targets)
  plan = batch_lib.pack_layout(full, keep, length, share_prefix, budget) if len(keep) else None
  s, = agree_max(-(-(len(plan) if plan else 1) // multiple) * multiple)
  if full is None:  # this host has nothing, another has: padding sequences
    full = prepare_batch(batch_lib.collate([], adv, pad_id=pad_id, length=1, batch=1), cfg)
  return batch_lib.pack(full, keep, length=length, num_seqs=s, pad_id=pad_id, share_prefix=share_prefix,
                        budget=budget, plan=plan)


def _per_row(batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(advantage, loss weight, row-start marker), broadcastable to [B, T]: per row for padded batches, per token for
  packed ones (rl/batch.py:pack), where each row's first token marks it for the row metrics."""
  if "advantages_BxT" in batch:
    return batch["advantages_BxT"], batch["loss_weights_BxT"], batch["row_starts_BxT"]
  return batch["advantages_B"][:, None], batch["loss_weights_B"][:, None], jnp.ones_like(batch["advantages_B"])[:, None]


def policy_loss(logprobs_BxT: jax.Array, entropy_BxT: jax.Array, batch: Mapping[str, jax.Array],
                cfg: LossConfig) -> tuple[jax.Array, Metrics]:
  """The weighted loss *sum* of this shard (divide by the global count) and its metrics; padded or packed."""
  mask = batch["loss_mask_BxT"] > 0
  maskf = mask.astype(jnp.float32)
  adv, weights, starts = _per_row(batch)
  # The sampler's numerics against this forward's (bf16 decode against a cache vs the whole row at once): logged
  # either way; under 'recompute' it does not enter the ratio.
  sampler_gap = jnp.where(mask, logprobs_BxT - batch["old_logprobs_BxT"], 0.0)
  old = jax.lax.stop_gradient(logprobs_BxT) if cfg.old_logprobs == "recompute" else batch["old_logprobs_BxT"]
  log_ratio = jnp.where(mask, logprobs_BxT - old, 0.0)
  ratio = jnp.exp(log_ratio)
  lo, hi = 1.0 - cfg.clip_eps_low, 1.0 + cfg.clip_eps_high
  surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, lo, hi) * adv)
  per_token = -surrogate
  if cfg.beta > 0:
    d = jnp.where(mask, batch["ref_logprobs_BxT"] - logprobs_BxT, 0.0)
    kl = jnp.exp(d) - d - 1.0  # k3: unbiased, always >= 0
    per_token = per_token + cfg.beta * kl
  else:
    kl = jnp.zeros_like(per_token)
  w_BxT = maskf * weights
  loss_sum = jnp.sum(w_BxT * per_token)

  tok = jnp.sum(maskf)
  token_sum = lambda x: jnp.sum(jnp.where(mask, x, 0.0))
  rows = starts * (weights > 0).astype(jnp.float32)
  row_adv = jnp.broadcast_to(adv, rows.shape)
  metrics = {
      "sum": {"loss": loss_sum, "pg_loss": jnp.sum(w_BxT * -surrogate), "kl": token_sum(kl),
              "entropy": token_sum(entropy_BxT), "ratio": token_sum(ratio),
              "clip_low_frac": token_sum(((ratio < lo) & (adv < 0)).astype(jnp.float32)),
              "clip_high_frac": token_sum(((ratio > hi) & (adv > 0)).astype(jnp.float32)),
              "advantage": jnp.sum(rows * row_adv), "tokens": tok,
              "rows": jnp.sum(rows), "sampler_log_ratio": jnp.sum(jax.lax.stop_gradient(sampler_gap))},
      "count": {"loss": jnp.sum(batch["norm_counts_B"]), "pg_loss": jnp.sum(batch["norm_counts_B"]), "kl": tok,
                "entropy": tok, "ratio": tok, "clip_low_frac": tok, "clip_high_frac": tok,
                "advantage": jnp.sum(rows), "tokens": jnp.ones(()), "rows": jnp.ones(()),
                "sampler_log_ratio": tok},
      "min": {"ratio": jnp.min(jnp.where(mask, ratio, jnp.inf)),
              "advantage": jnp.min(jnp.where(rows > 0, row_adv, jnp.inf))},
      "max": {"ratio": jnp.max(jnp.where(mask, ratio, -jnp.inf)),
              "advantage": jnp.max(jnp.where(rows > 0, row_adv, -jnp.inf)),
              "sampler_log_ratio_abs": jnp.max(jnp.where(mask, jnp.abs(jax.lax.stop_gradient(sampler_gap)),
                                                         -jnp.inf))},
  }
  return loss_sum, metrics


def reduce_metrics(metrics: Metrics, axis_name: str) -> Metrics:
  """Combines the metrics of all shards of a mapped axis (inside pmap / shard_map)."""
  ops = {"sum": jax.lax.psum, "count": jax.lax.psum, "min": jax.lax.pmin, "max": jax.lax.pmax}
  return {g: jax.tree.map(lambda x, op=ops[g]: op(x, axis_name), v) for g, v in metrics.items()}


def combine_metrics(a: Metrics, b: Metrics) -> Metrics:
  """Combines the metrics of two micro-batches."""
  ops = {"sum": jnp.add, "count": jnp.add, "min": jnp.minimum, "max": jnp.maximum}
  return {g: jax.tree.map(ops[g], a[g], b[g]) for g in a}


def finalize_metrics(metrics: Metrics) -> dict[str, float]:
  """Host-side floats: sum/count for means, totals for tokens and rows, the extrema and step-level values."""
  m = jax.device_get(metrics)
  out = {}
  for name, s in m["sum"].items():
    c = float(np.asarray(m["count"][name]).reshape(-1)[0])
    s = float(np.asarray(s).reshape(-1)[0])
    out[name] = s if name in ("tokens", "rows") else (s / c if c else float("nan"))
  for group in ("min", "max"):
    for name, v in m[group].items():
      v = float(np.asarray(v).reshape(-1)[0])
      out[f"{name}_{group}"] = v if np.isfinite(v) else float("nan")
  for name, v in m.get("value", {}).items():  # step-level scalars (grad_norm, skipped)
    out[name] = float(np.asarray(v).reshape(-1)[0])
  return out
