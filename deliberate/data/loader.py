"""Prompt streams for the trainer: deterministic, resumable from a two-int state, and sharded across hosts.

The stream is an endless sequence of global positions g = 0, 1, 2, ...; position g reads item perm_e[g % N] of
epoch e = g // N, where perm_e is a permutation seeded by (seed, e). A step consumes one contiguous block of
num_prompts_per_step * process_count positions, and host h takes the positions h, h + P, h + 2P, ... of the block:
hosts never overlap, together they cover every item once per epoch, and all hosts hold the same state after each
step, so one checkpointed value resumes every host.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deliberate.data import builders

_DILEMMA_SALT, _PAIR_SALT, _ROLE_SALT, _OPEN_SALT = 0, 1, 2, 3


class _Stream:
  """Position arithmetic and permutations shared by the prompt iterators."""

  def __init__(self, num_items: int, seed: int, num_prompts_per_step: int, process_index: int, process_count: int):
    if num_items <= 0:
      raise ValueError("cannot iterate over an empty dataset")
    if num_prompts_per_step <= 0:
      raise ValueError(f"num_prompts_per_step must be > 0, got {num_prompts_per_step}")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    self.num_items, self.seed = num_items, int(seed)
    self.num_prompts_per_step = num_prompts_per_step
    self.process_index, self.process_count = process_index, process_count
    self._position = 0  # global position of the next step's first item
    self._perms: dict[tuple[int, int, int], np.ndarray] = {}

  def _perm(self, salt: int, size: int, epoch: int) -> np.ndarray:
    key = (salt, size, epoch)
    if key not in self._perms:
      if len(self._perms) > 16:
        self._perms.clear()
      self._perms[key] = np.random.default_rng([self.seed, salt, epoch]).permutation(size)
    return self._perms[key]

  def _item(self, salt: int, size: int, position: int) -> int:
    """Item at a global position of a stream of `size` items reshuffled every epoch."""
    return int(self._perm(salt, size, position // size)[position % size])

  def _take(self) -> list[int]:
    """This host's global positions of the next step, advancing every host's shared state. Host h takes the h-th
    contiguous block, so the hosts' items in host order are the items one process would take for the whole step."""
    block = self.num_prompts_per_step * self.process_count
    first = self._position + self.process_index * self.num_prompts_per_step
    positions = list(range(first, first + self.num_prompts_per_step))
    self._position += block
    return positions

  def state(self) -> dict[str, int]:
    """Small and JSON-able, for the checkpoint; identical on every host."""
    return {"epoch": self._position // self.num_items, "index": self._position % self.num_items}

  def restore(self, state: dict[str, Any]) -> None:
    try:
      epoch, index = int(state["epoch"]), int(state["index"])
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"data iterator state must be {{'epoch': int, 'index': int}}, got {state!r}") from e
    if epoch < 0 or not 0 <= index < self.num_items:
      raise ValueError(f"data iterator state {state!r} is out of range for {self.num_items} items "
                       "(was it saved with another dataset?)")
    self._position = epoch * self.num_items + index


class PromptIterator(_Stream):
  """Training prompts: each a dilemma paired with a training persona pair.

  Dilemmas and pairs run as two independently shuffled streams over the same positions, so every dilemma meets
  changing pairs across epochs. With swap_roles, a per-position coin decides which persona Agent 1 (the policy
  being trained) plays, so the policy learns every persona's side; `pair['a']` is always Agent 1's persona.
  """

  def __init__(self, data_dir: str | Path, seed: int, num_prompts_per_step: int, process_index: int = 0,
               process_count: int = 1, *, src_dir: str | Path | None = None, swap_roles: bool = True):
    self._dilemmas = builders.prepared("dilemmas", data_dir, src_dir).as_data_source("train")
    pairs = builders.prepared("persona_pairs", data_dir, src_dir).as_data_source("train")
    self._pairs = [builders.to_python(pairs[i]) for i in range(len(pairs))]
    if not self._pairs:
      raise ValueError("no training persona pairs")
    self.swap_roles = swap_roles
    super().__init__(len(self._dilemmas), seed, num_prompts_per_step, process_index, process_count)

  def prompt_at(self, position: int) -> dict[str, Any]:
    """The prompt at a global position: a pure function of (data, seed, position)."""
    dilemma = builders.to_python(self._dilemmas[self._item(_DILEMMA_SALT, self.num_items, position)])
    pair = dict(self._pairs[self._item(_PAIR_SALT, len(self._pairs), position)])
    swapped = bool(self.swap_roles and self._item(_ROLE_SALT, 2, position))
    if swapped:
      pair["a"], pair["b"] = pair["b"], pair["a"]
    return {"position": position, "dilemma": dilemma, "pair": pair, "swapped": swapped}

  def next_batch(self) -> list[dict[str, Any]]:
    return [self.prompt_at(g) for g in self._take()]


class OpenQuestionIterator(_Stream):
  """Training open questions for the single-agent baseline, with the same order, state and sharding rules.

  Reads train_open.jsonl only: the eval questions (`eval_open_questions`) must stay unseen by training.
  """

  def __init__(self, data_dir: str | Path, seed: int, num_prompts_per_step: int, process_index: int = 0,
               process_count: int = 1, *, src_dir: str | Path | None = None):
    self._questions = builders.prepared("open_questions", data_dir, src_dir).as_data_source("train")
    super().__init__(len(self._questions), seed, num_prompts_per_step, process_index, process_count)

  def prompt_at(self, position: int) -> dict[str, Any]:
    q = builders.to_python(self._questions[self._item(_OPEN_SALT, self.num_items, position)])
    return {"position": position, "question": q}

  def next_batch(self) -> list[dict[str, Any]]:
    return [self.prompt_at(g) for g in self._take()]


def eval_conflict_tasks(data_dir: str | Path, src_dir: str | Path | None = None) -> list[dict[str, Any]]:
  """The fixed evaluation tasks in file order, each with its own eval persona pair under 'pair'."""
  return builders.read_split("eval", "test", data_dir, src_dir, config="conflict")


def eval_open_questions(data_dir: str | Path, src_dir: str | Path | None = None) -> list[dict[str, Any]]:
  return builders.read_split("eval", "test", data_dir, src_dir, config="open")
