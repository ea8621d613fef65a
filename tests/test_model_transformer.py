"""The decoder itself: config checks, dtypes, padding semantics and depth-independent programs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deliberate.model import transformer
from deliberate.model.config import ModelConfig

TINY = ModelConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=96)


@pytest.mark.parametrize("kw, match", [({"arch": "gpt2"}, "arch"), ({"n_heads": 3}, "n_kv_heads"),
                                       ({"compute_dtype": "float16"}, "compute_dtype")])
def test_bad_config_fields_are_named(kw, match):
  with pytest.raises(ValueError, match=match):
    TINY.replace(**kw)


def test_config_round_trips_through_a_dict():
  c = TINY.replace(rope_scaling=(("factor", 8.0), ("rope_type", "llama3")), eos_ids=(1, 2))
  assert ModelConfig.from_dict(c.to_dict()) == c


def test_bf16_params_and_compute_stay_close_to_f32():
  params = transformer.init_params(TINY, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 24), 0, TINY.vocab_size)
  pos = jnp.broadcast_to(jnp.arange(24), (2, 24))
  ref, _ = transformer.apply(params, tokens, pos, config=TINY)
  cfg16 = TINY.replace(param_dtype="bfloat16", compute_dtype="bfloat16")
  p16 = transformer.cast_params(params, "bfloat16")
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p16))
  out, _ = transformer.apply(p16, tokens, pos, config=cfg16)
  assert out.dtype == jnp.float32  # logits stay f32 for sampling and log-probs
  np.testing.assert_allclose(out, ref, atol=0.1 * float(jnp.abs(ref).max()))


def test_padding_positions_do_not_change_real_tokens():
  params = transformer.init_params(TINY, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (1, 10), 0, TINY.vocab_size)
  pos = jnp.arange(10)[None]
  ref, _ = transformer.apply(params, tokens, pos, config=TINY)
  padded = jnp.concatenate([tokens, jnp.zeros((1, 6), jnp.int32)], 1)
  pad_pos = jnp.concatenate([pos, -jnp.ones((1, 6), jnp.int32)], 1)
  out, _ = transformer.apply(params, padded, pad_pos, config=TINY)
  np.testing.assert_allclose(out[:, :10], ref, atol=1e-5)
  assert np.all(np.isfinite(np.asarray(out)))  # fully masked pad queries give finite junk, never NaN


def test_program_size_does_not_grow_with_depth():
  def ops(n_layers):
    cfg = TINY.replace(n_layers=n_layers)
    params = jax.eval_shape(lambda: transformer.init_params(cfg, jax.random.key(0)))
    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    return str(jax.make_jaxpr(lambda p, t: transformer.apply(p, t, t, config=cfg))(params, tokens)).count("\n")
  assert ops(2) == ops(24)  # layers are scanned, not unrolled
