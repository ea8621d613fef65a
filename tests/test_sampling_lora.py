"""Sampling with LoRA adapters on their own path, from the trainer's sharded params, in either weight layout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from deliberate.model import transformer
from deliberate.model.config import ModelConfig
from deliberate.rl import lora
from deliberate.rl.step import fsdp_shardings
from deliberate.sampling.engine import Request, SamplingEngine, check_layout
from deliberate.sampling.sampler import SamplingParams

CFG = ModelConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=8, n_kv_heads=4, head_dim=8, d_ff=128)
LCFG = lora.LoraConfig(rank=4, alpha=8.0)
GREEDY = SamplingParams(greedy=True, max_new_tokens=6)
SP = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=8)


@pytest.fixture(scope="module")
def policy():
  base = transformer.init_params(CFG, jax.random.key(0))
  ad = lora.init_lora(base, LCFG, jax.random.key(1))
  for name, k in zip(ad, jax.random.split(jax.random.key(2), len(ad))):  # trained adapters: a visible change
    ad[name]["b"] = 0.3 * jax.random.normal(k, ad[name]["b"].shape)
  return base, lora.adapters(ad, LCFG)


def _prompts(n, seed=0):
  rng = np.random.RandomState(seed)
  return [rng.randint(3, CFG.vocab_size, size=rng.randint(3, 20)).tolist() for _ in range(n)]


@jax.jit
def _last_logits(base, adapters, ids, pos):
  return transformer.apply(base, ids, pos, config=CFG, lora=adapters)[0]


def _naive_greedy(base, adapters, prompt, n):
  """The trainer's forward (transformer.apply with the adapters), no cache, one token at a time."""
  ids, lps = list(prompt), []
  for _ in range(n):
    pad = 64 - len(ids)
    logits = _last_logits(base, adapters, jnp.asarray([ids + [0] * pad]),
                          jnp.asarray([list(range(len(ids))) + [-1] * pad]))[0, len(ids) - 1]
    ids.append(int(jnp.argmax(logits)))
    lps.append(float(jax.nn.log_softmax(logits)[ids[-1]]))
  return ids[len(prompt):], lps


@pytest.mark.parametrize("layout", ["split", "stacked"])
def test_greedy_with_adapters_follows_the_trainers_forward(policy, layout):
  base, adapters = policy
  eng = SamplingEngine(base, CFG, layout=layout)
  eng.set_params(base, lora=adapters)
  prompts = _prompts(3, seed=1)
  out = eng.generate([Request(p, i) for i, p in enumerate(prompts)], GREEDY, seed=0)
  plain = SamplingEngine(base, CFG, layout=layout).generate([Request(prompts[0], 0)], GREEDY, seed=0)[0]
  assert plain.tokens != out[0].tokens  # the adapters change the policy
  for p, o in zip(prompts, out):
    tokens, lps = _naive_greedy(base, adapters, p, GREEDY.max_new_tokens)
    assert o.tokens == tokens
    np.testing.assert_allclose(o.logprobs, lps, atol=1e-4)


def test_set_params_lays_out_the_base_once_and_swaps_adapters(policy):
  base, adapters = policy
  eng = SamplingEngine(base, CFG, layout="split", lora=adapters)
  laid_out = eng._decode_params
  layer_bytes = sum(x.nbytes for x in jax.tree.leaves(base["layers"]))
  assert eng.layout_bytes == layer_bytes  # the explicit switch: one copy of the layer weights
  moved = lora.adapters(jax.tree.map(lambda x: 2 * x, adapters.params), LCFG)
  eng.set_params(base, lora=moved)
  assert eng._decode_params is laid_out and eng.lora is not moved  # its own copy: a train step may donate `moved`
  jax.tree.map(np.testing.assert_array_equal, eng.lora.params, moved.params)
  eng.params = base  # the old spelling: the same base, no adapters
  assert eng._decode_params is laid_out and eng.lora is None
  with pytest.raises(ValueError, match="layout"):
    SamplingEngine(base, CFG, layout="rows")


def test_sampling_from_the_trainers_fsdp_shards_gives_the_tokens_of_one_device(policy):
  """A (data=2, fsdp=4) mesh: rows over data, weights as the sharded step placed them, never copied or gathered
  into a replica outside the program."""
  base, adapters = policy
  mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto))
  sharded = jax.device_put(base, fsdp_shardings(base, mesh))
  assert sharded["layers"]["w_gate"].sharding.spec == P(None, None, "fsdp")
  sharded_lora = lora.adapters(jax.device_put(adapters.params, fsdp_shardings(adapters.params, mesh)), LCFG)
  eng = SamplingEngine(sharded, CFG, mesh=mesh, row_axes=("data",), lora=sharded_lora)
  assert eng.layout == "stacked" and eng.layout_bytes == 0 and eng.num_devices == 2
  for got, given in zip(jax.tree.leaves(eng._decode_params), jax.tree.leaves(sharded)):
    assert got is given  # the frozen base is shared, not copied per call or per step
  reqs = [Request(p, i) for i, p in enumerate(_prompts(5, seed=2))]
  want = SamplingEngine(base, CFG, lora=adapters).generate(reqs, SP, seed=3)
  got = eng.generate(reqs, SP, seed=3)
  assert eng.last_stats["batch"] == 8
  assert [o.tokens for o in got] == [o.tokens for o in want]
  np.testing.assert_allclose(np.concatenate([o.logprobs for o in got]),
                             np.concatenate([o.logprobs for o in want]), atol=1e-4)


def test_a_mesh_that_does_not_divide_the_kv_heads_is_refused_before_any_weight():
  with pytest.raises(ValueError, match=r"config.rl.mesh_fsdp: 8 does not divide the model's n_kv_heads = 4"):
    check_layout(CFG, {"data": 1, "fsdp": 8}, ("data",), {"fsdp": "config.rl.mesh_fsdp"})
  check_layout(CFG, {"data": 8, "fsdp": 1}, ("data",))
  check_layout(CFG, {"data": 2, "fsdp": 4}, ("data",))
