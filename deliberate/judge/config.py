"""Judge config: one ConfigDict shared by the trainer, the evaluation and the local judge server."""
from __future__ import annotations

import ml_collections


def default_judge_config() -> ml_collections.ConfigDict:
  """Defaults for a cheap OpenAI-compatible judge (the paper uses a GPT-4o-mini class model)."""
  c = ml_collections.ConfigDict()
  # Endpoint root of an OpenAI-compatible API, up to and including `/v1` (OpenAI, vLLM, llama.cpp, sglang, ...).
  # Ignored when `embedded` is true: the in-process server's URL is used instead.
  c.base_url = "http://127.0.0.1:8000/v1"
  # Model name sent in every request; part of the cache key.
  c.model = "gpt-4o-mini"
  # NAME of the environment variable holding the API key ('' = send no Authorization header). The key itself is
  # read at client start and never logged, printed, cached, checkpointed or written into a metric or record.
  c.api_key_env = "OPENAI_API_KEY"
  # Requests in flight at once (one shared connection pool of this size).
  c.max_concurrency = 64
  # Requests-per-minute token bucket (0 = unlimited). Burst size is one second's worth.
  c.requests_per_minute = 0
  # Tokens-per-minute token bucket (0 = unlimited). A request reserves len(prompt)/4 + max_tokens and is
  # corrected by the server's reported `usage.total_tokens` when present.
  c.tokens_per_minute = 0
  # Wall-clock limit of one HTTP attempt, connection to last byte (seconds).
  c.timeout_s = 60.0
  # Transport-level retries after the first attempt (connect errors, timeouts, 429, 5xx, malformed bodies).
  c.max_retries = 5
  # Exponential backoff: attempt k waits uniform(0, min(backoff_max_s, backoff_base_s * 2**k)) (full jitter),
  # or the server's Retry-After when it sends one.
  c.backoff_base_s = 0.5
  c.backoff_max_s = 30.0
  # A Retry-After longer than this (seconds) is not waited for: the request fails with reason 'retry_after_too_long'
  # and the rollout goes on, instead of one throttled call stalling the whole step.
  c.retry_after_max_s = 60.0
  # Extra requests when the judge's answer cannot be parsed; then the call is recorded as a failure, never a score.
  c.max_parse_retries = 2
  # How a re-ask differs from the ask (at temperature 0 the same messages give the same answer): 'reminder' appends
  # a short user message restating the final-line format; 'temperature' resamples at parse_retry_temperature.
  # Part of the cache key.
  c.parse_retry = "reminder"
  c.parse_retry_temperature = 0.7
  # An answer cut off at max_tokens (finish_reason 'length') is never parsed. When this is larger than the request's
  # max_tokens it is asked once more with this budget; otherwise (0) it fails with reason 'length'. Cache key part.
  c.length_retry_max_tokens = 1024
  # Judge sampling: greedy-ish and short; both are part of the cache key.
  c.temperature = 0.0
  c.max_tokens = 512
  # Where the verdict comes from. 'text': the parsed final line. 'logprobs': the endpoint's OpenAI `logprobs`
  # (top_logprobs at the token after the answer's final `Score:`/`Verdict:`/`Winner:` prefix; the allowed answer
  # with the highest probability wins; falls back to the text when the endpoint returns none). 'logits': deliberate's
  # own `model` backend reasons for at most verdict_reasoning_tokens, ends with the prefix, and scores every allowed
  # answer from the model's logits (never unparseable). Scores also get the probability-weighted mean (G-Eval).
  c.verdict_mode = "text"
  c.verdict_reasoning_tokens = 64
  c.top_logprobs = 20
  # Sending the API key over plain http:// to a host other than loopback is refused unless this is true.
  c.allow_insecure_http_key = False
  # sqlite cache file ('' = no cache). Safe to share between processes (WAL mode).
  c.cache_path = ""
  # Start the local judge server inside the trainer's process and point the client at it.
  c.embedded = False
  # Backend of the embedded server: 'lexicon' (deterministic local judge, keyword heuristic, for smoke runs and
  # tests) or 'model' (a real local LLM judge sampled with deliberate's own engine).
  c.embedded_backend = "lexicon"
  # Port of the embedded server on 127.0.0.1 (0 = ephemeral).
  c.embedded_port = 0
  return c


EMBEDDED_BACKENDS = ("lexicon", "model")
PARSE_RETRY_MODES = ("reminder", "temperature")
VERDICT_MODES = ("text", "logprobs", "logits")


def validate_judge_config(c: ml_collections.ConfigDict) -> None:
  """Fails early, naming the field, instead of deep inside an event loop."""
  positive = ("max_concurrency", "timeout_s", "max_tokens")
  for f in positive:
    if not c[f] > 0:
      raise ValueError(f"judge config field {f!r} must be > 0, got {c[f]!r}")
  nonneg = ("requests_per_minute", "tokens_per_minute", "max_retries", "backoff_base_s", "backoff_max_s",
            "max_parse_retries", "temperature", "embedded_port", "retry_after_max_s", "parse_retry_temperature",
            "length_retry_max_tokens", "verdict_reasoning_tokens", "top_logprobs")
  for f in nonneg:
    if c[f] < 0:
      raise ValueError(f"judge config field {f!r} must be >= 0, got {c[f]!r}")
  if c.embedded_backend not in EMBEDDED_BACKENDS:
    raise ValueError(f"judge config field 'embedded_backend' must be one of {EMBEDDED_BACKENDS}, "
                     f"got {c.embedded_backend!r}")
  for f, allowed in (("parse_retry", PARSE_RETRY_MODES), ("verdict_mode", VERDICT_MODES)):
    if c[f] not in allowed:
      raise ValueError(f"judge config field {f!r} must be one of {allowed}, got {c[f]!r}")
  if not c.embedded and not str(c.base_url).startswith(("http://", "https://")):
    raise ValueError(f"judge config field 'base_url' must start with http:// or https://, got {c.base_url!r}")
