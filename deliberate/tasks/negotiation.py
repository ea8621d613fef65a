"""The paper's mode: two persona agents of one policy negotiate each (dilemma, persona pair) G times; the CA score
of Agent 1's final completion (0 without agreement) is the reward of every turn of the dialogue."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from deliberate import metric_names as M
from deliberate.data import loader
from deliberate.model import tokenizer as tok_lib
from deliberate.negotiation import episode, metrics as neg_metrics, prompts, records
from deliberate.negotiation.rows import dialogue_rows
from deliberate.tasks.base import Rollout


class Task:
  name = "negotiation"

  def __init__(self, config: ml_collections.ConfigDict, engine, tokenizer, judge, data_dir: str):
    self.config, self.tokenizer = config, tokenizer
    self.section = config.negotiation
    self.temperature = self.section.turn_temperature
    self.data = loader.PromptIterator(data_dir, config.seed, config.data.prompts_per_step, jax.process_index(),
                                      jax.process_count())
    self.negotiator = episode.Negotiator(engine, tokenizer, judge, self.section)
    self.eval_items = (episode.eval_items(loader.eval_conflict_tasks(data_dir)[:config.eval_tasks])
                       if config.eval_every else [])

  def check_context(self, max_seq_len: int) -> None:
    """The longest turn prompt and completion prompt this config can build, from the longest prompts of the data."""
    n = self.section
    candidates = sorted((self.data.prompt_at(i) for i in range(min(self.data.num_items, 512))),
                        key=lambda it: len(it["dilemma"]["text"]) + len(str(it["pair"])))[-16:]
    opening_ids = lambda it: tok_lib.render_ids(self.tokenizer, prompts.turn_messages(
        it["dilemma"], it["pair"]["a"], it["pair"]["b"], []))
    opening, item = max(((len(opening_ids(it)), it) for it in candidates), key=lambda x: x[0])
    need = opening + (n.context_turns + 1) * (n.max_turn_tokens + 16)
    final = opening + n.max_turns * (n.max_turn_tokens + 16) + n.max_completion_tokens
    what = f"dilemma {item['dilemma']['id']} with pair {item['pair']['pair_id']}"
    for label, size in (("a turn prompt", need), ("the completion prompt", final)):
      if size > max_seq_len:
        raise ValueError(f"config: {label} for {what} can reach {size} tokens, beyond the model's context of "
                         f"{max_seq_len} (config.model / config.negotiation.max_turn_tokens)")

  def rollout(self, items: Sequence[Mapping[str, Any]], seed: int) -> Rollout:
    waited = self.negotiator.timings["judge_wait_s"]
    dialogues = self.negotiator.run(items, seed)
    metrics = neg_metrics.step_metrics(dialogues, self.section.group_size)
    metrics[M.TIME_JUDGE] = self.negotiator.timings["judge_wait_s"] - waited
    return Rollout(rows=dialogue_rows(dialogues, self.section.agent1_only),
                   rewards=np.array([d.reward for d in dialogues]),
                   groups=np.array([d.group for d in dialogues]),
                   valid=np.array([not d.excluded for d in dialogues]),
                   metrics=metrics, samples=dialogues)

  def records(self, rollout: Rollout, step: int) -> list[dict[str, Any]]:
    return [records.dialogue_record(d, step) for d in rollout.samples]

  def evaluate(self, seed: int) -> dict[str, float]:
    """Figure 2's evaluation-set dynamics: the fixed eval tasks, a completion always written."""
    if not self.eval_items:
      return {}
    dialogues = self.negotiator.run(self.eval_items, seed=seed, evaluation=True)
    m = neg_metrics.step_metrics(dialogues, self.section.group_size)
    return {f"{M.EVAL_PREFIX}{k}": v for k, v in m.items()}

  def sample_text(self, rollout: Rollout, step: int) -> str | None:
    if not rollout.samples:
      return None
    best = max(rollout.samples, key=lambda d: (d.rounds > 1, d.agreed, d.reward, d.rounds))  # a real exchange
    return "A sample dialogue from the last step:\n" + records.format_record(records.dialogue_record(best, step))
