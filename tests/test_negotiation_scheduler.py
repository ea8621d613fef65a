"""The async scheduler against the lockstep rollout (same dialogues, rewards and rows), a judge server killed
mid-rollout (every dialogue accounted for), and one-step off-policy rollouts on a real Trainer."""
import asyncio
import hashlib
import random
import re
import threading
import time

import jax
import numpy as np
import pytest

from deliberate.judge import rubrics, serve
from deliberate.judge.config import default_judge_config
from deliberate.judge.runner import SyncJudge
from deliberate.negotiation import config as neg_config, episode, metrics, rows, scheduler
from deliberate.rl import batch as batch_lib
from deliberate.sampling.engine import SamplingEngine

PERSONA = dict(values=["fairness"], priorities=["clarity"], red_lines=["deception"], description="You are firm.")
PAIR = {"pair_id": "p01", "a": dict(PERSONA, id="p01a", name="Ada"), "b": dict(PERSONA, id="p01b", name="Bo")}


def _item(script: str) -> dict:
  return {"dilemma": {"id": script, "category": "everyday", "domain": "test", "title": script,
                      "text": f"A shared garden needs a watering rota. [script:{script}]", "considerations": ["a"]},
          "pair": PAIR}


def scripted_answer(messages) -> str:
  """Deterministic: agreement after the scripted number of turns, the CA score a hash of the completion."""
  system, user = messages[0]["content"], messages[-1]["content"]
  if rubrics.CA_VERSION in system:
    return f"Fine.\nScore: {int(hashlib.sha256(user.encode()).hexdigest(), 16) % 6}"
  script = re.search(r"\[script:([\w@]+)\]", user).group(1)
  turns = user.count("<<<BEGIN TURN")
  return "Verdict: " + ("yes" if script.startswith("agree@") and turns >= int(script[6:]) else "no")


class ScriptedBackend(serve.LexiconBackend):
  """The scripted judge behind the real server, answering after a random delay (so verdicts arrive out of order)
  and optionally stopping the server after `kill_after` calls."""
  name = "scripted-test-judge"

  def __init__(self, max_delay_s: float = 0.0, kill_after: int = 0):
    self.max_delay_s, self.kill_after, self.calls, self.handle = max_delay_s, kill_after, 0, None
    self.rng = random.Random(0)

  async def complete(self, messages, max_tokens, temperature, verdict=None):
    self.calls += 1
    if self.kill_after and self.calls == self.kill_after:
      threading.Thread(target=self.handle.stop, daemon=True).start()
    await asyncio.sleep(self.rng.uniform(0, self.max_delay_s))
    return scripted_answer(messages), "stop", None


def _judge(url: str, **overrides) -> SyncJudge:
  cfg = default_judge_config()
  cfg.embedded, cfg.base_url, cfg.api_key_env, cfg.max_parse_retries = False, url, "", 0
  for k, v in overrides.items():
    cfg[k] = v
  return SyncJudge(cfg)


@pytest.fixture(scope="module")
def jittery_judge():
  backend = ScriptedBackend(max_delay_s=0.05)
  with serve.start_server(backend) as server, _judge(server.url) as judge:
    yield judge


def _cfg(scheduler_name: str, **kw):
  cfg = neg_config.default_config()
  cfg.group_size, cfg.max_turns, cfg.max_turn_tokens, cfg.max_completion_tokens = 2, 4, 5, 5
  cfg.scheduler = scheduler_name
  for k, v in kw.items():
    cfg[k] = v
  return cfg


def _snapshot(dialogues):
  """Per dialogue, per turn (agent, prompt ids, response ids, log-probs, verdict), then its ending."""
  return [(d.index, [(t.agent, t.prompt_ids, t.response_ids, t.logprobs, t.agreed) for t in d.turns], d.agreed,
           d.failed, d.completion_prompt_ids, d.completion_ids, d.score, d.reward, d.excluded) for d in dialogues]


ITEMS = [_item(s) for s in ("agree@2", "never", "agree@3")]


def test_async_equals_lockstep(tiny_policy, tiny_tokenizer, jittery_judge):
  """Tokens, verdicts, completions, rewards and the training batch are those of lockstep whatever the batch cap,
  the speculation and the order verdicts arrive in; the sampler's log-probs within float32 rounding (the engine's
  numerics depend on a call's rows and unique prompts, which differ between the two)."""
  params, config = tiny_policy
  cfg = dict(max_turns=3)
  runs = []
  for name, kw in [("lockstep", {}), ("async", dict(scheduler_max_batch=3)),
                   ("async", dict(scheduler_max_batch=4, overlap_judge=True))]:
    neg = episode.Negotiator(SamplingEngine(params, config), tiny_tokenizer, jittery_judge, _cfg(name, **cfg, **kw))
    runs.append((neg.run(ITEMS, seed=7), neg))
  ref = runs[0][0]
  assert [d.rounds for d in ref] == [2, 2, 3, 3, 3, 3]      # the dialogues really do desynchronise
  assert [d.agreed for d in ref] == [True, True, False, False, True, True]
  ref_batch = batch_lib.collate(rows.dialogue_rows(ref), [d.reward - 2 for d in ref])
  no_lp = lambda snap: [(s[0], [t[:3] + t[4:] for t in s[1]], *s[2:]) for s in snap]
  for ds, neg in runs[1:]:
    assert no_lp(_snapshot(ds)) == no_lp(_snapshot(ref))
    for d, r in zip(ds, ref):
      for t, u in zip(d.turns, r.turns):
        np.testing.assert_allclose(t.logprobs, u.logprobs, atol=1e-5)
    batch = batch_lib.collate(rows.dialogue_rows(ds), [d.reward - 2 for d in ds])
    assert batch.keys() == ref_batch.keys()
    for f in batch:
      if f == "old_logprobs_BxT":
        np.testing.assert_allclose(batch[f], ref_batch[f], atol=1e-5)
      else:
        np.testing.assert_array_equal(batch[f], ref_batch[f], err_msg=f)
  assert max(n for _, n in runs[1][1].sample_calls) <= 3    # the cap held: batches were composed differently
  assert len(runs[1][1].sample_calls) > len(runs[0][1].sample_calls)


@pytest.mark.parametrize("scheduler_name", ["async", "lockstep"])
def test_judge_killed_mid_rollout_every_dialogue_accounted_for(tiny_policy, tiny_tokenizer, scheduler_name):
  params, config = tiny_policy
  backend = ScriptedBackend(max_delay_s=0.02, kill_after=12)
  server = serve.start_server(backend)
  backend.handle = server
  cfg = _cfg(scheduler_name, scheduler_max_batch=4)
  with _judge(server.url, max_retries=1, backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=3.0) as judge:
    neg = episode.Negotiator(SamplingEngine(params, config), tiny_tokenizer, judge, cfg)
    t0 = time.time()
    ds = neg.run([_item("never"), _item("agree@3"), _item("never"), _item("agree@2")], seed=1)
    assert time.time() - t0 < 60
  server.stop()
  assert len(ds) == 8 and sorted(d.index for d in ds) == list(range(8))
  failed = [d for d in ds if d.failed]
  assert failed
  assert sum(t.agreed is not None for d in ds for t in d.turns) >= 8  # verdicts came back before the kill
  for d in ds:
    assert d.rounds >= 1
    if d.failed:
      assert d.failure.startswith(("agreement judge", "CA judge")) and d.excluded and d.reward == 0.0
      assert d.failure.startswith("CA judge") or d.turns[-1].judge_failure
    else:  # everything it was owed came back before the kill
      assert all(t.agreed is not None for t in d.turns)
      assert (d.agreed and d.score is not None) or d.rounds == cfg.max_turns
  m = metrics.step_metrics(ds, cfg.group_size)
  assert m["negotiation/judge_failures"] == len(failed)
  assert sum(1 for _ in rows.dialogue_rows(ds)) == sum(d.rounds for d in ds if not d.excluded)


def test_config_rejects_an_unknown_scheduler():
  cfg = neg_config.default_config()
  cfg.scheduler = "greedy"
  with pytest.raises(ValueError, match=r"config.negotiation.scheduler"):
    neg_config.validate(cfg)


def test_staleness_stats_clip_like_the_loss():
  mask = np.array([[0, 1, 1, 1]], np.float32)
  old = np.log(np.array([[1, 0.5, 0.5, 0.5]]))
  new = np.log(np.array([[1, 0.5, 0.7, 0.3]]))
  s = scheduler.staleness_stats(new, old, mask, np.array([1.0]))
  assert s["offpolicy/ratio_max"] == pytest.approx(1.4) and s["offpolicy/ratio_min"] == pytest.approx(0.6)
  assert s["offpolicy/clip_frac"] == pytest.approx(1 / 3)  # ratio 1.4 > 1.2 with A > 0; 0.6 only clips with A < 0


def test_one_step_off_policy_ratio_and_weight_sync(tmp_path):
  """A rollout sampled in the background from policy v0, trained on after the update to v1: the ratio the loss sees
  is not 1, and a rollout started after the step samples exactly v1's weights (its log-probs are v1's)."""
  from configs import tiny
  from deliberate import trainer as trainer_lib
  from deliberate.rl import logprobs as lp_lib

  def hashing_judge(messages_lists, max_tokens, temperature):
    return [f"Score: {int(hashlib.sha256(m[-1]['content'].encode()).hexdigest(), 16) % 6}"
            if rubrics.CA_VERSION in m[0]["content"] else "Verdict: yes" for m in messages_lists]

  server = serve.start_server("model", generate_fn=hashing_judge)
  c = tiny.get_config()
  c.judge.embedded, c.judge.base_url, c.tensorboard, c.rl.lora_rank = False, server.url, False, 4
  c.negotiation.scheduler = "async"
  t = trainer_lib.Trainer(c, str(tmp_path))
  try:
    recompute = lambda rollout, base, lora: lp_lib.token_logprobs(
        base, *(batch_lib.collate(rollout.rows, np.zeros(len(rollout.rewards)))[k]
                for k in ("tokens_BxT", "positions_BxT", "loss_mask_BxT")),
        config=t.model_config, temperature=c.negotiation.turn_temperature, lora=lora)[0]
    v0 = t.runner.sampling_params()
    items = t.task.data.next_batch()
    stale = scheduler.BackgroundRollout(t.engine, v0, t.task.rollout, items, 11, version=0).result()
    t.train_one_step()                                    # the update to v1
    v1 = t.runner.sampling_params()
    batch = batch_lib.collate(stale.rows, np.ones(len(stale.rewards)))
    mask = batch["loss_mask_BxT"]
    same = scheduler.staleness_stats(np.asarray(recompute(stale, *v0)), batch["old_logprobs_BxT"], mask,
                                     batch["advantages_B"])
    moved = scheduler.staleness_stats(np.asarray(recompute(stale, *v1)), batch["old_logprobs_BxT"], mask,
                                      batch["advantages_B"])
    assert same["offpolicy/abs_log_ratio"] < 2e-5        # behaviour policy = v0: ratio 1
    assert moved["offpolicy/abs_log_ratio"] > 1e-4 and moved["offpolicy/ratio_max"] != 1.0
    fresh_bg = scheduler.BackgroundRollout(t.engine, v1, t.task.rollout, t.task.data.next_batch(), 12, version=1)
    fresh = fresh_bg.result()
    assert fresh_bg.fingerprint == scheduler.params_fingerprint(t.engine)
    fb = batch_lib.collate(fresh.rows, np.ones(len(fresh.rewards)))
    got = np.asarray(recompute(fresh, *v1))[fb["loss_mask_BxT"] > 0]
    np.testing.assert_allclose(got, fb["old_logprobs_BxT"][fb["loss_mask_BxT"] > 0], atol=2e-5)
    stale_v0 = np.asarray(recompute(fresh, *v0))[fb["loss_mask_BxT"] > 0]
    assert np.abs(stale_v0 - got).max() > 1e-4           # and v0's would not have matched: the sync was real
  finally:
    t.close()
    server.stop()


def test_modules_layer_without_a_cycle():
  """dialogue <- scheduler <- episode: the schedulers, records, metrics and rows import the per-dialogue data and
  steps, never the Negotiator's module (a fresh interpreter, so earlier imports in this session cannot hide a cycle)."""
  import subprocess
  import sys
  loaded = "[m for m in sys.modules if m.startswith('deliberate.negotiation.')]"
  code = (f"import sys; import deliberate.negotiation.dialogue as d; loaded = {loaded}; "
          "assert not {'deliberate.negotiation.scheduler', 'deliberate.negotiation.episode'} & set(loaded), loaded; "
          "import deliberate.negotiation.records, deliberate.negotiation.metrics, deliberate.negotiation.rows; "
          f"loaded = {loaded}; assert 'deliberate.negotiation.episode' not in loaded, loaded; "
          f"import deliberate.negotiation.scheduler as s; loaded = {loaded}; "
          "assert 'deliberate.negotiation.episode' not in loaded, loaded; "
          "import deliberate.negotiation.episode as e; assert e.scheduler is s and e.Dialogue is d.Dialogue")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
