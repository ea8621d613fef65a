"""Versioned negotiation prompts. Sampled turns enter them as ids (token-in/token-out), never as re-tokenised text.

Written for small instruct models too: short, concrete, in character, and explicit about how to signal agreement,
so that a 135M model produces something a reader recognises as a negotiation, in turns short enough to finish
within the turn budget.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

PROMPT_VERSION = "negotiation-v3"  # v3: short turns (issue 16)

TURN_SYSTEM = (
    "You are {name}. {description}\n"
    "You value: {values}. Your priorities: {priorities}. You will never accept: {red_lines}.\n"
    "You are negotiating with {other}, who sees things differently, to reach a resolution of the dilemma that "
    "you can both accept. Speak only for yourself, directly to {other}. Keep every reply to one or two short "
    "sentences. If their latest proposal is acceptable to you, begin your reply with \"I agree\".")

# The length instruction sits in the user message, right before the reply: SmolLM2-135M ignores it in the system
# message (97% of 64-token turns cut) and mostly follows it here (53% at 64 tokens; issue 16).
OPENING = "Dilemma: {dilemma}\n\nYou speak first. In one sentence, propose a concrete resolution."
CONTINUE = "Dilemma: {dilemma}\n\nThe most recent messages of the negotiation:\n"
REPLY = ("\nReply to {other} in one short sentence: accept their proposal (\"I agree\") or make one "
         "counter-proposal.")

COMPLETION_SYSTEM = (
    "You are {name}. You and {other} have negotiated the dilemma below. Write the final resolution you agreed on, "
    "as a clear answer to the dilemma: what will be done, by whom, and how it serves everyone involved.")
COMPLETION_USER = "Dilemma: {dilemma}\n\nParties:\n- {a_line}\n- {b_line}\n\nThe full negotiation:\n"
COMPLETION_TAIL = "\nNow write the final resolution."


def persona_line(p: Mapping[str, Any]) -> str:
  return f"{p['name']}: values {', '.join(p['values'])}"


def dilemma_text(d: Mapping[str, Any]) -> str:
  return d["text"]


def _system(speaker: Mapping[str, Any], other: Mapping[str, Any]) -> str:
  return TURN_SYSTEM.format(name=speaker["name"], description=speaker.get("description", ""),
                            values=", ".join(speaker["values"]), priorities=", ".join(speaker["priorities"]),
                            red_lines=", ".join(speaker["red_lines"]), other=other["name"])


def turn_messages(dilemma: Mapping[str, Any], speaker: Mapping[str, Any], other: Mapping[str, Any],
                  recent: Sequence[tuple[Mapping[str, Any], Sequence[int]]]) -> list[dict[str, Any]]:
  """System: the speaker's persona and instructions. User: the dilemma and the `recent` turns (speaker, ids)."""
  if not recent:
    user: list[Any] = [OPENING.format(dilemma=dilemma_text(dilemma))]
  else:
    user = [CONTINUE.format(dilemma=dilemma_text(dilemma))]
    for who, ids in recent:
      label = "Your message" if who is speaker else f"{who['name']}'s message"
      user += [f"\n{label}:\n\"", list(ids), "\"\n"]
    user.append(REPLY.format(other=other["name"]))
  return [{"role": "system", "content": _system(speaker, other)}, {"role": "user", "content": user}]


def completion_messages(dilemma: Mapping[str, Any], agent1: Mapping[str, Any], agent2: Mapping[str, Any],
                        turns: Sequence[tuple[Mapping[str, Any], Sequence[int]]]) -> list[dict[str, Any]]:
  """Agent 1 writes the final completion from the dilemma, both personas and the whole dialogue."""
  user: list[Any] = [COMPLETION_USER.format(dilemma=dilemma_text(dilemma), a_line=persona_line(agent1),
                                            b_line=persona_line(agent2))]
  for who, ids in turns:
    user += [f"\n{who['name']}:\n\"", list(ids), "\"\n"]
  user.append(COMPLETION_TAIL)
  return [{"role": "system", "content": COMPLETION_SYSTEM.format(name=agent1["name"], other=agent2["name"])},
          {"role": "user", "content": user}]
