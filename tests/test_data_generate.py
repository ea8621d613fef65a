"""The generator end to end against a real local server of canned generations, malformed ones included."""
import asyncio
import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from deliberate.data import generate, schema
from test_data_schema import write_jsonl, write_tiny_dataset, words


def canned_text(attempt: int) -> str:
  return words(7000 + attempt, 25) + " " + words(7500 + attempt, 15)


def canned(key: str, attempt: int, shipped_text: str) -> tuple[str, int, str]:
  """(label, http status, answer) for an attempt; a fixed plan of good and bad generations."""
  item = {"domain": words(attempt, 1)[:-1], "title": words(attempt + 1, 4)[:-1], "text": canned_text(attempt),
          "considerations": [words(attempt + 2, 5), words(attempt + 3, 5)]}
  if key.startswith("open/"):
    return "ok", 200, json.dumps({"domain": item["domain"], "question": words(8000 + attempt, 12)[:-1] + "?"})
  r = attempt % 8
  if r == 1:
    return "malformed", 200, "I'm sorry, I cannot write that."
  if r == 3:
    return "malformed", 200, json.dumps(item)[:60]  # cut off mid-answer
  if r == 4:
    return "schema", 200, json.dumps({**item, "text": "Too short."})
  if r == 5:
    return "near_duplicate", 200, json.dumps({**item, "text": shipped_text.replace(".", "!", 1)})
  if r == 6 and attempt % 16 == 6:
    return "failed:http_500", 500, "upstream exploded"
  if attempt == 10:
    return "near_duplicate", 200, json.dumps({**item, "text": canned_text(0)})  # repeats attempt 0's item
  if attempt == 2:
    return "ok", 200, "Sure! Here it is:\n```json\n" + json.dumps(item, indent=2) + "\n```"
  if attempt == 7:
    return "ok", 200, json.dumps({**item, "id": "bogus", "category": "professional"})  # the generator's win
  return "ok", 200, json.dumps(item)


class CannedServer:
  """OpenAI-compatible /v1/chat/completions on 127.0.0.1 (ephemeral port), answering from `canned`."""

  def __init__(self, shipped_text: str, delay_s: float = 0.0):
    self.shipped_text, self.delay_s = shipped_text, delay_s
    self.calls: collections.Counter[tuple[str, int]] = collections.Counter()
    app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])
    self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    self.thread = threading.Thread(target=self.server.run, daemon=True)
    self.thread.start()
    while not self.server.started:
      time.sleep(0.01)
    self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}/v1"

  async def chat(self, request: Request) -> JSONResponse:
    body = await request.json()
    key, attempt = re.search(r"Variation key: (\S+)/(\d+)$", body["messages"][-1]["content"]).groups()
    self.calls[(key, int(attempt))] += 1
    if self.delay_s:
      await asyncio.sleep(self.delay_s)
    _, status, text = canned(key, int(attempt), self.shipped_text)
    if status != 200:
      return JSONResponse({"error": text}, status_code=status)
    return JSONResponse({"object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})

  def stop(self) -> None:
    self.server.should_exit = True
    self.thread.join(5)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  src = tmp_path_factory.mktemp("src")
  files = write_tiny_dataset(src)
  server = CannedServer(files[schema.dilemma_file("everyday")][1]["text"])
  yield {"src": src, "files": files, "server": server}
  server.stop()


def _opts(env, out, **kw):
  base = dict(kind="dilemmas", category="everyday", n=10, out=str(out), base_url=env["server"].url, model="canned",
              api_key_env="", data_dir=str(env["src"]), concurrency=3, max_retries=0, parse_retries=1)
  return generate.Options(**{**base, **kw})


def _expected(env, n, key="dilemmas/everyday/seed0/gen-v1"):
  """What the generator must do with the canned plan: (accepted attempts, reason counts)."""
  accepted, counts, a = [], collections.Counter(), 0
  while len(accepted) < n:
    label = canned(key, a, env["server"].shipped_text)[0]
    counts[label] += 1
    if label == "ok":
      accepted.append(a)
    a += 1
  return accepted, counts


def test_generates_validates_and_rejects_with_reasons(env, tmp_path):
  out, rejects = tmp_path / "gen.jsonl", tmp_path / "rejects.jsonl"
  summary = asyncio.run(generate.run(_opts(env, out, rejects=str(rejects))))
  accepted, counts = _expected(env, 10)
  assert summary["have"] == summary["added"] == 10
  assert summary["counts"] == {("accepted" if k == "ok" else k): v for k, v in counts.items()}
  assert set(counts) == {"ok", "malformed", "schema", "near_duplicate", "failed:http_500"}
  records = schema.read_jsonl(out)
  for where, rec in records:
    schema.validate_dilemma(rec, where, "everyday")
  recs = [r for _, r in records]
  assert [r["id"] for r in recs] == [f"every-{i:03d}" for i in range(5, 15)]  # after the 4 shipped ones
  assert [r["text"] for r in recs] == [canned_text(a) for a in accepted]
  assert all(r["category"] == "everyday" for r in recs)
  everything = [(r["id"], r["text"]) for f in schema.CATEGORIES for r in env["files"][schema.dilemma_file(f)]]
  assert not schema.near_duplicates(everything + [(r["id"], r["text"]) for r in recs])
  rows = [json.loads(line) for line in rejects.read_text().splitlines()]
  assert collections.Counter(r["reason"] for r in rows) == {k: v for k, v in counts.items() if k != "ok"}
  by_reason = {r["reason"]: r for r in reversed(rows)}  # the first of each
  assert "no JSON object" in by_reason["malformed"]["detail"]
  assert "attempt 4: field 'text' has 10 characters" in by_reason["schema"]["detail"]
  assert "near-duplicate of every-002" in by_reason["near_duplicate"]["detail"]
  calls = env["server"].calls
  assert calls[("dilemmas/everyday/seed0/gen-v1", 1)] >= 2  # a malformed answer is asked again once


def test_stop_and_resume_equals_an_uninterrupted_run(env, tmp_path):
  straight = tmp_path / "straight.jsonl"
  asyncio.run(generate.run(_opts(env, straight, seed=1)))
  env["server"].calls.clear()
  resumed = tmp_path / "resumed.jsonl"
  first = asyncio.run(generate.run(_opts(env, resumed, seed=1, stop_after=4)))
  assert first["added"] == 4 and len(resumed.read_text().splitlines()) == 4
  second = asyncio.run(generate.run(_opts(env, resumed, seed=1)))
  assert second["added"] == 6 and second["have"] == 10
  assert resumed.read_text() == straight.read_text()
  for (key, attempt), n_calls in env["server"].calls.items():  # nothing asked again after the stop
    assert n_calls == (2 if canned(key, attempt, "")[0] == "malformed" else 1), (attempt, n_calls)
  again = asyncio.run(generate.run(_opts(env, resumed, seed=1)))  # already complete: asks nothing
  assert again["added"] == 0 and resumed.read_text() == straight.read_text()


def test_cache_replays_a_run_without_asking_again(env, tmp_path):
  cache = str(tmp_path / "cache.sqlite")
  first = tmp_path / "first.jsonl"
  asyncio.run(generate.run(_opts(env, first, seed=4, cache=cache)))
  env["server"].calls.clear()
  second = tmp_path / "second.jsonl"
  summary = asyncio.run(generate.run(_opts(env, second, seed=4, cache=cache)))
  assert second.read_text() == first.read_text()
  labels = {canned(key, a, "")[0] for key, a in env["server"].calls}
  assert labels <= {"malformed", "failed:http_500"}, labels  # failures are never cached, answers always are
  assert summary["counts"]["accepted"] == 10


def test_kill_9_mid_run_then_resume_loses_and_doubles_nothing(env, tmp_path):
  straight = tmp_path / "straight.jsonl"
  asyncio.run(generate.run(_opts(env, straight, n=14, seed=2)))
  out = tmp_path / "killed.jsonl"
  slow = CannedServer(env["server"].shipped_text, delay_s=0.1)
  try:
    cmd = [sys.executable, "-m", "deliberate.data.generate", "--kind=dilemmas", "--category=everyday", "--n=14",
           f"--out={out}", f"--base_url={slow.url}", "--model=canned", "--api_key_env=", f"--data_dir={env['src']}",
           "--concurrency=2", "--max_retries=0", "--seed=2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 4):
      time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(out.read_text().splitlines())
    assert 4 <= killed_at < 14, killed_at
    summary = asyncio.run(generate.run(_opts(env, out, n=14, seed=2, base_url=slow.url)))
  finally:
    slow.stop()
  assert summary["have"] == 14 and summary["added"] == 14 - killed_at
  assert out.read_text() == straight.read_text()


def test_partial_last_line_is_dropped_and_bad_lines_are_named(env, tmp_path):
  straight = tmp_path / "straight.jsonl"
  asyncio.run(generate.run(_opts(env, straight, n=3, seed=3)))
  out = tmp_path / "partial.jsonl"
  lines = straight.read_text().splitlines(keepends=True)
  out.write_text(lines[0] + lines[1][:25])  # killed mid-write
  summary = asyncio.run(generate.run(_opts(env, out, n=3, seed=3)))
  assert summary["have"] == 3 and out.read_text() == straight.read_text()
  bad = tmp_path / "bad.jsonl"
  rec = json.loads(lines[1])
  write_jsonl(bad, [json.loads(lines[0]), {**rec, "considerations": []}, json.loads(lines[2])])
  with pytest.raises(schema.DataError, match="^bad.jsonl:2: field 'considerations' has 0 items"):
    asyncio.run(generate.run(_opts(env, bad, n=3, seed=3)))


def test_open_questions_and_conflict_tasks(env, tmp_path):
  opens = tmp_path / "open.jsonl"
  asyncio.run(generate.run(_opts(env, opens, kind="open", category=None, n=3)))
  recs = [r for _, r in schema.read_jsonl(opens)]
  for i, r in enumerate(recs):
    schema.validate_open(r, f"open:{i}")
  assert [r["id"] for r in recs] == ["open-004", "open-005", "open-006"]
  conflict = tmp_path / "conflict.jsonl"
  asyncio.run(generate.run(_opts(env, conflict, kind="conflict", n=3)))
  pair_ids = [p["pair_id"] for p in env["files"][schema.EVAL_PERSONAS_FILE]]
  recs = [r for _, r in schema.read_jsonl(conflict)]
  for i, r in enumerate(recs):
    schema.validate_conflict(r, f"conflict:{i}", pair_ids)
  assert recs[0]["id"] == "evalc-004" and recs[0]["pair_id"] == "e01"


def test_prompts_are_deterministic_and_vary_by_attempt(env, tmp_path):
  existing = generate._existing(str(env["src"]))
  opts = _opts(env, tmp_path / "x.jsonl")
  assert generate.build_messages(opts, 5, existing) == generate.build_messages(opts, 5, existing)
  assert generate.build_messages(opts, 5, existing) != generate.build_messages(opts, 6, existing)
  conflict = generate.build_messages(_opts(env, tmp_path / "x.jsonl", kind="conflict"), 1, existing)
  assert env["files"][schema.EVAL_PERSONAS_FILE][1]["a"]["description"] in conflict[-1]["content"]


@pytest.mark.parametrize("kw,fragment", [({"category": None}, "needs --category"),
                                         ({"kind": "open"}, "does not apply"), ({"n": 0}, "--n must be > 0"),
                                         ({"kind": "poems"}, "--kind must be one of")])
def test_bad_options_are_named(env, tmp_path, kw, fragment):
  with pytest.raises(ValueError, match=fragment):
    _opts(env, tmp_path / "x.jsonl", **kw)
