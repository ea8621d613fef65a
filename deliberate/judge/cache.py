"""Persistent judge cache: re-scoring and evaluation replay for free and bit-for-bit.

The key covers everything that determines the judge's answer (endpoint, model, rubric version, full messages,
sampling parameters) and nothing secret: the API key never reaches this module.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS judge_cache (
  key TEXT PRIMARY KEY,
  rubric_version TEXT NOT NULL,
  model TEXT NOT NULL,
  text TEXT NOT NULL,
  created REAL NOT NULL,
  extra TEXT
)
"""


def cache_key(endpoint: str, model: str, rubric_version: str, messages: list[dict[str, str]],
              params: dict[str, Any]) -> str:
  """sha256 over a canonical JSON encoding, so dict order or whitespace never splits a key."""
  blob = json.dumps({"endpoint": endpoint, "model": model, "rubric_version": rubric_version,
                     "messages": messages, "params": params}, sort_keys=True, ensure_ascii=False,
                    separators=(",", ":"))
  return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeCache:
  """sqlite in WAL mode: many readers and one writer at a time across processes; busy writers wait, not fail."""

  def __init__(self, path: str, busy_timeout_s: float = 30.0):
    self.path = path
    self._lock = threading.Lock()
    try:
      self._db = sqlite3.connect(path, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None)
      self._db.execute("PRAGMA journal_mode=WAL")
      self._db.execute("PRAGMA synchronous=NORMAL")
      self._db.execute(_SCHEMA)
      columns = {row[1] for row in self._db.execute("PRAGMA table_info(judge_cache)")}
      if "extra" not in columns:  # a cache written before verdicts from probabilities: keep its entries
        self._db.execute("ALTER TABLE judge_cache ADD COLUMN extra TEXT")
    except sqlite3.Error as e:
      raise RuntimeError(f"judge cache {path!r}: cannot open ({e})") from e

  def get(self, key: str) -> tuple[str, str] | None:
    """(answer text, model that gave it), or None."""
    with self._lock:
      row = self._db.execute("SELECT text, model FROM judge_cache WHERE key = ?", (key,)).fetchone()
    return None if row is None else (row[0], row[1])

  def get_entry(self, key: str) -> tuple[str, str, dict[str, Any] | None] | None:
    """(answer text, model, extra) or None; extra holds what the text alone does not (verdict probabilities)."""
    with self._lock:
      row = self._db.execute("SELECT text, model, extra FROM judge_cache WHERE key = ?", (key,)).fetchone()
    if row is None:
      return None
    try:
      extra = json.loads(row[2]) if row[2] else None
    except ValueError:
      extra = None  # unreadable extra: the text still answers
    return row[0], row[1], extra if isinstance(extra, dict) else None

  def put(self, key: str, text: str, *, rubric_version: str, model: str, extra: dict[str, Any] | None = None) -> None:
    # INSERT OR REPLACE is atomic; two processes writing the same key write the same deterministic-key entry.
    blob = json.dumps(extra, sort_keys=True) if extra else None
    with self._lock:
      self._db.execute("INSERT OR REPLACE INTO judge_cache (key, rubric_version, model, text, created, extra) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (key, rubric_version, model, text, time.time(), blob))

  def __len__(self) -> int:
    with self._lock:
      return self._db.execute("SELECT COUNT(*) FROM judge_cache").fetchone()[0]

  def close(self) -> None:
    with self._lock:
      self._db.close()
