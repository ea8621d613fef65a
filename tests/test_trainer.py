"""The training loop: bad input fails before compute, and a run killed with SIGKILL resumes to the same params."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import tiny
from deliberate import checkpointing, trainer
from deliberate.judge import serve
from deliberate.judge.testing import hashing_judge

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
  c = tiny.get_config()
  for key, value in overrides.items():
    node = c
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  return c


@pytest.mark.parametrize("overrides, match", [
    ({"negotiation.group_size": 1}, r"config.negotiation.group_size"),
    ({"mode": "debate"}, r"config.mode"),
    ({"rl.step": "fsdp"}, r"config.rl.step"),
    ({"single_agent.failed_policy": "zer0"}, r"config.single_agent.failed_policy"),
    ({"offpolicy_overlap": True}, r"config.rl.old_logprobs: config.offpolicy_overlap .* 'sampler'"),
])
def test_bad_config_fails_before_compute(overrides, match, tmp_path):
  with pytest.raises(ValueError, match=match):
    trainer.Trainer(_config(**overrides), str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


def test_missing_checkpoint_names_the_field(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"config.model.name.*no/such/model"):
    trainer.Trainer(_config(**{"model.name": str(tmp_path / "no/such/model")}), str(tmp_path))


def test_unreachable_judge_fails_at_start(tmp_path):
  import socket
  with socket.socket() as s:  # a port nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  c = _config(**{"judge.embedded": False, "judge.base_url": f"http://127.0.0.1:{port}/v1", "judge.timeout_s": 2.0})
  with pytest.raises(ConnectionError, match=r"config.judge.base_url.*unreachable"):
    trainer.Trainer(c, str(tmp_path))


def test_prompt_longer_than_context(tmp_path):
  with pytest.raises(ValueError, match=r"beyond the model's context"):
    trainer.Trainer(_config(**{"model.tiny.max_seq_len": 128}), str(tmp_path))




@pytest.fixture(scope="module")
def judge_url():
  server = serve.start_server("model", generate_fn=hashing_judge)
  yield server.url
  server.stop()


def _launch(workdir, steps, judge_url):
  cache = os.path.join(os.path.dirname(workdir), "jax_cache")  # config.compilation_cache_dir: later runs load
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "launch", "train.py"), "--config",
                           os.path.join(ROOT, "configs", "tiny.py"), "--workdir", workdir,
                           f"--config.num_steps={steps}", "--config.tensorboard=False", "--config.judge.embedded=False",
                           f"--config.judge.base_url={judge_url}", f"--config.compilation_cache_dir={cache}"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _final_params(workdir):
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  step = ckpt.latest_step
  out = ckpt.manager.restore(step)  # raw restore: no template needed to compare values
  ckpt.close()
  return step, jax.tree.map(np.asarray, out["params"])


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, judge_url):
  steps = 3
  ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
  proc = _launch(ref, steps, judge_url)
  assert proc.wait(timeout=600) == 0, proc.stdout.read()[-3000:]
  assert os.listdir(tmp_path / "jax_cache"), "config.compilation_cache_dir: the launcher wrote no compiled program"
  proc = _launch(killed, steps, judge_url)
  first = os.path.join(killed, "checkpoints", "1")
  deadline = time.time() + 600
  while not os.path.isdir(first) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  proc = _launch(killed, steps, judge_url)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-3000:]
  assert "resumed from" in out
  ref_step, ref_params = _final_params(ref)
  step, params = _final_params(killed)
  assert ref_step == step == steps
  jax.tree.map(np.testing.assert_array_equal, params, ref_params)
  with open(os.path.join(ref, "metrics.jsonl")) as f:  # the params really moved: the test could fail
    assert any(json.loads(line)["grad_norm"] > 0 for line in f)


def test_eval_set_dynamics_are_logged(tmp_path, judge_url):
  c = _config(**{"judge.embedded": False, "judge.base_url": judge_url, "num_steps": 1, "eval_every": 1,
                 "eval_tasks": 2, "tensorboard": False})
  t = trainer.Trainer(c, str(tmp_path))
  m = t.train_one_step()
  t.close()
  assert m["eval/negotiation/dialogues"] == 2 * c.negotiation.group_size
  assert m["eval/negotiation/agreement_rate"] == 1.0  # the hashing judge agrees at once
  assert {"eval/reward/group_min", "eval/reward/group_mean", "eval/reward/group_max"} <= set(m)
  assert {"eval/ca/group_min", "eval/ca/group_mean", "eval/ca/group_max"} <= set(m)  # Figure 2's CA
  assert 0 <= m["eval/ca/group_min"] <= m["eval/ca/group_mean"] <= m["eval/ca/group_max"] <= 5
  assert json.load(open(tmp_path / "config.json"))["negotiation"]["group_size"] == c.negotiation.group_size


def test_single_agent_baseline_with_kl_and_lora(tmp_path, judge_url):
  """The baseline: G candidates per open question, CA scores over HTTP, beta > 0 (a reference is loaded)."""
  c = _config(**{"mode": "single_agent", "single_agent.group_size": 2, "single_agent.max_tokens": 8,
                 "data.prompts_per_step": 2, "rl.beta": 0.04, "rl.lora_rank": 4, "judge.embedded": False,
                 "judge.base_url": judge_url, "num_steps": 1, "tensorboard": False})
  t = trainer.Trainer(c, str(tmp_path))
  m = t.train_one_step()
  t.close()
  assert m["judge/requests"] == 4 and m["judge/ca_failures"] == 0
  assert m["grad_norm"] > 0 and np.isfinite(m["kl"]) and m["skipped"] == 0
  assert all(d["question_id"].startswith("topen-") for d in t.last_dialogues)


def test_self_rewarding_judge_runs_in_process(tmp_path):
  """The policy scores its own answers through the embedded server's `model` backend; a tiny random policy
  cannot produce a parseable score, so every answer is a counted failure and nothing is trained on it."""
  c = _config(**{"mode": "single_agent", "single_agent.group_size": 2, "single_agent.max_tokens": 4,
                 "data.prompts_per_step": 1, "judge.embedded_backend": "model", "judge.max_tokens": 4,
                 "judge.max_parse_retries": 0, "num_steps": 1, "tensorboard": False})
  t = trainer.Trainer(c, str(tmp_path))
  m = t.train_one_step()
  t.close()
  assert m["judge/ca_failures"] == 2 and m["judge/failures"] == 2 and m.get("skipped_no_rows") == 1.0


def test_sharded_step_trains_over_a_data_fsdp_mesh(tmp_path, judge_url):
  c = _config(**{"rl.step": "sharded", "rl.mesh_fsdp": 2, "judge.embedded": False, "judge.base_url": judge_url,
                 "num_steps": 1, "tensorboard": False})
  t = trainer.Trainer(c, str(tmp_path))
  assert t.num_shards == 8
  m = t.train_one_step()
  t.close()
  assert m["skipped"] == 0 and np.isfinite(m["loss"]) and m["train/rows"] % 8 == 0
  sharded = [x for x in jax.tree.leaves(t.state["params"]) if "fsdp" in str(x.sharding.spec)]
  assert sharded  # params really are split along fsdp


def test_sharded_full_finetune_with_eval_keeps_sampling_params_alive(tmp_path, judge_url):
  """The sharded step donates its state; the engine must sample from its own copy (evaluation runs after it)."""
  c = _config(**{"rl.step": "sharded", "rl.lora_rank": 0, "eval_every": 1, "eval_tasks": 1,
                 "judge.embedded": False, "judge.base_url": judge_url, "num_steps": 2, "tensorboard": False})
  t = trainer.Trainer(c, str(tmp_path))
  t.train_one_step()
  m = t.train_one_step()
  t.close()
  assert m["eval/negotiation/dialogues"] == c.negotiation.group_size


def test_progress_line_names_the_judge_and_a_step_without_scores():
  from deliberate.metrics_writer import progress_line
  lexicon = "deterministic-local-judge (lexicon)"
  line = progress_line(2, 3, 10.0, {"reward/group_mean": 0.0, "ca/group_mean": float("nan"), "ca/scored": 0,
                                    "ca/failed": 4, "time/judge_s": 1.5}, lexicon)
  assert "lexicon-CA=n/a [scored 0, failed 4]" in line and "judge_s=1.5" in line and " CA=" not in line
  line = progress_line(2, 3, 10.0, {"ca/group_mean": 2.5, "ca/scored": 3, "ca/failed": 1}, "gpt-4o-mini")
  assert "CA=2.5 [scored 3, failed 1]" in line and "lexicon" not in line
  # Every agreement verdict failed (SmolLM2 judging itself): no rate of 0, the failures counted.
  line = progress_line(1, 2, 10.0, {"negotiation/agreement_rate": float("nan"), "negotiation/judge_failures": 8})
  assert "agree=" not in line and "judge_failed=8" in line


def test_a_step_whose_every_verdict_failed_has_no_agreement_rate():
  from deliberate.negotiation import metrics as neg_metrics
  from deliberate.negotiation.dialogue import Dialogue, Turn
  d = Dialogue(index=0, group=0, dilemma={}, pair={}, failed=True, excluded=True)
  d.turns.append(Turn(agent=1, prompt_ids=[1], response_ids=[2], logprobs=[-1.0], text="x", stop_reason="stop",
                      judge_failure="unparseable"))
  m = neg_metrics.step_metrics([d], group_size=1)
  assert m["negotiation/agreement_rate"] != m["negotiation/agreement_rate"]  # nan, not 0


def test_one_step_off_policy_trains_on_the_previous_policys_samples(tmp_path, judge_url):
  """config.offpolicy_overlap: step 2 trains on samples drawn by the pre-update policy during step 1's update, so
  its importance ratio is not 1 (and is clipped by the loss), where step 1's on-policy ratio is."""
  c = _config(**{"offpolicy_overlap": True, "rl.old_logprobs": "sampler", "judge.embedded": False,
                 "judge.base_url": judge_url, "num_steps": 2, "tensorboard": False})
  t = trainer.Trainer(c, str(tmp_path))
  m1, m2 = t.train_one_step(), t.train_one_step()
  t.close()
  assert m1["offpolicy/staleness"] == 0 and m2["offpolicy/staleness"] == 1
  assert m1["grad_norm"] > 0                                                     # the policy moved at step 1
  assert abs(m1["ratio_max"] - 1) < 1e-4 and abs(m1["ratio_min"] - 1) < 1e-4     # on-policy
  assert max(abs(m2["ratio_max"] - 1), abs(m2["ratio_min"] - 1)) > 1e-3          # sampled by the old policy
