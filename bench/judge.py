"""Judge client throughput: a local server answers every call after 100 ms; 128 requests in flight.

  python bench/judge.py [--in-flight 128] [--latency 0.1] [--rounds 16]

Ideal rate = in-flight / latency (1280 req/s at the defaults). The server (deliberate.judge.testing, raw asyncio
streams) runs in its own process so its cost is not billed to the client. Prints the achieved rate, its fraction of
the ideal (target >= 70 %), the client's overhead per call (wall time per call per in-flight slot, minus the
server's delay) and the client process's CPU time per call; then, in the same run, on the same server and load, the
rate of the official `openai` SDK's AsyncOpenAI client (a test extra; skipped when not installed).
"""
import argparse
import asyncio
import os
import subprocess
import sys
import time

from deliberate.judge import parsers
from deliberate.judge.client import JudgeRequest
from deliberate.judge.config import default_judge_config
from deliberate.judge.runner import SyncJudge


def _cpu_s(pid: int) -> float:
  """User + system CPU seconds of another process (Linux /proc)."""
  fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _sdk_rate(url: str, n: int, in_flight: int) -> tuple[float, int]:
  """(req/s, failures) of openai.AsyncOpenAI with `in_flight` concurrent requests, after a warm-up round."""
  import httpx
  import openai

  async def run() -> tuple[float, int]:
    client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=3, timeout=10.0,
                                http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=in_flight,
                                                                                  max_keepalive_connections=in_flight)))
    sem = asyncio.Semaphore(in_flight)

    async def one(i: int) -> bool:
      async with sem:
        try:
          r = await client.chat.completions.create(
              model="m", messages=[{"role": "user", "content": f"id: s{i}\nrate this"}], max_tokens=512,
              temperature=0.0)
          return parsers.parse_score(r.choices[0].message.content) == 3
        except Exception:
          return False
    await asyncio.gather(*(one(i) for i in range(in_flight)))  # warm-up: open the pool's connections
    t0 = time.perf_counter()
    ok = await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - t0
    await client.close()
    return n / wall, n - sum(ok)
  return asyncio.run(run())


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--in-flight", type=int, default=128)
  p.add_argument("--latency", type=float, default=0.1)
  p.add_argument("--rounds", type=int, default=16, help="requests = rounds x in-flight")
  args = p.parse_args()
  server = subprocess.Popen([sys.executable, "-m", "deliberate.judge.testing", "--delay", str(args.latency)],
                            stdout=subprocess.PIPE, text=True)
  try:
    port = int(server.stdout.readline())
    c = default_judge_config()
    c.base_url, c.api_key_env, c.max_concurrency, c.timeout_s = f"http://127.0.0.1:{port}/v1", "", args.in_flight, 10.0
    n = args.rounds * args.in_flight
    reqs = [JudgeRequest([{"role": "user", "content": f"id: r{i}\nrate this"}], "bench/v1") for i in range(n)]
    with SyncJudge(c) as judge:
      judge.judge_many(reqs[:args.in_flight], parsers.parse_score)  # warm-up: open the pool's connections
      server_cpu0 = _cpu_s(server.pid)
      cpu0, t0 = time.process_time(), time.perf_counter()
      results = judge.judge_many(reqs, parsers.parse_score)
      wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    server_cpu = _cpu_s(server.pid) - server_cpu0
    failed = sum(not r.ok for r in results)
    if failed:
      raise SystemExit(f"{failed} of {n} requests failed, e.g. {next(r for r in results if not r.ok)}")
    per_slot_s = wall * args.in_flight / n  # each in-flight slot served n / in_flight calls back to back
    ideal = args.in_flight / args.latency
    rate = n / wall
    print(f"machine: {os.cpu_count()} cores; {n} requests, {args.in_flight} in flight, server delay "
          f"{args.latency * 1e3:.0f} ms, {failed} failed")
    print(f"achieved {rate:.0f} req/s vs ideal {ideal:.0f} req/s = {100 * rate / ideal:.1f}% (target >= 70%)")
    print(f"client overhead per call: {1e3 * (per_slot_s - args.latency):.1f} ms added to the server's "
          f"{1e3 * args.latency:.0f} ms (time per call per in-flight slot, minus the server delay)")
    print(f"client CPU per call: {1e3 * cpu / n:.2f} ms ({cpu:.2f} s CPU over {wall:.2f} s wall); "
          f"server process CPU per call: {1e3 * server_cpu / n:.2f} ms; load average {os.getloadavg()[0]:.1f}")
    try:
      sdk_rate, sdk_failed = _sdk_rate(c.base_url, n, args.in_flight)
    except ImportError:
      print("openai SDK not installed (pip install -e '.[test]'): no SDK comparison")
    else:
      print(f"openai SDK AsyncOpenAI, same server and load: {sdk_rate:.0f} req/s ({sdk_failed} failed) = "
            f"{100 * sdk_rate / ideal:.1f}% of ideal; ours {rate / sdk_rate:.2f}x the SDK's rate")
  finally:
    server.terminate()
    server.wait(10)


if __name__ == "__main__":
  main()
