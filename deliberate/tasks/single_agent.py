"""The predecessor's self-rewarding baseline: G answers per open-ended question, each scored 0-5 for CA by the judge
(the policy itself under the `model` backend); the score is the answer's reward."""
from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from deliberate import metric_names as M
from deliberate.data import loader
from deliberate.judge import judges
from deliberate.model import tokenizer as tok_lib
from deliberate.negotiation.records import judge_fields, judge_name
from deliberate.rl.batch import Row
from deliberate.sampling.engine import Request
from deliberate.sampling.sampler import SamplingParams
from deliberate.tasks.base import Rollout

SINGLE_AGENT_SYSTEM = ("You are a thoughtful assistant. Answer in a way that expands the capacity of everyone "
                       "involved to act meaningfully: share knowledge, care for all stakeholders, preserve their "
                       "power to choose, and keep the future open.")


def answer_messages(question: str) -> list[dict[str, str]]:
  """The baseline's prompt: the CA system message and the question."""
  return [{"role": "system", "content": SINGLE_AGENT_SYSTEM}, {"role": "user", "content": question}]


class Task:
  name = "single_agent"

  def __init__(self, config: ml_collections.ConfigDict, engine, tokenizer, judge, data_dir: str):
    self.config, self.engine, self.tokenizer, self.judge = config, engine, tokenizer, judge
    self.section = config.single_agent
    self.temperature = self.section.temperature
    self.row_ids_per_prompt = self.section.group_size
    self.judge_name = judge_name(judge)
    self.data = loader.OpenQuestionIterator(data_dir, config.seed, config.data.prompts_per_step,
                                            jax.process_index(), jax.process_count())

  def _prompt(self, question: str) -> list[int]:
    return tok_lib.render_ids(self.tokenizer, answer_messages(question))

  def check_context(self, max_seq_len: int) -> None:
    longest = max(len(self._prompt(self.data.prompt_at(i)["question"]["question"]))
                  for i in range(self.data.num_items))
    if longest + self.section.max_tokens > max_seq_len:
      raise ValueError(f"config.single_agent.max_tokens: a {longest}-token prompt plus {self.section.max_tokens} "
                       f"new tokens exceeds the model's context of {max_seq_len}")

  def _sp(self) -> SamplingParams:
    c = self.section
    return SamplingParams(temperature=c.temperature, top_p=c.top_p, max_new_tokens=c.max_tokens)

  def sampler_bounds(self) -> list[dict[str, Any]]:
    longest = max(len(self._prompt(self.data.prompt_at(i)["question"]["question"]))
                  for i in range(self.data.num_items))
    n = self.config.data.prompts_per_step
    return [dict(sp=self._sp(), rows=n * self.section.group_size, unique=n, prompt_len=longest)]

  def rollout(self, items: Sequence[Mapping[str, Any]], seed: int) -> Rollout:
    c, g = self.section, self.section.group_size
    questions = [it["question"] for it in items]  # {"id", "domain", "question"}
    sp = self._sp()
    prompt_ids = [self._prompt(q["question"]) for q in questions]
    reqs = [Request(prompt_ids[i], i * g + j) for i in range(len(questions)) for j in range(g)]
    outs = self.engine.generate(reqs, sp, seed)
    texts = [self.tokenizer.decode(o.tokens, skip_special_tokens=True).strip() for o in outs]
    kwargs = [dict(dilemma=questions[i // g]["question"], persona_a=None, persona_b=None, completion=t)
              for i, t in enumerate(texts)]
    t0 = time.time()
    results = self.judge.map(judges.judge_ca, kwargs)
    judge_s = time.time() - t0
    rewards = np.array([float(r.value) if r.ok else 0.0 for r in results])
    valid = np.array([r.ok or c.failed_policy == "zero" for r in results])
    rows = [Row(reqs[i].prompt_ids, o.tokens, o.logprobs, i) for i, o in enumerate(outs) if valid[i]]
    groups = rewards.reshape(-1, g)
    answers = [{"question_id": questions[i // g]["id"], "text": t, "score": r.value if r.ok else None,
                "failure": r.reason} for i, (t, r) in enumerate(zip(texts, results))]
    metrics = {M.REWARD_GROUP_MIN: float(groups.min(1).mean()), M.REWARD_GROUP_MEAN: float(groups.mean()),
               M.REWARD_GROUP_MAX: float(groups.max(1).mean()),
               "judge/ca_failures": int(sum(not r.ok for r in results)),
               M.CA_SCORED: int(sum(r.ok for r in results)), M.CA_FAILED: int(sum(not r.ok for r in results)),
               "single_agent/tokens_per_answer": float(np.mean([len(o.tokens) for o in outs])),
               M.TIME_JUDGE: judge_s}
    scored = [[r.value for r in results[i:i + g] if r.ok] for i in range(0, len(results), g)]
    scored = [x for x in scored if x]  # a step whose every answer failed has no CA score (NaN), never 0
    for key, fn in ((M.CA_GROUP_MIN, min), (M.CA_GROUP_MEAN, np.mean), (M.CA_GROUP_MAX, max)):
      metrics[key] = float(np.mean([fn(x) for x in scored])) if scored else float("nan")
    return Rollout(rows=rows, rewards=rewards, groups=np.repeat(np.arange(len(questions)), g), valid=valid,
                   metrics=metrics, samples=answers)

  def records(self, rollout: Rollout, step: int) -> list[dict[str, Any]]:
    return [{"step": step, **judge_fields(self.judge_name), **a} for a in rollout.samples]

  def evaluate(self, seed: int) -> dict[str, float]:
    return {}

  def sample_text(self, rollout: Rollout, step: int) -> str | None:
    return None
