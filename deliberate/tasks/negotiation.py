"""The paper's mode: two persona agents of one policy negotiate each (dilemma, persona pair) G times; the CA score
of Agent 1's final completion (0 without agreement) is the reward of every turn of the dialogue."""
from __future__ import annotations

import sys
import time
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from deliberate import metric_names as M
from deliberate.data import loader
from deliberate.model import tokenizer as tok_lib
from deliberate.negotiation import episode, metrics as neg_metrics, prompts, records
from deliberate.negotiation.rows import dialogue_rows
from deliberate.sampling.shapes import common_prefix
from deliberate.tasks.base import Rollout


class _Progress:
  """The engine as the Negotiator sees it, printing one line per sampling call (turn k of N, the completions)."""

  def __init__(self, engine, section: ml_collections.ConfigDict):
    self._engine, self._section, self.turn = engine, section, 0

  def __getattr__(self, name):
    return getattr(self._engine, name)

  def __setattr__(self, name, value):
    if name in ("_engine", "_section", "turn"):
      object.__setattr__(self, name, value)
    else:
      setattr(self._engine, name, value)

  def generate(self, requests, sp, seed, *args, **kwargs):
    t0 = time.time()
    out = self._engine.generate(requests, sp, seed, *args, **kwargs)
    completion = (sp.temperature == self._section.completion_temperature
                  and sp.max_new_tokens == self._section.max_completion_tokens)
    if not completion:
      self.turn += 1
    what = "final completions" if completion else f"turn {self.turn} of at most {self._section.max_turns}"
    print(f"  .. sampled {what}: {len(requests)} dialogues in {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    return out


class Task:
  name = "negotiation"

  def __init__(self, config: ml_collections.ConfigDict, engine, tokenizer, judge, data_dir: str):
    self.config, self.tokenizer = config, tokenizer
    self.section = config.negotiation
    self.temperature = self.section.turn_temperature
    self.row_ids_per_prompt = self.section.group_size * (self.section.max_turns + 1)  # the Negotiator's row ids
    self.data = loader.PromptIterator(data_dir, config.seed, config.data.prompts_per_step, jax.process_index(),
                                      jax.process_count())
    self._progress = _Progress(engine, self.section)
    self.negotiator = episode.Negotiator(self._progress, tokenizer, judge, self.section)
    self.judge_name = records.judge_name(judge)
    self.eval_items = (episode.eval_items(loader.eval_conflict_tasks(data_dir)[:config.eval_tasks])
                       if config.eval_every else [])

  def _longest_items(self) -> list[Mapping[str, Any]]:
    """The 16 items of longest dilemma and pair text (of the first 512): where the longest prompts come from."""
    if not hasattr(self, "_longest"):
      self._longest = sorted((self.data.prompt_at(i) for i in range(min(self.data.num_items, 512))),
                             key=lambda it: len(it["dilemma"]["text"]) + len(str(it["pair"])))[-16:]
    return self._longest

  def check_context(self, max_seq_len: int) -> None:
    """The longest turn prompt and completion prompt this config can build, from the longest prompts of the data."""
    n = self.section
    opening_ids = lambda it: tok_lib.render_ids(self.tokenizer, prompts.turn_messages(
        it["dilemma"], it["pair"]["a"], it["pair"]["b"], []))
    opening, item = max(((len(opening_ids(it)), it) for it in self._longest_items()), key=lambda x: x[0])
    need = opening + (n.context_turns + 1) * (n.max_turn_tokens + 16)
    final = opening + n.max_turns * (n.max_turn_tokens + 16) + n.max_completion_tokens
    what = f"dilemma {item['dilemma']['id']} with pair {item['pair']['pair_id']}"
    for label, size in (("a turn prompt", need), ("the completion prompt", final)):
      if size > max_seq_len:
        raise ValueError(f"config: {label} for {what} can reach {size} tokens, beyond the model's context of "
                         f"{max_seq_len} (config.model / config.negotiation.max_turn_tokens)")

  def sampler_bounds(self) -> list[dict[str, Any]]:
    """The largest sampler calls of a step (`SamplingEngine.precompile`), from the longest prompts of the data with
    turns of max_turn_tokens ids: the opening turn (one prompt a group, whole), the later turns and the final
    completions of all rows and of two (each group's shared system message and dilemma as a prefix; at most two a
    group, one per agent)."""
    n, neg = self.section, self.negotiator
    groups = self.config.data.prompts_per_step
    rows = n.group_size * groups
    recent = n.context_turns or n.max_turns
    full = lambda who: [(who, [0] * n.max_turn_tokens)]
    opening = prefix = turn = final_prefix = final = 0
    for it in self._longest_items():
      a, b = it["pair"]["a"], it["pair"]["b"]
      d = it["dilemma"]
      opening = max(opening, len(neg._render(prompts.turn_messages(d, a, b, []))))
      for speaker, other in ((a, b), (b, a)):  # turns labelled by either agent; the prefix: at least all before
        variants = [neg._render(prompts.turn_messages(d, speaker, other, sum((full(x) for x in who[:recent]), [])))
                    for who in ([other] * recent, [speaker] * recent, [other, speaker] * recent)]
        # the first turn's label, and before the opening's text when a call mixes openings with later turns
        head = min(common_prefix(variants[0], variants[1]),
                   common_prefix(variants[0], neg._render(prompts.turn_messages(d, speaker, other, []))))
        prefix, turn = max(prefix, head), max(turn, max(len(v) for v in variants) - head)
      variants = [neg._render(prompts.completion_messages(d, a, b, sum((full(x) for x in who), [])))
                  for who in ([a] * n.max_turns, [b] * n.max_turns, ([a, b] * n.max_turns)[:n.max_turns])]
      head = common_prefix(variants[0], variants[1])
      final_prefix, final = max(final_prefix, head), max(final, max(len(v) for v in variants) - head)
    if not self.config.sampling_share_prefixes:  # every prompt whole
      return [dict(sp=neg.turn_sp, rows=rows, prompt_len=max(opening, prefix + turn)),
              dict(sp=neg.completion_sp, rows=rows, prompt_len=final_prefix + final),
              dict(sp=neg.completion_sp, rows=min(2, rows), prompt_len=final_prefix + final)]
    return [dict(sp=neg.turn_sp, rows=rows, prompt_len=opening, unique=groups),
            dict(sp=neg.turn_sp, rows=rows, prompt_len=turn, prefixes=2 * groups, prefix_len=prefix),
            dict(sp=neg.completion_sp, rows=rows, prompt_len=final, prefixes=groups,
                 prefix_len=final_prefix),
            # and for the usual one or two agreements: in the 8-row program a 2-row completion of the quickstart
            # took 12.6 s, 4x its own bucket's time
            dict(sp=neg.completion_sp, rows=min(2, rows), prompt_len=final, prefixes=min(2, groups),
                 prefix_len=final_prefix)]

  def rollout(self, items: Sequence[Mapping[str, Any]], seed: int) -> Rollout:
    waited = self.negotiator.timings["judge_wait_s"]
    self._progress.turn = 0
    dialogues = self.negotiator.run(items, seed)
    metrics = neg_metrics.step_metrics(dialogues, self.section.group_size)
    metrics[M.TIME_JUDGE] = self.negotiator.timings["judge_wait_s"] - waited
    rewards = np.array([d.reward for d in dialogues], np.float64)
    policy = self.section.get("truncated_turns", "keep")
    if policy == "penalize":  # DAPO-style: the dialogue's reward pays for its cut-off turns
      rewards = rewards - self.section.truncation_penalty * np.array(
          [sum(t.stop_reason == "length" for t in d.turns) / max(d.rounds, 1) for d in dialogues])
    return Rollout(rows=dialogue_rows(dialogues, self.section.agent1_only, mask_truncated=policy == "mask"),
                   rewards=rewards,
                   groups=np.array([d.group for d in dialogues]),
                   valid=np.array([not d.excluded for d in dialogues]),
                   metrics=metrics, samples=dialogues)

  def records(self, rollout: Rollout, step: int) -> list[dict[str, Any]]:
    return [records.dialogue_record(d, step, self.judge_name) for d in rollout.samples]

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
    return "A sample dialogue from the last step:\n" + records.format_record(records.dialogue_record(best, step, self.judge_name))
