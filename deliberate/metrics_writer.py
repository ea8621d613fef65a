"""Per-step metrics to JSONL and TensorBoard (and wandb when asked), plus one progress line per step."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

_PROGRESS_KEYS = (("loss", "loss"), ("reward/group_mean", "CA"), ("negotiation/agreement_rate", "agree"),
                  ("negotiation/mean_rounds_to_agreement", "rounds"), ("time/sample_s", "sample_s"),
                  ("time/judge_s", "judge_s"), ("time/train_s", "train_s"))


class MetricsWriter:

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
    shown = " ".join(f"{name}={clean[k]:.3g}" for k, name in _PROGRESS_KEYS if k in clean)
    elapsed = time.time() - self._t0
    print(f"[step {step}/{self.num_steps} | {elapsed:.0f}s] {shown}", file=sys.stderr, flush=True)

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()
