"""launch/evaluate.py end to end on tiny policies (a base model and a LoRA run restored from a real orbax checkpoint),
with scripted training and strong judges behind two real local servers; then a comparison of stored outputs."""
import json
import os
import re
import subprocess
import sys

import jax
import optax
import pytest

from configs import eval as eval_config
from deliberate import checkpointing
from deliberate.eval import suite
from deliberate.judge import rubrics, serve
from deliberate.model import transformer
from deliberate.model.config import ModelConfig
from deliberate.negotiation.records import read_records
from deliberate.rl import lora

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FENCED = {k: re.compile(rf"<<<BEGIN {k} \w+>>>\n(.*?)\n<<<END {k}", re.S)
           for k in ("COMPLETION", "RESPONSE_A", "RESPONSE_B")}


def training_judge(messages_lists, max_tokens, temperature):
  """Agreement at the first turn; CA score = completion length mod 6."""
  out = []
  for m in messages_lists:
    if rubrics.CA_VERSION in m[0]["content"]:
      out.append(f"Score: {len(_FENCED['COMPLETION'].search(m[-1]['content']).group(1)) % 6}")
    else:
      out.append("Verdict: yes")
  return out


def strong_judge(messages_lists, max_tokens, temperature):
  """Prefers the longer response (ties when equal); CA score = (completion length + 1) mod 6."""
  out = []
  for m in messages_lists:
    user = m[-1]["content"]
    if rubrics.CA_VERSION in m[0]["content"]:
      out.append(f"Score: {(len(_FENCED['COMPLETION'].search(user).group(1)) + 1) % 6}")
    else:
      a, b = (len(_FENCED[k].search(user).group(1)) for k in ("RESPONSE_A", "RESPONSE_B"))
      out.append("Winner: " + ("A" if a > b else "B" if b > a else "tie"))
  return out


@pytest.fixture(scope="module")
def servers():
  train, strong = serve.start_server("model", generate_fn=training_judge), serve.start_server(
      "model", generate_fn=strong_judge)
  yield train.url, strong.url
  train.stop()
  strong.stop()


def _lora_run(workdir):
  """A LoRA checkpoint for the tiny model, as the trainer saves it (adapters only; layer shapes need no vocab)."""
  tiny = suite.policy_lib.policy_config("tiny").model.tiny
  cfg = ModelConfig(vocab_size=16, d_model=tiny.d_model, n_layers=tiny.n_layers, n_heads=tiny.n_heads,
                    n_kv_heads=tiny.n_kv_heads, head_dim=tiny.d_model // tiny.n_heads, d_ff=tiny.d_ff)
  adapters = lora.init_lora(transformer.init_params(cfg, jax.random.key(1)), lora.LoraConfig(rank=4),
                            jax.random.key(2))
  adapters = jax.tree.map(lambda x: x + 0.05, adapters)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  ckpt.save(4, {"params": adapters, "opt_state": optax.adamw(1e-3).init(adapters)}, {"step": 4}, force=True)
  ckpt.close()


def _flags(run_dir, data_dir, train_url, strong_url):
  f = {"run": "negotiation,base", "comparisons": "negotiation:base", "cross_judge.policy": "negotiation",
       "cross_judge.quotas": "0:1,1:1,2:1,3:1,4:1,5:1", "num_conflict_tasks": 2, "num_open_questions": 2,
       "data_dir": data_dir, "sampling_sharded": False, "negotiation.max_turns": 2, "negotiation.max_turn_tokens": 6,
       "negotiation.max_completion_tokens": 6, "negotiation.overlap_judge": False, "open.max_tokens": 6,
       "policies.negotiation.workdir": run_dir, "policies.negotiation.lora_alpha": 8.0,
       "policies.single_agent.workdir": "", "decoding": "greedy", "repeats": 1, "capability.limit": 2,
       "capability.ifeval_max_tokens": 6, "capability.gpqa_max_tokens": 6, "capability.aime_max_tokens": 6,
       "capability.ifeval_path": "", "capability.gpqa_path": "", "capability.aime_path": ""}
  for p in ("negotiation", "base", "single_agent"):
    f.update({f"policies.{p}.model.name": "tiny", f"policies.{p}.model.param_dtype": "float32",
              f"policies.{p}.model.compute_dtype": "float32"})
  for j, url in (("judge", train_url), ("strong_judge", strong_url)):
    f.update({f"{j}.base_url": url, f"{j}.api_key_env": "", f"{j}.cache_path": "", f"{j}.model": f"scripted-{j}"})
  return f


def test_bad_configs_fail_before_loading():
  c = eval_config.get_config()
  c.run = "negotiation,sft"
  with pytest.raises(ValueError, match="policy 'sft'.*not defined under config.policies"):
    suite.validate(c)
  c = eval_config.get_config()
  c.comparisons = "negotiation-base"
  with pytest.raises(ValueError, match="config.comparisons: 'negotiation-base'"):
    suite.validate(c)
  c = eval_config.get_config()
  c.strong_judge.embedded, c.strong_judge.embedded_backend = True, "model"
  with pytest.raises(ValueError, match="config.strong_judge"):
    suite.validate(c)
  c = eval_config.get_config()
  c.decoding = "greedy,beam"
  with pytest.raises(ValueError, match="config.decoding"):
    suite.validate(c)
  c = eval_config.get_config()
  c.capability.benchmarks = "ifeval,mmlu"
  with pytest.raises(ValueError, match="config.capability.benchmarks"):
    suite.validate(c)


def test_grid_layout_and_missing_benchmark_file(tmp_path):
  c = eval_config.get_config()
  runs = suite.grid(c, "/w")
  assert [(cc.decoding, cc.seed, w) for cc, w in runs] == [
      ("greedy", 0, "/w/greedy/seed0"), ("greedy", 1, "/w/greedy/seed1"), ("greedy", 2, "/w/greedy/seed2"),
      ("sampled", 0, "/w/sampled/seed0"), ("sampled", 1, "/w/sampled/seed1"), ("sampled", 2, "/w/sampled/seed2")]
  assert c.decoding == "greedy,sampled" and c.seed == 0     # the grid copies, never edits, the config
  c.decoding, c.repeats = "sampled", 1
  assert suite.grid(c, "/w") == [(c, "/w")]
  c.capability.ifeval_path = str(tmp_path / "nope.jsonl")  # the paper config's files are read before any model
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    suite.run(c, str(tmp_path / "eval"))


def test_launch_end_to_end_then_compare_stored(tmp_path, servers):
  run_dir, work, data = str(tmp_path / "run"), str(tmp_path / "eval"), str(tmp_path / "tfds")
  _lora_run(run_dir)
  flags = _flags(run_dir, data, *servers)
  cmd = [sys.executable, os.path.join(ROOT, "launch", "evaluate.py"), "--config",
         os.path.join(ROOT, "configs", "eval.py"), "--workdir", work] + [f"--config.{k}={v}" for k, v in flags.items()]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache")))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "negotiation:base" in proc.stdout
  with open(os.path.join(work, "report.md")) as f:
    md = f.read()
  assert "| Comparison | Conflict, greedy | Conflict, sampled | Open-ended, greedy | Open-ended, sampled |" in md
  assert "| Benchmark | base (before), greedy | negotiation (after), greedy |" in md
  assert "shipped sample sets, NOT the benchmarks" in md and "scripted-strong_judge" in md
  with open(os.path.join(work, "summary.json")) as f:
    summary = json.load(f)
  neg, base = summary["policies"]["negotiation"], summary["policies"]["base"]
  assert neg["info"]["kind"] == "lora" and neg["info"]["rank"] == 4 and neg["info"]["step"] == 4
  assert base["info"]["kind"] == "base"
  assert neg["conflict"]["agreement_rate"] == 1.0 and neg["conflict"]["mean_rounds_to_agreement"] == 1.0
  assert neg["open"]["ca"]["n_scored"] == 2 and summary["strong_judge_model"] == "scripted-strong_judge"
  assert {k: v["source"] for k, v in neg["capability"].items()} == {"ifeval": "sample", "gpqa": "sample",
                                                                     "aime": "sample"}
  gpqa_recs = list(read_records(os.path.join(work, "negotiation", "capability_gpqa.jsonl")))
  assert len(gpqa_recs) == 2 and neg["capability"]["gpqa"]["loglik_accuracy"] == 50.0 * sum(
      r["loglik_correct"] for r in gpqa_recs)
  conflict = {p: list(read_records(os.path.join(work, p, "conflict.jsonl"))) for p in ("negotiation", "base")}
  opens = {p: list(read_records(os.path.join(work, p, "open.jsonl"))) for p in ("negotiation", "base")}
  assert [r["score"] for r in conflict["base"]] == [len(r["completion"]) % 6 for r in conflict["base"]]
  assert conflict["negotiation"][0]["turns"][0]["ids"] != conflict["base"][0]["turns"][0]["ids"]  # LoRA applied

  def expected(a_texts, b_texts):
    wins = sum(len(a) > len(b) for a, b in zip(a_texts, b_texts) if a and b)
    losses = sum(len(a) < len(b) for a, b in zip(a_texts, b_texts) if a and b)
    return wins, losses

  result = summary["comparisons"]["negotiation:base"]
  for name, (a, b) in {"ca_conflict": [[r["completion"] for r in conflict[p]] for p in ("negotiation", "base")],
                       "resolution": [[r["completion"] for r in conflict[p]] for p in ("negotiation", "base")],
                       "ca_open": [[r["text"] for r in opens[p]] for p in ("negotiation", "base")]}.items():
    assert (result[name]["wins"], result[name]["losses"]) == expected(a, b), name
    assert result[name]["dropped_inconsistent"] == 0
  cross = summary["cross_judge"]
  assert sum(cross["items_by_level"].values()) + sum(cross["quota_shortfall"].values()) == 6
  for row in read_records(os.path.join(work, "cross_judge.jsonl")):
    rec = next(r for r in conflict["negotiation"] if r["dilemma_id"] == row["dilemma_id"])
    assert row["train_score"] == rec["score"]
    assert row["strong_scores"] == [(len(rec["completion"]) + 1) % 6] * 2
  # Stored outputs compared again without loading any model.
  c = eval_config.get_config()
  for k, v in dict(flags, run="", **{"cross_judge.policy": ""}).items():
    node = c
    *path, leaf = k.split(".")
    for p in path:
      node = node[p]
    node[leaf] = v
  again = suite.run(c, work)
  assert again["comparisons"] == summary["comparisons"]
  with open(os.path.join(work, "summary.json")) as f:
    kept = json.load(f)
  assert kept["policies"] == summary["policies"] and kept["cross_judge"] == summary["cross_judge"]
  c.decoding = "sampled"
  with pytest.raises(ValueError, match="config.decoding: .* holds 'greedy' outputs"):
    suite.run(c, work)
