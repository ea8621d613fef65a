"""What a training mode gives the loop: a `Task` turns a step's prompts into a `Rollout`.

The trainer knows only this interface: it draws prompts from `task.data`, asks for a rollout, turns the rollout's
rewards into group advantages, trains on its rows, and writes its records and metrics. Everything that differs
between modes (prompts, sampling, judging, rewards, what a record holds) lives in the mode's module.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol, Sequence

import ml_collections
import numpy as np

from deliberate.negotiation.records import LEXICON_NOTE, is_lexicon, judge_name, score_label  # noqa: F401
from deliberate.rl.batch import Row


@dataclasses.dataclass
class Rollout:
  """One step's samples. Sequence i (a dialogue, an answer) has reward, group and validity at index i; rows name
  their sequence."""
  rows: list[Row]
  rewards: np.ndarray            # (S,) float
  groups: np.ndarray             # (S,) int: the GRPO group of each sequence
  valid: np.ndarray              # (S,) bool: False leaves a sequence out of its group's statistics
  metrics: dict[str, float]
  samples: Sequence[Any]         # the mode's own objects (dialogues, answers), for records and display


class Task(Protocol):
  """A training mode. Constructed once per run, after the config is validated and the policy is loaded."""
  name: str
  temperature: float             # the sampling temperature of the trained tokens (the loss's log-probs use it)
  row_ids_per_prompt: int        # sampling row ids a prompt's rollout uses: host h's ids start at h x P_host x this
  data: Any                      # the prompt iterator: next_batch(), state(), restore(), num_items, prompt_at()

  def check_context(self, max_seq_len: int) -> None:
    """Fails, naming the config field, if the longest prompt this config can build exceeds the context."""

  def sampler_bounds(self) -> list[dict[str, Any]]:
    """The largest sampler calls of a step, as keyword arguments of `SamplingEngine.precompile` (sp, rows,
    prompt_len, and unique, prefixes, prefix_len where they apply): the trainer compiles them before the first step,
    so that once the engine settles every call of the run has a program that holds it."""

  def rollout(self, items: Sequence[Mapping[str, Any]], seed: int) -> Rollout:
    """Samples, judges and rewards one step's prompts."""

  def records(self, rollout: Rollout, step: int) -> list[dict[str, Any]]:
    """JSONL records of the rollout's samples (one per dialogue or answer)."""

  def evaluate(self, seed: int) -> dict[str, float]:
    """Evaluation-set metrics during training ({} when the mode has none or `eval_every` is 0)."""

  def sample_text(self, rollout: Rollout, step: int) -> str | None:
    """A human-readable sample of the rollout for the end of a run, or None."""


def make_task(config: ml_collections.ConfigDict, engine, tokenizer, judge, data_dir: str) -> Task:
  """The Task of `config.mode`, from the registry in tasks/config.py."""
  import importlib  # noqa: PLC0415

  from deliberate.tasks.config import MODES  # noqa: PLC0415
  module = MODES[config.mode][0]
  return importlib.import_module(module).Task(config, engine, tokenizer, judge, data_dir)
