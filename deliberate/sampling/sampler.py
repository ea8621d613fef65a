"""The jitted sampler: prefill unique prompts once, broadcast their cache, then decode under a `lax.while_loop`.

Every row draws its randomness from `fold_in(fold_in(seed_key, row_id), step)`, so a row's tokens depend only on its
own id and prompt, never on which rows share its batch, how the batch is padded, or how it is sharded.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from deliberate.model import transformer
from deliberate.model.config import ModelConfig

STOP_NONE, STOP_EOS, STOP_LENGTH = 0, 1, 2  # per-row stop reasons


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """Decoding options. Hashable: a change compiles a new program."""
  temperature: float = 0.7
  top_p: float = 1.0
  top_k: int = 0              # 0: no top-k cut
  greedy: bool = False
  max_new_tokens: int = 128
  candidates: int = 256       # top-p looks at the top `candidates` tokens first, falling back to a full sort
                              # only in the rare step where they hold less than top_p of the mass (exact either way)


class SampleOutput:
  """Sampled ids [B, N] (padding after each row's length), their log-probs, lengths and stop reasons.

  `logprobs` are under the tempered policy, log softmax(logits / T) over the full vocabulary: what a training step
  recomputes for the importance ratio. `sampling_logprobs` are under the truncated (top-k/top-p) distribution the
  token was actually drawn from.
  """

  def __init__(self, tokens, logprobs, sampling_logprobs, lengths, stop_reason):
    self.tokens, self.logprobs, self.sampling_logprobs = tokens, logprobs, sampling_logprobs
    self.lengths, self.stop_reason = lengths, stop_reason


jax.tree_util.register_pytree_node(
    SampleOutput, lambda o: ((o.tokens, o.logprobs, o.sampling_logprobs, o.lengths, o.stop_reason), None),
    lambda _, c: SampleOutput(*c))


def _inverse_cdf(weights_BxK: jax.Array, u_B: jax.Array) -> jax.Array:
  """Index drawn in proportion to non-negative weights, from one uniform per row (cheaper than Gumbel noise)."""
  cdf = jnp.cumsum(weights_BxK, axis=-1)
  idx = jnp.sum(cdf < u_B[:, None] * cdf[:, -1:], axis=-1)
  return jnp.minimum(idx, weights_BxK.shape[-1] - 1)


def _choose(logits_BxV: jax.Array, keys_B: jax.Array, sp: SamplingParams):
  """One token per row; returns (token, tempered-policy log-prob, sampling log-prob)."""
  logits_BxV = logits_BxV.astype(jnp.float32)
  if sp.greedy:
    token = jnp.argmax(logits_BxV, axis=-1)
    logp = jax.nn.log_softmax(logits_BxV)
    lp = jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]
    return token, lp, jnp.zeros_like(lp)
  scaled = logits_BxV / sp.temperature
  log_z = jax.nn.logsumexp(scaled, axis=-1, keepdims=True)
  u_B = jax.vmap(lambda k: jax.random.uniform(k))(keys_B)
  if sp.top_p >= 1.0 and sp.top_k == 0:
    token = _inverse_cdf(jnp.exp(scaled - log_z), u_B)
    lp = jnp.take_along_axis(scaled - log_z, token[:, None], axis=-1)[:, 0]
    return token, lp, lp

  def truncated(k: int):
    vals, idx = jax.lax.top_k(scaled, k)                      # sorted, descending
    probs = jnp.exp(vals - log_z)
    keep = (jnp.cumsum(probs, axis=-1) - probs) < sp.top_p    # the nucleus, always >= 1 token
    if sp.top_k:
      keep &= jnp.arange(k) < sp.top_k
    pick = _inverse_cdf(jnp.where(keep, probs, 0.0), u_B)
    token = jnp.take_along_axis(idx, pick[:, None], axis=-1)[:, 0]
    val = jnp.take_along_axis(vals, pick[:, None], axis=-1)[:, 0]
    kept_log_mass = jax.nn.logsumexp(jnp.where(keep, vals, -jnp.inf), axis=-1)
    covered = jnp.sum(probs, axis=-1) >= sp.top_p
    return token, val - log_z[:, 0], val - kept_log_mass, covered

  vocab = scaled.shape[-1]
  k = min(sp.top_k, vocab) if sp.top_k else min(sp.candidates, vocab)
  token, lp, slp, covered = truncated(k)
  if not sp.top_k and k < vocab:  # rare exact fallback when the candidates miss part of the nucleus
    token, lp, slp = jax.lax.cond(jnp.all(covered), lambda: (token, lp, slp), lambda: truncated(vocab)[:3])
  return token, lp, slp


def sample(params, prompts_UxP: jax.Array, prompt_lens_U: jax.Array, src_B: jax.Array, row_ids_B: jax.Array,
           active_B: jax.Array, seed: jax.Array, stop_ids: jax.Array, *, config: ModelConfig,
           sp: SamplingParams) -> SampleOutput:
  """Prefill U unique prompts, give row b the cache of prompt src_B[b], and decode every active row.

  Pure and shape-static: the engine jits it once per (U, P, B) bucket.
  """
  u, p = prompts_UxP.shape
  b = src_B.shape[0]
  n = sp.max_new_tokens
  positions_UxP = jnp.where(jnp.arange(p)[None] < prompt_lens_U[:, None], jnp.arange(p)[None], -1)
  cache = transformer.init_kv_cache(config, u, p + n)
  hidden_UxPxD, cache = transformer.forward_hidden(params, prompts_UxP, positions_UxP, cache, config=config)
  last_UxD = jnp.take_along_axis(hidden_UxPxD, (prompt_lens_U - 1)[:, None, None], axis=1)[:, 0]
  unembed = transformer.unembed_matrix(params, config).astype(last_UxD.dtype)
  logits_BxV = jnp.dot(last_UxD, unembed, preferred_element_type=jnp.float32)[src_B]
  cache = {"k": cache["k"][:, src_B], "v": cache["v"][:, src_B], "pos": cache["pos"][src_B]}
  row_keys_B = jax.vmap(lambda r: jax.random.fold_in(seed, r))(row_ids_B)

  def cond(state):
    step, _, _, done_B, *_ = state
    return (step < n) & ~jnp.all(done_B)

  def body(state):
    step, cache, logits_BxV, done_B, tokens, logprobs, slogprobs, lengths = state
    keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(row_keys_B)
    token_B, lp_B, slp_B = _choose(logits_BxV, keys, sp)
    token_B = jnp.where(done_B, config.pad_id, token_B).astype(jnp.int32)
    tokens = tokens.at[:, step].set(token_B)
    logprobs = logprobs.at[:, step].set(jnp.where(done_B, 0.0, lp_B))
    slogprobs = slogprobs.at[:, step].set(jnp.where(done_B, 0.0, slp_B))
    lengths = lengths + (~done_B).astype(jnp.int32)
    done_B = done_B | jnp.isin(token_B, stop_ids)
    pos_B = jnp.where(done_B, -1, prompt_lens_B + step)  # finished rows write nothing
    logits, cache = transformer.apply(params, token_B[:, None], pos_B[:, None], cache, config=config)
    return step + 1, cache, logits[:, 0], done_B, tokens, logprobs, slogprobs, lengths

  prompt_lens_B = prompt_lens_U[src_B]
  zeros_f = jnp.zeros((b, n), jnp.float32)
  init = (jnp.int32(0), cache, logits_BxV, ~active_B, jnp.full((b, n), config.pad_id, jnp.int32), zeros_f, zeros_f,
          jnp.zeros((b,), jnp.int32))
  _, _, _, done_B, tokens, logprobs, slogprobs, lengths = jax.lax.while_loop(cond, body, init)
  last_B = jnp.take_along_axis(tokens, jnp.maximum(lengths - 1, 0)[:, None], axis=1)[:, 0]
  stopped = (lengths > 0) & jnp.isin(last_B, stop_ids)
  reason = jnp.where(~active_B, STOP_NONE, jnp.where(stopped, STOP_EOS, STOP_LENGTH))
  return SampleOutput(tokens, logprobs, slogprobs, lengths, reason)


@functools.cache
def jitted_sample(config: ModelConfig, sp: SamplingParams, shardings=None):
  """One jitted program per (config, sampling params, shardings); jax caches shapes underneath."""
  fn = functools.partial(sample, config=config, sp=sp)
  if shardings is None:
    return jax.jit(fn)
  return jax.jit(fn, in_shardings=shardings[0], out_shardings=shardings[1])
