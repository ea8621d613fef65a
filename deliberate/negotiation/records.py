"""Dialogue records: appended to rotating JSONL files, flushed per record so a crash loses nothing written."""
from __future__ import annotations

import glob
import json
import os
import textwrap
from typing import Any, Iterator

from deliberate.negotiation.dialogue import Dialogue
from deliberate.negotiation.prompts import PROMPT_VERSION


LEXICON_NOTE = "deterministic local judge (lexicon: a keyword heuristic, not an LLM; its scores are not CA judgements)"


def judge_name(judge) -> str:
  """The model name a judge's answers come from (the embedded server's own name, e.g. the lexicon's)."""
  client = getattr(judge, "client", None)
  return str(getattr(client, "model", "") or getattr(getattr(judge, "config", None), "model", "") or "unknown judge")


def is_lexicon(name: str) -> bool:
  return "lexicon" in (name or "")


def score_label(name: str) -> str:
  """What a score from this judge is called wherever it is shown: never plain 'CA' for the keyword heuristic."""
  return "lexicon-CA" if is_lexicon(name) else "CA"


def judge_fields(name: str) -> dict[str, str]:
  """Every record stores which judge produced its verdicts and scores."""
  return {"judge": name, "judge_kind": LEXICON_NOTE if is_lexicon(name) else "LLM judge"}


def dialogue_record(d: Dialogue, step: int, judge: str = "unknown judge") -> dict[str, Any]:
  return {
      "step": step, **judge_fields(judge), "index": d.index, "group": d.group, "prompt_version": PROMPT_VERSION,
      "dilemma_id": d.dilemma["id"], "pair_id": d.pair["pair_id"],
      "agent1": d.agent1["id"], "agent2": d.agent2["id"],
      "turns": [{"agent": t.agent, "text": t.text, "ids": t.response_ids, "stop_reason": t.stop_reason,
                 "agreed": t.agreed, "judge_latency_s": round(t.judge_latency_s, 4),
                 "judge_failure": t.judge_failure} for t in d.turns],
      "agreed": d.agreed, "rounds": d.rounds, "completion": d.completion_text, "completion_ids": d.completion_ids,
      "score": d.score, "reward": d.reward, "ca_latency_s": round(d.ca_latency_s, 4),
      "failed": d.failed, "failure": d.failure, "excluded": d.excluded,
  }


def format_record(r: dict) -> str:
  """A dialogue record for a human reader."""
  label = score_label(r.get("judge", ""))
  lines = [f"== step {r['step']} dialogue {r['index']} (group {r['group']}) | dilemma {r['dilemma_id']} | "
           f"pair {r['pair_id']}: {r['agent1']} vs {r['agent2']}"]
  for i, t in enumerate(r["turns"], 1):
    verdict = {True: "agreed", False: "no agreement", None: f"judge failed ({t.get('judge_failure')})"}[t["agreed"]]
    cut = ", cut at the token limit" if t.get("stop_reason") == "length" else ""
    lines.append(f"-- turn {i}, Agent {t['agent']} [{verdict}{cut}]")
    lines.append(textwrap.fill(t["text"], 100, initial_indent="   ", subsequent_indent="   "))
  if r.get("completion"):
    lines.append("-- final completion (Agent 1)")
    lines.append(textwrap.fill(r["completion"], 100, initial_indent="   ", subsequent_indent="   "))
  status = "FAILED: " + r["failure"] if r["failed"] else ("agreed" if r["agreed"] else "no agreement")
  lines.append(f"-- {status} after {r['rounds']} turns | {label} score {r['score']} | reward {r['reward']}")
  lines.append(f"-- verdicts and scores by: {r.get('judge', 'unknown judge (record predates judge labels)')}"
               + (f" = {LEXICON_NOTE}" if is_lexicon(r.get("judge", "")) else ""))
  return "\n".join(lines)


class RecordWriter:
  """Appends to `<dir>/<prefix>-NNNNN.jsonl`, starting a new file past `max_bytes`; resumes the last file."""

  def __init__(self, directory: str, prefix: str = "dialogues", max_bytes: int = 64 << 20):
    self.directory, self.prefix, self.max_bytes = directory, prefix, max_bytes
    os.makedirs(directory, exist_ok=True)
    existing = sorted(glob.glob(os.path.join(directory, f"{prefix}-*.jsonl")))
    self._index = int(existing[-1].rsplit("-", 1)[1].split(".")[0]) if existing else 0
    self._file = None

  @property
  def path(self) -> str:
    return os.path.join(self.directory, f"{self.prefix}-{self._index:05d}.jsonl")

  def write(self, record: dict[str, Any]) -> None:
    if self._file is None:
      self._file = open(self.path, "a", encoding="utf-8")
    if self._file.tell() >= self.max_bytes:
      self._file.close()
      self._index += 1
      self._file = open(self.path, "a", encoding="utf-8")
    self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
    self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None


def read_records(path: str) -> Iterator[dict[str, Any]]:
  """Records from a file or every `*.jsonl` in a directory, in order; a bad line names its file and line."""
  files = sorted(glob.glob(os.path.join(path, "*.jsonl"))) if os.path.isdir(path) else [path]
  for f in files:
    with open(f, encoding="utf-8") as fh:
      for n, line in enumerate(fh, 1):
        if line.strip():
          try:
            yield json.loads(line)
          except json.JSONDecodeError as e:
            raise ValueError(f"{f}:{n}: not a JSON record ({e.msg})") from None
