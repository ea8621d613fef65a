"""End to end: a tiny policy, a scripted LLM judge behind the real local server and client, every branch."""
import re

import pytest

from deliberate.judge import rubrics
from deliberate.judge.config import default_judge_config
from deliberate.judge.runner import SyncJudge
from deliberate.negotiation import config as neg_config, episode, metrics, rows
from deliberate.rl import batch as batch_lib
from deliberate.sampling.engine import SamplingEngine

PERSONA = dict(values=["fairness"], priorities=["clarity"], red_lines=["deception"], description="You are firm.")
PAIR = {"pair_id": "p01", "a": dict(PERSONA, id="p01a", name="Ada"), "b": dict(PERSONA, id="p01b", name="Bo")}


def _dilemma(script: str) -> dict:
  return {"id": script, "category": "everyday", "domain": "test", "title": script,
          "text": f"A shared garden needs a watering rota. [script:{script}]", "considerations": ["a", "b"]}


def scripted_judge(messages_lists, max_tokens, temperature):
  """A stand-in LLM behind the `model` backend: the dilemma's [script:...] tag decides the verdict."""
  out = []
  for messages in messages_lists:
    system, user = messages[0]["content"], messages[-1]["content"]
    script = re.search(r"\[script:([\w@]+)\]", user).group(1)
    if rubrics.CA_VERSION in system:
      out.append("The resolution is balanced.\nScore: 4" if script != "cafail" else "no score here")
      continue
    turns = user.count("<<<BEGIN TURN")
    if script == "fail":
      out.append("I cannot tell.")
    elif script.startswith("agree@"):
      out.append("Verdict: " + ("yes" if turns >= int(script[6:]) else "no"))
    else:  # cafail, never
      out.append("Verdict: " + ("yes" if script == "cafail" else "no"))
  return out


@pytest.fixture(scope="module")
def judge():
  cfg = default_judge_config()
  cfg.embedded, cfg.embedded_backend, cfg.max_parse_retries, cfg.api_key_env = True, "model", 1, ""
  with SyncJudge(cfg, generate_fn=scripted_judge) as j:
    yield j


@pytest.mark.parametrize("overlap, scheduler", [(False, "lockstep"), (True, "lockstep"), (True, "async")])
def test_every_branch(tiny_policy, tiny_tokenizer, judge, overlap, scheduler):
  params, config = tiny_policy
  cfg = neg_config.default_config()
  cfg.group_size, cfg.max_turns, cfg.max_turn_tokens, cfg.max_completion_tokens = 2, 4, 6, 6
  cfg.overlap_judge, cfg.scheduler = overlap, scheduler
  neg = episode.Negotiator(SamplingEngine(params, config), tiny_tokenizer, judge, cfg)
  scripts = ["agree@1", "agree@3", "never", "fail", "cafail"]
  dialogues = neg.run([{"dilemma": _dilemma(s), "pair": PAIR} for s in scripts], seed=0)
  by = {s: dialogues[2 * i:2 * i + 2] for i, s in enumerate(scripts)}
  for d in by["agree@1"]:
    assert d.agreed and d.rounds == 1 and d.score == 4 and d.reward == 4.0 and d.completion_ids
  for d in by["agree@3"]:
    assert d.agreed and d.rounds == 3 and [t.agent for t in d.turns] == [1, 2, 1]
    assert [t.agreed for t in d.turns] == [False, False, True]
  for d in by["never"]:
    assert not d.agreed and d.rounds == 4 and d.reward == 0.0 and not d.completion_ids and d.score is None
  for d in by["fail"]:
    assert d.failed and d.excluded and d.rounds == 1 and d.turns[0].judge_failure == "unparseable"
  for d in by["cafail"]:
    assert d.failed and d.excluded and d.agreed and d.failure.startswith("CA judge")
  m = metrics.step_metrics(dialogues, cfg.group_size)
  assert m["negotiation/agreement_rate"] == pytest.approx(6 / 8)  # of the 8 with every verdict
  assert m["negotiation/mean_rounds_to_agreement"] == pytest.approx((1 + 1 + 3 + 3 + 1 + 1) / 6)
  assert m["negotiation/mean_rounds"] == pytest.approx((1 + 1 + 3 + 3 + 4 + 4 + 1 + 1) / 8)  # 'never' ran 4
  assert m["negotiation/judge_failures"] == 4
  assert m["reward/zero_advantage_fraction"] == 1.0  # every surviving group has equal rewards
  # Training rows: excluded dialogues give none; every turn is a row aligned with its sampling log-probs.
  rs = rows.dialogue_rows(dialogues)
  assert len(rs) == 2 * 1 + 2 * 3 + 2 * 4
  assert all(len(r.response_ids) == len(r.logprobs) > 0 for r in rs)


def test_overlap_gives_the_same_dialogues(tiny_policy, tiny_tokenizer, judge):
  params, config = tiny_policy
  cfg = neg_config.default_config()
  cfg.group_size, cfg.max_turns, cfg.max_turn_tokens, cfg.max_completion_tokens = 2, 3, 5, 5
  items = [{"dilemma": _dilemma("agree@2"), "pair": PAIR}, {"dilemma": _dilemma("never"), "pair": PAIR}]
  runs = []
  for overlap in (False, True):
    cfg.overlap_judge = overlap
    neg = episode.Negotiator(SamplingEngine(params, config), tiny_tokenizer, judge, cfg)
    runs.append([[t.response_ids for t in d.turns] for d in neg.run(items, seed=3)])
  assert runs[0] == runs[1]


def test_rows_align_with_sampling_logprobs(tiny_policy, tiny_tokenizer, judge):
  """Recomputing the log-probs of every training row from its ids gives back the sampler's: ratio 1 on-policy."""
  import numpy as np

  from deliberate.rl import logprobs
  params, config = tiny_policy
  cfg = neg_config.default_config()
  cfg.group_size, cfg.max_turns, cfg.max_turn_tokens, cfg.max_completion_tokens = 2, 3, 6, 4
  neg = episode.Negotiator(SamplingEngine(params, config), tiny_tokenizer, judge, cfg)
  dialogues = neg.run([{"dilemma": _dilemma("agree@3"), "pair": PAIR}], seed=5)
  batch = batch_lib.collate(rows.dialogue_rows(dialogues), [1.0, -1.0])
  lp, _ = logprobs.token_logprobs(params, batch["tokens_BxT"], batch["positions_BxT"], batch["loss_mask_BxT"],
                                  config=config, temperature=cfg.turn_temperature)
  mask = batch["loss_mask_BxT"] > 0
  assert mask.sum() == sum(len(t.response_ids) for d in dialogues for t in d.turns) == 2 * 3 * 6
  np.testing.assert_allclose(np.asarray(lp)[mask], batch["old_logprobs_BxT"][mask], atol=2e-5)


def test_ca_metrics_are_the_scores_not_the_rewards():
  """Evaluation writes completions without agreement; their scores count in ca/*, while their reward is 0."""
  from deliberate import metric_names as M
  ds = []
  for i, (agreed, score) in enumerate([(True, 5), (True, 3), (False, 1), (False, None)]):
    d = episode.Dialogue(i, i // 2, {"id": "d"}, {"a": {}, "b": {}, "pair_id": "p"})
    d.agreed, d.score = agreed, score
    d.reward = float(score) if agreed and score is not None else 0.0
    if score is None:
      d.failed, d.failure = True, "CA judge: unparseable"
    ds.append(d)
  m = metrics.step_metrics(ds, group_size=2)
  assert (m[M.CA_GROUP_MIN], m[M.CA_GROUP_MEAN], m[M.CA_GROUP_MAX]) == (2.0, 2.5, 3.0)  # groups (5, 3) and (1)
  assert (m[M.REWARD_GROUP_MIN], m[M.REWARD_GROUP_MAX]) == (1.5, 2.5)                    # groups (5, 3), (0, 0)
  assert m[M.CA_SCORED] == 3 and m[M.CA_FAILED] == 1
