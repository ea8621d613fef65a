"""Deterministic local judge (lexicon backend): a transparent keyword heuristic, NOT an LLM.

For offline smoke runs and tests only. It reads the rubric tag on the first line of the system prompt and only the
fenced blocks of the user prompt, and answers in the format the parsers read:
- agreement/v*: agreement needs two parties. Yes iff there are at least two turns, the latest turn's agent is not
  the agent of the turn before it, that earlier turn makes a proposal (PROPOSE, or asks a question), and the latest
  turn answers it with an acceptance phrase (AGREE) and no refusal phrase (REFUSE; "I agree, but ..." is one).
  Never on turn 1. Phrases match whole words only: a hyphen joins words, so "the agreed-upon plan" is not "agreed".
- ca-score/v*: 0 if the completion has fewer than MIN_WORDS words; else (aspects with >= MIN_CUES distinct cue words
  among Knowledge, Benevolence, Power, Vitality) + 1 if it addresses every stakeholder (both persona names, or
  words such as "both", "everyone", "all parties"), capped at 5.
- ca-pairwise/v*: the higher (CA score, total distinct CA cues) wins; equal is a tie.
- resolution-pairwise/v*: the higher (distinct RESOLUTION cues + persona names mentioned, total CA cues) wins.
Cue lists: a word matches an entry exactly, or by prefix when the entry ends in '*'.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

MODEL_NAME = "deterministic-local-judge (lexicon)"
MIN_WORDS = 20
MIN_CUES = 1  # cue words an aspect needs to count: with 2, 5 of 7 agreed SmolLM2-135M completions scored 0 (issue
              # 16), too sparse a reward for a smoke run of a small model to learn from

ASPECTS = {
    "knowledge": ("inform*", "evidence", "data", "transparen*", "explain*", "explanation*", "understand*", "learn*",
                  "research*", "clarif*", "disclos*", "fact", "facts", "assess*", "evaluat*", "honest*", "knowledge",
                  "insight*", "educat*", "expert*", "measur*"),
    "benevolence": ("care", "cares", "caring", "wellbeing", "well-being", "welfare", "safe", "safety", "harm*",
                    "respect*", "dignity", "fair", "fairly", "fairness", "compassion*", "empath*", "support*",
                    "kindness", "trust*", "protect*", "health*", "concern*", "needs"),
    "power": ("choice*", "choos*", "option*", "voice*", "consent*", "autonom*", "empower*", "agency", "decid*",
              "decision*", "control*", "resource*", "capacit*", "participat*", "negotiat*", "rights", "access*",
              "skill*", "ownership"),
    "vitality": ("sustain*", "long-term", "future", "grow*", "resilien*", "adapt*", "revisit*", "review*", "renew*",
                 "thriv*", "ongoing", "relationship*", "pilot*", "iterat*", "flourish*", "energ*", "momentum",
                 "innovat*", "evolv*"),
}
RESOLUTION = ("compromis*", "agree*", "mutual*", "middle", "split*", "shar*", "balanc*", "exchange", "trade-off*",
              "tradeoff*", "plan", "step*", "timeline*", "trial*", "phase*", "commit*", "resolv*", "resolution",
              "together", "joint*")
STAKEHOLDERS = re.compile(r"\b(both|everyone|everybody|all (?:parties|stakeholders|involved|sides)|"
                          r"each (?:party|side))\b")
# Whole-word boundaries that also treat '-' and "'" as word characters: "agreed-upon" and "agreed's" never match.
_B, _E = r"(?<![\w'-])", r"(?![\w-])"


def _phrases(*alternatives: str) -> re.Pattern:
  return re.compile("|".join(f"{_B}(?:{a}){_E}" for a in alternatives), re.M)


# An acceptance may carry one adverb or a modal ("I completely agree", "we will accept") or an attitude ("I'm happy
# to accept"): the forms SmolLM2-135M writes (issue 16); advice ("You should accept") is none of them.
AGREE = _phrases(r"(?:i|we) (?:\w+ )?agree", r"agreed", r"(?:it'?s|we have) a deal", r"^deal",
                 r"(?:i|we) (?:\w+ )?accept", r"(?:i'?m|i am|we'?re|we are) (?:happy|glad|willing|ready) to "
                 r"(?:agree|accept)", r"sounds good", r"(?:that )?works for me", r"let'?s do it",
                 r"let'?s go with", r"i'?m on board", r"count me in")
REFUSE = _phrases(r"(?:don'?t|do not|can'?t|cannot|won'?t|will not|not|never) (?:\w+ )?(?:agree|accept)\w*",
                  r"disagree\w*", r"no deal", r"reject\w*", r"not agreed", r"unacceptable", r"not acceptable",
                  # a qualified acceptance is a counter-proposal: SmolLM2 trained on the older rule learned to open
                  # every turn "I agree, but ..." (issue 16, bench/learning.py)
                  r"(?:agree|accept)\w*,? (?:but|however|though|only if)")
# What the other party's turn must contain for an acceptance to answer it: an offer, a plan, a suggestion or a
# question ("Ship a smaller release Friday?").
PROPOSE = _phrases(r"propos\w*", r"suggest\w*", r"offer\w*", r"how about", r"what if", r"let'?s", r"let us",
                   r"(?:we|you|i) (?:could|can|should|would|will)", r"i'?d (?:like|suggest|recommend)",
                   r"recommend\w*", r"plan\w*", r"in exchange", r"(?:would|could|will) you", r"if you",
                   r"compromis\w*", r"deal")
_TURN = re.compile(r"TURN(\d+)_AGENT([12])")


def agreement_reason(turns: Sequence[tuple[int, str]]) -> tuple[bool, str]:
  """(agreed, why) for (agent, text) turns, oldest first: the two-party rule of the module docstring."""
  if len(turns) < 2:
    return False, "only one turn: a party cannot agree before the other has spoken"
  (prev_agent, prev), (agent, last) = turns[-2], turns[-1]
  if agent == prev_agent:
    return False, f"the last two turns are both Agent {agent}'s: no proposal from the other party to answer"
  proposal = PROPOSE.findall(prev.lower()) + (["?"] if "?" in prev else [])
  agree, refuse = AGREE.findall(last.lower()), REFUSE.findall(last.lower())
  why = (f"Agent {prev_agent}'s proposal cues {proposal}; Agent {agent}'s acceptance cues {agree}, "
         f"refusal cues {refuse}")
  return bool(proposal and agree and not refuse), why


_BEGIN = re.compile(r"^<<<BEGIN (\S+) ([0-9a-f]{32})>>>$")
_WORD = re.compile(r"[a-z]+(?:['-][a-z]+)*")


def fenced_blocks(text: str) -> list[tuple[str, str]]:
  """(label, content) of each top-level fenced block; fence-like lines inside a block stay content."""
  lines, out, i = text.split("\n"), [], 0
  while i < len(lines):
    m = _BEGIN.match(lines[i])
    if m:
      end = f"<<<END {m.group(1)} {m.group(2)}>>>"
      if end in lines[i + 1:]:
        j = lines.index(end, i + 1)
        out.append((m.group(1), "\n".join(lines[i + 1:j])))
        i = j
    i += 1
  return out


def _cues(text: str, entries: Sequence[str]) -> list[str]:
  words = set(_WORD.findall(text.lower()))
  hits = []
  for e in entries:
    if e.endswith("*") and any(w.startswith(e[:-1]) for w in words):
      hits.append(e[:-1])
    elif e in words:
      hits.append(e)
  return hits


def _names(blocks: dict[str, str]) -> list[str]:
  names = []
  for label in ("PERSONA_A", "PERSONA_B"):
    m = re.match(r"Name: (.+)", blocks.get(label, ""))
    if m:
      names.append(m.group(1).strip().lower())
  return names


def ca_breakdown(completion: str, names: Sequence[str]) -> tuple[int, int, str]:
  """(score, total distinct cues, explanation)."""
  hits = {a: _cues(completion, cues) for a, cues in ASPECTS.items()}
  total = sum(len(h) for h in hits.values())
  n_words = len(_WORD.findall(completion.lower()))
  if n_words < MIN_WORDS:
    return 0, total, f"only {n_words} words (< {MIN_WORDS})"
  covered = sum(len(h) >= MIN_CUES for h in hits.values())
  low = completion.lower()
  everyone = bool(STAKEHOLDERS.search(low)) or (len(names) == 2 and all(n in low for n in names))
  why = ", ".join(f"{a} {len(h)} [{', '.join(h)}]" for a, h in hits.items())
  return min(5, covered + int(everyone)), total, (f"{why}; aspects with >= {MIN_CUES} cues: {covered}; "
                                                   f"all stakeholders addressed: {'yes' if everyone else 'no'}")


def _resolution(response: str, names: Sequence[str]) -> tuple[int, int, str]:
  hits = _cues(response, RESOLUTION)
  named = [n for n in names if n in response.lower()]
  _, ca_total, _ = ca_breakdown(response, names)
  return len(hits) + len(named), ca_total, f"resolution cues [{', '.join(hits)}], parties named {len(named)}"


def _pairwise(key_a: tuple[int, int, str], key_b: tuple[int, int, str]) -> str:
  winner = "A" if key_a[:2] > key_b[:2] else "B" if key_b[:2] > key_a[:2] else "tie"
  return f"A: {key_a[2]} -> {key_a[:2]}; B: {key_b[2]} -> {key_b[:2]}.\nWinner: {winner}"


def answer(messages: Sequence[Mapping[str, str]]) -> str:
  """The lexicon judge's reply to a deliberate judge prompt; ValueError for any other prompt."""
  if not messages or messages[0].get("role") != "system":
    raise ValueError("messages[0]: the lexicon judge needs deliberate's system prompt with a [rubric: ...] tag")
  m = re.match(r"\[rubric: ([a-z-]+)/v\d+\]", messages[0].get("content", ""))
  if not m:
    raise ValueError("messages[0].content: no [rubric: name/vN] tag on the first line; the lexicon judge only "
                     "answers deliberate's judge rubrics")
  blocks = fenced_blocks("\n\n".join(x.get("content", "") for x in messages[1:] if x.get("role") == "user"))
  named = dict(blocks)
  names = _names(named)
  head = "deterministic local judge (lexicon heuristic, not an LLM): "
  rubric = m.group(1)
  if rubric == "agreement":
    turns = [(int(m.group(2)), c) for label, c in blocks if (m := _TURN.fullmatch(label))]
    if not turns:
      raise ValueError("agreement prompt has no fenced TURN<i>_AGENT<a> blocks")
    agreed, why = agreement_reason(turns)
    return f"{head}{why}.\nVerdict: {'yes' if agreed else 'no'}"
  if rubric == "ca-score":
    score, _, why = ca_breakdown(named.get("COMPLETION", ""), names)
    return f"{head}{why}.\nScore: {score}"
  if rubric == "ca-pairwise":
    return head + _pairwise(ca_breakdown(named.get("RESPONSE_A", ""), names),
                            ca_breakdown(named.get("RESPONSE_B", ""), names))
  if rubric == "resolution-pairwise":
    return head + _pairwise(_resolution(named.get("RESPONSE_A", ""), names),
                            _resolution(named.get("RESPONSE_B", ""), names))
  raise ValueError(f"messages[0].content: unknown rubric {rubric!r} for the lexicon judge")
