"""Local OpenAI-compatible judge server: `python -m deliberate.judge.serve --backend lexicon|model --port 0`.

Backends:
- lexicon: the deterministic local judge (keyword heuristic, see lexicon.py), labelled as such in its model name
  and logs. For offline smoke runs and tests.
- model: a real local LLM judge. It wraps `generate_fn(messages_lists, max_tokens, temperature)` returning one str, or
  one (str, finish_reason) pair, per prompt (deliberate's own sampling engine), and batches concurrent requests into
  one call. When generate_fn also has `verdict(messages_lists, reasoning_tokens, prefix, answers)` (see logits.py), a
  request carrying the `deliberate_verdict` extension ({"prefix", "answers", "reasoning_tokens"}) is answered from
  the logits: its choice carries `deliberate_verdict: {"answer", "logprobs": {answer: log-prob}}`.
Requests: chat completions with `n` (1-8) choices; errors in the OpenAI shape {"error": {"message", "type", "param",
"code"}}, so the official `openai` SDK raises its usual exceptions.
The trainer starts it in-process with `start_server(...)` when the judge config says `embedded`.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import threading
import time
import uuid
from typing import Any, Callable, Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from deliberate import metric_names as M
from deliberate.judge import lexicon

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
GenerateFn = Callable[[list[Messages], int, float], list[str]]


Answer = tuple[str, str, Any]  # (content, finish_reason, deliberate_verdict field or None)


class LexiconBackend:
  name = lexicon.MODEL_NAME

  async def complete(self, messages: Messages, max_tokens: int, temperature: float, verdict: Any = None) -> Answer:
    return lexicon.answer(messages), "stop", None


class ModelBackend:
  """Queues concurrent requests and answers them in batches of up to `max_batch` per generate_fn call."""

  def __init__(self, generate_fn: GenerateFn, name: str, max_batch: int, max_wait_s: float):
    self.generate_fn, self.name, self.max_batch, self.max_wait_s = generate_fn, name, max_batch, max_wait_s
    self.batch_sizes: list[int] = []  # one entry per generate_fn call, for tests and logs
    self._queue: asyncio.Queue | None = None

  async def complete(self, messages: Messages, max_tokens: int, temperature: float, verdict: Any = None) -> Answer:
    if self._queue is None:  # created on the server's own loop
      self._queue = asyncio.Queue()
      asyncio.get_running_loop().create_task(self._worker())
    if verdict is not None and not hasattr(self.generate_fn, "verdict"):
      verdict = None  # a text-only generate_fn: the client falls back to parsing the text
    fut = asyncio.get_running_loop().create_future()
    key = None if verdict is None else (verdict["prefix"], tuple(verdict["answers"]), verdict["reasoning_tokens"])
    await self._queue.put((messages, max_tokens, temperature, key, fut))
    return await fut

  async def _worker(self) -> None:
    while True:
      batch = [await self._queue.get()]
      await asyncio.sleep(self.max_wait_s)  # let concurrent requests join
      while not self._queue.empty():
        batch.append(self._queue.get_nowait())
      groups: dict[tuple, list] = {}
      for item in batch:
        groups.setdefault(item[1:4], []).append(item)
      for (max_tokens, temperature, verdict), items in groups.items():
        for i in range(0, len(items), self.max_batch):
          await self._run(items[i:i + self.max_batch], max_tokens, temperature, verdict)

  def _call(self, prompts: list, max_tokens: int, temperature: float, verdict: tuple | None) -> list[Answer]:
    if verdict is not None:
      prefix, answers, reasoning_tokens = verdict
      outs = self.generate_fn.verdict(prompts, reasoning_tokens, prefix, list(answers))
      return [(text, "stop", {"answer": max(lps, key=lps.get), "logprobs": lps}) for text, lps in outs]
    outs = self.generate_fn(prompts, max_tokens, temperature)
    if len(outs) != len(prompts) or not all(isinstance(o, (str, tuple)) for o in outs):
      raise RuntimeError(f"generate_fn returned {len(outs)} outputs for {len(prompts)} prompts "
                         "(expected one string, or (string, finish_reason), per prompt)")
    return [(o, "stop", None) if isinstance(o, str) else (o[0], o[1], None) for o in outs]

  async def _run(self, items: list, max_tokens: int, temperature: float, verdict: tuple | None) -> None:
    self.batch_sizes.append(len(items))
    try:
      outs = await asyncio.to_thread(self._call, [it[0] for it in items], max_tokens, temperature, verdict)
      if len(outs) != len(items):
        raise RuntimeError(f"generate_fn returned {len(outs)} outputs for {len(items)} prompts")
    except Exception as e:  # every waiting request gets the error, none is left hanging
      log.exception("judge model backend: generate_fn failed")
      for it in items:
        if not it[-1].done():
          it[-1].set_exception(e)
      return
    for it, out in zip(items, outs):
      if not it[-1].done():
        it[-1].set_result(out)


def make_model_backend(generate_fn: GenerateFn, *, name: str = M.MODEL_JUDGE_NAME,
                       max_batch: int = 16, max_wait_s: float = 0.005) -> ModelBackend:
  if not callable(generate_fn):
    raise TypeError(f"make_model_backend: generate_fn must be callable, got {type(generate_fn).__name__}")
  return ModelBackend(generate_fn, name, max_batch, max_wait_s)


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> JSONResponse:
  """The OpenAI error shape, which the official SDK turns into BadRequestError etc. with this message."""
  return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status_code=status)


def _check_verdict(v: Any) -> str | None:
  if v is None:
    return None
  if not (isinstance(v, dict) and isinstance(v.get("prefix"), str) and isinstance(v.get("answers"), list)
          and 0 < len(v["answers"]) <= 16 and all(isinstance(a, str) and a for a in v["answers"])
          and isinstance(v.get("reasoning_tokens", 0), int) and 0 <= v.get("reasoning_tokens", 0) <= 4096):
    return ("request.deliberate_verdict: expected {'prefix': str, 'answers': [1-16 non-empty str], "
            "'reasoning_tokens': int 0-4096}")
  return None


def _check_messages(messages: Any) -> str | None:
  if not isinstance(messages, list) or not messages:
    return "request.messages: expected a non-empty list"
  for i, m in enumerate(messages):
    if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
      return f"request.messages[{i}]: expected {{'role': str, 'content': str}}"
  return None


def make_app(backend: LexiconBackend | ModelBackend) -> Starlette:

  async def chat(request: Request) -> JSONResponse:
    try:
      body = await request.json()
    except ValueError:
      return _error(400, "request body is not valid JSON")
    if not isinstance(body, dict):
      return _error(400, "request body: expected a JSON object")
    problem = _check_messages(body.get("messages"))
    if problem:
      return _error(400, problem, "messages")
    max_tokens, temperature = body.get("max_tokens") or 512, body.get("temperature", 0.0)
    n, verdict = body.get("n") or 1, body.get("deliberate_verdict")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
      return _error(400, f"request.max_tokens: expected a positive integer, got {max_tokens!r}", "max_tokens")
    if not isinstance(temperature, (int, float)) or temperature < 0:
      return _error(400, f"request.temperature: expected a number >= 0, got {temperature!r}", "temperature")
    if not isinstance(n, int) or not 1 <= n <= 8:
      return _error(400, f"request.n: expected an integer 1-8, got {n!r}", "n")
    problem = _check_verdict(verdict)
    if problem:
      return _error(400, problem, "deliberate_verdict")
    if verdict is not None:
      verdict = {"reasoning_tokens": 0, **verdict}
    try:
      answers = await asyncio.gather(*(backend.complete(body["messages"], max_tokens, float(temperature), verdict)
                                       for _ in range(n)))
    except ValueError as e:
      return _error(400, str(e), "messages")
    except Exception as e:
      return _error(500, f"{type(e).__name__}: {e}", None, "server_error")
    prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])  # whitespace words: an estimate
    completion_tokens = sum(len(a[0].split()) for a in answers)
    choices = []
    for i, (text, finish, field) in enumerate(answers):
      choice = {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                "logprobs": None}
      if field is not None:
        choice["deliberate_verdict"] = field
      choices.append(choice)
    return JSONResponse({
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": backend.name, "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens}})

  async def models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [{"id": backend.name, "object": "model", "created": 0,
                                                           "owned_by": "local"}]})

  return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                           Route("/v1/models", models, methods=["GET"])])


class ServerHandle:
  """A uvicorn server on its own thread. `url` is the OpenAI base URL (ending in /v1)."""

  def __init__(self, server: uvicorn.Server, thread: threading.Thread, host: str, port: int, backend: Any):
    self._server, self._thread, self.host, self.port, self.backend = server, thread, host, port, backend
    self.url = f"http://{host}:{port}/v1"

  def stop(self, timeout_s: float = 10.0) -> None:
    self._server.should_exit = True
    self._thread.join(timeout_s)
    if self._thread.is_alive():
      raise RuntimeError(f"judge server on port {self.port} did not stop within {timeout_s}s")

  def __enter__(self) -> "ServerHandle":
    return self

  def __exit__(self, *exc) -> None:
    self.stop()


def _backend(backend: str | LexiconBackend | ModelBackend, generate_fn: GenerateFn | None):
  if isinstance(backend, (LexiconBackend, ModelBackend)):
    return backend
  if backend == "lexicon":
    return LexiconBackend()
  if backend == "model":
    if generate_fn is None:
      raise ValueError("judge server backend 'model' needs a generate_fn (deliberate's sampling engine)")
    return make_model_backend(generate_fn)
  raise ValueError(f"judge server backend must be 'lexicon' or 'model', got {backend!r}")


def start_server(backend: str | LexiconBackend | ModelBackend = "lexicon", port: int = 0, host: str = "127.0.0.1",
                 generate_fn: GenerateFn | None = None, start_timeout_s: float = 10.0) -> ServerHandle:
  """Starts the server in a daemon thread and returns once it accepts connections."""
  be = _backend(backend, generate_fn)
  if isinstance(be, LexiconBackend):
    log.info("judge server: backend is the DETERMINISTIC LOCAL JUDGE (lexicon keyword heuristic, not an LLM)")
  config = uvicorn.Config(make_app(be), host=host, port=port, log_level="warning", lifespan="off",
                          timeout_graceful_shutdown=1)
  server = uvicorn.Server(config)
  thread = threading.Thread(target=server.run, daemon=True, name=f"judge-server-{port}")
  thread.start()
  t0 = time.monotonic()
  while not server.started:
    if not thread.is_alive() or time.monotonic() - t0 > start_timeout_s:
      server.should_exit = True
      raise RuntimeError(f"judge server did not start on {host}:{port}")
    time.sleep(0.01)
  bound = server.servers[0].sockets[0].getsockname()[1]
  log.info("judge server: %s at http://%s:%d/v1", be.name, host, bound)
  return ServerHandle(server, thread, host, bound, be)


def _load_generate_fn(spec: str) -> GenerateFn:
  """'package.module:factory' -> factory(), which returns the generate_fn."""
  module, _, attr = spec.partition(":")
  if not module or not attr:
    raise ValueError(f"--generate-fn: expected 'package.module:factory', got {spec!r}")
  return getattr(importlib.import_module(module), attr)()


def main(argv: Sequence[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--backend", choices=("lexicon", "model"), default="lexicon")
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=0, help="0 = ephemeral")
  p.add_argument("--generate-fn", default="", help="backend model: 'package.module:factory' returning generate_fn")
  args = p.parse_args(argv)
  if args.backend == "model" and not args.generate_fn:
    p.error("--backend model needs --generate-fn package.module:factory (a factory returning the generate_fn)")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
  generate_fn = _load_generate_fn(args.generate_fn) if args.backend == "model" else None
  handle = start_server(args.backend, port=args.port, host=args.host, generate_fn=generate_fn)
  print(f"judge server ({handle.backend.name}) listening on {handle.url}", flush=True)
  try:
    while True:
      time.sleep(3600)
  except KeyboardInterrupt:
    handle.stop()


if __name__ == "__main__":
  main()
