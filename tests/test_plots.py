"""Figures from a metrics.jsonl written by the trainer's MetricsWriter and a cross_judge.jsonl in the suite's format."""
import json
import os

import numpy as np
import pytest
from matplotlib.collections import PathCollection

from deliberate import metric_names as M, metrics_writer
from deliberate.plots import figures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"


def write_run(workdir, steps=120, eval_metrics=False, ca_metrics=True, judge_backend="lexicon"):
  """A run's metrics.jsonl written by the trainer's own MetricsWriter under the metric_names, and its config.json's
  judge section. Evaluation CA differs from the evaluation reward (non-agreeing completions score, not 0)."""
  rng = np.random.default_rng(0)
  writer = metrics_writer.MetricsWriter(workdir, steps, use_tensorboard=False)
  for s in range(1, steps + 1):
    row = {M.REWARD_GROUP_MIN: float(rng.uniform(0, 2)), M.REWARD_GROUP_MEAN: float(rng.uniform(2, 3)),
           M.REWARD_GROUP_MAX: float(rng.uniform(3, 5)), M.AGREEMENT_RATE: s / steps,
           M.ROUNDS_TO_AGREEMENT: float("nan") if s == 3 else 2.5 - s / steps, "loss": 0.1}
    if eval_metrics:
      ev = {M.REWARD_GROUP_MIN: 0.0, M.REWARD_GROUP_MEAN: 1.0 + s / steps, M.REWARD_GROUP_MAX: 3.0,
            M.AGREEMENT_RATE: 0.5, M.ROUNDS_TO_AGREEMENT: 3.0}
      if ca_metrics:
        ev.update({M.CA_GROUP_MIN: 1.0, M.CA_GROUP_MEAN: 2.0 + s / steps, M.CA_GROUP_MAX: 4.5})
      row.update({M.EVAL_PREFIX + k: v for k, v in ev.items()})
    writer.write(s, row)
  writer.write(5, {M.AGREEMENT_RATE: 0.99})  # a resumed run rewrote step 5
  writer.close()
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"judge": {"embedded": True, "embedded_backend": judge_backend, "model": "gpt-4o-mini"}}, f)


def write_cross(path):
  rows = [(2, [2, 3]), (3, [3, 3]), (3, [4, None]), (4, [3, 4]), (5, [5, 4]), (5, [3, 3])]
  with open(path, "w") as f:
    for train, strong in rows:
      f.write(json.dumps({"dilemma_id": "d", "train_score": train, "strong_scores": strong}) + "\n")


def test_load_metrics_and_running_average(tmp_path):
  write_run(str(tmp_path))
  m = figures.load_metrics(str(tmp_path))
  assert m["step"].tolist() == list(range(1, 121))
  assert m["negotiation/agreement_rate"][4] == 0.99 and np.isnan(m["reward/group_min"][4])  # last line of step 5
  assert np.isnan(m["negotiation/mean_rounds_to_agreement"][2])
  x = np.array([1.0, np.nan, 3.0, 5.0, np.nan, np.nan, np.nan])
  np.testing.assert_allclose(figures.running_average(x, 3), [1.0, 1.0, 2.0, 4.0, 4.0, 5.0, np.nan])
  y = np.random.default_rng(1).normal(size=200)
  np.testing.assert_allclose(figures.running_average(y, 50), [y[max(0, i - 49):i + 1].mean() for i in range(200)])
  with open(tmp_path / "bad.jsonl", "w") as f:
    f.write('{"loss": 1}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:1: not a metrics line with a 'step'"):
    figures.load_metrics(str(tmp_path / "bad.jsonl"))


def test_training_dynamics_figure(tmp_path):
  write_run(str(tmp_path), eval_metrics=True)
  m = figures.load_metrics(str(tmp_path))
  png = str(tmp_path / "fig2.png")
  fig = figures.training_dynamics(m, window=50, prefix="eval/", path=png)
  ca, agree, rounds = fig.axes
  assert [line.get_linestyle() for line in ca.lines] == ["--", "-", "-."]
  assert [line.get_label() for line in ca.lines] == ["group min", "group mean", "group max"]
  assert len(agree.lines) == len(rounds.lines) == 1
  np.testing.assert_allclose(agree.lines[0].get_ydata(), figures.running_average(m["eval/negotiation/agreement_rate"]))
  with open(png, "rb") as f:
    assert f.read(8) == PNG
  with pytest.raises(ValueError, match="metrics have no 'reward/group_min'"):
    figures.training_dynamics({"step": np.arange(3), "loss": np.zeros(3)})


def test_figure2_draws_evaluation_ca_not_reward(tmp_path):
  """Panel (a) is eval/ca/* (completions scored whether or not they agreed); only a run without them falls back
  to eval/reward/*, and the axis says so."""
  run = str(tmp_path / "run")
  write_run(run, eval_metrics=True)
  m = figures.load_metrics(run)
  fig = figures.figure2(run, window=10, path=str(tmp_path / "fig2.png"))
  ca = fig.axes[0]
  np.testing.assert_allclose(ca.lines[1].get_ydata(), figures.running_average(m["eval/ca/group_mean"], 10))
  assert not np.allclose(ca.lines[1].get_ydata(), figures.running_average(m["eval/reward/group_mean"], 10))
  np.testing.assert_allclose(ca.lines[0].get_ydata(), 1.0)
  assert ca.get_ylabel() == "lexicon-CA score" and "lexicon" in ca.get_title()  # the keyword heuristic's run
  assert figures.LEXICON_LABEL in fig.get_suptitle() and "Figure 2" in fig.get_suptitle()
  old = str(tmp_path / "old")
  write_run(old, eval_metrics=True, ca_metrics=False, judge_backend="model")
  fig = figures.figure2(old, window=10)
  np.testing.assert_allclose(fig.axes[0].lines[1].get_ydata(),
                             figures.running_average(figures.load_metrics(old)["eval/reward/group_mean"], 10))
  assert "else 0" in fig.axes[0].get_ylabel() and "lexicon" not in fig.get_suptitle()
  assert "lexicon" not in fig.axes[0].get_ylabel() + fig.axes[0].get_title()
  with pytest.raises(ValueError, match="metrics have no 'eval/ca/group_min'"):
    figures.training_dynamics(figures.load_metrics(old), prefix="eval/", ca_source="ca")
  assert os.path.getsize(tmp_path / "fig2.png") > 10000


def test_single_agent_figure(tmp_path):
  write_run(str(tmp_path))
  fig = figures.single_agent_dynamics(figures.load_metrics(str(tmp_path)), path=str(tmp_path / "fig4.png"))
  assert len(fig.axes) == 1 and [line.get_linestyle() for line in fig.axes[0].lines] == ["--", "-", "-."]
  assert os.path.getsize(tmp_path / "fig4.png") > 1000


def test_cross_judge_figure(tmp_path):
  write_cross(str(tmp_path / "cross_judge.jsonl"))
  train, strong = figures.load_cross_judge(str(tmp_path / "cross_judge.jsonl"))
  assert len(train) == len(strong) == 11  # one pass failed
  fig = figures.cross_judge(train, strong, path=str(tmp_path / "fig3.png"))
  scatter, heat = fig.axes[:2]
  assert len(fig.axes) == 3  # the two panels and the heatmap's colorbar
  points = [c for c in scatter.collections if isinstance(c, PathCollection)]
  assert len(points) == 1 and len(points[0].get_offsets()) == 11
  mean_line = next(line for line in scatter.lines if line.get_label() == "strong-judge mean")
  assert mean_line.get_xdata().tolist() == [2, 3, 4, 5]
  np.testing.assert_allclose(mean_line.get_ydata(), [2.5, 10 / 3, 3.5, 3.75])
  texts = {(t.get_position(), t.get_text()) for t in heat.texts}
  assert len(heat.texts) == 36 and ((3, 5), "2") in texts and ((3, 3), "2") in texts  # (strong, train): count
  assert sum(int(t.get_text()) for t in heat.texts) == 11
  with open(tmp_path / "fig3.png", "rb") as f:
    assert f.read(8) == PNG
