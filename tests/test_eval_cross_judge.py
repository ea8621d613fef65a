"""Cross-judge statistics against hand-computed values; stratified sampling; re-scoring through the real client and
local server, with a judge cache on, so that the passes must stay separate requests."""
import collections
import math
import re

import pytest

from deliberate.eval import cross_judge, stats
from deliberate.judge import rubrics
from deliberate.judge.config import default_judge_config
from deliberate.judge.runner import SyncJudge

TRAIN = [2, 3, 4, 5, 4, 3]
PASS1 = [2, 4, 3, 5, 4, None]
PASS2 = [3, 4, 3, 5, 2, 3]


def test_cross_judge_stats_by_hand():
  s = stats.cross_judge_stats(TRAIN, [PASS1, PASS2])
  p1, p2 = s["passes"]
  # Pass 1, five scored items: (2,2) (3,4) (4,3) (5,5) (4,4).
  assert (p1["n"], p1["n_failed"]) == (5, 1)
  assert p1["exact"] == pytest.approx(3 / 5) and p1["within_1"] == pytest.approx(1.0)
  assert p1["pearson"] == pytest.approx(4.2 / 5.2)           # sum dx*dy = 4.2, sum dx^2 = sum dy^2 = 5.2
  assert p1["weighted_kappa"] == pytest.approx(1 - 2 / 10.4)  # observed sum w*O = 2, expected sum w*E = 52 / 5
  # Pass 2, six items.
  assert p2["exact"] == pytest.approx(2 / 6) and p2["within_1"] == pytest.approx(5 / 6)
  assert p2["pearson"] == pytest.approx(2.0 / math.sqrt(5.5 * 16 / 3))
  assert p2["weighted_kappa"] == pytest.approx(1 - 7 / 11)    # sum w*O = 7, sum w*E = (6*79 + 6*72 - 2*21*20) / 6
  # Test-retest over the five items both passes scored: (2,3) (4,4) (3,3) (5,5) (4,2).
  assert s["test_retest"] == {"n": 5, "exact": pytest.approx(3 / 5), "within_1": pytest.approx(4 / 5)}
  assert s["mean_strong_by_level"] == pytest.approx({"2": 2.5, "3": 11 / 3, "4": 3.0, "5": 5.0})
  assert s["items_by_level"] == {"2": 1, "3": 2, "4": 2, "5": 1}
  c = s["confusion"]
  assert sum(map(sum, c)) == 11 and c[3][4] == 2 and c[4][2] == 1 and c[5][5] == 2 and c[0][0] == 0


def test_stats_edge_cases():
  assert math.isnan(stats.pearson([3, 3, 3], [1, 2, 3]))
  assert stats.quadratic_weighted_kappa([0, 5, 2], [0, 5, 2]) == pytest.approx(1.0)
  assert math.isnan(stats.quadratic_weighted_kappa([4, 4], [4, 4]))  # no chance disagreement: undefined
  with pytest.raises(ValueError, match="integers 0-5"):
    stats.confusion([6], [1])
  with pytest.raises(ValueError, match="strong pass 0: 1 scores for 2 items"):
    stats.cross_judge_stats([1, 2], [[1]])
  s = stats.score_summary([5, None, 3, 3])
  assert (s["n"], s["n_scored"], s["mean"], s["min"], s["max"]) == (4, 3, pytest.approx(11 / 3), 3, 5)
  assert s["histogram"] == {"0": 0, "1": 0, "2": 0, "3": 2, "4": 0, "5": 1}


def _record(i, score, agreed=True, completion="text"):
  return {"dilemma_id": f"d{i}", "pair_id": "e01", "agent1": "e01a", "agreed": agreed, "score": score,
          "completion": completion, "sample": 0, "policy": "neg"}


def test_select_stratified_quotas_and_shortfall():
  records = [_record(i, 5) for i in range(6)] + [_record(10 + i, 4) for i in range(3)] + [
      _record(20, 2, agreed=False), _record(21, 2, completion=""), _record(22, None), _record(23, 2)]
  quotas = cross_judge.parse_quotas("2:2,4:2,5:4")
  chosen, shortfall = cross_judge.select_stratified(records, quotas, seed=0)
  levels = collections.Counter(r["score"] for r in chosen)
  assert levels == {2: 1, 4: 2, 5: 4} and shortfall == {"2": 1}  # only d23 is a converged score-2 dialogue
  assert chosen == cross_judge.select_stratified(records, quotas, seed=0)[0]
  assert {r["dilemma_id"] for r in chosen if r["score"] == 2} == {"d23"}
  with pytest.raises(ValueError, match="'3-18' is not 'score:count'"):
    cross_judge.parse_quotas("3-18")
  with pytest.raises(ValueError, match="score 0-5"):
    cross_judge.parse_quotas("7:1")


_COMPLETION = re.compile(r"<<<BEGIN COMPLETION \w+>>>\n(.*?)\n<<<END COMPLETION", re.S)
_PERSONA_A = re.compile(r"<<<BEGIN PERSONA_A \w+>>>\nName: (\w+)")


class WobblyJudge:
  """Scores 'c=N' as N, except 'wobble' completions, which get one point less on every second request; records
  Party A's name and the temperature of every request."""

  def __init__(self):
    self.calls = collections.Counter()
    self.seen = []

  def __call__(self, messages_lists, max_tokens, temperature):
    out = []
    for messages in messages_lists:
      assert rubrics.CA_VERSION in messages[0]["content"]
      text = _COMPLETION.search(messages[-1]["content"]).group(1)
      self.seen.append((text, _PERSONA_A.search(messages[-1]["content"]).group(1), temperature))
      self.calls[text] += 1
      score = int(re.search(r"c=(\d)", text).group(1)) - ("wobble" in text and self.calls[text] % 2 == 0)
      out.append(f"Fine.\nScore: {score}")
    return out


def test_rescore_two_real_passes_through_a_cache(tmp_path):
  cfg = default_judge_config()
  cfg.embedded, cfg.embedded_backend, cfg.api_key_env = True, "model", ""
  cfg.cache_path = str(tmp_path / "cache.sqlite")
  pair = {"pair_id": "e01", "a": {"id": "e01a", "name": "Ada"}, "b": {"id": "e01b", "name": "Bo"}}
  dilemmas = {f"d{i}": {"id": f"d{i}", "text": f"Dilemma {i}."} for i in range(3)}
  records = [dict(_record(0, 4, completion="c=4 wobble")), dict(_record(1, 5, completion="c=5")),
             dict(_record(2, 3, completion="c=2"), agent1="e01b")]  # Agent 1 played persona b
  fake = WobblyJudge()
  with SyncJudge(cfg, generate_fn=fake) as judge:
    rows = cross_judge.rescore(judge, records, dilemmas, {"e01": pair}, passes=2, temperature=0.7)
    # The two passes of the wobbly completion are concurrent: either may be the second request.
    assert sorted(rows[0]["strong_scores"]) == [3, 4] and [r["strong_scores"] for r in rows[1:]] == [[5, 5], [2, 2]]
    assert [r["train_score"] for r in rows] == [4, 5, 3]
    assert {t for *_, t in fake.seen} == {0.7} and len(fake.seen) == 6
    assert {(text, name) for text, name, _ in fake.seen} == {  # Party A is always Agent 1's persona
        ("c=4 wobble", "Ada"), ("c=5", "Ada"), ("c=2", "Bo")}
    again = cross_judge.rescore(judge, records, dilemmas, {"e01": pair}, passes=2, temperature=0.7)
    assert again == rows and len(fake.seen) == 6  # both passes replayed from the cache, each under its own key
    with pytest.raises(ValueError, match="unknown persona pair id"):
      cross_judge.rescore(judge, [dict(records[0], pair_id="zz")], dilemmas, {"e01": pair})
  s = cross_judge.cross_judge_summary(rows)
  assert s["test_retest"]["exact"] == pytest.approx(2 / 3)
  assert sorted(p["exact"] for p in s["passes"]) == pytest.approx([1 / 3, 2 / 3])
