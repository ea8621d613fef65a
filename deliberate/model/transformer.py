"""A pure-functional decoder for the Llama, Qwen2 and Qwen3 families.

params is a plain dict pytree; every per-layer leaf is stacked on a leading n_layers axis and the layers run under
`lax.scan`, so compile time does not grow with depth. Matrices are stored (in, out) so activations multiply on the
left. The layout, shared by every importer and exporter:

  embed [V, D]   final_norm [D]   lm_head [D, V] (untied only)
  layers/ attn_norm [L, D]  wq [L, D, Hq*hd]  wk, wv [L, D, Hkv*hd]  wo [L, Hq*hd, D]
          bq [L, Hq*hd]  bk, bv [L, Hkv*hd]          (qkv_bias: Qwen2)
          q_norm, k_norm [L, hd]                     (qk_norm: Qwen3)
          mlp_norm [L, D]  w_gate, w_up [L, D, F]  w_down [L, F, D]

LoRA adapters run on their own path, y = x W + (alpha / r) (x a) b: W stays in its storage dtype and the adapter
path computes in `Adapters.dtype` (float32 by default), added to x W's float32 accumulator before the one rounding to
the compute dtype. Merging W + (alpha / r) a b into a bf16 W would round every update under half an ulp of W away.

Positions carry the layout: a token at position p attends to every key at position <= p, and position -1 marks
padding, which is neither attended to nor written to the cache. With a KV cache, a token at position p is stored in
slot p, so rows of different lengths decode side by side without left-padding and RoPE stays exact.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deliberate.model.config import ModelConfig

Params = dict[str, Any]
KVCache = dict[str, jax.Array]
_NEG_INF = -1e30


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Adapters:
  """LoRA adapters {target: {"a": [L, in, r], "b": [L, r, out]}} with their scale alpha / r and path dtype.

  A pytree whose leaves are the adapters only: scale and dtype are static (part of the tree structure), so jit and
  grad see them as constants and a gradient comes back as an Adapters of the same scale and dtype.
  """
  params: dict[str, dict[str, Any]]
  scale: float
  dtype: str = "float32"

  def tree_flatten(self):
    return (self.params,), (self.scale, self.dtype)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(children[0], *aux)

  def layer(self, i: int) -> "Adapters":
    """The adapters of layer i (the leading axis sliced away)."""
    return Adapters(jax.tree.map(lambda x: x[i], self.params), self.scale, self.dtype)


def dense(x: jax.Array, w: jax.Array, ab: dict[str, jax.Array] | None = None, scale: float = 1.0,
          lora_dtype: str = "float32") -> jax.Array:
  """x W in x's dtype, plus the low-rank (scale) (x a) b when given, summed at the adapter dtype before rounding.

  x W always leaves the matmul as a float32 accumulator and is rounded once, with or without adapters, so that
  zero adapters give exactly the base model and the trainer and the sampler round alike.
  """
  if ab is None:
    return jnp.matmul(x, w.astype(x.dtype), preferred_element_type=jnp.float32).astype(x.dtype)
  ldt = jnp.dtype(lora_dtype)
  y = jnp.matmul(x, w.astype(x.dtype), preferred_element_type=jnp.float32)
  xa = jnp.matmul(x.astype(ldt), ab["a"].astype(ldt), preferred_element_type=ldt)
  return (y.astype(ldt) + scale * jnp.matmul(xa, ab["b"].astype(ldt), preferred_element_type=ldt)).astype(x.dtype)


def layer_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Per-layer leaf shapes (without the leading n_layers axis)."""
  c = config
  q_dim, kv_dim = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
  shapes = {
      "attn_norm": (c.d_model,), "wq": (c.d_model, q_dim), "wk": (c.d_model, kv_dim), "wv": (c.d_model, kv_dim),
      "wo": (q_dim, c.d_model), "mlp_norm": (c.d_model,), "w_gate": (c.d_model, c.d_ff),
      "w_up": (c.d_model, c.d_ff), "w_down": (c.d_ff, c.d_model),
  }
  if c.qkv_bias:
    shapes.update(bq=(q_dim,), bk=(kv_dim,), bv=(kv_dim,))
  if c.qk_norm:
    shapes.update(q_norm=(c.head_dim,), k_norm=(c.head_dim,))
  return shapes


def param_shapes(config: ModelConfig) -> Params:
  """The full params layout as a pytree of shape tuples."""
  c = config
  shapes: Params = {"embed": (c.vocab_size, c.d_model), "final_norm": (c.d_model,),
                    "layers": {k: (c.n_layers, *s) for k, s in layer_shapes(c).items()}}
  if not c.tie_embeddings:
    shapes["lm_head"] = (c.d_model, c.vocab_size)
  return shapes


def init_params(config: ModelConfig, key: jax.Array) -> Params:
  """Random params (norms at 1, biases small) for tests and tiny runs."""
  shapes = param_shapes(config)
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda s: isinstance(s, tuple))
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree.flatten_with_path(
      shapes, is_leaf=lambda s: isinstance(s, tuple))[0]]
  keys = jax.random.split(key, len(leaves))
  dtype = jnp.dtype(config.param_dtype)
  out = []
  for path, shape, k in zip(paths, leaves, keys):
    if "norm" in path:
      out.append(jnp.ones(shape, dtype))
    elif path.endswith(("'bq']", "'bk']", "'bv']")):
      out.append((0.02 * jax.random.normal(k, shape)).astype(dtype))
    else:
      fan_in = shape[-2] if "embed" not in path else shape[-1]
      out.append((jax.random.normal(k, shape) / math.sqrt(fan_in)).astype(dtype))
  return jax.tree.unflatten(treedef, out)


def init_kv_cache(config: ModelConfig, batch: int, max_len: int, dtype: str | None = None) -> KVCache:
  """An empty cache: slot s holds the key/value of position s; `pos` is -1 where a slot is empty."""
  shape = (config.n_layers, batch, max_len, config.n_kv_heads, config.head_dim)
  dt = jnp.dtype(dtype or config.compute_dtype)
  return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt), "pos": jnp.full((batch, max_len), -1, jnp.int32)}


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
  """Inverse frequencies, with llama3 frequency-dependent scaling when the config asks for it."""
  hd = config.head_dim
  inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
  scaling = config.rope_scaling_dict
  if not scaling:
    return inv_freq.astype(np.float32)
  kind = scaling.get("rope_type", scaling.get("type"))
  if kind in ("default", None):
    return inv_freq.astype(np.float32)
  if kind != "llama3":
    raise ValueError(f"ModelConfig.rope_scaling: unsupported rope_type {kind!r} (supported: llama3, default)")
  factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
  old_len = scaling["original_max_position_embeddings"]
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def _rope(x_BxTxHxD: jax.Array, positions_BxT: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Half-split (NeoX/HF) rotary embedding."""
  angles = positions_BxT[..., None].astype(jnp.float32) * inv_freq  # [B, T, hd/2]
  cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
  x = x_BxTxHxD.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxHxD.dtype)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (normed * weight.astype(jnp.float32)).astype(x.dtype)


def _attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, q_pos_BxT, k_pos_BxS, config: ModelConfig,
               segments_BxT: jax.Array | None = None, parents_BxT: jax.Array | None = None) -> jax.Array:
  """Grouped-query attention as plain batched matmuls over (batch x kv-head): about 2x faster than a 5-D einsum
  on CPU, forward and backward, because XLA then needs no transposes inside the matmuls.

  `segments_BxT` (training on packed rows, no cache): a query sees only keys of its own segment, so rows packed
  into one sequence do not attend to each other (their positions restart at 0, which keeps causality per row).
  `parents_BxT` (optional, 0 = none): a query also sees the keys of its parent segment, a prompt prefix that rows
  share and is computed once (rl/batch.py:pack); its positions precede the row's, so causality still holds."""
  b, t, h, d = q_BxTxHxD.shape
  s, kv = k_BxSxKxD.shape[1], config.n_kv_heads
  g = h // kv
  q = q_BxTxHxD.reshape(b, t, kv, g, d).transpose(0, 2, 3, 1, 4).reshape(b * kv, g * t, d)
  k = k_BxSxKxD.transpose(0, 2, 3, 1).reshape(b * kv, d, s)
  v = v_BxSxKxD.transpose(0, 2, 1, 3).reshape(b * kv, s, d)
  scores = jnp.matmul(q, k, preferred_element_type=jnp.float32).reshape(b, kv, g, t, s) / math.sqrt(d)
  visible_BxTxS = (k_pos_BxS[:, None, :] >= 0) & (k_pos_BxS[:, None, :] <= q_pos_BxT[:, :, None])
  if segments_BxT is not None:
    same_BxTxS = segments_BxT[:, None, :] == segments_BxT[:, :, None]
    if parents_BxT is not None:
      same_BxTxS = same_BxTxS | (segments_BxT[:, None, :] == parents_BxT[:, :, None])
    visible_BxTxS = visible_BxTxS & same_BxTxS
  scores = jnp.where(visible_BxTxS[:, None, None], scores, _NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b * kv, g * t, s)
  out = jnp.matmul(probs, v).reshape(b, kv, g, t, d).transpose(0, 3, 1, 2, 4)
  return out.reshape(b, t, h * d)


def _write_cache(cache_LxBxSxKxD, layer, new_BxTxKxD, slots_BxT):
  """Scatter new keys/values into their slots; out-of-range slots (padding) are dropped."""
  b = new_BxTxKxD.shape[0]
  rows = jnp.arange(b)[:, None]
  return cache_LxBxSxKxD.at[layer, rows, slots_BxT].set(new_BxTxKxD.astype(cache_LxBxSxKxD.dtype), mode="drop")


def forward_hidden(params: Params, tokens_BxT: jax.Array, positions_BxT: jax.Array,
                   kv_cache: KVCache | None = None, *, config: ModelConfig, remat: bool = False,
                   lora: Adapters | None = None, segments_BxT: jax.Array | None = None,
                   parents_BxT: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
  """Final-normed hidden states [B, T, D] and the updated cache. Training computes log-probs from these in chunks.

  `lora` adds adapters on their own path (see `dense`); the frozen base is read as stored, never merged or copied.
  `segments_BxT`, `parents_BxT`: packed rows and their shared prefixes (see `_attention`); training only, not
  with a cache.
  """
  if segments_BxT is not None and kv_cache is not None:
    raise ValueError("forward_hidden: segments_BxT (packed training rows) cannot be used with a KV cache")
  c = config
  cdt = jnp.dtype(c.compute_dtype)
  inv_freq = rope_inv_freq(c)
  b, t = tokens_BxT.shape
  x = jnp.take(params["embed"], tokens_BxT, axis=0).astype(cdt)

  if kv_cache is not None:
    s = kv_cache["pos"].shape[1]
    slots_BxT = jnp.where(positions_BxT >= 0, positions_BxT, s)
    k_pos = kv_cache["pos"].at[jnp.arange(b)[:, None], slots_BxT].set(positions_BxT, mode="drop")
  else:
    slots_BxT, k_pos = None, positions_BxT

  scale, ldt = (lora.scale, lora.dtype) if lora is not None else (1.0, "float32")

  def layer_fn(carry, layer_in):
    x, cache_k, cache_v = carry
    lp, ab, idx = layer_in
    w = lambda name: lp[name].astype(cdt)
    mm = lambda x, name: dense(x, lp[name], ab.get(name), scale, ldt)
    h = rms_norm(x, lp["attn_norm"], c.rms_eps)
    q, k, v = mm(h, "wq"), mm(h, "wk"), mm(h, "wv")
    if c.qkv_bias:
      q, k, v = q + w("bq"), k + w("bk"), v + w("bv")
    q = q.reshape(b, t, c.n_heads, c.head_dim)
    k = k.reshape(b, t, c.n_kv_heads, c.head_dim)
    v = v.reshape(b, t, c.n_kv_heads, c.head_dim)
    if c.qk_norm:
      q, k = rms_norm(q, lp["q_norm"], c.rms_eps), rms_norm(k, lp["k_norm"], c.rms_eps)
    q, k = _rope(q, positions_BxT, inv_freq), _rope(k, positions_BxT, inv_freq)
    if cache_k is not None:
      cache_k = _write_cache(cache_k, idx, k, slots_BxT)
      cache_v = _write_cache(cache_v, idx, v, slots_BxT)
      k_all, v_all = cache_k[idx], cache_v[idx]
    else:
      k_all, v_all = k, v
    attn = _attention(q, k_all, v_all, positions_BxT, k_pos, c, segments_BxT, parents_BxT)
    x = x + mm(attn, "wo")
    h = rms_norm(x, lp["mlp_norm"], c.rms_eps)
    x = x + mm(jax.nn.silu(mm(h, "w_gate")) * mm(h, "w_up"), "w_down")
    return (x, cache_k, cache_v), None

  if remat:
    layer_fn = jax.checkpoint(layer_fn, policy=jax.checkpoint_policies.nothing_saveable)
  init = (x, kv_cache["k"] if kv_cache else None, kv_cache["v"] if kv_cache else None)
  adapters = lora.params if lora is not None else {}
  (x, cache_k, cache_v), _ = jax.lax.scan(layer_fn, init, (params["layers"], adapters, jnp.arange(c.n_layers)))
  x = rms_norm(x, params["final_norm"], c.rms_eps)
  new_cache = {"k": cache_k, "v": cache_v, "pos": k_pos} if kv_cache is not None else None
  return x, new_cache


def unembed_matrix(params: Params, config: ModelConfig) -> jax.Array:
  """The [D, V] output projection (the transposed embedding when tied)."""
  return params["embed"].T if config.tie_embeddings else params["lm_head"]


def apply(params: Params, tokens_BxT: jax.Array, positions_BxT: jax.Array, kv_cache: KVCache | None = None, *,
          config: ModelConfig, lora: Adapters | None = None) -> tuple[jax.Array, KVCache | None]:
  """Logits [B, T, V] in float32 and the updated cache. Pure: no hidden state."""
  h, kv_cache = forward_hidden(params, tokens_BxT, positions_BxT, kv_cache, config=config, lora=lora)
  logits = jnp.dot(h, unembed_matrix(params, config).astype(h.dtype), preferred_element_type=jnp.float32)
  return logits, kv_cache


def cast_params(params: Params, dtype: str) -> Params:
  return jax.tree.map(lambda x: x.astype(dtype), params)
