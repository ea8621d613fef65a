"""The stack pool reuses keep-alive connections, replaces dead ones, and never opens more than the in-flight bound."""
import time

from deliberate.judge.client import JudgeRequest
from deliberate.judge.config import default_judge_config
from deliberate.judge.runner import SyncJudge
from deliberate.judge.testing import FaultServer


def _config(url, **kw):
  c = default_judge_config()
  c.base_url, c.api_key_env, c.timeout_s, c.backoff_base_s, c.backoff_max_s = url, "", 1.0, 0.01, 0.02
  c.update(kw)
  return c


def _req(name):
  return JudgeRequest([{"role": "user", "content": f"id: {name}"}])


def test_sequential_calls_share_one_connection():
  with FaultServer() as server, SyncJudge(_config(server.url)) as judge:
    for i in range(30):
      [r] = judge.judge_many([_req(f"s{i}")])
      assert r.ok
  assert server.connections == 1


def test_concurrent_calls_open_at_most_max_concurrency_connections():
  with FaultServer(delay_s=0.02) as server, SyncJudge(_config(server.url, max_concurrency=6)) as judge:
    for _ in range(3):
      assert all(r.ok for r in judge.judge_many([_req(f"c{i}") for i in range(24)]))
  assert server.connections == 6


def test_dropped_and_closed_connections_are_replaced():
  with FaultServer({"d": ["drop"], "e": ["close"]}) as server, SyncJudge(_config(server.url)) as judge:
    [a] = judge.judge_many([_req("a")])
    [d] = judge.judge_many([_req("d")])  # the server closes this connection mid-request
    [b] = judge.judge_many([_req("b")])
    assert a.ok and d.ok and d.attempts == 2 and b.ok
    assert server.connections == 2
    [e] = judge.judge_many([_req("e")])  # answered, then the server closes the idle connection
    time.sleep(0.05)
    [f] = judge.judge_many([_req("f")])
    assert e.ok and f.ok and f.attempts == 1  # the closed connection was noticed before use, not after a failure
  assert server.connections == 3
