"""Per-step metrics to JSONL and TensorBoard (and wandb when asked), plus one progress line per step."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

_BEFORE = (("loss", "loss"), ("reward/group_mean", "reward"))
_AFTER = (("negotiation/agreement_rate", "agree"), ("negotiation/mean_rounds_to_agreement", "rounds"),
          ("negotiation/truncated_turn_fraction", "cut"), ("advantage/zero_advantage_frac", "zero_adv"),
          ("time/sample_s", "sample_s"), ("time/judge_s", "judge_s"), ("time/train_s", "train_s"))


def progress_line(step: int, num_steps: int, elapsed: float, m: Mapping[str, float], judge: str = "") -> str:
  """One line a step. The score is named after its judge ('lexicon-CA' for the deterministic local judge), and a
  step that got no score says so with its counts ('n/a [scored 0, failed 4]'), never 'CA=0'."""
  fmt = lambda keys: [f"{name}={m[k]:.3g}" for k, name in keys if k in m and math.isfinite(m[k])]
  shown = fmt(_BEFORE)
  if "ca/scored" in m:
    label = "lexicon-CA" if "lexicon" in judge else "CA"
    mean = m.get("ca/group_mean", float("nan"))
    value = f"{mean:.3g}" if math.isfinite(mean) and m["ca/scored"] > 0 else "n/a"
    shown.append(f"{label}={value} [scored {m['ca/scored']:.0f}, failed {m.get('ca/failed', 0):.0f}]")
  shown += fmt(_AFTER)
  if m.get("negotiation/judge_failures", 0) > 0:  # verdicts the judge never gave (the agreement rate leaves them out)
    shown.append(f"judge_failed={m['negotiation/judge_failures']:.0f}")
  if m.get("skipped_no_signal", 0) > 0:
    shown.append("update skipped: no row with a non-zero advantage")
  return f"[step {step}/{num_steps} | {elapsed:.0f}s] " + " ".join(shown)


class MetricsWriter:
  judge = ""  # the judge's model name (the trainer sets it): the progress line names its scores after it

  def __init__(self, workdir: str, num_steps: int, use_tensorboard: bool = True, wandb_project: str = ""):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._file = open(self.path, "a", encoding="utf-8")
    self.num_steps, self._t0 = num_steps, time.time()
    self._tb = None
    if use_tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    self._wandb = None
    if wandb_project:
      import wandb  # optional extra: pip install deliberate[wandb]
      self._wandb = wandb.init(project=wandb_project, dir=workdir, resume="allow")

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    self._file.write(json.dumps({"step": step, **{k: (None if not math.isfinite(v) else v)
                                                 for k, v in clean.items()}}) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in clean.items():
        if math.isfinite(v):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()
    if self._wandb is not None:
      self._wandb.log(clean, step=step)
    print(progress_line(step, self.num_steps, time.time() - self._t0, clean, self.judge), file=sys.stderr, flush=True)

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()
