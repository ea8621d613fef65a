"""More dilemmas, conflict tasks or open questions from any OpenAI-compatible model, through the judge client.

  python -m deliberate.data.generate --kind dilemmas --category everyday --n 400 \
      --out deliberate/data/dilemmas_everyday.jsonl --base_url http://127.0.0.1:8000/v1 --model MODEL \
      --cache /tmp/gen_cache.sqlite --rejects /tmp/rejects.jsonl

Appends to --out until it holds --n items of that kind and category. Every answer is parsed, validated against the
schema and checked for near-duplicates against the shipped files and --out before it is appended. Attempt k's
prompt is a pure function of (kind, category, seed, k), and the next attempt index is saved beside --out after
every processed attempt: rerunning the same command after a kill resumes where it stopped, and an item that was
appended just before the kill comes back as a duplicate and is rejected, so nothing is lost or doubled.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
import random
import re
from pathlib import Path
from typing import Any, Sequence

from absl import app, flags, logging

from deliberate.data import schema
from deliberate.judge.cache import JudgeCache
from deliberate.judge.client import JudgeClient, JudgeRequest, JudgeResult, ParseError
from deliberate.judge.config import default_judge_config

KINDS = ("dilemmas", "conflict", "open")
PROMPT_VERSION = "gen-v1"  # part of the cache key: a new prompt never replays old answers

CATEGORY_BRIEF = {
    "professional": "a high-stakes professional dilemma: someone at work must choose between duties where careers, "
                    "safety, money, health or public trust are at stake",
    "interpersonal": "a complex interpersonal conflict between people who know each other (family, friends, partners,"
                     " neighbours, classmates, colleagues), where loyalties, fairness and feelings pull apart",
    "everyday": "an everyday micro-ethical decision: small, ordinary stakes, the kind of choice people make in "
                "minutes without much thought",
}
DOMAINS = {
    "professional": ["medicine", "nursing", "engineering", "law", "finance", "journalism", "schools", "public policy",
                     "software", "construction", "pharmacy", "aviation", "agriculture", "social work", "research",
                     "retail", "energy", "logistics", "insurance", "hospitality", "policing", "small business"],
    "interpersonal": ["family", "friendship", "partners", "neighbours", "roommates", "colleagues", "in-laws",
                      "co-parenting", "elder care", "school parents", "community groups", "sports clubs",
                      "inheritance", "weddings", "online communities", "siblings", "mentoring"],
    "everyday": ["shopping", "commuting", "food", "money", "social media", "tipping", "recycling", "borrowing",
                 "parking", "pets", "gifts", "queues", "small talk", "noise", "lost property", "gym", "travel"],
    "open": ["technology", "civic life", "work", "family", "education", "health", "environment", "money",
             "community", "science", "culture", "cities", "ageing", "media"],
}
STAKES = ["modest", "moderate", "serious", "severe"]

@dataclasses.dataclass
class Options:
  kind: str
  n: int
  out: str
  category: str | None = None
  base_url: str = "http://127.0.0.1:8000/v1"
  model: str = "gpt-4o-mini"
  api_key_env: str = "OPENAI_API_KEY"
  data_dir: str | None = None
  cache: str = ""
  rejects: str = ""
  seed: int = 0
  concurrency: int = 8
  temperature: float = 0.9
  max_tokens: int = 800
  max_retries: int = 5
  parse_retries: int = 1
  timeout_s: float = 120.0
  dup_threshold: float = schema.DUP_THRESHOLD
  max_attempts: int = 0
  stop_after: int = 0

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"--kind must be one of {KINDS}, got {self.kind!r}")
    if self.kind == "open":
      if self.category is not None:
        raise ValueError("--category does not apply to --kind open")
    elif self.category not in schema.CATEGORIES:
      raise ValueError(f"--kind {self.kind} needs --category, one of {schema.CATEGORIES}; got {self.category!r}")
    if self.n is None or self.n <= 0 or not self.out:
      raise ValueError(f"--n must be > 0 and --out given; got n={self.n!r}, out={self.out!r}")

  @property
  def key(self) -> str:
    """Which stream of attempts an output's progress belongs to."""
    return f"{self.kind}/{self.category or '-'}/seed{self.seed}/{PROMPT_VERSION}"

  @property
  def prefix(self) -> str:
    return {"dilemmas": schema.ID_PREFIX.get(self.category or "", ""), "conflict": "evalc", "open": "open"}[self.kind]


# ----------------------------------------------------------------------------------------------------------------
# What exists already.


def _existing(data_dir: str | None) -> dict[str, list[dict]]:
  """Shipped items by kind; a file that is not there yet is skipped (the set may still be being written)."""
  loaders = {"dilemmas": lambda d: schema.load_dilemmas(schema.CATEGORIES, d), "conflict": schema.load_eval_conflict,
             "open": schema.load_eval_open, "eval_pairs": lambda d: schema.load_pairs("eval", d)}
  out = {}
  for kind, load in loaders.items():
    try:
      out[kind] = load(data_dir)
    except schema.MissingFileError as e:
      logging.warning("generate: %s; not used for deduplication", e)
      out[kind] = []
  return out


def read_output(path: Path, kind: str) -> list[dict]:
  """Validated records of --out; a partial last line (a kill mid-write) is cut off, any other bad line is fatal."""
  if not path.exists():
    return []
  raw = path.read_bytes()
  if raw and not raw.endswith(b"\n"):
    cut = raw.rfind(b"\n") + 1
    try:
      json.loads(raw[cut:])
      raw += b"\n"
    except ValueError:
      logging.warning("generate: %s: dropping a partial last line left by an interrupted run", path)
      raw = raw[:cut]
    path.write_bytes(raw)
  validate = {"dilemmas": schema.validate_dilemma, "open": schema.validate_open,
              "conflict": schema.validate_conflict}[kind]
  rows = schema.read_jsonl(path)
  for where, rec in rows:
    validate(rec, where)
  return [rec for _, rec in rows]


class Progress:
  """Next attempt index per stream, saved atomically beside the output after every processed attempt."""

  def __init__(self, out: Path, key: str):
    self.path, self.key = out.with_name(out.name + ".progress.json"), key
    self.all = json.loads(self.path.read_text()) if self.path.exists() else {}
    self.next_attempt = int(self.all.get(key, 0))

  def advance(self, attempt: int) -> None:
    self.next_attempt = attempt + 1
    self.all[self.key] = self.next_attempt
    tmp = self.path.with_name(self.path.name + ".tmp")
    tmp.write_text(json.dumps(self.all, indent=1, sort_keys=True))
    os.replace(tmp, self.path)


# ----------------------------------------------------------------------------------------------------------------
# Prompts and parsing.


def _fields_wanted(kind: str) -> str:
  if kind == "open":
    return '{"domain": "<one or two words>", "question": "<one open-ended question, 1-2 sentences>"}'
  return ('{"domain": "<one or two words>", "title": "<a short title>", "text": "<the dilemma: 2-6 concrete '
          'sentences naming who is involved and what is at stake>", "considerations": ["<competing consideration>", '
          '"<another>", "..."]}')


def build_messages(opts: Options, attempt: int, existing: dict[str, list[dict]]) -> list[dict[str, str]]:
  """Attempt k's prompt, a pure function of (options, k, shipped data): replays hit the cache exactly."""
  rng = random.Random(f"{opts.key}/{attempt}")
  topic = "open" if opts.kind == "open" else opts.category
  domain = rng.choice(DOMAINS[topic])
  if opts.kind == "open":
    task = ("Write one open-ended question about how to act or live well, where a good answer must weigh the "
            f"interests of several people or groups. Domain: {domain}.")
    pool = existing["open"]
  else:
    task = (f"Write {CATEGORY_BRIEF[opts.category]}. Domain: {domain}. Stakes: {rng.choice(STAKES)}. Make it "
            "concrete and specific, with no obviously right answer, and name the competing considerations.")
    pool = [d for d in existing["dilemmas"] + existing["conflict"] if d["category"] == opts.category]
  if opts.kind == "conflict":
    pairs = existing["eval_pairs"]
    if not pairs:
      raise schema.DataError(f"{schema.EVAL_PERSONAS_FILE}: --kind conflict needs the eval persona pairs")
    pair = pairs[attempt % len(pairs)]
    task += (f" The situation must put these two people in genuine conflict over '{pair['tension']}': "
             + " / ".join(f"{p['name']}: {p['description']}" for p in (pair["a"], pair["b"])))
  fields = ("domain", "question") if opts.kind == "open" else ("domain", "title", "text", "considerations")
  pool = pool[:50]  # a prefix, so that appending to a shipped file does not change earlier prompts
  shots = [json.dumps({f: ex[f] for f in fields}, ensure_ascii=False) for ex in rng.sample(pool, min(2, len(pool)))]
  user = task
  if shots:
    user += "\n\nExamples of the format (write something new; do not reuse their situations):\n" + "\n".join(shots)
  user += f"\n\nAnswer with exactly one JSON object: {_fields_wanted(opts.kind)}\nVariation key: {opts.key}/{attempt}"
  system = "You write varied, realistic material for research on value alignment. You answer only with JSON."
  return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _json_object(text: str) -> dict:
  body = re.sub(r"^\s*```(?:json)?\s*|\s*```\s*$", "", text.strip())
  start, end = body.find("{"), body.rfind("}")
  if start < 0 or end < start:
    raise ParseError("malformed: no JSON object in the answer")
  try:
    obj = json.loads(body[start:end + 1])
  except json.JSONDecodeError as e:
    raise ParseError(f"malformed: invalid JSON ({e.msg} at column {e.colno})") from e
  if not isinstance(obj, dict):
    raise ParseError("malformed: the answer is not a JSON object")
  return obj


def make_record(opts: Options, obj: dict, attempt: int, item_id: str,
                existing: dict[str, list[dict]]) -> dict:
  """The schema record for a model's answer; the id, category and pair are the generator's, not the model's."""
  obj = {k: v.strip() if isinstance(v, str) else v for k, v in obj.items() if k not in ("id", "category", "pair_id")}
  where = f"attempt {attempt}"
  if opts.kind == "open":
    rec = {"id": item_id, **obj}
    schema.validate_open(rec, where)
    return rec
  rec = {"id": item_id, "category": opts.category, **obj}
  if isinstance(rec.get("considerations"), list):
    rec["considerations"] = [c.strip() if isinstance(c, str) else c for c in rec["considerations"]]
  if opts.kind == "conflict":
    pairs = existing["eval_pairs"]
    rec["pair_id"] = pairs[attempt % len(pairs)]["pair_id"]
    schema.validate_conflict(rec, where)
  else:
    schema.validate_dilemma(rec, where, opts.category)
  return rec


# ----------------------------------------------------------------------------------------------------------------
# The loop.


def _judge_config(opts: Options):
  c = default_judge_config()
  c.base_url, c.model, c.api_key_env = opts.base_url, opts.model, opts.api_key_env
  c.max_concurrency, c.max_retries, c.max_parse_retries = opts.concurrency, opts.max_retries, opts.parse_retries
  c.temperature, c.max_tokens, c.timeout_s, c.cache_path = opts.temperature, opts.max_tokens, opts.timeout_s, opts.cache
  # Generation already samples: a re-ask of an unparseable answer resamples the same prompt at the same temperature
  # (the judges' format reminder would change the prompt a generation is keyed by).
  c.parse_retry, c.parse_retry_temperature = "temperature", opts.temperature
  return c


async def run(opts: Options) -> dict[str, Any]:
  """Generates until --out holds --n items (or attempts run out); returns counts for the log and the tests."""
  out = Path(opts.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  mine = read_output(out, opts.kind)  # first: it repairs a partial last line, also in a shipped file
  existing = _existing(opts.data_dir)
  index = schema.NearDupIndex(opts.dup_threshold)
  seen_ids = set()
  shipped = [r for k in ("dilemmas", "conflict", "open") for r in existing[k]]
  for rec in shipped + mine:
    if rec["id"] not in seen_ids:  # --out may be a shipped file itself
      seen_ids.add(rec["id"])
      index.add(rec["id"], schema.dedup_text("open" if "question" in rec else "dilemma", rec))
  numbers = [int(i.rsplit("-", 1)[1]) for i in seen_ids if i.rsplit("-", 1)[0] == opts.prefix]
  next_number = max(numbers, default=0) + 1
  have = sum(1 for r in mine if opts.kind == "open" or r["category"] == opts.category)
  progress = Progress(out, opts.key)
  max_attempts = opts.max_attempts or 4 * opts.n + 8
  counts: collections.Counter[str] = collections.Counter()
  added = 0
  logging.info("generate: %s holds %d/%d %s items; resuming at attempt %d", out, have, opts.n, opts.key,
               progress.next_attempt)

  def stopped() -> bool:
    return bool(opts.stop_after) and added >= opts.stop_after

  cache = JudgeCache(opts.cache) if opts.cache else None
  try:
    async with JudgeClient(_judge_config(opts), cache=cache) as client:
      while have < opts.n and not stopped() and progress.next_attempt < max_attempts:
        want = min(opts.n - have, opts.stop_after - added) if opts.stop_after else opts.n - have
        first = progress.next_attempt
        attempts = range(first, min(first + min(opts.concurrency, want), max_attempts))
        requests = [JudgeRequest(messages=build_messages(opts, a, existing), rubric_version=PROMPT_VERSION,
                                 max_tokens=opts.max_tokens, temperature=opts.temperature) for a in attempts]
        results = await client.complete_many(requests, _json_object)
        for attempt, result in zip(attempts, results):  # in attempt order, whatever order they finished in
          item_id = f"{opts.prefix}-{next_number:03d}"
          reason, detail, rec = _verdict(opts, result, attempt, item_id, existing, index)
          counts[reason] += 1
          if rec is None:
            logging.info("generate: attempt %d rejected (%s): %s", attempt, reason, detail[:300])
            if opts.rejects:
              with open(opts.rejects, "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": opts.key, "attempt": attempt, "reason": reason, "detail": detail,
                                    "text": result.text}, ensure_ascii=False) + "\n")
          else:
            _append(out, rec)
            index.add(item_id, schema.dedup_text(_dedup_kind(opts.kind), rec))
            next_number, have, added = next_number + 1, have + 1, added + 1
          progress.advance(attempt)
          if have >= opts.n or stopped():
            break
  finally:
    if cache is not None:
      cache.close()
  if have < opts.n and not stopped():
    logging.warning("generate: stopped at the attempt limit %d with %d/%d items", max_attempts, have, opts.n)
  return {"out": str(out), "have": have, "target": opts.n, "added": added, "next_attempt": progress.next_attempt,
          "counts": dict(counts)}


def _dedup_kind(kind: str) -> str:
  return "open" if kind == "open" else "dilemma"


def _verdict(opts: Options, result: JudgeResult, attempt: int, item_id: str, existing: dict[str, list[dict]],
           index: schema.NearDupIndex) -> tuple[str, str, dict | None]:
  """(reason, detail, record or None): the verdict on one attempt."""
  if not result.ok:
    if result.reason == "unparseable":  # the parse hook's own message, e.g. 'malformed: ...'
      return result.detail.split(":", 1)[0], result.detail, None
    return f"failed:{result.reason}", result.detail, None
  try:
    rec = make_record(opts, result.value, attempt, item_id, existing)
  except schema.DataError as e:
    return "schema", str(e), None
  dup = index.duplicate_of(schema.dedup_text(_dedup_kind(opts.kind), rec))
  if dup is not None:
    return "near_duplicate", f"near-duplicate of {dup[0]} (jaccard {dup[1]:.2f})", None
  return "accepted", "", rec


def _append(path: Path, rec: dict) -> None:
  """One write per line, flushed and synced: a kill leaves whole lines, at worst one partial last line."""
  with open(path, "a", encoding="utf-8") as f:
    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _define_flags() -> None:
  """Only when run as a program: importing this module must not claim global flag names."""
  flags.DEFINE_enum("kind", "dilemmas", KINDS, "What to generate.")
  flags.DEFINE_enum("category", None, list(schema.CATEGORIES), "Category (dilemmas, conflict).")
  flags.DEFINE_integer("n", None, "Target number of items of this kind and category in --out.")
  flags.DEFINE_string("out", None, "Output JSONL, appended to.")
  flags.DEFINE_string("base_url", "http://127.0.0.1:8000/v1", "OpenAI-compatible endpoint root, up to /v1.")
  flags.DEFINE_string("model", "gpt-4o-mini", "Model name sent in each request.")
  flags.DEFINE_string("api_key_env", "OPENAI_API_KEY", "NAME of the env variable holding the API key ('' = none).")
  flags.DEFINE_string("data_dir", None, "Folder of the existing JSONL files (default: the shipped data).")
  flags.DEFINE_string("cache", "", "sqlite cache of answers ('' = none); replays are free and identical.")
  flags.DEFINE_string("rejects", "", "JSONL of rejected attempts with their reasons ('' = log only).")
  flags.DEFINE_integer("seed", 0, "Seeds every attempt's prompt variation.")
  flags.DEFINE_integer("concurrency", 8, "Requests in flight.")
  flags.DEFINE_float("temperature", 0.9, "Sampling temperature.")
  flags.DEFINE_integer("max_tokens", 800, "Answer budget per item.")
  flags.DEFINE_integer("max_retries", 5, "Transport retries per request (judge client).")
  flags.DEFINE_integer("parse_retries", 1, "Extra asks when an answer holds no JSON object.")
  flags.DEFINE_float("timeout_s", 120.0, "Per-request timeout.")
  flags.DEFINE_float("dup_threshold", schema.DUP_THRESHOLD,
                     "Character 5-gram Jaccard at or above which an item is a near-duplicate.")
  flags.DEFINE_integer("max_attempts", 0, "Stop after this many attempts in total for this output (0 = 4 x n + 8).")
  flags.DEFINE_integer("stop_after", 0, "Stop after this many new items in this run (0 = never); for resume tests.")


def main(argv: Sequence[str]) -> None:
  del argv
  opts = Options(**{f.name: flags.FLAGS[f.name].value for f in dataclasses.fields(Options)})
  summary = asyncio.run(run(opts))
  print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
