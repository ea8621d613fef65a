"""Log-probs and entropies of target tokens without a [B, T, V] logits tensor.

The output layer is the costliest single matmul of a small model (SmolLM2: V=49,152 against d_model 576) and most
tokens of a training row are prompt, which needs no log-prob. So each row's target positions are first packed into
`targets_per_row` slots (a static bound the host computes), the output layer and log-softmax run only there, in
token chunks, and a custom VJP keeps at most one [B, C, V] chunk (or, with `recompute=False`, the packed log-softmax)
alive for the backward pass.

Alignment: `loss_mask_BxT[b, t] = 1` asks for log p(tokens[b, t] | tokens[b, :t]), read from the hidden state at t-1.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from deliberate.model import transformer
from deliberate.model.config import ModelConfig


def targets_per_row(loss_mask_BxT: np.ndarray, multiple: int = 16) -> int:
  """A static bound on any row's target count, rounded up so that few distinct values trigger recompiles."""
  mask = np.asarray(loss_mask_BxT)
  most = int((mask > 0).sum(axis=-1).max()) if mask.size else 0
  return min(mask.shape[-1], max(multiple, multiple * math.ceil(most / multiple)))


def _chunk_logits(h_BxCxD: jax.Array, w_DxV: jax.Array) -> jax.Array:
  return jnp.einsum("bcd,dv->bcv", h_BxCxD, w_DxV.astype(h_BxCxD.dtype), preferred_element_type=jnp.float32)


def _split(x: jax.Array, chunk: int) -> jax.Array:
  """[B, K, ...] -> [K/chunk, B, chunk, ...]: the loop runs over positions, the batch axis stays shardable."""
  b, k = x.shape[:2]
  return jnp.moveaxis(x.reshape(b, k // chunk, chunk, *x.shape[2:]), 1, 0)


def _merge(x: jax.Array) -> jax.Array:
  n, b, c = x.shape[:3]
  return jnp.moveaxis(x, 0, 1).reshape(b, n * c, *x.shape[3:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def head_logprobs(h_BxKxD: jax.Array, w_DxV: jax.Array, targets_BxK: jax.Array, chunk: int,
                  recompute: bool) -> tuple[jax.Array, jax.Array]:
  """(log p(target), entropy) [B, K] each, float32, for hidden states h and output matrix w."""
  (lp, ent), _ = _head_fwd(h_BxKxD, w_DxV, targets_BxK, chunk, recompute)
  return lp, ent


def _head_fwd(h, w, targets, chunk, recompute):
  def body(_, xs):
    h_c, t_c = xs
    z = _chunk_logits(h_c, w)
    lse = jax.nn.logsumexp(z, axis=-1)
    logp = z - lse[..., None]
    lp = jnp.take_along_axis(logp, t_c[..., None], axis=-1)[..., 0]
    ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return None, (lp, ent, lse, None if recompute else logp)

  _, (lp, ent, lse, logp) = jax.lax.scan(body, None, (_split(h, chunk), _split(targets, chunk)))
  return (_merge(lp), _merge(ent)), (h, w, targets, lse, ent, logp)


def _head_bwd(chunk, recompute, res, cotangents):
  h, w, targets, lse, ent, logp_saved = res
  g_lp, g_ent = (_split(g, chunk) for g in cotangents)
  vocab = jnp.arange(w.shape[-1])

  def body(dw, xs):
    h_c, t_c, lse_c, ent_c, g_lp_c, g_ent_c, logp_c = xs
    if logp_c is None:
      logp_c = _chunk_logits(h_c, w) - lse_c[..., None]
    p = jnp.exp(logp_c)
    # d lp / dz = onehot - p;  d entropy / dz = -p (logp + entropy).
    dz = (jnp.where(vocab == t_c[..., None], g_lp_c[..., None], 0.0)
          - p * (g_lp_c[..., None] + g_ent_c[..., None] * (logp_c + ent_c[..., None])))
    dh_c = jnp.einsum("bcv,dv->bcd", dz.astype(h_c.dtype), w.astype(h_c.dtype), preferred_element_type=jnp.float32)
    dw = dw + jnp.einsum("bcd,bcv->dv", h_c, dz.astype(h_c.dtype), preferred_element_type=jnp.float32)
    return dw, dh_c.astype(h_c.dtype)

  xs = (_split(h, chunk), _split(targets, chunk), lse, ent, g_lp, g_ent, logp_saved)
  dw, dh = jax.lax.scan(body, jnp.zeros(w.shape, jnp.float32), xs)
  return _merge(dh), dw.astype(w.dtype), None


head_logprobs.defvjp(_head_fwd, _head_bwd)


def token_logprobs(params: transformer.Params, tokens_BxT: jax.Array, positions_BxT: jax.Array,
                   loss_mask_BxT: jax.Array, *, config: ModelConfig, targets_per_row: int | None = None,
                   token_chunk: int | None = None, recompute: bool = True, remat: bool = False,
                   temperature: float = 1.0, lora: transformer.Adapters | None = None,
                   segments_BxT: jax.Array | None = None, parents_BxT: jax.Array | None = None
                   ) -> tuple[jax.Array, jax.Array]:
  """Log-probs and entropies [B, T] (float32, 0 off the mask) of the masked target tokens.

  Args:
    targets_per_row: K, the most targets any row has (see `targets_per_row()`); None computes every position.
      Rows with more targets than K lose the excess silently, so the host must compute it from the batch.
    token_chunk: packed positions per row handled at once by the output layer (K is padded up to a multiple);
      None does all K at once.
    recompute: recompute each chunk's logits in the backward pass instead of keeping the [B, K, V] log-softmax.
    remat: rematerialise each decoder layer in the backward pass (memory for compute).
    temperature: the sampling temperature, so that on-policy importance ratios are exactly 1.
    lora: adapters on their own path over the frozen `params` (differentiable; the base is not).
    segments_BxT: packed rows (rl/batch.py:pack): attention stays within a segment.
    parents_BxT: the shared-prefix segment each token also sees (0: none).
  """
  hidden_BxTxD, _ = transformer.forward_hidden(params, tokens_BxT, positions_BxT, config=config, remat=remat,
                                               lora=lora, segments_BxT=segments_BxT,
                                               parents_BxT=parents_BxT)
  b, t = tokens_BxT.shape
  k = t - 1 if targets_per_row is None else min(targets_per_row, t - 1)
  chunk = min(token_chunk or k, k)
  k_pad = chunk * math.ceil(k / chunk)
  wanted_BxT = (jnp.asarray(loss_mask_BxT) > 0).at[:, 0].set(False)  # position 0 has no predecessor
  idx_BxK = jax.vmap(lambda m: jnp.nonzero(m, size=k_pad, fill_value=0)[0])(wanted_BxT)
  valid_BxK = jnp.arange(k_pad)[None, :] < jnp.minimum(wanted_BxT.sum(-1, keepdims=True), k)
  idx_BxK = jnp.where(valid_BxK, idx_BxK, 1)
  h_BxKxD = jnp.take_along_axis(hidden_BxTxD, (idx_BxK - 1)[..., None], axis=1)
  if temperature != 1.0:  # log softmax(logits / T): the tempered policy the sampler drew from
    h_BxKxD = h_BxKxD / jnp.asarray(temperature, h_BxKxD.dtype)
  targets_BxK = jnp.take_along_axis(tokens_BxT, idx_BxK, axis=1)
  lp_BxK, ent_BxK = head_logprobs(h_BxKxD, transformer.unembed_matrix(params, config), targets_BxK, chunk,
                                  recompute)
  rows = jnp.arange(b)[:, None]
  scatter = lambda v: jnp.zeros((b, t), jnp.float32).at[rows, idx_BxK].add(jnp.where(valid_BxK, v, 0.0))
  return scatter(lp_BxK), scatter(ent_BxK)
