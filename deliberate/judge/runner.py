"""Synchronous access to the async judge for the (synchronous) trainer and evaluation.

A private event loop runs in a daemon thread for the object's lifetime, so the httpx pool, the rate buckets and the
metrics persist across calls, and repeated calls cost no loop start-up.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Awaitable, Callable, Mapping, Sequence, TypeVar

import ml_collections

from deliberate.judge.cache import JudgeCache
from deliberate.judge.client import JudgeClient, JudgeRequest, JudgeResult
from deliberate.judge.config import validate_judge_config

T = TypeVar("T")


class SyncJudge:
  """Owns the client, its cache and, when `config.embedded`, the in-process judge server; `close()` stops all."""

  def __init__(self, config: ml_collections.ConfigDict, *, generate_fn: Callable | None = None):
    validate_judge_config(config)
    self.config = config
    self.server = None
    base_url, endpoint_id, model = None, None, None
    if config.embedded:
      from deliberate.judge import serve  # starlette/uvicorn only when a server is wanted
      if config.embedded_backend == "model" and generate_fn is None:
        raise ValueError("judge config embedded_backend='model' needs a generate_fn (deliberate's sampling engine)")
      self.server = serve.start_server(config.embedded_backend, port=config.embedded_port, generate_fn=generate_fn)
      base_url, endpoint_id, model = self.server.url, f"embedded:{config.embedded_backend}", self.server.backend.name
    self.cache = JudgeCache(config.cache_path) if config.cache_path else None
    self._loop = asyncio.new_event_loop()
    self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="judge-loop")
    self._thread.start()

    async def make() -> JudgeClient:
      # The API key is for remote endpoints; it is never sent to the in-process server.
      return JudgeClient(config, base_url=base_url, endpoint_id=endpoint_id, model=model, cache=self.cache,
                         use_api_key=not config.embedded)

    self.client: JudgeClient = self._submit(make())

  def _submit(self, coro: Awaitable[T]) -> T:
    if threading.current_thread() is self._thread:
      raise RuntimeError("SyncJudge: called from its own event loop; await the async judge functions instead")
    return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

  def run(self, fn: Callable[[JudgeClient], Awaitable[T]]) -> T:
    """fn(client) runs on the judge loop; e.g. `judge.run(lambda c: judges.judge_ca(c, ...))`."""
    return self._submit(fn(self.client))

  def map(self, judge_fn: Callable[..., Awaitable[T]], kwargs_list: Sequence[Mapping[str, Any]]) -> list[T]:
    """Runs judge_fn(client, **kw) for every kw concurrently; results in order."""
    return self.map_async(judge_fn, kwargs_list).result()

  def map_async(self, judge_fn: Callable[..., Awaitable[T]],
                kwargs_list: Sequence[Mapping[str, Any]]) -> "concurrent.futures.Future[list[T]]":
    """As `map`, but returns at once: the caller can sample while the judge works."""
    if threading.current_thread() is self._thread:
      raise RuntimeError("SyncJudge: called from its own event loop; await the async judge functions instead")

    async def all_() -> list[T]:
      return list(await asyncio.gather(*(judge_fn(self.client, **kw) for kw in kwargs_list)))
    return asyncio.run_coroutine_threadsafe(all_(), self._loop)

  def judge_many(self, requests: Sequence[JudgeRequest],
                 parse: Callable[[str], Any] | None = None) -> list[JudgeResult]:
    return self._submit(self.client.complete_many(requests, parse))

  def metrics(self) -> dict[str, float]:
    async def summary() -> dict[str, float]:  # read on the loop that writes them
      return self.client.metrics.summary()
    return self._submit(summary())

  def close(self) -> None:
    if not self._thread.is_alive():
      return
    self._submit(self.client.aclose())
    self._loop.call_soon_threadsafe(self._loop.stop)
    self._thread.join()
    self._loop.close()
    if self.cache is not None:
      self.cache.close()
    if self.server is not None:
      self.server.stop()

  def __enter__(self) -> "SyncJudge":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
