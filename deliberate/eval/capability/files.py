"""Readers for benchmark files that name the file, line and field at fault: a user's file in the wrong format
should fail before any model is loaded, with enough detail to fix it."""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Iterator

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "data",
                          "capability")
SAMPLES = {"ifeval": "ifeval_sample.jsonl", "gpqa": "gpqa_sample.csv", "aime": "aime_sample.jsonl"}


class FormatError(ValueError):
  """A benchmark file that does not follow its publisher's format."""

  def __init__(self, path: str, line: int | None, field: str | None, message: str):
    where = path + (f":{line}" if line is not None else "") + (f": field {field!r}" if field else "")
    super().__init__(f"{where}: {message}")
    self.path, self.line, self.field = path, line, field


def sample_path(benchmark: str) -> str:
  """The shipped sample set of a benchmark (written by this project, for tests: not the benchmark)."""
  return os.path.join(SAMPLE_DIR, SAMPLES[benchmark])


def read_jsonl(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
  """(line number, object) for every non-blank line."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"benchmark file not found: {path}")
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise FormatError(path, n, None, f"not a JSON object ({e.msg})") from None
      if not isinstance(row, dict):
        raise FormatError(path, n, None, f"not a JSON object (a {type(row).__name__})")
      yield n, row


def read_csv(path: str, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
  """(line number, row) of a CSV with a header row holding `required`; line numbers count the file's physical
  lines, so a quoted field spanning lines still points at the record's first line."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"benchmark file not found: {path}")
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    for name in required:
      if name not in header:
        raise FormatError(path, 1, name, f"missing from the header row (have {header[:8]})")
    start = reader.line_num + 1
    for row in reader:
      if None in row:
        raise FormatError(path, start, None, f"{len(row[None]) + len(header)} columns for a header of {len(header)}")
      yield start, row
      start = reader.line_num + 1


def field(path: str, line: int, row: dict[str, Any], names: tuple[str, ...], kind: type | tuple[type, ...] = str,
          nonempty: bool = True) -> Any:
  """row[name] for the first of `names` present (publishers spell the same field differently), type-checked."""
  for name in names:
    if name in row:
      value = row[name]
      if not isinstance(value, kind) or isinstance(value, bool):
        raise FormatError(path, line, name, f"expected {getattr(kind, '__name__', kind)}, got "
                                            f"{type(value).__name__}")
      if nonempty and isinstance(value, str) and not value.strip():
        raise FormatError(path, line, name, "empty")
      return value
  raise FormatError(path, line, names[0], "missing" + (f" (also looked for {list(names[1:])})" if names[1:] else ""))
