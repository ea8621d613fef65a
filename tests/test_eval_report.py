"""The paper-layout report from hand-written summaries: mean ± SD per decoding, dropped inconsistent pairs summed,
judge labels (the deterministic local judge named as such), capability before/after, JSON and Markdown."""
import json
import os

import pytest

from deliberate.eval import report
from deliberate.judge import lexicon


def _pair(win_rate, dropped, pairs=10):
  return {"win_rate": win_rate, "dropped_inconsistent": dropped, "pairs": pairs}


def _summary(decoding, seed, win, agree, rounds, ifeval_strict, judge=lexicon.MODEL_NAME):
  cap = {"ifeval": {"name": "IFEval", "source": "/data/ifeval/input_data.jsonl", "prompt_strict": ifeval_strict},
         "gpqa": {"name": "GPQA-Diamond", "source": "sample", "loglik_accuracy": 25.0, "generated_accuracy": None}}
  pol = lambda a, r: {"judge_model": judge, "conflict": {"agreement_rate": a, "mean_rounds_to_agreement": r},
                      "capability": cap}
  return {"decoding": decoding, "seed": seed, "strong_judge_model": "gpt-4o",
          "policies": {"negotiation": pol(agree, rounds), "base": pol(agree / 2, None)},
          "comparisons": {"negotiation:base": {"ca_conflict": _pair(win, 1), "ca_open": _pair(win / 2, 0),
                                               "resolution": _pair(None, 3)}}}


def test_report_tables_mean_sd_and_labels(tmp_path):
  runs = [_summary("greedy", 0, 60.0, 0.9, 2.0, 50.0), _summary("greedy", 1, 70.0, 0.7, 3.0, 60.0),
          _summary("sampled", 0, 40.0, 0.5, 4.0, 40.0)]
  for i, s in enumerate(runs):
    d = tmp_path / "eval" / s["decoding"] / f"seed{i}"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps(s))
  json_path, md_path, rep = report.write(str(tmp_path / "eval"), [str(tmp_path / "eval")])
  assert rep["runs"] == {"greedy": 2, "sampled": 1} and len(rep["summaries"]) == 3
  t1, t2, t3, t4 = rep["tables"]
  assert t1["columns"][:5] == ["Comparison", "Conflict, greedy", "Conflict, sampled", "Open-ended, greedy",
                               "Open-ended, sampled"]
  # mean ± sample SD: 60, 70 -> 65.0 ± 7.1; one sampled run -> its value alone; dropped summed over runs.
  assert t1["rows"] == [["negotiation vs base", "65.0 ± 7.1", "40.0", "32.5 ± 3.5", "20.0", "2/20 / 1/10",
                         "0/20 / 0/10"]]
  assert t1["cells"]["ca_conflict|negotiation:base|greedy"]["values"] == [60.0, 70.0]
  assert t2["rows"] == [["negotiation vs base", "–", "–", "6/20 / 3/10"]]      # no consistent pairs: no rate
  assert t3["rows"][0] == ["negotiation", "80.0 ± 14.1", "50.0", "2.50 ± 0.71", "4.00"]
  assert t3["rows"][1][3:] == ["–", "–"]                                       # never agreed: no rounds
  assert lexicon.MODEL_NAME in t3["notes"][0] and "not an LLM" in t3["notes"][0]
  assert t1["notes"] == ["Judged in both orders by: gpt-4o."]                  # an LLM judge is not relabelled
  assert t4["columns"] == ["Benchmark", "base (before), greedy", "base (before), sampled",
                           "negotiation (after), greedy", "negotiation (after), sampled"]
  assert [r[0] for r in t4["rows"]] == [title for _, _, title in report.CAPABILITY_ROWS[:6]]  # no AIME evaluated
  assert t4["rows"][0][1:] == ["55.0 ± 7.1", "40.0", "55.0 ± 7.1", "40.0"] and t4["rows"][1][1:] == ["–"] * 4
  assert t4["rows"][4][1:] == ["25.0 ± 0.0", "25.0"] * 2 and t4["rows"][5][1:] == ["–"] * 4
  assert any("NOT the benchmarks" in n for n in t4["notes"])
  md = open(md_path).read()
  assert "| Policy | Agreement rate (%), greedy | Agreement rate (%), sampled | Mean rounds to agreement, greedy |" in md
  assert "| negotiation vs base | 65.0 ± 7.1 | 40.0 |" in md and "greedy: 2 run(s), sampled: 1 run(s)" in md
  assert json.load(open(json_path))["tables"][0]["rows"] == t1["rows"]


def test_report_without_runs_and_lexicon_strong_judge(tmp_path):
  with pytest.raises(FileNotFoundError, match="no summary.json"):
    report.find_summaries([str(tmp_path)])
  s = _summary("greedy", 0, 50.0, 1.0, 1.0, 10.0)
  s["strong_judge_model"] = lexicon.MODEL_NAME
  rep = report.build([s])
  assert "deterministic local judge" in rep["tables"][0]["notes"][0]
  assert rep["tables"][0]["rows"][0][1:3] == ["50.0", "–"]
  assert report.markdown(report.build([])).count("| (none) |") == 4
