"""Fault injection over real sockets: every request ends in exactly one answer or one reasoned failure."""
import asyncio
import collections
import time

import pytest

from deliberate.judge import parsers
from deliberate.judge.client import JudgeClient, JudgeRequest
from deliberate.judge.config import default_judge_config
from deliberate.judge.runner import SyncJudge
from deliberate.judge.testing import FaultServer


def _config(url, **kw):
  c = default_judge_config()
  c.base_url, c.api_key_env = url, ""
  c.timeout_s, c.max_retries, c.backoff_base_s, c.backoff_max_s, c.max_parse_retries = 0.2, 3, 0.01, 0.05, 1
  c.update(kw)
  return c


def _req(name):
  return JudgeRequest([{"role": "user", "content": f"id: {name}\nrate this"}], "test/v1")


PLANS = {
    "r429": ["429", "ok"], "r500": ["500", "ok"], "r503": ["503", "503", "ok"], "slow": ["slow", "ok"],
    "drop": ["drop", "ok"], "malformed": ["malformed", "ok"], "empty": ["empty", "ok"], "nonint": ["nonint", "ok"],
    "mixed": ["drop", "429", "slow", "empty"],  # succeeds on the 5th and last allowed attempt
    "dead500": ["500"] * 9, "deadslow": ["slow"] * 9, "deaddrop": ["drop"] * 9, "deadparse": ["nonint"] * 9,
    "deadempty": ["empty"] * 9,
}
# max_retries=4: five transport attempts; max_parse_retries=1: two answers.
FAIL = {"dead500": ("http_500", 5), "deadslow": ("timeout", 5), "deaddrop": ("transport", 5),
        "deadparse": ("unparseable", 2), "deadempty": ("bad_response", 5)}


def test_every_request_answered_or_failed_exactly_once():
  # Timeout 0.6 s against 1.5 s slow answers: wide margins, so a loaded CI machine (JAX threads of other test
  # modules in this process) never turns a normal answer into a timeout.
  c = _config("", max_retries=4, timeout_s=0.6)
  with FaultServer(PLANS, slow_s=1.5) as server:
    c.base_url = server.url
    names = list(PLANS) + [f"plain{i}" for i in range(20)]
    with SyncJudge(c) as judge:
      t0 = time.perf_counter()
      results = judge.judge_many([_req(n) for n in names], parsers.parse_score)
      wall = time.perf_counter() - t0
      metrics = judge.metrics()
  assert len(results) == len(names)
  seen = collections.Counter(name for name, _ in server.log)
  for name, r in zip(names, results):
    assert seen[name] == r.attempts, name  # the server saw exactly the attempts the client reports
    if name in FAIL:
      assert not r.ok and r.value is None and (r.reason, r.attempts) == FAIL[name], (name, r)
    else:
      assert r.ok and r.value == 3 and f"request {name} answered" in r.text, (name, r)
      plan = PLANS.get(name, [])
      assert r.attempts == (len(plan) if plan[-1:] == ["ok"] else len(plan) + 1), name
  assert metrics["judge/requests"] == len(names)
  assert metrics["judge/failures"] == len(FAIL)
  assert metrics["judge/failures/timeout"] == 1 and metrics["judge/failures/unparseable"] == 1
  assert metrics["judge/retries/http_429"] == 2 and metrics["judge/retries/transport"] == 2 + 4
  assert metrics["judge/parse_retries"] == 2
  assert wall < 8.0  # 5 x 0.6 s timeouts at most, tiny backoffs: nothing waits for a 1.5 s slow answer


def test_retry_after_is_honoured():
  with FaultServer({"x": ["429", "ok"]}, retry_after="1") as server:
    async def go():
      async with JudgeClient(_config(server.url)) as client:
        return await client.complete(_req("x"))
    r = asyncio.run(go())
  assert r.ok and r.attempts == 2
  assert r.latency_s >= 1.0  # backoff alone would be <= 0.05 s


def test_caller_goes_on_after_failures_and_refused_connections():
  with FaultServer({"a": ["503"] * 9}) as server:
    with SyncJudge(_config(server.url, max_retries=1)) as judge:
      first = judge.judge_many([_req("a"), _req("b")])
      second = judge.judge_many([_req("c")])
      assert [r.ok for r in first] == [False, True] and first[0].reason == "http_503" and second[0].ok
      port = server.port
  with SyncJudge(_config(f"http://127.0.0.1:{port}/v1", max_retries=2)) as judge:  # server gone
    [r] = judge.judge_many([_req("d")])
  assert not r.ok and r.reason == "connect" and r.attempts == 3


def test_concurrency_bound_holds_under_load():
  with FaultServer(delay_s=0.05) as server:
    with SyncJudge(_config(server.url, max_concurrency=4)) as judge:
      t0 = time.perf_counter()
      results = judge.judge_many([_req(f"n{i}") for i in range(16)])
      wall = time.perf_counter() - t0
  assert all(r.ok for r in results)
  assert server.max_in_flight == 4
  assert wall >= 0.19  # 16 requests, 4 at a time, 50 ms each


@pytest.mark.parametrize("field,n,min_wall", [("requests_per_minute", 60, 0.45), ("tokens_per_minute", 30, 0.45)])
def test_rate_buckets_limit_throughput(field, n, min_wall):
  # rpm 2400 = 40/s with a 40-request burst; tpm 60000 = 1000 tok/s with each request reserving ~52 tokens (+ usage
  # correction is skipped: the fault server reports none), so 30 requests need ~1560 tokens against a 1000 burst.
  c = _config("", **{field: 2400 if field == "requests_per_minute" else 60000}, max_tokens=48)
  with FaultServer() as server:
    c.base_url = server.url
    with SyncJudge(c) as judge:
      t0 = time.perf_counter()
      results = judge.judge_many([_req(f"n{i}") for i in range(n)])
      wall = time.perf_counter() - t0
  assert all(r.ok for r in results)
  assert wall >= min_wall
