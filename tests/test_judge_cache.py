"""sqlite judge cache: stable keys, and concurrent writers in separate processes lose nothing."""
import multiprocessing
import sqlite3

from deliberate.judge.cache import JudgeCache, cache_key

MSGS = [{"role": "system", "content": "[rubric: ca-score/v1]"}, {"role": "user", "content": "rate"}]
PARAMS = {"max_tokens": 512, "temperature": 0.0}


def test_key_covers_every_input_and_ignores_dict_order():
  base = cache_key("http://h/v1", "m", "ca-score/v1", MSGS, PARAMS)
  assert base == cache_key("http://h/v1", "m", "ca-score/v1", [dict(reversed(list(m.items()))) for m in MSGS],
                           {"temperature": 0.0, "max_tokens": 512})
  variants = [cache_key("http://other/v1", "m", "ca-score/v1", MSGS, PARAMS),
              cache_key("http://h/v1", "m2", "ca-score/v1", MSGS, PARAMS),
              cache_key("http://h/v1", "m", "ca-score/v2", MSGS, PARAMS),
              cache_key("http://h/v1", "m", "ca-score/v1", MSGS[:1], PARAMS),
              cache_key("http://h/v1", "m", "ca-score/v1", MSGS, {**PARAMS, "temperature": 0.7})]
  assert len({base, *variants}) == 6


def _writer(path, worker, n):
  cache = JudgeCache(path)
  for i in range(n):
    cache.put(f"k{worker}-{i}", f"Score: {i % 6}", rubric_version="ca-score/v1", model="m")
    cache.put("shared", "Score: 3", rubric_version="ca-score/v1", model="m")
  cache.close()


def test_concurrent_processes_share_one_file(tmp_path):
  path = str(tmp_path / "judge.sqlite")
  JudgeCache(path).close()
  ctx = multiprocessing.get_context("spawn")
  procs = [ctx.Process(target=_writer, args=(path, w, 60)) for w in range(3)]
  for p in procs:
    p.start()
  for p in procs:
    p.join(60)
  assert [p.exitcode for p in procs] == [0, 0, 0]
  cache = JudgeCache(path)
  assert len(cache) == 3 * 60 + 1
  assert cache.get("k2-59") == ("Score: 5", "m") and cache.get("shared")[0] == "Score: 3" and cache.get("nope") is None
  assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
  cache.close()
