"""bench/memory.py on a tiny config, so that the analysis cannot rot: every program compiles from abstract shapes,
its numbers are sane, the old merged-f32 LoRA costs more, and a bad mesh fails naming the field."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import memory  # noqa: E402

from deliberate.config import base_config  # noqa: E402

COMPILED = ("sample_turn", "sample_final", "train_step")                  # memory analysis per device
COSTED = ("prefill_turn", "decode_turn", "prefill_final", "decode_final")  # cost analysis, whole mesh


def _tiny():
  c = base_config()
  c.model.name = "tiny"
  c.model.tiny.update(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128)
  c.negotiation.group_size, c.negotiation.max_turns = 2, 2
  c.negotiation.max_turn_tokens = c.negotiation.max_completion_tokens = 8
  c.data.prompts_per_step = 2
  c.rl.lora_rank = 4
  return c


@pytest.fixture(scope="module")
def after():
  return memory.analyze(_tiny(), 4, 2, opening=40)


def test_every_program_compiles_with_sane_numbers(after):
  r = after
  assert r["mesh"] == {"data": 4, "fsdp": 2}
  for p in COMPILED:
    assert r[p]["peak"] > 0 and r[p]["args"] > 0, p
  for p in COSTED:
    assert r[p]["flops"] > 0 and r[p]["bytes"] > 0, p
  assert r["decode_turn"]["flops"] < r["prefill_turn"]["flops"]  # one token against a whole prompt
  # A decode step reads every weight once and does about 2 FLOPs per weight per row: the costs count all layers
  # (unrolled), not one loop body.
  rows, params = r["shapes"]["rows"], r["model_params"]
  assert r["decode_turn"]["bytes"] >= r["weight_bytes"]
  assert 2 * params * rows <= r["decode_turn"]["flops"] < 4 * params * rows
  for target in memory.TARGETS:
    assert 0 < r["roofline"][target]["step_s"] < 1.0
  text = memory.table(r, "tiny")
  assert "train_step" in text and "v5e(16)" in text


def test_shared_prefixes_are_counted_at_their_cache_bound(after):
  """config.sampling_share_prefixes (the default, as in `after`): a row's cache holds a prefix bucket before its
  own part's, so the sampler's peak is above that of whole prompts."""
  c = _tiny()
  c.sampling_share_prefixes = False
  whole = memory.analyze(c, 4, 2, opening=40, costs=False)
  for p in ("sample_turn", "sample_final"):
    assert after[p]["peak"] > whole[p]["peak"], p


def test_the_merged_float32_lora_of_before_costs_more_memory(after):
  before = memory.analyze(_tiny(), 4, 2, before=True, opening=40)
  assert before["sample_turn"]["args"] > after["sample_turn"]["args"]  # an f32 replica against bf16/f32 shards


def test_a_mesh_that_does_not_divide_the_heads_fails_naming_the_field():
  with pytest.raises(ValueError, match="config.rl.mesh_fsdp: 8 does not divide the model's n_kv_heads = 2"):
    memory.analyze(_tiny(), 1, 8, opening=40)


def _weightless_hf_dir(tmp_path):
  """An HF directory with config.json only: any attempt to load weights from it fails."""
  d = tmp_path / "llama-no-weights"
  d.mkdir()
  (d / "config.json").write_text(json.dumps({
      "architectures": ["LlamaForCausalLM"], "vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 2,
      "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
      "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}))
  return str(d)


def test_a_run_that_cannot_fit_fails_before_any_weight_is_loaded(tmp_path):
  """The trainer runs the analysis before loading: with a 1 MiB limit the train step cannot fit, and the error names
  the field to change and the bytes; the checkpoint has no weights, so reaching the loader would fail otherwise."""
  from deliberate import trainer
  c = _tiny()
  c.model.name = _weightless_hf_dir(tmp_path)
  c.judge.embedded = True
  c.memory_limit_gib = 1 / 1024
  with pytest.raises(ValueError, match=r"config\.rl\.\w+.*needs [\d.]+ GiB a device.*over the limit of 0\.00 GiB"):
    trainer.Trainer(c, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_a_mesh_that_does_not_divide_the_heads_fails_before_loading_even_without_a_limit(tmp_path):
  from deliberate import trainer
  c = _tiny()
  c.model.name, c.judge.embedded = _weightless_hf_dir(tmp_path), True
  c.rl.step, c.rl.mesh_fsdp = "sharded", 4   # 4 does not divide the 2 kv heads
  with pytest.raises(ValueError, match=r"config.rl.mesh_fsdp: 4 does not divide the model's n_kv_heads = 2"):
    trainer.Trainer(c, str(tmp_path / "run"))


def test_the_check_passes_a_run_that_fits_and_skips_without_a_limit(tmp_path):
  from deliberate import memory as lib
  c = _tiny()
  c.model.name = _weightless_hf_dir(tmp_path)
  assert lib.check_fits(c) is None                                 # CPU reports no limit, none configured
  r = lib.check_fits(c, limit_bytes=8 * 2 ** 30)
  assert r["mesh"] == {"data": 8, "fsdp": 1} and r["train_step"]["peak"] < 8 * 2 ** 30
