"""Judges as they really answer, against the real fault-injecting server: fenced JSON after reasoning, cut-off
answers, long Retry-After, re-asks that differ, reasoning judges, verdicts from logprobs, and the API key's transport."""
import math
import socket
import time

import pytest

from deliberate.judge import parsers
from deliberate.judge.client import JudgeClient, JudgeRequest
from deliberate.judge.config import default_judge_config
from deliberate.judge.runner import SyncJudge
from deliberate.judge.testing import FaultServer
from deliberate.judge.verdicts import SCORE

SECRET = "sk-test-DO-NOT-LEAK-77c2"


def _config(url, **kw):
  c = default_judge_config()
  c.base_url, c.api_key_env = url, ""
  c.timeout_s, c.max_retries, c.backoff_base_s, c.backoff_max_s, c.max_parse_retries = 2.0, 3, 0.01, 0.05, 1
  c.update(kw)
  return c


def _req(name, **kw):
  return JudgeRequest([{"role": "user", "content": f"id: {name}\nrate this"}], "test/v1", final=SCORE, **kw)


def _run(plan, names, **kw):
  with FaultServer(plan) as server:
    with SyncJudge(_config(server.url, **kw)) as judge:
      results = judge.judge_many([_req(n) for n in names], parsers.parse_score)
      metrics = judge.metrics()
  return results, metrics, server


@pytest.mark.parametrize("answer,expected", [
    ("The text claims 'Score: 5'.\nIt is one-sided.\n```json\n{\"score\": 1}\n```", 1),
    ("Reasoning.\n```\nScore: 2\n```\n", 2),
    ("Quoted: ```json\n{\"score\": 5}\n```\nMine:\n```json\n{\"Score\": 3}\n```", 3),
])
def test_final_fenced_block_after_reasoning_is_read(answer, expected):
  assert parsers.parse_score(answer) == expected


@pytest.mark.parametrize("answer", [
    "```json\n{\"score\": 5}\n```\nBut on reflection it is weak.",         # a block followed by text: quoted
    "Reason\n```json\n{\"score\": 5}\n```\n{\"score\": 1}\n```",           # unbalanced fences
    "Reason\n```json\n{\"score\": 5}\n{\"score\": 1}\n```",                # two candidates in one block
    "Reason\n```json\n{\"rating\": 5}\n```",                               # wrong key
    "inline ```json {\"score\": 5}```",                                     # not a block on its own lines
])
def test_forms_where_quoted_text_could_decide_stay_rejected(answer):
  with pytest.raises(parsers.ParseError):
    parsers.parse_score(answer)


def test_fenced_answer_over_http_is_one_attempt():
  [r], metrics, _ = _run({"f": ["fenced"]}, ["f"])
  assert r.ok and r.value == 1 and r.attempts == 1 and metrics["judge/parse_retries"] == 0


def test_cut_off_answer_is_retried_once_at_a_larger_budget_then_fails_as_length():
  results, metrics, server = _run({"l": ["length", "ok"], "ll": ["length", "length", "ok"]}, ["l", "ll"],
                                  max_tokens=64, length_retry_max_tokens=256)
  ok, cut = results
  assert ok.ok and ok.value == 3 and ok.attempts == 2  # never parsed as 5 from the cut-off last line
  assert [b["max_tokens"] for b in server.bodies if "id: l\n" in b["messages"][0]["content"]] == [64, 256]
  assert not cut.ok and cut.reason == "length" and cut.attempts == 2 and "max_tokens=256" in cut.detail
  assert metrics["judge/truncated"] == 3 and metrics["judge/length_retries"] == 2
  assert metrics["judge/failures/length"] == 1
  [r], metrics, _ = _run({"x": ["length", "ok"]}, ["x"], length_retry_max_tokens=0)
  assert not r.ok and r.reason == "length" and r.attempts == 1 and metrics["judge/failures/length"] == 1


def test_long_retry_after_fails_fast_and_the_rest_goes_on():
  t0 = time.perf_counter()
  results, metrics, _ = _run({"w": ["429long", "ok"], "s": ["429", "ok"]}, ["w", "s", "plain"],
                             retry_after_max_s=5.0)
  wall = time.perf_counter() - t0
  w, s, plain = results
  assert not w.ok and w.reason == "retry_after_too_long" and "3600" in w.detail and "retry_after_max_s" in w.detail
  assert s.ok and plain.ok and wall < 3.0  # a short Retry-After is still honoured
  assert metrics["judge/failures/retry_after_too_long"] == 1


def test_reask_adds_a_reminder_or_samples_warmer_and_the_cache_key_says_which(tmp_path):
  cache = str(tmp_path / "c.sqlite")
  with FaultServer({"p": ["nonint", "ok", "nonint", "ok"]}) as server:
    runs = []
    for mode in ("reminder", "temperature", "temperature"):
      with SyncJudge(_config(server.url, parse_retry=mode, cache_path=cache)) as judge:
        [r] = judge.judge_many([_req("p")], parsers.parse_score)
        runs.append((r, judge.metrics(), len(server.bodies)))
  first, second, third, fourth = server.bodies
  assert len(second["messages"]) == len(first["messages"]) and "Reminder" in second["messages"][-1]["content"]
  assert second["messages"][-1]["content"].startswith(first["messages"][-1]["content"])   # the prompt, then the reminder
  assert "`Score: X`" in second["messages"][-1]["content"] and second["temperature"] == first["temperature"] == 0
  # temperature mode is not replayed from the reminder-mode entry: the key says which re-ask made it
  assert runs[1][0].ok and runs[1][1]["judge/cache_hits"] == 0 and runs[1][2] == 4
  assert fourth["messages"] == third["messages"] and fourth["temperature"] == 0.7
  assert runs[2][0].cache_hit and runs[2][1]["judge/cache_hits"] == 1 and runs[2][2] == 4


def test_reasoning_judges_read_only_the_final_content():
  results, metrics, _ = _run({"r": ["reasoning"], "n": ["null", "ok"], "nn": ["null"] * 5}, ["r", "n", "nn"])
  r, n, nn = results
  assert r.ok and r.value == 2  # reasoning_content says 5
  assert n.ok and n.attempts == 2
  assert not nn.ok and nn.reason == "null_content" and nn.attempts == 2
  assert metrics["judge/failures/null_content"] == 1


def test_verdict_from_logprobs_is_the_most_probable_allowed_answer(tmp_path):
  cache = str(tmp_path / "c.sqlite")
  with FaultServer({"lp": ["logprobs", "logprobs"]}) as server:
    runs = []
    for mode in ("text", "logprobs", "logprobs"):
      with SyncJudge(_config(server.url, verdict_mode=mode, cache_path=cache)) as judge:
        [r] = judge.judge_many([_req("lp")], parsers.parse_score)
        runs.append((r, judge.metrics()))
  (text, _), (r, metrics), (again, _) = runs
  assert text.value == 2 and text.probs is None  # verdict_mode 'text' reads the final line
  assert "logprobs" not in server.bodies[0] and server.bodies[1]["logprobs"] is True
  assert server.bodies[1]["top_logprobs"] == 20
  z = math.exp(-0.5) + math.exp(-1.2) + math.exp(-2.5) + math.exp(-3.0)  # ' 2' and '2' are one answer
  want = {"4": math.exp(-0.5) / z, "2": (math.exp(-1.2) + math.exp(-2.5)) / z, "1": math.exp(-3.0) / z}
  assert r.ok and r.value == 4 and r.probs == pytest.approx(want)
  assert r.mean == pytest.approx(sum(int(a) * p for a, p in want.items()))
  assert metrics["judge/verdicts_from_probs"] == 1
  assert again.cache_hit and again.value == 4 and again.probs == pytest.approx(want) and len(server.bodies) == 2


def _non_loopback_ip():
  s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
  try:
    s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
    ip = s.getsockname()[0]
  except OSError:
    return None
  finally:
    s.close()
  return None if ip.startswith("127.") else ip


async def _one(c):
  async with JudgeClient(c) as client:
    return await client.complete(_req("k"), parsers.parse_score)


def test_api_key_is_not_sent_in_cleartext_to_a_remote_host(monkeypatch):
  import asyncio
  ip = _non_loopback_ip()
  if ip is None:
    pytest.skip("this machine has no non-loopback IPv4 address")
  monkeypatch.setenv("DELIBERATE_TEST_JUDGE_KEY", SECRET)
  with FaultServer(host="0.0.0.0") as server:
    remote = f"http://{ip}:{server.port}/v1"
    c = _config(remote, api_key_env="DELIBERATE_TEST_JUDGE_KEY")
    with pytest.raises(ValueError, match="allow_insecure_http_key") as e:
      asyncio.run(_one(c))
    assert ip in str(e.value) and SECRET not in str(e.value) and server.authorization == []
    c.base_url = f"http://127.0.0.1:{server.port}/v1"  # loopback: allowed
    assert asyncio.run(_one(c)).ok
    c.base_url, c.allow_insecure_http_key = remote, True  # explicitly allowed
    assert asyncio.run(_one(c)).ok
  assert server.authorization == [f"Bearer {SECRET}"] * 2
