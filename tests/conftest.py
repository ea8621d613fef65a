"""Eight host devices, set before JAX is imported anywhere, so pmap and sharding are exercised on CPU."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402  (after XLA_FLAGS on purpose)

_TINY_TEXTS = [
    "We agree to split the budget and review it in three months.",
    "I propose a pilot program: the clinic pays half, the city pays half.",
    "That is unfair to the night shift; I can accept it if they get two extra days off.",
    "Let us share the information openly with every family before deciding.",
    "I cannot accept cutting quality, but I can concede on the timeline.",
]


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
  """A sentencepiece tokenizer with ChatML markers, trained in about a second."""
  from deliberate.model.tokenizer import train_sentencepiece
  return train_sentencepiece(_TINY_TEXTS * 40, str(tmp_path_factory.mktemp("sp")), vocab_size=320)


@pytest.fixture(scope="session")
def tiny_policy(tiny_tokenizer):
  """(params, config) of a random 2-layer Llama sized to the tiny tokenizer."""
  import jax

  from deliberate.model import transformer
  from deliberate.model.config import ModelConfig
  config = ModelConfig(vocab_size=len(tiny_tokenizer), d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                       head_dim=16, d_ff=128, max_seq_len=1024, eos_ids=(tiny_tokenizer.eos_token_id,))
  return transformer.init_params(config, jax.random.key(0)), config


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drop each test module's compiled programs when it ends. Every live XLA:CPU executable holds a few memory maps
  of JIT code, and the whole suite in one process would pass the kernel's vm.max_map_count (65530 by default):
  XLA's compiler then segfaults when its next mmap fails. Clearing JAX's caches and collecting the module's
  trainers and engines keeps the count near one module's worth; the check below fails readably before that."""
  yield
  import gc

  import jax
  jax.clear_caches()
  gc.collect()
  try:  # Linux only
    with open("/proc/sys/vm/max_map_count") as limit_file, open("/proc/self/maps") as maps_file:
      limit, maps = int(limit_file.read()), sum(1 for _ in maps_file)
  except OSError:
    return
  assert maps < 0.8 * limit, (
      f"this test process holds {maps} memory maps (vm.max_map_count is {limit}) after a module's programs were "
      "released: something keeps compiled executables alive (a global trainer or engine?)")
