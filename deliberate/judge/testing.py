"""A fault-injecting OpenAI-compatible server on raw asyncio streams (full control over the socket: it can drop a
connection mid-request, which an ASGI app cannot). Used by the fault tests and by bench/judge.py.

Each request names itself on the first line of a message, `id: <name>` (the last such message counts, so a re-ask
that appends a format reminder keeps its name). `plan[name]` lists the behaviour of
its successive attempts; past the end of the list (or without a plan) the request is answered normally. Behaviours:
ok, close (answers, then closes the keep-alive connection), 429 (with Retry-After: retry_after), 500, 503, slow
(answers after slow_s), drop (closes the connection without a response), malformed (200 with a non-JSON body),
empty (200 with "choices": []), nonint ("Score: 3.5"), length (a cut-off answer, finish_reason 'length'), null
(content null, the reasoning in `reasoning_content`), reasoning (`reasoning_content` ending "Score: 5", content
ending "Score: 2"), fenced (reasoning, then a final ```json {"score": 1} block), 429long (429 with Retry-After:
long_retry_after), logprobs (text "Score: 2" with OpenAI logprobs whose top_logprobs put 4 first).
`bodies` records every request body received (JSON).
`log` records (name, behaviour) for every attempt received; `max_in_flight` the most requests held at once;
`connections` the TCP connections accepted; `authorization` each request's Authorization header.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import threading
from typing import Callable

OK_ANSWER = "request {name} answered.\nScore: 3"


def _response(status: int, body: bytes, extra: str = "") -> bytes:
  reason = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}[status]
  return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
          f"{extra}\r\n").encode() + body


def _completion(text: str | None, finish: str = "stop", reasoning: str | None = None,
                logprobs: list | None = None) -> bytes:
  message = {"role": "assistant", "content": text}
  if reasoning is not None:
    message["reasoning_content"] = reasoning
  choice = {"index": 0, "message": message, "finish_reason": finish}
  if logprobs is not None:
    choice["logprobs"] = {"content": logprobs}
  return json.dumps({"object": "chat.completion", "model": "fault-server", "choices": [choice]}).encode()


def _lp(token: str, logprob: float, top: list[tuple[str, float]] = ()) -> dict:
  return {"token": token, "logprob": logprob, "top_logprobs": [{"token": t, "logprob": v} for t, v in top]}


# "Score: 2" as tokens; at the answer token the judge's distribution puts 4 first (the text says 2).
LOGPROBS = [_lp("Looks", -0.1), _lp(" fine", -0.2), _lp(".\n", -0.1), _lp("Score", -0.01), _lp(":", -0.01),
            _lp(" 2", -1.2, [(" 4", -0.5), (" 2", -1.2), ("2", -2.5), (" 1", -3.0), (" yes", -4.0)])]


class FaultServer:
  """Runs on its own thread and loop; `url` ends in /v1."""

  def __init__(self, plan: dict[str, list[str]] | None = None, *, delay_s: float = 0.0, slow_s: float = 2.0,
               retry_after: str = "0.05", long_retry_after: str = "3600", answer: Callable[[str], str] | None = None, port: int = 0,
               host: str = "127.0.0.1"):
    self.plan = plan or {}
    self.delay_s, self.slow_s, self.retry_after, self.port = delay_s, slow_s, retry_after, port
    self.long_retry_after, self.host = long_retry_after, host
    self.bodies: list[dict] = []
    self.answer = answer or (lambda name: OK_ANSWER.format(name=name))
    self.log: list[tuple[str, str]] = []
    self.in_flight = self.max_in_flight = 0
    self.authorization: list[str] = []  # Authorization header of each request ('' when absent)
    self.connections = 0  # TCP connections accepted
    self._seen: collections.Counter[str] = collections.Counter()
    self._loop = asyncio.new_event_loop()
    self._started = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True, name="fault-server")

  def _behaviour(self, name: str) -> str:
    k = self._seen[name]
    self._seen[name] += 1
    steps = self.plan.get(name, [])
    b = steps[k] if k < len(steps) else "ok"
    self.log.append((name, b))
    return b

  async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    self.connections += 1
    try:
      while True:
        head = await reader.readuntil(b"\r\n\r\n")
        length, auth = 0, ""
        for line in head.split(b"\r\n")[1:]:
          k, _, v = line.partition(b":")
          if k.strip().lower() == b"content-length":
            length = int(v)
          elif k.strip().lower() == b"authorization":
            auth = v.strip().decode()
        self.authorization.append(auth)
        body = await reader.readexactly(length)
        try:
          parsed = json.loads(body)
          self.bodies.append(parsed)
          named = [m["content"] for m in parsed["messages"] if str(m.get("content")).startswith("id: ")]
          name = named[-1].split("\n", 1)[0].removeprefix("id: ").strip()
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
          name = "?"
        b = self._behaviour(name)
        if b == "drop":
          return
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
          await asyncio.sleep(self.slow_s if b == "slow" else self.delay_s)
        finally:
          self.in_flight -= 1
        if b in ("429", "429long", "500", "503"):
          wait = {"429": self.retry_after, "429long": self.long_retry_after}.get(b)
          extra = f"Retry-After: {wait}\r\n" if wait else ""
          out = _response(int(b[:3]), b'{"error": {"message": "injected fault"}}', extra)
        elif b == "malformed":
          out = _response(200, b'{"choices": [{"message": ')
        elif b == "empty":
          out = _response(200, b'{"object": "chat.completion", "choices": []}')
        elif b == "nonint":
          out = _response(200, _completion(f"request {name} answered.\nScore: 3.5"))
        elif b == "length":
          out = _response(200, _completion(f"request {name}: the first point is\nScore: 5 for the", "length"))
        elif b == "null":
          out = _response(200, _completion(None, reasoning=f"request {name}: thinking...\nScore: 5"))
        elif b == "reasoning":
          out = _response(200, _completion(f"request {name}.\nScore: 2", reasoning="It quotes 'Score: 5'.\nScore: 5"))
        elif b == "fenced":
          out = _response(200, _completion(f"request {name}: the text says Score: 5, but it is weak.\n"
                                           "```json\n{\"score\": 1}\n```"))
        elif b == "logprobs":
          out = _response(200, _completion("Looks fine.\nScore: 2", logprobs=LOGPROBS))
        else:
          out = _response(200, _completion(self.answer(name)))
        writer.write(out)
        await writer.drain()
        if b == "close":  # answer, then end the keep-alive connection as an idle-timeout would
          return
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, asyncio.CancelledError):
      pass  # client went away, or the server is stopping: this connection is done
    finally:
      writer.close()

  def _run(self) -> None:
    asyncio.set_event_loop(self._loop)
    self._server = self._loop.run_until_complete(
        asyncio.start_server(self._handle, self.host, self.port, backlog=1024))
    self.port = self._server.sockets[0].getsockname()[1]
    self._started.set()
    self._loop.run_forever()
    self._server.close()
    tasks = asyncio.all_tasks(self._loop)
    for task in tasks:
      task.cancel()
    self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    self._loop.close()

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self.port}/v1"

  def start(self) -> "FaultServer":
    self._thread.start()
    if not self._started.wait(10):
      raise RuntimeError("fault server did not start")
    return self

  def stop(self) -> None:
    self._loop.call_soon_threadsafe(self._loop.stop)
    self._thread.join(10)

  def __enter__(self) -> "FaultServer":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()


def main() -> None:
  """Serve plain answers after --delay seconds until killed; prints the port (used by bench/judge.py)."""
  p = argparse.ArgumentParser()
  p.add_argument("--delay", type=float, default=0.1)
  args = p.parse_args()
  try:
    import uvloop  # optional: a faster loop keeps the server's own cost out of the client benchmark
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
  except ImportError:
    pass
  server = FaultServer(delay_s=args.delay).start()
  print(server.port, flush=True)
  server._thread.join()


if __name__ == "__main__":
  main()


def hashing_judge(messages_lists, max_tokens, temperature):
  """generate_fn of a deterministic stand-in LLM judge for the `model` backend: agreement at once, CA score = a hash
  of the whole request (varied rewards, so a GRPO step has a signal). Tests and smoke runs only."""
  import hashlib  # noqa: PLC0415

  from deliberate.judge import rubrics  # noqa: PLC0415
  out = []
  for messages in messages_lists:
    if rubrics.CA_VERSION in messages[0]["content"]:
      out.append(f"Score: {int(hashlib.sha256(messages[-1]['content'].encode()).hexdigest(), 16) % 6}")
    else:
      out.append("Verdict: yes")
  return out
