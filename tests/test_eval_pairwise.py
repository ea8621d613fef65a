"""Both-orders win rates through the real judge client and local server, with a scripted LLM behind it."""
import math
import re

import pytest

from deliberate.eval import pairwise
from deliberate.judge import judges, rubrics
from deliberate.judge.config import default_judge_config
from deliberate.judge.runner import SyncJudge

_RESPONSE = {k: re.compile(rf"<<<BEGIN RESPONSE_{k} \w+>>>\n(.*?)\n<<<END RESPONSE_{k}", re.S) for k in "AB"}


def scripted_judge(messages_lists, max_tokens, temperature):
  """Prefers the response with the higher 'q=N'; 'biased' makes it always pick whatever is shown first (an order
  effect), 'junk' makes it answer without a verdict."""
  out = []
  for messages in messages_lists:
    system, user = messages[0]["content"], messages[-1]["content"]
    assert rubrics.COMPARE_CA_VERSION in system or rubrics.COMPARE_RESOLUTION_VERSION in system
    a, b = (_RESPONSE[k].search(user).group(1) for k in "AB")
    if "junk" in a + b:
      out.append("Both are fine.")
    elif "biased" in a + b:
      out.append("Winner: A")
    else:
      qa, qb = (int(re.search(r"q=(\d)", t).group(1)) for t in (a, b))
      out.append("Winner: " + ("A" if qa > qb else "B" if qb > qa else "tie"))
  return out


@pytest.fixture(scope="module")
def judge():
  cfg = default_judge_config()
  cfg.embedded, cfg.embedded_backend, cfg.max_parse_retries, cfg.api_key_env = True, "model", 0, ""
  with SyncJudge(cfg, generate_fn=scripted_judge) as j:
    yield j


TASK = {"id": "t1", "title": "Garden", "text": "A shared garden needs a watering rota.", "considerations": ["water"],
        "pair": {"pair_id": "e01", "a": {"id": "e01a", "name": "Ada", "description": "Planner."},
                 "b": {"id": "e01b", "name": "Bo", "description": "Improviser."}}}
CONTEXT = dict(dilemma=TASK, persona_a=TASK["pair"]["a"], persona_b=TASK["pair"]["b"])


def test_both_orders_outcomes_and_rates(judge):
  cases = {"win": ("q=4", "q=2"), "win2": ("q=5", "q=1"), "loss": ("q=1", "q=3"), "tie": ("q=3", "q=3"),
           "inconsistent": ("biased q=5", "q=1"), "failed": ("junk", "q=1"), "missing": ("q=2", None)}
  items = [{"key": k, "context": CONTEXT, "a": a, "b": b} for k, (a, b) in cases.items()]
  recs = {r["key"]: r for r in pairwise.judge_both_orders(judge, judges.compare_ca, items)}
  assert {k: r["outcome"] for k, r in recs.items()} == {
      "win": "win", "win2": "win", "loss": "loss", "tie": "tie", "inconsistent": "inconsistent",
      "failed": "failed", "missing": "missing"}
  assert (recs["win"]["first"], recs["win"]["second"]) == ("A", "B")       # a shown first, then b shown first
  assert (recs["inconsistent"]["first"], recs["inconsistent"]["second"]) == ("A", "A")
  assert recs["failed"]["first"] == "failed: unparseable"
  s = pairwise.summarize([r["outcome"] for r in recs.values()])
  assert (s["pairs"], s["consistent"], s["wins"], s["losses"], s["ties"]) == (7, 4, 2, 1, 1)
  assert (s["dropped_inconsistent"], s["failed"], s["missing"]) == (1, 1, 1)
  assert s["win_rate"] == pytest.approx(50.0)
  assert s["loss_rate"] == pytest.approx(25.0)
  assert s["win_rate_ties_half"] == pytest.approx(62.5)
  assert s["decisive_win_rate"] == pytest.approx(200 / 3)


def test_summarize_edge_cases():
  none = pairwise.summarize(["inconsistent", "failed"])  # nothing consistent: no rate, not 0 %
  assert none["consistent"] == 0 and none["dropped_inconsistent"] == 1 and math.isnan(none["win_rate"])
  ties = pairwise.summarize(["tie", "tie"])
  assert (ties["win_rate"], ties["win_rate_ties_half"]) == (0.0, 50.0) and math.isnan(ties["decisive_win_rate"])
  with pytest.raises(ValueError, match="unknown pairwise outcomes"):
    pairwise.summarize(["win", "draw"])


def test_compare_policies_matches_outputs_and_runs_every_comparison(judge):
  question = {"id": "open-1", "question": "What do neighbours owe each other? q=0"}
  conflict_a = [{"dilemma_id": "t1", "sample": 0, "completion": "q=5 plan"},
                {"dilemma_id": "t1", "sample": 1, "completion": "q=1 plan"}]
  conflict_b = [{"dilemma_id": "t1", "sample": 0, "completion": "q=2 plan"},
                {"dilemma_id": "t1", "sample": 1, "completion": ""}]  # no completion: missing, not a loss
  open_a = [{"id": "open-1", "sample": 0, "text": "q=1 answer"}]
  open_b = [{"id": "open-1", "sample": 0, "text": "q=4 answer"}]
  summary, recs = pairwise.compare_policies(judge, conflict_a, conflict_b, open_a, open_b, [TASK], [question])
  assert set(summary) == {"ca_conflict", "ca_open", "resolution"}
  for name in ("ca_conflict", "resolution"):
    assert (summary[name]["wins"], summary[name]["missing"], summary[name]["win_rate"]) == (1, 1, 100.0)
  assert (summary["ca_open"]["losses"], summary["ca_open"]["win_rate"]) == (1, 0.0)
  assert {(r["comparison"], r["key"]) for r in recs} >= {("resolution", "t1#0"), ("ca_open", "open-1#0")}
  with pytest.raises(ValueError, match="task 'nope' is not among the evaluation tasks"):
    pairwise.conflict_items([{"dilemma_id": "nope", "completion": "x"}], [], [TASK])
