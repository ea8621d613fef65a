"""Async OpenAI-compatible judge client: every request ends in exactly one result, an answer or a reasoned failure.

Transport faults (connect errors, timeouts, 429, 5xx, malformed bodies) are retried with exponential backoff and full
jitter, honouring Retry-After up to `retry_after_max_s`; an answer cut off at max_tokens (finish_reason 'length') is
never parsed, but asked once more with `length_retry_max_tokens`; a null content (a reasoning judge with no final
answer) and unparseable answers are re-asked up to `max_parse_retries` times, with a format reminder or at a small
temperature; whatever is still wrong is returned as a failure with its reason and counted, never turned into a score.
Only the final `content` is parsed: a separate `reasoning_content` is never read.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import email.utils
import ipaddress
import json
import logging
import os
import random
import sqlite3
import time
from typing import Any, Callable, Sequence

import httpx
import ml_collections
import numpy as np

from deliberate.judge import verdicts
from deliberate.judge.cache import JudgeCache, cache_key
from deliberate.judge.config import validate_judge_config
from deliberate.judge.transport import StackTransport
from deliberate.judge.verdicts import FinalLine

log = logging.getLogger(__name__)


class ParseError(ValueError):
  """The judge answered, but not in a form its rubric's parser accepts."""


@dataclasses.dataclass(frozen=True)
class JudgeRequest:
  messages: list[dict[str, str]]
  rubric_version: str = "raw"      # part of the cache key: a new rubric never replays old answers
  max_tokens: int | None = None    # None: the config's value
  temperature: float | None = None
  final: FinalLine | None = None   # the rubric's final line: format reminders and verdicts from probabilities


@dataclasses.dataclass(frozen=True)
class JudgeResult:
  """`value` is the parsed answer when ok; `reason` names the failure otherwise. Never both."""
  ok: bool
  value: Any = None
  text: str | None = None          # the judge's raw answer (last one received, also on parse failure)
  # e.g. 'timeout', 'connect', 'http_429', 'http_503', 'bad_response', 'unparseable', 'length' (cut off at
  # max_tokens), 'null_content', 'retry_after_too_long'
  reason: str | None = None
  detail: str = ""
  latency_s: float = 0.0
  attempts: int = 0                # HTTP attempts made (0 on a cache hit)
  cache_hit: bool = False
  rubric_version: str = "raw"
  model: str | None = None         # the model name the endpoint reported (which judge gave this answer)
  probs: dict[str, float] | None = None  # verdict_mode logprobs/logits: probability of each allowed answer
  mean: float | None = None        # scores from probabilities: the probability-weighted mean (G-Eval)


class JudgeMetrics:
  """Counters for the trainer's metric stream; `summary()` is flat and JSON-safe."""

  def __init__(self):
    self.requests = 0                 # logical calls
    self.http_attempts = 0
    self.retries: collections.Counter[str] = collections.Counter()   # transport retries by reason
    self.parse_retries = 0
    self.truncated = 0                # answers cut off at max_tokens (finish_reason 'length')
    self.length_retries = 0           # of which asked again with length_retry_max_tokens
    self.from_probs = 0               # verdicts read from probabilities rather than text
    self.failures: collections.Counter[str] = collections.Counter()  # final failures by reason
    self.cache_hits = 0
    self.cache_misses = 0
    self.latencies_s: list[float] = []  # successful calls, including cache hits

  def summary(self) -> dict[str, float]:
    s = {"judge/requests": self.requests, "judge/http_attempts": self.http_attempts,
         "judge/retries": sum(self.retries.values()), "judge/parse_retries": self.parse_retries,
         "judge/failures": sum(self.failures.values()), "judge/cache_hits": self.cache_hits,
         "judge/cache_misses": self.cache_misses, "judge/truncated": self.truncated,
         "judge/length_retries": self.length_retries, "judge/verdicts_from_probs": self.from_probs}
    s.update({f"judge/retries/{k}": v for k, v in sorted(self.retries.items())})
    s.update({f"judge/failures/{k}": v for k, v in sorted(self.failures.items())})
    if self.latencies_s:
      p50, p95 = np.percentile(self.latencies_s, [50, 95])
      s.update({"judge/latency_p50_s": float(p50), "judge/latency_p95_s": float(p95)})
    return s


class TokenBucket:
  """Refills at rate/60 per second up to one second's worth; a cost above that drives the level negative, so
  long-run throughput still matches the limit."""

  def __init__(self, per_minute: float):
    self.rate = per_minute / 60.0
    self.capacity = max(1.0, self.rate)
    self.level = self.capacity
    self._t = time.monotonic()
    self._lock = asyncio.Lock()

  def _refill(self) -> None:
    now = time.monotonic()
    self.level = min(self.capacity, self.level + (now - self._t) * self.rate)
    self._t = now

  async def acquire(self, cost: float) -> None:
    async with self._lock:  # FIFO: a large request is not starved by small ones
      while True:
        self._refill()
        need = min(cost, self.capacity)
        if self.level >= need:
          self.level -= cost
          return
        await asyncio.sleep((need - self.level) / self.rate)

  def correct(self, delta: float) -> None:
    """Charges (or refunds, when negative) the difference between the estimate and the reported usage."""
    self._refill()
    self.level = min(self.capacity, self.level - delta)


@dataclasses.dataclass
class _Answer:
  text: str | None                 # the final content only; None when the endpoint sent null
  model: str
  finish_reason: str | None
  logprobs: list | None            # OpenAI choices[0].logprobs.content
  verdict: Any                     # deliberate's own choices[0].deliberate_verdict


def _loopback(host: str) -> bool:
  if host.lower() in ("localhost", "localhost.localdomain"):
    return True
  try:
    return ipaddress.ip_address(host.strip("[]")).is_loopback
  except ValueError:
    return False


class _AttemptError(Exception):

  def __init__(self, reason: str, retryable: bool, detail: str = "", retry_after: float | None = None):
    super().__init__(f"{reason}: {detail}")
    self.reason, self.retryable, self.detail, self.retry_after = reason, retryable, detail, retry_after


def parse_retry_after(value: str | None) -> float | None:
  """Seconds (integer or, leniently, fractional) or an HTTP date; None when absent or unreadable."""
  if not value:
    return None
  try:
    return max(0.0, float(value))
  except ValueError:
    pass
  try:
    when = email.utils.parsedate_to_datetime(value)
  except (TypeError, ValueError):
    return None
  return max(0.0, when.timestamp() - time.time())


def _estimate_tokens(messages: list[dict[str, str]], max_tokens: int) -> int:
  return sum(len(m.get("content", "")) for m in messages) // 4 + max_tokens


class JudgeClient:
  """One per event loop. Bounded concurrency, RPM/TPM buckets, one shared httpx connection pool."""

  def __init__(self, config: ml_collections.ConfigDict, *, base_url: str | None = None,
               endpoint_id: str | None = None, model: str | None = None, cache: JudgeCache | None = None,
               use_api_key: bool = True):
    validate_judge_config(config)
    self.config = config
    self.base_url = (base_url or config.base_url).rstrip("/")
    # Identity of the endpoint in cache keys; an embedded server's ephemeral port must not split the cache.
    self.endpoint_id = endpoint_id or self.base_url
    self.model = model or config.model
    self.cache = cache
    self.metrics = JudgeMetrics()
    headers = {}
    if use_api_key and config.api_key_env:
      key = os.environ.get(config.api_key_env)
      url = httpx.URL(self.base_url)
      if key and url.scheme == "http" and not _loopback(url.host) and not config.allow_insecure_http_key:
        raise ValueError(
            f"judge config: refusing to send the API key from ${config.api_key_env} in cleartext over plain http:// "
            f"to the non-loopback host {url.host!r} (base_url {self.base_url!r}). Use https://, set api_key_env='' "
            "for an endpoint that needs no key, or set judge config field allow_insecure_http_key=True.")
      if key:
        headers["Authorization"] = f"Bearer {key}"  # lives only inside the httpx client's headers
      else:
        log.warning("judge: environment variable %s is not set; sending requests without an API key",
                    config.api_key_env)
    n = int(config.max_concurrency)
    # Requests go straight to httpx's transport: a judge call needs none of the client layer (cookies, auth flows,
    # redirects, event hooks), which cost more CPU per call than the transport itself.
    self._http = StackTransport(max_connections=n)
    self._headers = {"content-type": "application/json", **headers}
    self._timeout = httpx.Timeout(config.timeout_s).as_dict()
    self._url = httpx.URL(self.base_url + "/chat/completions")  # parsed once, not per request
    self._sem = asyncio.Semaphore(n)
    self._rpm = TokenBucket(config.requests_per_minute) if config.requests_per_minute else None
    self._tpm = TokenBucket(config.tokens_per_minute) if config.tokens_per_minute else None

  def __repr__(self) -> str:
    return f"JudgeClient(base_url={self.base_url!r}, model={self.model!r})"

  async def __aenter__(self) -> "JudgeClient":
    return self

  async def __aexit__(self, *exc) -> None:
    await self.aclose()

  async def aclose(self) -> None:
    await self._http.aclose()

  def _backoff_s(self, retry: int, retry_after: float | None) -> float:
    jittered = random.uniform(0.0, min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (retry - 1)))
    return jittered if retry_after is None else max(retry_after, jittered)

  async def _attempt(self, body: dict[str, Any]) -> "_Answer":
    """One HTTP round trip under the concurrency and rate limits; raises _AttemptError on any fault."""
    async with self._sem:
      if self._rpm:
        await self._rpm.acquire(1)
      estimate = _estimate_tokens(body["messages"], body["max_tokens"])
      if self._tpm:
        await self._tpm.acquire(estimate)
      self.metrics.http_attempts += 1
      try:
        async with asyncio.timeout(self.config.timeout_s):
          req = httpx.Request("POST", self._url, headers=self._headers, content=json.dumps(body).encode(),
                              extensions={"timeout": self._timeout})
          resp = await self._http.handle_async_request(req)
          await resp.aread()  # and closes it: the connection goes back to the pool
      except (TimeoutError, httpx.TimeoutException) as e:
        raise _AttemptError("timeout", True, f"no answer within {self.config.timeout_s}s") from e
      except httpx.ConnectError as e:
        raise _AttemptError("connect", True, type(e).__name__) from e
      except httpx.TransportError as e:  # dropped connection, protocol error
        raise _AttemptError("transport", True, f"{type(e).__name__}: {e}") from e
    status = resp.status_code
    if status == 429 or status >= 500:
      raise _AttemptError(f"http_{status}", True, resp.text[:200], parse_retry_after(resp.headers.get("retry-after")))
    if status >= 400:
      raise _AttemptError(f"http_{status}", False, resp.text[:200])
    try:
      data = resp.json()
      choices = data["choices"]
      if not choices:
        raise _AttemptError("bad_response", True, "empty 'choices'")
      choice = choices[0]
      message = choice["message"]
      text = message.get("content")
      finish = choice.get("finish_reason")
      logprobs = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
      raise _AttemptError("bad_response", True, f"{type(e).__name__}: {resp.text[:200]!r}") from e
    if text is not None and not isinstance(text, str):
      raise _AttemptError("bad_response", True, f"choices[0].message.content is {type(text).__name__}, not a string")
    usage = data.get("usage") if isinstance(data, dict) else None
    if self._tpm and isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int):
      self._tpm.correct(usage["total_tokens"] - estimate)
    return _Answer(text, str(data.get("model") or self.model), finish, logprobs if isinstance(logprobs, list) else None,
                   choice.get("deliberate_verdict"))

  def _body(self, request: JudgeRequest) -> dict[str, Any]:
    c = self.config
    body = {"model": self.model, "messages": request.messages,
            "max_tokens": int(request.max_tokens or c.max_tokens),
            "temperature": float(c.temperature if request.temperature is None else request.temperature)}
    if request.final is not None and c.verdict_mode == "logprobs" and c.top_logprobs:
      body.update(logprobs=True, top_logprobs=int(c.top_logprobs))
    if request.final is not None and c.verdict_mode == "logits":
      body["deliberate_verdict"] = request.final.wire(c.verdict_reasoning_tokens)
    return body

  def _key_params(self, body: dict[str, Any], request: JudgeRequest) -> dict[str, Any]:
    """Everything besides the messages that decides the answer, re-asks included."""
    c = self.config
    params = {"max_tokens": body["max_tokens"], "temperature": body["temperature"],
              "length_retry_max_tokens": int(c.length_retry_max_tokens),
              "parse_retry": "reminder/v2" if c.parse_retry == "reminder" else f"temperature/{c.parse_retry_temperature}"}
    if request.final is not None and c.verdict_mode != "text":
      params["verdict"] = {"mode": c.verdict_mode, **request.final.wire(c.verdict_reasoning_tokens),
                           "top_logprobs": int(c.top_logprobs)}
    return params

  def _reask(self, body: dict[str, Any], request: JudgeRequest, retry: int) -> dict[str, Any]:
    """The next parse retry's body: never the same messages at temperature 0 again."""
    c = self.config
    if c.parse_retry == "temperature":
      return {**body, "temperature": float(c.parse_retry_temperature)}
    reminder = request.final.reminder() if request.final else verdicts.GENERIC_REMINDER
    # Appended to the last user message, not sent as a second one: chat templates that require alternating roles
    # reject two user messages in a row, and the request keeps its shape.
    messages = [dict(m) for m in request.messages]
    if messages and messages[-1].get("role") == "user" and isinstance(messages[-1].get("content"), str):
      messages[-1]["content"] = f"{messages[-1]['content']}\n\n{reminder}"
    else:
      messages.append({"role": "user", "content": reminder})
    out = {**body, "messages": messages}
    if retry > 1:  # the reminder alone at temperature 0 would repeat the first re-ask's answer
      out["temperature"] = max(float(body["temperature"]), float(c.parse_retry_temperature))
    return out

  def _read(self, text: str, probs: dict[str, float] | None, request: JudgeRequest,
            parse: Callable[[str], Any] | None) -> tuple[Any, dict[str, float] | None, float | None]:
    """(value, probs, mean); raises ParseError. With probabilities the verdict is their argmax, read by `parse`
    from its own final line, so both paths return the same kind of value."""
    if probs and request.final is not None:
      line = request.final.line(verdicts.best(probs))
      return (parse(line) if parse else line), probs, verdicts.mean(request.final, probs)
    return (parse(text) if parse else text), None, None

  def _probs(self, answer: "_Answer", request: JudgeRequest) -> dict[str, float] | None:
    if request.final is None or self.config.verdict_mode == "text":
      return None
    if self.config.verdict_mode == "logits" and answer.verdict is not None:
      return verdicts.from_wire(request.final, answer.verdict)
    if answer.logprobs:
      return verdicts.from_openai_logprobs(request.final, answer.logprobs)
    return None

  async def complete(self, request: JudgeRequest, parse: Callable[[str], Any] | None = None) -> JudgeResult:
    """Answer or failure for one request; `parse` raises ParseError on answers its rubric does not accept."""
    t0 = time.perf_counter()
    self.metrics.requests += 1
    c = self.config
    body = self._body(request)
    common = dict(rubric_version=request.rubric_version)
    key = None
    if self.cache is not None:
      key = cache_key(self.endpoint_id, self.model, request.rubric_version, request.messages,
                      self._key_params(body, request))
      try:
        text, cached_model, extra = self.cache.get_entry(key) or (None, None, None)
      except sqlite3.Error as e:  # a broken cache costs a request, never the answer
        log.warning("judge: cache read failed (%s); asking the endpoint", e)
        text = cached_model = extra = None
      if text is not None:
        try:
          value, probs, mean = self._read(text, (extra or {}).get("probs"), request, parse)
        except ParseError:
          pass  # written by an older parser: ask again
        else:
          self.metrics.cache_hits += 1
          latency = time.perf_counter() - t0
          self.metrics.latencies_s.append(latency)
          return JudgeResult(True, value, text, latency_s=latency, cache_hit=True, model=cached_model, probs=probs,
                             mean=mean, **common)
      self.metrics.cache_misses += 1
    attempts = retries = parse_retries = 0
    length_retried = False
    text = reported = None
    try:
      while True:
        attempts += 1
        try:
          answer = await self._attempt(body)
        except _AttemptError as e:
          if e.retry_after is not None and e.retry_after > c.retry_after_max_s:
            return self._fail("retry_after_too_long", f"{e.reason}: the server asked to wait {e.retry_after:.0f}s, "
                              f"more than judge config retry_after_max_s={c.retry_after_max_s}", t0, attempts,
                              text, common)
          if e.retryable and retries < c.max_retries:
            retries += 1
            self.metrics.retries[e.reason] += 1
            await asyncio.sleep(self._backoff_s(retries, e.retry_after))
            continue
          return self._fail(e.reason, e.detail, t0, attempts, text, common)
        text, reported = answer.text, answer.model
        if answer.finish_reason == "length":  # cut off: its last line is not its final answer
          self.metrics.truncated += 1
          if not length_retried and c.length_retry_max_tokens > body["max_tokens"]:
            length_retried = True
            self.metrics.length_retries += 1
            body = {**body, "max_tokens": int(c.length_retry_max_tokens)}
            continue
          return self._fail("length", f"answer cut off at max_tokens={body['max_tokens']} (finish_reason 'length')",
                            t0, attempts, text, common)
        probs = self._probs(answer, request)
        if text is None and not probs:
          reason, detail = "null_content", "choices[0].message.content is null (no final answer, only reasoning?)"
        else:
          try:
            value, probs, mean = self._read(text or "", probs, request, parse)
            break
          except ParseError as e:
            reason, detail = "unparseable", str(e)
        if parse_retries < c.max_parse_retries:
          parse_retries += 1
          self.metrics.parse_retries += 1
          body = self._reask(body, request, parse_retries)
          continue
        return self._fail(reason, detail, t0, attempts, text, common)
    except Exception as e:  # a bug must not lose the request: it is reported, once, as a failure
      log.exception("judge: unexpected error")
      return self._fail(f"error_{type(e).__name__}", str(e), t0, attempts, text, common)
    if probs:
      self.metrics.from_probs += 1
    if key is not None:
      try:
        await asyncio.to_thread(self.cache.put, key, text or "", rubric_version=request.rubric_version,
                                model=reported, extra={"probs": probs} if probs else None)
      except sqlite3.Error as e:
        log.warning("judge: cache write failed (%s); the answer is returned uncached", e)
    latency = time.perf_counter() - t0
    self.metrics.latencies_s.append(latency)
    return JudgeResult(True, value, text, latency_s=latency, attempts=attempts, model=reported, probs=probs,
                       mean=mean, **common)

  def _fail(self, reason: str, detail: str, t0: float, attempts: int, text: str | None,
            common: dict[str, Any]) -> JudgeResult:
    self.metrics.failures[reason] += 1
    log.warning("judge: request failed after %d attempt(s): %s %s", attempts, reason, detail[:200])
    return JudgeResult(False, None, text, reason, detail, time.perf_counter() - t0, attempts, **common)

  async def complete_many(self, requests: Sequence[JudgeRequest],
                          parse: Callable[[str], Any] | None = None) -> list[JudgeResult]:
    """Results in request order, one per request."""
    return list(await asyncio.gather(*(self.complete(r, parse) for r in requests)))
