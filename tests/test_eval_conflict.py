"""Conflict-resolution evaluation end to end: the tiny policy negotiates real evaluation tasks, judged by a scripted
LLM behind the real local server and client."""
import re

import pytest

from deliberate import policy
from deliberate.data import loader
from deliberate.eval import conflict
from deliberate.judge import rubrics
from deliberate.judge.config import default_judge_config
from deliberate.judge.runner import SyncJudge
from deliberate.negotiation import config as neg_config, episode
from deliberate.sampling.engine import SamplingEngine

# The first three evaluation tasks, by title: (turns until the judge sees agreement, CA score of the completion).
SCRIPT = {"Opening the home broadband to the building": (1, 5), "Two eulogies for one father": (2, 3),
          "Dropping auditions for a grant": (None, 1)}


def scripted_judge(messages_lists, max_tokens, temperature):
  out = []
  for messages in messages_lists:
    system, user = messages[0]["content"], messages[-1]["content"]
    agree_at, score = SCRIPT[re.search(r"Title: (.+)", user).group(1).strip()]
    if rubrics.CA_VERSION in system:
      out.append(f"Balanced.\nScore: {score}")
    else:
      out.append("Verdict: " + ("yes" if agree_at and user.count("<<<BEGIN TURN") >= agree_at else "no"))
  return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  params, cfg, tok = policy.load_model(policy.policy_config("tiny").model, str(tmp_path_factory.mktemp("tiny")))
  tasks = loader.eval_conflict_tasks(str(tmp_path_factory.mktemp("tfds")))[:3]
  jc = default_judge_config()
  jc.embedded, jc.embedded_backend, jc.api_key_env = True, "model", ""
  with SyncJudge(jc, generate_fn=scripted_judge) as judge:
    yield SamplingEngine(params, cfg), tok, judge, tasks


def _config(group_size):
  c = neg_config.default_config()
  c.group_size, c.max_turns, c.max_turn_tokens, c.max_completion_tokens = group_size, 3, 6, 6
  return c


def test_greedy_eval_three_tasks(setup):
  engine, tok, judge, tasks = setup
  assert [t["title"] for t in tasks] == list(SCRIPT)
  neg = conflict.make_negotiator(engine, tok, judge, _config(1), "greedy")
  recs = conflict.run_conflict_eval(neg, tasks, seed=0, batch_tasks=2, policy="tiny", decoding="greedy")
  assert [r["dilemma_id"] for r in recs] == ["evalc-001", "evalc-002", "evalc-003"]
  assert [r["task"] for r in recs] == [0, 1, 2] and {r["policy"] for r in recs} == {"tiny"}
  assert [(r["agreed"], r["rounds"]) for r in recs] == [(True, 1), (True, 2), (False, 3)]
  assert [r["pair_id"] for r in recs] == [t["pair"]["pair_id"] for t in tasks]  # each task's fixed eval pair
  assert [r["agent1"] for r in recs] == [t["pair"]["a"]["id"] for t in tasks]
  assert all(r["completion_ids"] for r in recs)  # evaluation: a completion even without agreement
  assert [r["score"] for r in recs] == [5, 3, 1] and [r["reward"] for r in recs] == [5.0, 3.0, 0.0]
  s = conflict.conflict_summary(recs)
  assert (s["tasks"], s["dialogues"], s["failed"]) == (3, 3, 0)
  assert s["agreement_rate"] == pytest.approx(2 / 3) and s["mean_rounds_to_agreement"] == pytest.approx(1.5)
  assert (s["ca"]["mean"], s["ca"]["n_scored"], s["ca_agreed"]["mean"]) == (pytest.approx(3.0), 3, pytest.approx(4.0))
  assert s["ca_group_min"] == s["ca_group_mean"] == pytest.approx(3.0)  # one dialogue per task
  # Greedy: another seed and another batching give the same dialogues.
  again = conflict.run_conflict_eval(neg, tasks, seed=5, batch_tasks=1, policy="tiny", decoding="greedy")
  assert [[t["ids"] for t in r["turns"]] for r in again] == [[t["ids"] for t in r["turns"]] for r in recs]


def test_sampled_eval_groups(setup):
  engine, tok, judge, tasks = setup
  neg = conflict.make_negotiator(engine, tok, judge, _config(2), "sampled")
  assert not neg.turn_sp.greedy and neg.turn_sp.temperature == 0.7 and neg.completion_sp.temperature == 0.1
  recs = conflict.run_conflict_eval(neg, tasks[1:], seed=0, policy="tiny", decoding="sampled")
  assert [(r["task"], r["sample"]) for r in recs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
  assert recs[2]["turns"][0]["ids"] != recs[3]["turns"][0]["ids"]  # two samples of one task differ
  s = conflict.conflict_summary(recs)
  assert (s["tasks"], s["dialogues"]) == (2, 4)
  assert (s["ca_group_min"], s["ca_group_mean"], s["ca_group_max"]) == (2.0, 2.0, 2.0)  # (3 + 1) / 2 each


def test_bad_inputs(setup):
  engine, tok, judge, tasks = setup
  with pytest.raises(ValueError, match="decoding: 'beam'"):
    conflict.make_negotiator(engine, tok, judge, _config(1), "beam")
  with pytest.raises(ValueError, match="evaluation task 'evalc-001': no persona pair"):
    conflict.eval_items([{k: v for k, v in tasks[0].items() if k != "pair"}])
