"""Figures from a synthetic metrics.jsonl and cross_judge.jsonl; the notebook's cells run against them."""
import json
import os

import numpy as np
import pytest
from matplotlib.collections import PathCollection

from deliberate.plots import figures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"


def _write_metrics(workdir, steps=120, eval_metrics=False):
  os.makedirs(workdir, exist_ok=True)
  rng = np.random.default_rng(0)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for s in range(1, steps + 1):
      row = {"step": s, "reward/group_min": float(rng.uniform(0, 2)), "reward/group_mean": float(rng.uniform(2, 3)),
             "reward/group_max": float(rng.uniform(3, 5)), "negotiation/agreement_rate": s / steps,
             "negotiation/mean_rounds_to_agreement": None if s == 3 else 2.5 - s / steps, "loss": 0.1}
      if eval_metrics:
        row.update({f"eval/{k}": v for k, v in row.items() if k != "step"})
      f.write(json.dumps(row) + "\n")
    f.write(json.dumps({"step": 5, "negotiation/agreement_rate": 0.99}) + "\n")  # a resumed run rewrote step 5


def _write_cross(path):
  rows = [(2, [2, 3]), (3, [3, 3]), (3, [4, None]), (4, [3, 4]), (5, [5, 4]), (5, [3, 3])]
  with open(path, "w") as f:
    for train, strong in rows:
      f.write(json.dumps({"dilemma_id": "d", "train_score": train, "strong_scores": strong}) + "\n")


def test_load_metrics_and_running_average(tmp_path):
  _write_metrics(str(tmp_path))
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
  _write_metrics(str(tmp_path), eval_metrics=True)
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


def test_single_agent_figure(tmp_path):
  _write_metrics(str(tmp_path))
  fig = figures.single_agent_dynamics(figures.load_metrics(str(tmp_path)), path=str(tmp_path / "fig4.png"))
  assert len(fig.axes) == 1 and [line.get_linestyle() for line in fig.axes[0].lines] == ["--", "-", "-."]
  assert os.path.getsize(tmp_path / "fig4.png") > 1000


def test_cross_judge_figure(tmp_path):
  _write_cross(str(tmp_path / "cross_judge.jsonl"))
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


def test_notebook_is_valid_and_its_cells_run(tmp_path, monkeypatch):
  with open(os.path.join(ROOT, "notebooks", "reproduce_figures.ipynb")) as f:
    nb = json.load(f)
  assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["name"] == "python3"
  assert all(c["cell_type"] in ("markdown", "code") and isinstance(c["source"], list) for c in nb["cells"])
  code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
  assert "pip install" in code[0]
  run, single, ev, figs = (str(tmp_path / d) for d in ("run", "single", "eval", "figs"))
  _write_metrics(run, eval_metrics=True)
  _write_metrics(single)
  os.makedirs(ev)
  _write_cross(os.path.join(ev, "cross_judge.jsonl"))
  for name, value in (("RUN_DIR", run), ("SINGLE_RUN_DIR", single), ("EVAL_DIR", ev), ("FIG_DIR", figs)):
    monkeypatch.setenv(f"DELIBERATE_{name}", value)
  shown = []
  namespace = {"display": shown.append}
  for source in code:
    exec(compile("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))),
                 "notebook", "exec"), namespace)
  assert len(shown) == 4 and all(type(f).__name__ == "Figure" for f in shown)
  assert sorted(os.listdir(figs)) == ["figure2_eval_dynamics.png", "figure3_cross_judge.png",
                                      "figure4_single_agent.png", "figure5_training_dynamics.png"]
