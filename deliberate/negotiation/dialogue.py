"""One negotiation dialogue and the steps that move it: its data (`Dialogue`, `Turn`) and `DialogueSteps`.

Both schedulers (negotiation/scheduler.py) compose these steps; negotiation/episode.py's `Negotiator` picks one. Every
sampled row is keyed by (dialogue, turn): `row id = dialogue * (max_turns + 1) + turn`, the completion in the last
slot, never by batch position, so any schedule gives the same tokens for the same seed and judge.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Sequence

import ml_collections

from deliberate.judge import judges
from deliberate.model import tokenizer as tok_lib
from deliberate.negotiation import prompts
from deliberate.sampling.engine import Request, SamplingEngine
from deliberate.sampling.sampler import SamplingParams


@dataclasses.dataclass
class Turn:
  agent: int                         # 1 or 2
  prompt_ids: list[int]
  response_ids: list[int]
  logprobs: list[float]              # tempered-policy log-probs of response_ids, as sampled
  text: str
  stop_reason: str
  agreed: bool | None = None         # the agreement judge's verdict after this turn (None: failed)
  judge_latency_s: float = 0.0
  judge_failure: str | None = None


@dataclasses.dataclass
class Dialogue:
  index: int                         # position in the step's batch
  group: int                         # index of its (dilemma, persona pair) within the step
  dilemma: Mapping[str, Any]
  pair: Mapping[str, Any]
  turns: list[Turn] = dataclasses.field(default_factory=list)
  agreed: bool = False
  failed: bool = False               # a judge answer could not be had after its retries
  failure: str | None = None
  completion_prompt_ids: list[int] = dataclasses.field(default_factory=list)
  completion_ids: list[int] = dataclasses.field(default_factory=list)
  completion_text: str = ""
  score: int | None = None
  ca_latency_s: float = 0.0
  reward: float = 0.0
  excluded: bool = False             # left out of its group's advantage statistics (failed + 'exclude')

  @property
  def agent1(self) -> Mapping[str, Any]:
    return self.pair["a"]

  @property
  def agent2(self) -> Mapping[str, Any]:
    return self.pair["b"]

  @property
  def active(self) -> bool:
    return not (self.agreed or self.failed)

  @property
  def rounds(self) -> int:
    return len(self.turns)

  def persona(self, agent: int) -> Mapping[str, Any]:
    return self.agent1 if agent == 1 else self.agent2


def eval_items(tasks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Negotiator items from evaluation tasks: Agent 1 always plays the pair's persona 'a' (no role swap)."""
  items = []
  for i, t in enumerate(tasks):
    if not isinstance(t.get("pair"), Mapping) or "a" not in t["pair"] or "b" not in t["pair"]:
      raise ValueError(f"evaluation task {t.get('id', i)!r}: no persona pair with 'a' and 'b' under 'pair'")
    items.append({"dilemma": {k: v for k, v in t.items() if k != "pair"}, "pair": t["pair"]})
  return items


def _judge_turns(d: Dialogue, limit: int) -> list[dict[str, Any]]:
  shown = d.turns[-limit:] if limit else d.turns
  return [{"agent": t.agent, "name": d.persona(t.agent)["name"], "text": t.text} for t in shown]


_TURN_STOP_TEXT = {"paragraph": "\n\n", "newline": "\n"}


def _ends_sentence(text: str) -> bool:
  """A token that closes a sentence: its text, less trailing blanks and closing quotes, ends in . ! or ? after no
  letter or digit of the same token ("." "?" ".\n" '."' yes; "Mr." "3." no, so abbreviations and numbers go on)."""
  core = text.rstrip().rstrip("\"')”’").rstrip()
  return bool(core) and core[-1] in ".!?" and not any(ch.isalnum() for ch in core)


def turn_stop_ids(tokenizer, kind: str) -> tuple[int, ...]:
  """The ids that end a turn, as a chat reply ends at its stop: a paragraph break, any newline, or the end of a
  sentence. Found by decoding every id once (about a second for a 49k vocabulary)."""
  if kind == "none":
    return ()
  texts = (tokenizer.decode([i]) for i in range(len(tokenizer)))
  if kind == "sentence":
    return tuple(i for i, t in enumerate(texts) if _ends_sentence(t))
  return tuple(i for i, t in enumerate(texts) if _TURN_STOP_TEXT[kind] in t)


class DialogueSteps:
  """The per-dialogue steps both schedulers compose: render a dialogue's next request, sample a set of dialogues in
  one engine call, judge one dialogue, apply a verdict or a score. One policy plays both agents (Agent 2 shares
  Agent 1's params within a step)."""

  def __init__(self, engine: SamplingEngine, tokenizer, judge, config: ml_collections.ConfigDict):
    self.engine, self.tokenizer, self.judge, self.config = engine, tokenizer, judge, config
    c = config
    self.turn_sp = SamplingParams(temperature=c.turn_temperature, top_p=c.turn_top_p, max_new_tokens=c.max_turn_tokens)
    self.completion_sp = SamplingParams(temperature=c.completion_temperature, top_p=c.completion_top_p,
                                        max_new_tokens=c.max_completion_tokens)
    self.stop = tok_lib.stop_ids(tokenizer)
    self.turn_stop_ids = turn_stop_ids(tokenizer, c.get("turn_stop", "none"))
    self.slots = c.max_turns + 1  # row ids: dialogue * slots + turn; the last slot is the completion's
    self.timings = {"sample_s": 0.0, "judge_wait_s": 0.0}  # cumulative: sampling vs waiting on the judge
    self.sample_calls: list[tuple[str, int]] = []  # (kind, rows) of every engine call, for tests and benches

  def _render(self, messages) -> list[int]:
    return tok_lib.render_ids(self.tokenizer, messages, add_generation_prompt=True, stop=self.stop)

  def _generate(self, requests: Sequence[Request], sp: SamplingParams, seed: int, kind: str) -> list:
    t0 = time.time()
    extra = {"stop_ids": self.turn_stop_ids} if kind == "turn" and self.turn_stop_ids else {}
    outs = self.engine.generate(requests, sp, seed, **extra) if requests else []
    self.timings["sample_s"] += time.time() - t0
    if requests:
      self.sample_calls.append((kind, len(requests)))
    return outs

  def turn_request(self, d: Dialogue, t: int | None = None) -> Request:
    """The request of turn t (default: the next one) of d; its row id names (dialogue, turn)."""
    t = len(d.turns) if t is None else t
    agent = 1 if t % 2 == 0 else 2
    recent = d.turns[:t][-self.config.context_turns:] if t else []  # context_turns = 0: all
    messages = prompts.turn_messages(d.dilemma, d.persona(agent), d.persona(3 - agent),
                                     [(d.persona(x.agent), x.response_ids) for x in recent])
    return Request(self._render(messages), d.index * self.slots + t)

  def sample_turns(self, dialogues: Sequence[Dialogue], seed: int) -> list[Turn]:
    """The next turn of every dialogue given, in one engine call."""
    requests = [self.turn_request(d) for d in dialogues]
    outs = self._generate(requests, self.turn_sp, seed, "turn")
    return [Turn(1 if len(d.turns) % 2 == 0 else 2, list(r.prompt_ids), o.tokens, o.logprobs,
                 self.tokenizer.decode(o.tokens, skip_special_tokens=True).strip(), o.stop_reason)
            for d, r, o in zip(dialogues, requests, outs)]

  def agreement_kwargs(self, d: Dialogue) -> dict[str, Any]:
    return dict(dilemma=d.dilemma, persona_a=d.agent1, persona_b=d.agent2,
                turns=_judge_turns(d, self.config.agreement_judge_turns))

  def submit_agreement(self, dialogues: Sequence[Dialogue]):
    """One future for the agreement verdicts of the dialogues given, in their order."""
    return self.judge.map_async(judges.judge_agreement, [self.agreement_kwargs(d) for d in dialogues])

  def wait(self, future):
    """A judge future's results, the wait counted as judge time."""
    t0 = time.time()
    out = future.result()
    self.timings["judge_wait_s"] += time.time() - t0
    return out

  @staticmethod
  def apply_verdict(d: Dialogue, res) -> None:
    """The agreement judge's answer on d's latest turn: agreed, not yet, or a failure that ends d alone."""
    turn = d.turns[-1]
    turn.judge_latency_s = res.latency_s
    if not res.ok:
      turn.judge_failure = res.reason
      d.failed, d.failure = True, f"agreement judge: {res.reason}"
    else:
      turn.agreed = bool(res.value)
      d.agreed = turn.agreed

  def writes_completion(self, d: Dialogue, evaluation: bool) -> bool:
    return not d.failed and (d.agreed or evaluation)

  def completion_request(self, d: Dialogue) -> Request:
    msgs = prompts.completion_messages(d.dilemma, d.agent1, d.agent2,
                                       [(d.persona(t.agent), t.response_ids) for t in d.turns])
    d.completion_prompt_ids = self._render(msgs)
    return Request(d.completion_prompt_ids, d.index * self.slots + self.slots - 1)

  def sample_completions(self, writers: Sequence[Dialogue], seed: int) -> None:
    requests = [self.completion_request(d) for d in writers]
    for d, o in zip(writers, self._generate(requests, self.completion_sp, seed, "completion")):
      d.completion_ids = o.tokens
      d.completion_text = self.tokenizer.decode(o.tokens, skip_special_tokens=True).strip()

  @staticmethod
  def ca_kwargs(d: Dialogue) -> dict[str, Any]:
    return dict(dilemma=d.dilemma, persona_a=d.agent1, persona_b=d.agent2, completion=d.completion_text)

  def submit_ca(self, writers: Sequence[Dialogue]):
    """One future for the CA scores of the dialogues given (their completions sampled), in their order."""
    return self.judge.map_async(judges.judge_ca, [self.ca_kwargs(d) for d in writers])

  @staticmethod
  def apply_score(d: Dialogue, res) -> None:
    d.ca_latency_s = res.latency_s
    if res.ok:
      d.score = int(res.value)
    else:
      d.failed, d.failure = True, f"CA judge: {res.reason}"

  def finish(self, dialogues: Sequence[Dialogue]) -> None:
    """Rewards (0 without agreement or score) and group exclusion, the same for both schedulers."""
    for d in dialogues:
      d.reward = float(d.score) if (d.agreed and d.score is not None) else 0.0
      d.excluded = d.failed and self.config.failed_policy == "exclude"
