"""A reachable, deterministic reward for checking that the loop learns (the learning test, tests/test_learning.py).

The policy answers a few fixed prompts, G answers each; an answer's reward is the fraction of its tokens that are
target tokens (every `every`-th id of the vocabulary, so a random model starts near 1/every). No judge is asked. The
loop it runs is the real one (sampling engine, group advantages, batch, skip of zero-advantage rows, step runner):
if the advantage's sign, the loss mask or the learning rate is wrong, the mean reward does not rise.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from deliberate import metric_names as M
from deliberate.rl.batch import Row
from deliberate.sampling.engine import Request
from deliberate.sampling.sampler import SamplingParams
from deliberate.tasks.base import Rollout

PROMPTS = ("The council must decide", "Two neighbours share a fence", "A small team plans a release",
           "The clinic has one free slot")


class _Prompts:
  """The prompt iterator the trainer expects: a fixed cycle, so a run's data is its seed alone."""

  def __init__(self, per_step: int):
    self.per_step, self.position = per_step, 0
    self.num_items = len(PROMPTS)

  def prompt_at(self, i: int) -> dict[str, Any]:
    return {"id": i % self.num_items, "text": PROMPTS[i % self.num_items]}

  def next_batch(self) -> list[dict[str, Any]]:
    out = [self.prompt_at(self.position + k) for k in range(self.per_step)]
    self.position += self.per_step
    return out

  def state(self) -> dict[str, int]:
    return {"position": self.position}

  def restore(self, state: Mapping[str, int]) -> None:
    self.position = int(state["position"])


def target_fraction(tokens: Sequence[int], every: int) -> float:
  return float(np.mean([t % every == 0 for t in tokens])) if len(tokens) else 0.0


class Task:
  name = "target_token"

  def __init__(self, config: ml_collections.ConfigDict, engine, tokenizer, judge, data_dir: str):
    if "target_token" not in config:
      raise ValueError("config.target_token: missing; add tasks/config.py:target_token_config() to the config")
    self.engine, self.tokenizer, self.section = engine, tokenizer, config.target_token
    self.temperature = self.section.temperature
    self.row_ids_per_prompt = self.section.group_size
    self.data = _Prompts(config.data.prompts_per_step)

  def check_context(self, max_seq_len: int) -> None:
    if 16 + self.section.max_tokens > max_seq_len:
      raise ValueError(f"config.target_token.max_tokens: {self.section.max_tokens} exceeds the context")

  def _sp(self) -> SamplingParams:
    return SamplingParams(temperature=self.section.temperature, top_p=1.0, max_new_tokens=self.section.max_tokens)

  def sampler_bounds(self) -> list[dict[str, Any]]:
    n = self.data.per_step
    return [dict(sp=self._sp(), rows=n * self.section.group_size, unique=n,
                 prompt_len=max(len(self.tokenizer.encode(t)) for t in PROMPTS))]

  def rollout(self, items: Sequence[Mapping[str, Any]], seed: int) -> Rollout:
    c, g = self.section, self.section.group_size
    sp = self._sp()
    prompt_ids = [list(self.tokenizer.encode(it["text"])) for it in items]
    reqs = [Request(prompt_ids[i], i * g + j) for i in range(len(items)) for j in range(g)]
    outs = self.engine.generate(reqs, sp, seed)
    rewards = np.array([target_fraction(o.tokens, c.every) for o in outs])
    groups = rewards.reshape(-1, g)
    metrics = {M.REWARD_GROUP_MIN: float(groups.min(1).mean()), M.REWARD_GROUP_MEAN: float(groups.mean()),
               M.REWARD_GROUP_MAX: float(groups.max(1).mean()), M.TIME_JUDGE: 0.0}
    return Rollout(rows=[Row(r.prompt_ids, o.tokens, o.logprobs, i) for i, (r, o) in enumerate(zip(reqs, outs))
                         if o.tokens],
                   rewards=rewards, groups=np.repeat(np.arange(len(items)), g), valid=np.ones(len(outs), bool),
                   metrics=metrics, samples=[{"prompt": items[i // g]["id"], "tokens": o.tokens}
                                             for i, o in enumerate(outs)])

  def records(self, rollout: Rollout, step: int) -> list[dict[str, Any]]:
    return []

  def evaluate(self, seed: int) -> dict[str, float]:
    return {}

  def sample_text(self, rollout: Rollout, step: int) -> str | None:
    return None
