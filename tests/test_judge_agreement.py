"""Agreement needs two parties, in the deterministic local judge (lexicon) and in the LLM rubric alike."""
import pytest

from deliberate.judge import judges, lexicon, rubrics
from deliberate.judge.config import default_judge_config
from deliberate.judge.runner import SyncJudge

PA = {"id": "p1", "name": "Carla", "values": ["thrift"], "priorities": [], "red_lines": [], "description": "CFO"}
PB = {"id": "p2", "name": "Quinn", "values": ["craft"], "priorities": [], "red_lines": [], "description": "Engineer"}
PROPOSAL = {"agent": 1, "text": "I propose we fund a six-month pilot and review it together."}


def _verdict(turns):
  return lexicon.answer(rubrics.agreement_messages("Fund the pilot?", PA, PB, turns)).splitlines()[-1]


@pytest.mark.parametrize("turns,verdict", [
    # The quickstart artefact: Agent 1's opening turn "agreed" before Agent 2 spoke.
    ([{"agent": 1, "text": "Let's follow the agreed-upon repayment plan. Agreed, it's a deal."}], "no"),
    ([{"agent": 1, "text": "I accept. Sounds good, let's do it."}], "no"),
    # An acceptance that answers the other agent's proposal.
    ([PROPOSAL, {"agent": 2, "text": "Agreed. Let's go with the pilot."}], "yes"),
    ([PROPOSAL, {"agent": 2, "text": "That works for me."}], "yes"),
    # Whole words only: "agreed-upon" is not agreement, nor is "agreed" inside another word.
    ([PROPOSAL, {"agent": 2, "text": "We should follow the agreed-upon budget first."}], "no"),
    ([PROPOSAL, {"agent": 2, "text": "The pre-agreed terms still stand."}], "no"),
    # A party cannot accept its own proposal.
    ([PROPOSAL, {"agent": 1, "text": "Agreed, I accept my own plan."}], "no"),
    # Nothing was proposed to accept.
    ([{"agent": 1, "text": "Hello."}, {"agent": 2, "text": "Agreed."}], "no"),
    ([PROPOSAL, {"agent": 2, "text": "I agree on goals but I cannot accept this."}], "no"),
    # Acceptances as SmolLM2-135M writes them; advice to accept and a hedged refusal are not acceptances.
    ([PROPOSAL, {"agent": 2, "text": "I completely agree with your suggestion."}], "yes"),
    ([PROPOSAL, {"agent": 2, "text": "I'm happy to accept the proposal."}], "yes"),
    ([PROPOSAL, {"agent": 2, "text": "You should accept Beth's proposal, rather than a counter-proposal."}], "no"),
    ([PROPOSAL, {"agent": 2, "text": "I don't completely agree."}], "no"),
    ([PROPOSAL, {"agent": 2, "text": "I will never accept a pilot."}], "no"),
    # A qualified acceptance is a counter-proposal (the hack a policy learned under the older rule).
    ([PROPOSAL, {"agent": 2, "text": "I agree, but can you please make a counter-proposal?"}], "no"),
    ([PROPOSAL, {"agent": 2, "text": "I accept, however the budget must double."}], "no"),
])
def test_lexicon_agreement_needs_two_parties(turns, verdict):
  assert _verdict(turns) == f"Verdict: {verdict}"


def test_lexicon_answer_says_why_and_is_labelled():
  ans = lexicon.answer(rubrics.agreement_messages("d", PA, PB, [{"agent": 1, "text": "Agreed."}]))
  assert "deterministic local judge" in ans and "only one turn" in ans


def test_llm_agreement_rubric_states_the_two_party_rule():
  """The LLM judge gets the same rules in words; a new version so no v2 answer replays from the cache."""
  system = rubrics.agreement_messages("d", PA, PB, [PROPOSAL])[0]["content"]
  assert rubrics.AGREEMENT_VERSION == "agreement/v3" and system.startswith("[rubric: agreement/v3]")
  for phrase in ("Agreement needs two parties", "OTHER party", "Never answer yes on the first turn",
                 "'agreed-upon'", "nobody can agree with their own proposal", "'I agree, but ...'",
                 "counter-proposal is a new proposal"):
    assert phrase in system, phrase


def test_agreement_over_the_embedded_lexicon_server():
  """End to end through the HTTP judge: the opening turn never agrees, the answer to a proposal does."""
  c = default_judge_config()
  c.embedded, c.api_key_env = True, ""
  opening = [{"agent": 1, "text": "As the agreed-upon plan says, I agree, we have a deal."}]
  answered = [PROPOSAL, {"agent": 2, "text": "I accept, let's do it."}]
  with SyncJudge(c) as judge:
    results = judge.map(judges.judge_agreement, [dict(dilemma="d", persona_a=PA, persona_b=PB, turns=t)
                                                 for t in (opening, answered)])
  assert [(r.ok, r.value) for r in results] == [(True, False), (True, True)]
  assert all(r.model == lexicon.MODEL_NAME for r in results)
