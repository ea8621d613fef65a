"""Small local judges on negotiation records: parse rate, failure reasons, latency, and scores from the logits.

  # llama.cpp's own OpenAI-compatible server (not written here) serving the embedded SmolLM2 GGUF:
  pip install 'llama-cpp-python[server]'      # builds from source, 6-13 minutes on a 2-core machine
  python bench/judge_llamacpp.py --records /tmp/qs_before/records [--n 50]
  # deliberate's own judge server, `model` backend: SmolLM2 judging the records itself (self-judging):
  python bench/judge_llamacpp.py --server model --records /tmp/qs_before/records [--reasoning-tokens 16]

For every record it asks the agreement rubric (the dialogue's turns) and the CA rubric (the final completion, or
Agent 1's last turn when the dialogue has none) through deliberate's judge client, in two modes: plain text
(`verdict_mode='text'`) and verdicts from probabilities (`logprobs` for llama.cpp, when its server returns them;
`logits` for the model backend). It prints, per rubric and mode, the parse rate, the failure reasons and the latency
p50/p95, the distribution of CA scores and agreement verdicts, and how often they agree with the deterministic local
judge (lexicon heuristic, not an LLM) on the same prompts. Records come from the trainer's dialogue JSONL files; when
there are fewer than --n, short synthetic dialogues make up the rest and the output says how many.
"""
import argparse
import collections
import glob
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

from deliberate.data import schema
from deliberate.judge import judges, lexicon, rubrics
from deliberate.judge.config import default_judge_config
from deliberate.judge.runner import SyncJudge

SYNTHETIC = [
    ("I propose we split the cost evenly and review the plan in three months.", "Agreed, let's do that."),
    ("We should share the data openly with both teams first.", "I cannot accept that; the data is confidential."),
    ("How about a six-month pilot, with a vote at the end?", "That works for me, if everyone gets a voice."),
    ("Let's delay the decision until we know more.", "I disagree: waiting harms the people who depend on us."),
]


def load_records(path: str, n: int) -> tuple[list[dict], int]:
  """(up to n records, how many of them are synthetic)."""
  files = sorted(glob.glob(os.path.join(path, "*.jsonl"))) if os.path.isdir(path) else ([path] if path else [])
  records = []
  for f in files:
    with open(f) as fh:
      for i, line in enumerate(fh):
        try:
          r = json.loads(line)
        except ValueError as e:
          raise SystemExit(f"{f}:{i + 1}: not a JSON record ({e})")
        if r.get("turns"):
          records.append(r)
  records = records[:n]
  dilemmas = schema.load_dilemmas()
  pairs = schema.load_pairs()
  synthetic = 0
  while len(records) < n:
    k = synthetic
    a, b = SYNTHETIC[k % len(SYNTHETIC)]
    records.append({"dilemma_id": dilemmas[k % len(dilemmas)]["id"], "pair_id": pairs[k % len(pairs)]["pair_id"],
                    "turns": [{"agent": 1, "text": a}, {"agent": 2, "text": b}], "completion": "",
                    "synthetic": True})
    synthetic += 1
  return records, synthetic


def judge_kwargs(records: list[dict]) -> tuple[list[dict], list[dict]]:
  dilemmas = {d["id"]: d for d in schema.load_dilemmas()}
  pairs = {p["pair_id"]: p for split in schema.SPLITS for p in schema.load_pairs(split)}
  agreement, ca = [], []
  for r in records:
    d, p = dilemmas.get(r["dilemma_id"]), pairs.get(r["pair_id"])
    if d is None or p is None:
      raise SystemExit(f"record {r.get('step')}/{r.get('index')}: unknown dilemma_id {r['dilemma_id']!r} or "
                       f"pair_id {r['pair_id']!r}")
    a, b = (p["b"], p["a"]) if r.get("agent1") == p["b"]["id"] else (p["a"], p["b"])  # roles swapped by the stream
    turns = [{"agent": t["agent"], "text": t["text"]} for t in r["turns"]]
    agreement.append(dict(dilemma=d, persona_a=a, persona_b=b, turns=turns))
    last1 = [t["text"] for t in turns if t["agent"] == 1][-1:] or [turns[-1]["text"]]
    ca.append(dict(dilemma=d, persona_a=a, persona_b=b, completion=r.get("completion") or last1[0]))
  return agreement, ca


def report(name: str, results: list, lexicon_values: list) -> None:
  ok = [r for r in results if r.ok]
  reasons = collections.Counter(r.reason for r in results if not r.ok)
  lat = [r.latency_s for r in results]
  p50, p95 = np.percentile(lat, [50, 95]) if lat else (0, 0)
  agree = sum(r.value == v for r, v in zip(results, lexicon_values) if r.ok)
  dist = collections.Counter(r.value for r in ok)
  print(f"{name}: parsed {len(ok)}/{len(results)} ({100 * len(ok) / max(len(results), 1):.0f}%), "
        f"failures {dict(reasons) or 'none'}, latency p50 {p50:.2f}s p95 {p95:.2f}s")
  print(f"  values {dict(sorted(dist.items(), key=str))}; same as the deterministic local judge (lexicon) on "
        f"{agree}/{len(ok)} parsed")
  means = [r.mean for r in ok if r.mean is not None]
  if means:
    print(f"  probability-weighted mean score (G-Eval): mean {np.mean(means):.2f}, sd {np.std(means):.2f}")


def lexicon_values(agreement: list[dict], ca: list[dict]) -> tuple[list, list]:
  from deliberate.judge import parsers
  av = [parsers.parse_verdict(lexicon.answer(rubrics.agreement_messages(**k))) for k in agreement]
  cv = [parsers.parse_score(lexicon.answer(rubrics.ca_messages(**k))) for k in ca]
  return av, cv


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_llamacpp(model_path: str, n_ctx: int) -> tuple[subprocess.Popen, str]:
  try:
    import llama_cpp.server  # noqa: F401
  except ImportError:
    raise SystemExit("llama-cpp-python[server] is not installed. It builds from source (6-13 minutes on a 2-core "
                     "machine): pip install 'llama-cpp-python[server]'. Or judge with deliberate's own model "
                     "backend: python bench/judge_llamacpp.py --server model")
  port = _free_port()
  proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", model_path, "--host", "127.0.0.1",
                           "--port", str(port), "--n_ctx", str(n_ctx), "--logits_all", "true"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  url = f"http://127.0.0.1:{port}/v1"
  import httpx
  for _ in range(600):
    try:
      if httpx.get(f"{url}/models", timeout=1).status_code == 200:
        break
    except httpx.TransportError:
      pass
    if proc.poll() is not None:
      raise SystemExit(f"llama.cpp server exited with code {proc.returncode}")
    time.sleep(0.5)
  else:
    proc.terminate()
    raise SystemExit("llama.cpp server did not answer /v1/models within 300 s")
  # One chat request before the benchmark: a build whose kernels this CPU cannot run answers /v1/models and then
  # dies on its first completion (SIGILL), which would otherwise read as 50 connection failures.
  try:
    httpx.post(f"{url}/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
               timeout=120).raise_for_status()
  except httpx.HTTPError as e:
    if proc.poll() is None:
      try:
        proc.wait(5)
      except subprocess.TimeoutExpired:
        proc.terminate()
    raise SystemExit(f"llama.cpp server failed its first chat request ({type(e).__name__}: {e}); exit code "
                     f"{proc.poll()} (-4 is SIGILL: rebuild with CMAKE_ARGS='-DGGML_NATIVE=OFF')") from None
  return proc, url


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--server", choices=("llamacpp", "model"), default="llamacpp")
  p.add_argument("--records", default="/tmp/qs_before/records", help="a dialogue JSONL file or directory")
  p.add_argument("--n", type=int, default=50)
  p.add_argument("--max-tokens", type=int, default=256)
  p.add_argument("--reasoning-tokens", type=int, default=16, help="reasoning budget before the prefix (logits)")
  p.add_argument("--modes", default="text,probs", help="text and/or probs")
  args = p.parse_args()
  records, synthetic = load_records(args.records, args.n)
  print(f"{len(records)} records from {args.records} ({synthetic} synthetic dialogues added to reach {args.n})")
  agreement, ca = judge_kwargs(records)
  lex_a, lex_c = lexicon_values(agreement, ca)
  print(f"deterministic local judge (lexicon): agreement {collections.Counter(lex_a)}, "
        f"CA {dict(sorted(collections.Counter(lex_c).items()))}")
  c = default_judge_config()
  c.api_key_env, c.max_tokens, c.timeout_s, c.max_retries = "", args.max_tokens, 600.0, 1
  c.length_retry_max_tokens, c.max_concurrency = 0, 8
  proc, server, generate_fn = None, None, None
  if args.server == "llamacpp":
    from deliberate.model import registry
    proc, c.base_url = start_llamacpp(registry.wheel_model_path("smollm2-135m"), 4096)
    prob_mode = "logprobs"
  else:
    from deliberate import policy
    from deliberate.judge import serve
    generate_fn = policy.smollm2_judge()
    server = serve.start_server(serve.make_model_backend(generate_fn, max_batch=8, max_wait_s=0.05))
    c.base_url, prob_mode = server.url, "logits"
  c.verdict_reasoning_tokens = args.reasoning_tokens
  try:
    for mode in args.modes.split(","):
      c.verdict_mode = "text" if mode == "text" else prob_mode
      with SyncJudge(c) as judge:
        t0 = time.perf_counter()
        ra = judge.map(judges.judge_agreement, agreement)
        rc = judge.map(judges.judge_ca, ca)
        wall = time.perf_counter() - t0
        model = next((r.model for r in ra + rc if r.model), "?")
      print(f"== {args.server} ({model}), verdict_mode={c.verdict_mode}, max_tokens={c.max_tokens}"
            + (f", reasoning_tokens={c.verdict_reasoning_tokens}" if c.verdict_mode == "logits" else "")
            + f": {len(ra) + len(rc)} requests in {wall:.0f}s")
      report("agreement", ra, lex_a)
      report("CA score", rc, lex_c)
  finally:
    if server is not None:
      server.stop()
    if proc is not None:
      proc.terminate()
      proc.wait(10)


if __name__ == "__main__":
  main()
