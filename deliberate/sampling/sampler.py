"""The jitted sampler: prefill unique prompts once, broadcast their cache, then decode under a `lax.while_loop`.

Every row draws its randomness from `fold_in(fold_in(key(seed), row_id), step)`, and its token is a function of its
own logits and key only, so a row's tokens never depend on which rows share its batch, how the batch is padded, or
how it is sharded.

The sampler runs its own forward (`_forward`, checked against `transformer.apply` by the tests), with the model's
matmul (`transformer.dense`: one float32 accumulation, LoRA adapters on their own path) so that it rounds like the
trainer. Two weight layouts:
- stacked (the trainer's params as they are, sharded or not): layers under `lax.scan`, no copy of the weights;
- split (`decode_layout`, one buffer per layer, layers unrolled): on CPU a scan makes XLA copy every layer's weight
  slice before its matmul, so the split layout decodes 2-3x faster there, for one copy of the layer weights.
And in both:
- each layer's cache is one [B, K, P + N - 1, D] buffer per row batch: the prompt's slots, then the new tokens', all
  rows writing the same slot, so a step does one in-place dynamic-update-slice and one attention over one block
  instead of a scatter into the whole cache; queries and cache meet in plain batched matmuls, no transposes;
- the while loop feeds a token and then draws the next, so no forward is wasted after the last draw.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from deliberate.model import transformer
from deliberate.model.config import ModelConfig

STOP_NONE, STOP_EOS, STOP_LENGTH = 0, 1, 2  # per-row stop reasons
_NEG_INF = -1e30


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """Decoding options. Hashable: a change compiles a new program."""
  temperature: float = 0.7
  top_p: float = 1.0
  top_k: int = 0              # 0: no top-k cut; with top_p too, the nucleus is taken in the renormalised top k
  greedy: bool = False
  max_new_tokens: int = 128
  candidates: int = 256       # top-p looks at the top `candidates` tokens first; a row whose nucleus is wider falls
                              # back to an exact threshold search over the whole vocabulary (exact either way)

  def __post_init__(self):
    if not self.greedy and not self.temperature > 0:
      raise ValueError(f"SamplingParams.temperature: must be > 0 unless greedy, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"SamplingParams.top_p: must be in (0, 1], got {self.top_p}")
    if self.top_k < 0:
      raise ValueError(f"SamplingParams.top_k: must be >= 0, got {self.top_k}")
    if self.max_new_tokens < 1:
      raise ValueError(f"SamplingParams.max_new_tokens: must be >= 1, got {self.max_new_tokens}")
    if self.candidates < 1:
      raise ValueError(f"SamplingParams.candidates: must be >= 1, got {self.candidates}")


class SampleOutput:
  """Sampled ids [B, N] (padding after each row's length), their log-probs, lengths, stop reasons and decode steps.

  `logprobs` are under the tempered policy, log softmax(logits / T) over the full vocabulary: what a training step
  recomputes for the importance ratio. `sampling_logprobs` are under the truncated (top-k/top-p) distribution the
  token was actually drawn from. `steps` counts the decode forwards the while loop ran (it stops once every row is
  done, so it can be far below N - 1).
  """

  def __init__(self, tokens, logprobs, sampling_logprobs, lengths, stop_reason, steps):
    self.tokens, self.logprobs, self.sampling_logprobs = tokens, logprobs, sampling_logprobs
    self.lengths, self.stop_reason, self.steps = lengths, stop_reason, steps


jax.tree_util.register_pytree_node(
    SampleOutput, lambda o: ((o.tokens, o.logprobs, o.sampling_logprobs, o.lengths, o.stop_reason, o.steps), None),
    lambda _, c: SampleOutput(*c))


def _inverse_cdf(weights_BxK: jax.Array, u_B: jax.Array) -> jax.Array:
  """Index drawn in proportion to non-negative weights, from one uniform per row (cheaper than Gumbel noise)."""
  cdf = jnp.cumsum(weights_BxK, axis=-1)
  idx = jnp.sum(cdf < u_B[:, None] * cdf[:, -1:], axis=-1)
  return jnp.minimum(idx, weights_BxK.shape[-1] - 1)


def _nucleus_threshold(probs_BxV: jax.Array, top_p: float) -> jax.Array:
  """The smallest probability top-p keeps: the largest t with mass{p >= t} >= top_p, bisected on the float bits.

  Costs 31 fused passes over the row instead of a full sort of the vocabulary (about 50x cheaper on CPU).
  """
  b = probs_BxV.shape[0]
  lo = jnp.zeros((b,), jnp.int32)                                  # t = 0 keeps everything: always enough mass
  hi = jnp.full((b,), jax.lax.bitcast_convert_type(jnp.float32(1.0), jnp.int32) + 1)  # t > 1 keeps nothing

  def body(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    t = jax.lax.bitcast_convert_type(mid, jnp.float32)
    enough = jnp.sum(jnp.where(probs_BxV >= t[:, None], probs_BxV, 0.0), axis=-1) >= top_p
    return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

  lo, _ = jax.lax.fori_loop(0, 31, body, (lo, hi))
  return jax.lax.bitcast_convert_type(lo, jnp.float32)


def _choose(logits_BxV: jax.Array, keys_B: jax.Array, sp: SamplingParams):
  """One token per row; returns (token, tempered-policy log-prob, sampling log-prob)."""
  logits_BxV = logits_BxV.astype(jnp.float32)
  if sp.greedy:
    token = jnp.argmax(logits_BxV, axis=-1)
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits_BxV), token[:, None], axis=-1)[:, 0]
    return token, lp, jnp.zeros_like(lp)
  logp_BxV = jax.nn.log_softmax(logits_BxV / sp.temperature)
  u_B = jax.vmap(jax.random.uniform)(keys_B)
  vocab = logp_BxV.shape[-1]
  if sp.top_p >= 1.0 and sp.top_k == 0:
    token = _inverse_cdf(jnp.exp(logp_BxV), u_B)
    lp = jnp.take_along_axis(logp_BxV, token[:, None], axis=-1)[:, 0]
    return token, lp, lp

  k = min(sp.top_k or sp.candidates, vocab)
  vals, idx = jax.lax.top_k(logp_BxV, k)                         # sorted, descending
  probs = jnp.exp(vals)
  if sp.top_k:  # the nucleus of the renormalised top-k distribution, as HF and vLLM take it
    probs = probs / jnp.sum(probs, axis=-1, keepdims=True)
  keep = (jnp.cumsum(probs, axis=-1) - probs) < sp.top_p       # the nucleus, always >= 1 token
  if sp.top_p >= 1.0:
    keep = jnp.ones_like(keep)
  pick = _inverse_cdf(jnp.where(keep, probs, 0.0), u_B)
  token = jnp.take_along_axis(idx, pick[:, None], axis=-1)[:, 0]
  lp = jnp.take_along_axis(vals, pick[:, None], axis=-1)[:, 0]
  slp = lp - jax.nn.logsumexp(jnp.where(keep, vals, -jnp.inf), axis=-1)
  if sp.top_k or k == vocab:
    return token, lp, slp
  covered_B = jnp.sum(probs, axis=-1) >= sp.top_p               # the nucleus lies inside the candidates

  def exact():  # rows whose nucleus is wider than the candidates; the others keep their own draw
    p_BxV = jnp.exp(logp_BxV)
    kept_BxV = jnp.where(p_BxV >= _nucleus_threshold(p_BxV, sp.top_p)[:, None], p_BxV, 0.0)
    full_token = _inverse_cdf(kept_BxV, u_B)
    full_lp = jnp.take_along_axis(logp_BxV, full_token[:, None], axis=-1)[:, 0]
    full_slp = full_lp - jnp.log(jnp.sum(kept_BxV, axis=-1))
    return (jnp.where(covered_B, token, full_token), jnp.where(covered_B, lp, full_lp),
            jnp.where(covered_B, slp, full_slp))

  return jax.lax.cond(jnp.all(covered_B), lambda: (token, lp, slp), exact)


def decode_layout(params, config: ModelConfig) -> dict:
  """The sampler's params: the stacked per-layer leaves split into one dict of separate buffers per layer.

  Under `lax.scan` over stacked weights XLA copies every layer's weight slice before its matmul; with one buffer per
  layer and the layers unrolled, a decode step reads each weight once (2-3x faster at batch 8 on CPU). The split is
  a second copy of the layer weights: the engine makes it only in its explicit `layout="split"`.
  """
  return {**{k: v for k, v in params.items() if k != "layers"}, "layers": _splitter(config.n_layers)(params["layers"])}


def split_adapters(lora: transformer.Adapters, n_layers: int) -> transformer.Adapters:
  """Adapters in the split layout: a list of per-layer {target: {"a", "b"}} (small: copied every step)."""
  return transformer.Adapters(_splitter(n_layers)(lora.params), lora.scale, lora.dtype)


@functools.cache
def _splitter(n_layers: int):
  """One compiled split per depth, so that swapping params every training step compiles nothing."""
  return jax.jit(lambda layers: [jax.tree.map(lambda a: a[i], layers) for i in range(n_layers)])


def _logits(params, h_BxD: jax.Array, config: ModelConfig) -> jax.Array:
  if config.tie_embeddings:  # contract the [V, D] embedding directly: no transposed copy of it per step
    return jnp.einsum("bd,vd->bv", h_BxD, params["embed"].astype(h_BxD.dtype), preferred_element_type=jnp.float32)
  return jnp.dot(h_BxD, params["lm_head"].astype(h_BxD.dtype), preferred_element_type=jnp.float32)


def _rope(x_BxTxHxD: jax.Array, cos_BxTx1xR: jax.Array, sin_BxTx1xR: jax.Array) -> jax.Array:
  """Half-split (NeoX/HF) rotary embedding, as in the model."""
  x1, x2 = jnp.split(x_BxTxHxD.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos_BxTx1xR - x2 * sin_BxTx1xR, x2 * cos_BxTx1xR + x1 * sin_BxTx1xR], axis=-1)
  return out.astype(x_BxTxHxD.dtype)


def _layer(lp, ab, lora, x_BxTxD, cos, sin, mask_BxTxS, c: ModelConfig, cache=None, slot=None, prefix=None):
  """One decoder layer on T new tokens per row; returns (x, the new tokens' (keys, values) [B, K, T, D]).

  Without a cache the tokens attend to each other (prefill), after the (keys, values) [B, K, A, D] of a `prefix`
  already prefilled when one is given: the mask is then [B, T, A + T].

  With a cache (one token per row, T = 1) the token attends to the cache's slots under the mask and to itself; the
  cache is only read here, never written, so a layer's step costs one read of its cache and no copy of it.
  """
  cdt = jnp.dtype(c.compute_dtype)
  b, t, _ = x_BxTxD.shape
  kvh, g, hd = c.n_kv_heads, c.n_heads // c.n_kv_heads, c.head_dim
  scale, ldt = (lora.scale, lora.dtype) if lora is not None else (1.0, "float32")
  mm = lambda x, name: transformer.dense(x, lp[name], ab.get(name) if ab else None, scale, ldt)
  h = transformer.rms_norm(x_BxTxD, lp["attn_norm"], c.rms_eps)
  q, k, v = mm(h, "wq"), mm(h, "wk"), mm(h, "wv")
  if c.qkv_bias:
    q, k, v = q + lp["bq"].astype(cdt), k + lp["bk"].astype(cdt), v + lp["bv"].astype(cdt)
  q, k, v = q.reshape(b, t, c.n_heads, hd), k.reshape(b, t, kvh, hd), v.reshape(b, t, kvh, hd)
  if c.qk_norm:
    q, k = transformer.rms_norm(q, lp["q_norm"], c.rms_eps), transformer.rms_norm(k, lp["k_norm"], c.rms_eps)
  q, k = _rope(q, cos, sin), _rope(k, cos, sin)
  # Queries as [B, K, G*T, D] and keys/values as [B, K, S, D]: plain batched matmuls over (B, K), twice as fast
  # on CPU as contractions that keep a T axis apart (those transpose the cache).
  q = q.reshape(b, t, kvh, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, kvh, g * t, hd)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  keys, values = (k, v) if cache is None else cache
  if prefix is not None:  # a prompt's continuation: its shared prefix's keys/values, then its own
    keys, values = (jnp.concatenate([pre.astype(new.dtype), new], axis=2) for pre, new in zip(prefix, (k, v)))
  if slot is not None:  # write the token's keys/values first, then attend over the cache, its own slot included
    keys, values = (jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype), (0, 0, slot, 0))
                    for buf, new in ((keys, k), (values, v)))
  scores = jnp.einsum("bkqd,bksd->bkqs", q, keys, preferred_element_type=jnp.float32) / math.sqrt(hd)
  scores = jnp.where(mask_BxTxS[:, None, None], scores.reshape(b, kvh, g, t, -1), _NEG_INF)
  if slot is not None:
    probs = jax.nn.softmax(scores, axis=-1).astype(cdt).reshape(b, kvh, g * t, -1)
    attn = jnp.einsum("bkqs,bksd->bkqd", probs, values, preferred_element_type=jnp.float32).astype(cdt)
    k, v = keys, values
  elif cache is None:
    probs = jax.nn.softmax(scores, axis=-1).astype(cdt).reshape(b, kvh, g * t, -1)
    attn = jnp.einsum("bkqs,bksd->bkqd", probs, values)
  else:  # one new token, which attends to the cache's masked slots and to itself (no concatenated copy of the cache)
    own = jnp.einsum("bkqd,bksd->bkqs", q, k.astype(keys.dtype), preferred_element_type=jnp.float32) / math.sqrt(hd)
    probs = jax.nn.softmax(jnp.concatenate([scores, own.reshape(b, kvh, g, t, 1)], axis=-1), axis=-1).astype(cdt)
    probs = probs.reshape(b, kvh, g * t, -1)
    attn = (jnp.einsum("bkqs,bksd->bkqd", probs[..., :-1], values, preferred_element_type=jnp.float32)
            + jnp.einsum("bkqs,bksd->bkqd", probs[..., -1:], v.astype(values.dtype),
                         preferred_element_type=jnp.float32)).astype(cdt)
  attn = attn.reshape(b, kvh, g, t, hd)
  x_BxTxD = x_BxTxD + mm(attn.transpose(0, 3, 1, 2, 4).reshape(b, t, c.n_heads * hd), "wo")
  h = transformer.rms_norm(x_BxTxD, lp["mlp_norm"], c.rms_eps)
  x_BxTxD = x_BxTxD + mm(jax.nn.silu(mm(h, "w_gate")) * mm(h, "w_up"), "w_down")
  return x_BxTxD, (k, v)


def _forward(params, x_BxTxD, positions_BxT, mask_BxTxS, config: ModelConfig, caches=None, slot=None, lora=None,
             constrain=None, prefix=None):
  """Final-normed hidden states of T new tokens per row, and keys/values.

  Without caches the tokens attend to each other (prefill) and their keys/values are returned. With caches (one
  token per row) the token attends to the cache's slots under the mask, and to itself; every layer only reads its
  cache, and the new keys/values of all layers are written at `slot` afterwards, in one in-place
  dynamic-update-slice per buffer, and the updated caches are returned.

  Two layouts, one layer function: `params["layers"]` a list (split: layers unrolled, caches a list of per-layer
  (keys, values) [B, K, S, D]) or the trainer's stacked dict (scanned, caches (keys, values) [L, B, K, S, D], each
  layer's slice handed to the scan body as an input, so no iteration carries the whole cache). A prefill may
  continue a `prefix` (its keys/values, laid out as the caches are; `_layer`).
  """
  c = config
  angles = positions_BxT[..., None].astype(jnp.float32) * transformer.rope_inv_freq(c)
  cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]
  layer = functools.partial(_layer, lora=lora, cos=cos, sin=sin, mask_BxTxS=mask_BxTxS, c=c)
  ab_layers = lora.params if lora is not None else None
  write = lambda buf, new, at: jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype), at)
  if isinstance(params["layers"], (list, tuple)):
    kv_out = []
    for i, lp in enumerate(params["layers"]):
      x_BxTxD, kv = layer(lp, ab_layers[i] if ab_layers is not None else None, x_BxTxD=x_BxTxD,
                          cache=caches[i] if caches is not None else None, slot=slot if caches is not None else None,
                          prefix=prefix[i] if prefix is not None else None)
      if caches is not None and constrain is not None:
        kv = tuple(constrain(x) for x in kv)
      kv_out.append(kv)
  elif caches is None:
    def body(x, xs):
      return layer(xs[0], xs[1], x_BxTxD=x, prefix=xs[2] if prefix is not None else None)
    x_BxTxD, kv_out = jax.lax.scan(body, x_BxTxD, (params["layers"], ab_layers or {}, prefix or ()))
  else:
    def body(x, xs):
      lp, ab, k_cache, v_cache = xs
      return layer(lp, ab, x_BxTxD=x, cache=(k_cache, v_cache))
    x_BxTxD, new_kv = jax.lax.scan(body, x_BxTxD, (params["layers"], ab_layers or {}, *caches))
    kv_out = tuple(write(buf, new, (0, 0, 0, slot, 0)) for buf, new in zip(caches, new_kv))
  return transformer.rms_norm(x_BxTxD, params["final_norm"], c.rms_eps), kv_out


def sample(params, lora, prompts_UxP: jax.Array, prompt_lens_U: jax.Array, src_B: jax.Array, row_ids_B: jax.Array,
           active_B: jax.Array, seed: jax.Array, stop_V: jax.Array, prefixes_QxA: jax.Array | None = None,
           prefix_lens_Q: jax.Array | None = None, prefix_of_U: jax.Array | None = None, *, config: ModelConfig,
           sp: SamplingParams, cache_sharding=None) -> SampleOutput:
  """Prefill U unique prompts, give row b the cache of prompt src_B[b], and decode every active row.

  With `prefixes_QxA` the prompts are continuations: prompt u is prefix `prefix_of_U[u]` (its first
  `prefix_lens_Q` ids) followed by `prompts_UxP[u]`. The Q shared prefixes (the system message and dilemma of the
  G dialogues of a group) are prefilled once, each prompt's own part after them, and a row's cache holds
  A + P + N - 1 slots: its prefix's A, its own P, then the new tokens'.

  Pure and shape-static: the engine compiles it once per (Q, A, U, P, B) shape. `params` are in `decode_layout`
  (split) or the trainer's stacked layout, as they are sharded; `lora` is None or `Adapters` in the same layout;
  `seed` is a uint32 scalar; `stop_V` a boolean per vocabulary id, true for the ids that end a row (a mask rather
  than a list, so that no set of stop ids is a new shape). Each row's cache holds (A +) P + N - 1 slots: its
  prompt's P (padding masked), then one per new token fed back, at the same slot in every row. `cache_sharding`
  (a NamedSharding of one layer's [B, K, S, D] cache) keeps the cache split over rows and kv heads, as the weights
  are.
  """
  c = config
  cdt = jnp.dtype(c.compute_dtype)
  u, p = prompts_UxP.shape
  b, n = src_B.shape[0], sp.max_new_tokens
  causal = lambda lens_U, t: ((jnp.arange(t)[None] < lens_U[:, None])[:, None, :]
                              & (jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]))
  embed = lambda ids: jnp.take(params["embed"], ids, axis=0).astype(cdt)
  stacked = isinstance(params["layers"], dict)
  a = 0 if prefixes_QxA is None else prefixes_QxA.shape[1]
  prefix_kv, prefix_lens_U = None, jnp.zeros((u,), jnp.int32)
  mask_UxPxS, positions_UxP = causal(prompt_lens_U, p), jnp.broadcast_to(jnp.arange(p), (u, p))
  if a:
    q = prefixes_QxA.shape[0]
    _, kv = _forward(params, embed(prefixes_QxA), jnp.broadcast_to(jnp.arange(a), (q, a)),
                     causal(prefix_lens_Q, a), c, lora=lora)
    take = (lambda x: x[:, prefix_of_U]) if stacked else (lambda x: x[prefix_of_U])
    prefix_kv = tuple(map(take, kv)) if stacked else [tuple(map(take, layer_kv)) for layer_kv in kv]
    prefix_lens_U = prefix_lens_Q[prefix_of_U]
    seen_UxPxA = jnp.broadcast_to((jnp.arange(a)[None] < prefix_lens_U[:, None])[:, None], (u, p, a))
    mask_UxPxS = jnp.concatenate([seen_UxPxA, mask_UxPxS], axis=-1)
    positions_UxP = positions_UxP + prefix_lens_U[:, None]
  constrain = constrain_all = None
  if cache_sharding is not None:  # one layer's cache, and (stacked) all layers' caches
    constrain = functools.partial(jax.lax.with_sharding_constraint, shardings=cache_sharding)
    constrain_all = constrain if not stacked else functools.partial(
        jax.lax.with_sharding_constraint, shardings=jax.sharding.NamedSharding(
            cache_sharding.mesh, jax.sharding.PartitionSpec(None, *cache_sharding.spec)))
  hidden_UxPxD, prompt_kv = _forward(params, embed(prompts_UxP), positions_UxP, mask_UxPxS, c, lora=lora,
                                     prefix=prefix_kv)
  last_UxD = jnp.take_along_axis(hidden_UxPxD, (prompt_lens_U - 1)[:, None, None], axis=1)[:, 0]
  logits_BxV = _logits(params, last_UxD, c)[src_B]
  free = jnp.zeros((b, c.n_kv_heads, max(n - 1, 1), c.head_dim), cdt)  # the last token is never fed back
  if stacked:  # (keys, values) [L, U, K, P, D] (after [L, U, K, A, D]) -> [L, B, K, A + P + N - 1, D]
    grow = lambda x, pre: jnp.concatenate([*([pre[:, src_B]] if a else []), x[:, src_B],
                                           jnp.broadcast_to(free, (c.n_layers, *free.shape))], axis=3)
    caches = tuple(constrain_all(grow(x, pre)) if constrain_all else grow(x, pre)
                   for x, pre in zip(prompt_kv, prefix_kv or (None, None)))
  else:
    grow = lambda x, pre: jnp.concatenate([*([pre[src_B]] if a else []), x[src_B], free], axis=2)
    caches = [tuple(constrain(grow(x, pre)) if constrain else grow(x, pre)
                    for x, pre in zip(kv, prefix_kv[i] if a else (None, None))) for i, kv in enumerate(prompt_kv)]
  prompt_lens_B, prefix_lens_B = prompt_lens_U[src_B], prefix_lens_U[src_B]
  slots_S = jnp.arange(a + p + max(n - 1, 1))
  seed_key = jax.random.key(seed)
  row_keys_B = jax.vmap(lambda r: jax.random.fold_in(seed_key, r))(row_ids_B)

  def pick(i, logits_BxV, done_B, out):
    tokens, logprobs, slogprobs, lengths = out
    token_B, lp_B, slp_B = _choose(logits_BxV, jax.vmap(lambda k: jax.random.fold_in(k, i))(row_keys_B), sp)
    token_B = jnp.where(done_B, c.pad_id, token_B).astype(jnp.int32)
    out = (tokens.at[:, i].set(token_B), logprobs.at[:, i].set(jnp.where(done_B, 0.0, lp_B)),
           slogprobs.at[:, i].set(jnp.where(done_B, 0.0, slp_B)), lengths + (~done_B).astype(jnp.int32))
    return token_B, done_B | stop_V[token_B], out

  def cond(state):
    i, _, done_B, *_ = state
    return (i < n) & ~jnp.all(done_B)

  def body(state):  # feed token i-1 (into slot P + i - 1) and draw token i
    i, token_B, done_B, caches, out = state
    own = 0 if stacked else 1  # split: the token's own slot is written before the attention reads the cache
    mask_Bx1xS = ((slots_S < prefix_lens_B[:, None])
                  | ((slots_S >= a) & (slots_S < a + prompt_lens_B[:, None]))
                  | ((slots_S >= a + p) & (slots_S < a + p + i - 1 + own)))[:, None]
    x = embed(token_B)[:, None]
    hidden, caches = _forward(params, x, (prefix_lens_B + prompt_lens_B + i - 1)[:, None], mask_Bx1xS, c, caches,
                              a + p + i - 1, lora=lora, constrain=constrain)
    token_B, done_B, out = pick(i, _logits(params, hidden[:, 0], c), done_B, out)
    return i + 1, token_B, done_B, caches, out

  zeros_f = jnp.zeros((b, n), jnp.float32)
  out = (jnp.full((b, n), c.pad_id, jnp.int32), zeros_f, zeros_f, jnp.zeros((b,), jnp.int32))
  token_B, done_B, out = pick(0, logits_BxV, ~active_B, out)
  i, _, _, _, (tokens, logprobs, slogprobs, lengths) = jax.lax.while_loop(
      cond, body, (jnp.int32(1), token_B, done_B, caches, out))
  last_B = jnp.take_along_axis(tokens, jnp.maximum(lengths - 1, 0)[:, None], axis=1)[:, 0]
  stopped = (lengths > 0) & stop_V[last_B]
  reason = jnp.where(~active_B, STOP_NONE, jnp.where(stopped, STOP_EOS, STOP_LENGTH))
  return SampleOutput(tokens, logprobs, slogprobs, lengths, reason, i - 1)


@functools.cache
def jitted_sample(config: ModelConfig, sp: SamplingParams, cache_sharding=None):
  """One jitted function per (config, sampling params, cache sharding); the engine lowers and compiles it once per
  shape. Inputs keep the shardings they come with (the engine places rows; params stay as the trainer sharded
  them)."""
  return jax.jit(functools.partial(sample, config=config, sp=sp, cache_sharding=cache_sharding))
