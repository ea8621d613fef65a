"""The sampling engine against a full forward, across batches, shardings, de-duplication and a multi-turn rollout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deliberate.model import transformer
from deliberate.model.config import ModelConfig
from deliberate.sampling.engine import Request, SamplingEngine
from deliberate.sampling.shapes import bucket_batch, bucket_prompt, prefix_plan
from deliberate.sampling.sampler import SamplingParams

CFG = ModelConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128)
SP = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=10)


@pytest.fixture(scope="module")
def params():
  return transformer.init_params(CFG, jax.random.key(0))


@pytest.fixture(scope="module")
def engine(params):
  return SamplingEngine(params, CFG)


def _prompts(n, seed=0, lo=3, hi=30):
  rng = np.random.RandomState(seed)
  return [rng.randint(6, CFG.vocab_size, size=rng.randint(lo, hi)).tolist() for _ in range(n)]


def _requests(prompts, first_id=0):
  return [Request(p, first_id + i) for i, p in enumerate(prompts)]


@jax.jit
def _padded_forward(params, ids_1xT, positions_1xT):
  return transformer.apply(params, ids_1xT, positions_1xT, None, config=CFG)[0][0]


def _full_logits(params, ids, pad_to=128):
  """Logits of a plain forward without cache, padded to one length so that it compiles once."""
  n = len(ids)
  logits = _padded_forward(params, jnp.asarray([list(ids) + [0] * (pad_to - n)]),
                           jnp.asarray([list(range(n)) + [-1] * (pad_to - n)]))
  return np.asarray(logits[:n], np.float64)


def _naive_greedy(params, prompt, n):
  ids = list(prompt)
  for _ in range(n):
    ids.append(int(np.argmax(_full_logits(params, ids)[-1])))
  return ids[len(prompt):]


def test_greedy_equals_a_full_forward_loop(params, engine):
  prompts = _prompts(4, seed=1) + [_prompts(1, seed=2, lo=70, hi=71)[0]]  # two prompt buckets
  prompts.append(prompts[0])                                               # a de-duplicated prompt
  out = engine.generate(_requests(prompts), SamplingParams(greedy=True, max_new_tokens=8), seed=0)
  for p, o in zip(prompts, out):
    assert o.tokens == _naive_greedy(params, p, 8)
    assert o.stop_reason == "length"
    np.testing.assert_allclose(o.logprobs, [jax.nn.log_softmax(_full_logits(params, p + o.tokens[:j])[-1])[t]
                                            for j, t in enumerate(o.tokens)], atol=2e-4)


def _first_new(seq):
  return next((j for j in range(1, len(seq)) if seq[j] not in seq[:j]), None)


def _first_hit(seq, ids):
  return next((j for j, t in enumerate(seq) if t in ids), None)


def test_stops_at_eos_at_a_stop_id_or_at_max_new_tokens(params, engine):
  sp = SamplingParams(greedy=True, max_new_tokens=9)
  pool = _prompts(12, seed=3)
  free = [o.tokens for o in engine.generate(_requests(pool), sp, seed=0)]
  for eos, stop in ((e, s) for e in range(CFG.vocab_size) for s in range(CFG.vocab_size) if e != s):
    hits = [_first_hit(f, (eos, stop)) for f in free]
    kinds = [None if h is None else f[h] for f, h in zip(free, hits)]
    if eos in kinds and stop in kinds and None in kinds and min(h for h in hits if h is not None) > 0:
      break
  rows = [kinds.index(eos), kinds.index(stop), kinds.index(None)]
  stopper = SamplingEngine(params, CFG.replace(eos_ids=(eos,)), stop_ids=(stop,))
  out = stopper.generate(_requests([pool[i] for i in rows]), sp, seed=0)
  want = [hits[rows[0]] + 1, hits[rows[1]] + 1, 9]
  assert [len(o.tokens) for o in out] == want
  assert [o.stop_reason for o in out] == ["stop", "stop", "length"]
  assert [o.tokens for o in out] == [free[i][:n] for i, n in zip(rows, want)]
  assert stopper.last_stats["decode_steps"] == 8  # the longest row ran to max_new_tokens


def test_the_loop_ends_when_every_row_is_done(params, engine):
  sp = SamplingParams(greedy=True, max_new_tokens=30)
  pool = _prompts(8, seed=4)
  free = [o.tokens for o in engine.generate(_requests(pool), sp, seed=0)]
  i = next(i for i, f in enumerate(free) if _first_new(f))
  j = _first_new(free[i])
  eng = SamplingEngine(params, CFG, stop_ids=(free[i][j],))
  out = eng.generate([Request(pool[i], r) for r in range(3)], sp, seed=0)
  assert [len(o.tokens) for o in out] == [j + 1] * 3
  assert eng.last_stats["decode_steps"] == j < 29  # the while loop stopped with the rows


@pytest.mark.parametrize("candidates", [256, 4])  # 4: the exact full-vocabulary fallback decides most steps
def test_log_probs_match_a_full_forward(params, engine, candidates):
  sp = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=10, candidates=candidates)
  prompts = _prompts(3, seed=5)
  for p, o in zip(prompts, engine.generate(_requests(prompts), sp, seed=3)):
    logits = _full_logits(params, p + o.tokens)[len(p) - 1:-1] / 0.7
    logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    np.testing.assert_allclose(o.logprobs, logp[np.arange(len(o.tokens)), o.tokens], atol=2e-4)
    for row, t, slp in zip(logp, o.tokens, o.sampling_logprobs):
      order = np.argsort(-row)
      probs = np.exp(row[order])
      keep = order[(np.cumsum(probs) - probs) < 0.9]
      assert t in keep
      np.testing.assert_allclose(slp, row[t] - np.logaddexp.reduce(row[keep]), atol=2e-4)


def test_fixed_seed_repeats_and_rows_ignore_their_batch(engine):
  prompts = _prompts(6, seed=6)
  prompts[4] = prompts[1]
  reqs = _requests(prompts, first_id=100)
  a = engine.generate(reqs, SP, seed=11)
  assert [o.tokens for o in a] == [o.tokens for o in engine.generate(reqs, SP, seed=11)]
  assert [o.tokens for o in a] != [o.tokens for o in engine.generate(reqs, SP, seed=12)]
  assert a[1].tokens != a[4].tokens  # one prompt, two row ids: two different samples
  alone = engine.generate([reqs[4]], SP, seed=11)[0]
  shuffled = engine.generate([reqs[5], reqs[4], reqs[0]], SP, seed=11)
  assert alone.tokens == a[4].tokens == shuffled[1].tokens
  assert shuffled[0].tokens == a[5].tokens and shuffled[2].tokens == a[0].tokens
  assert alone.sampling_logprobs == pytest.approx(a[4].sampling_logprobs, abs=1e-5)


def test_eight_devices_give_the_tokens_of_one(params, engine):
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharded = SamplingEngine(params, CFG, mesh=mesh)
  reqs = _requests(_prompts(5, seed=7))
  want = engine.generate(reqs, SP, seed=2)
  got = sharded.generate(reqs, SP, seed=2)
  assert sharded.last_stats["batch"] == 8
  assert [o.tokens for o in got] == [o.tokens for o in want]
  np.testing.assert_allclose(np.concatenate([o.logprobs for o in got]),
                             np.concatenate([o.logprobs for o in want]), atol=1e-5)


def test_deduplicated_prefill_gives_the_tokens_of_separate_prefills(params, engine):
  base = _prompts(2, seed=8)
  reqs = _requests([base[0]] * 3 + [base[1]] * 2)
  plain = SamplingEngine(params, CFG, dedup_prompts=False)
  want = plain.generate(reqs, SP, seed=4)
  got = engine.generate(reqs, SP, seed=4)
  assert (engine.last_stats["unique_prompts"], plain.last_stats["unique_prompts"]) == (2, 8)
  assert [o.tokens for o in got] == [o.tokens for o in want]
  assert len({tuple(o.tokens) for o in got}) == 5


def _group_prompts(seed=10):
  """Two groups of three prompts, each group one long shared head (a system message and dilemma) then its own
  short tail, and one prompt sharing nothing."""
  rng = np.random.RandomState(seed)
  heads = [rng.randint(6, CFG.vocab_size, size=n).tolist() for n in (100, 110)]
  tails = [rng.randint(6, CFG.vocab_size, size=rng.randint(3, 30)).tolist() for _ in range(6)]
  return [heads[i % 2] + t for i, t in enumerate(tails)] + [rng.randint(6, CFG.vocab_size, size=40).tolist()]


def test_prefix_plan_groups_shared_heads_and_keeps_an_own_id():
  prompts = [tuple(p) for p in _group_prompts()]
  prefix_of, cut = prefix_plan(prompts)
  assert cut == [100, 110, 100, 110, 100, 110, 0]
  assert prefix_of[0::2][:3] == [prefix_of[0]] * 3 and prefix_of[1::2][:3] == [prefix_of[1]] * 3
  assert len({prefix_of[0], prefix_of[1], prefix_of[6]}) == 3          # the loner: the empty prefix
  head = prompts[0][:100]
  assert prefix_plan([head + (7,), head, head + (8,), head + (9,)])[1] == [99] * 4  # a head alone keeps one id
  assert prefix_plan([p[:40] for p in prompts[:2]]) is None             # nothing shared
  assert prefix_plan([head[:40] + (7,), head[:40] + (9,)]) is None      # shared, but whole prefills cost no more


@pytest.mark.parametrize("layout", ["split", "stacked", "sharded"])
def test_shared_prefix_prefill_gives_the_tokens_of_whole_prefills(params, layout):
  prompts = _group_prompts()
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,)) if layout == "sharded" else None
  layout = None if mesh is not None else layout  # on a mesh: the stacked params as sharded, cache over rows
  shared = SamplingEngine(params, CFG, layout=layout, mesh=mesh, share_prefixes=True)
  whole = SamplingEngine(params, CFG, layout=layout, mesh=mesh)  # the default
  greedy = SamplingParams(greedy=True, max_new_tokens=6)
  got = shared.generate(_requests(prompts), greedy, seed=0)
  assert (shared.last_stats["prefixes"], shared.last_stats["prefix_len"], shared.last_stats["prompt_len"]) == \
      (4, 128, 64)
  assert whole.generate(_requests(prompts), greedy, seed=0) and whole.last_stats["prefixes"] == 0
  if layout == "split":  # the truth: a full forward per token
    for p, o in zip(prompts, got):
      assert o.tokens == _naive_greedy(params, p, 6)
  got, want = shared.generate(_requests(prompts), SP, seed=5), whole.generate(_requests(prompts), SP, seed=5)
  assert [o.tokens for o in got] == [o.tokens for o in want]
  np.testing.assert_allclose(np.concatenate([o.logprobs for o in got]),
                             np.concatenate([o.logprobs for o in want]), atol=1e-5)


def test_a_settled_engine_runs_every_call_in_a_compiled_program(params):
  """After `settle`, calls run padded in the programs compiled so far (here, only `precompile`'s bounds), with the
  tokens of their own buckets: groups re-cut to the program's prefix length, a lone prompt as its own prefix."""
  prompts = _group_prompts()
  sp = SamplingParams(temperature=0.9, top_p=0.8, max_new_tokens=5)  # used by no other test
  exact = SamplingEngine(params, CFG, share_prefixes=True)
  settled = SamplingEngine(params, CFG, share_prefixes=True)
  cover = settled.precompile(sp, rows=8, prompt_len=100, prefixes=4, prefix_len=100)
  assert settled.compile_count == 1 and (cover.q, cover.a, cover.u, cover.p, cover.b) == (4, 128, 8, 128, 8)
  settled.settle()
  calls = [_requests(prompts), _requests(prompts[:3], 20), _requests(prompts[6:], 30),
           _requests([prompts[0] + prompts[6][:30]] * 2, 40)]  # a prompt longer than the prefix bound: re-cut
  for reqs in calls:
    got, want = settled.generate(reqs, sp, seed=3), exact.generate(reqs, sp, seed=3)
    assert settled.last_stats["batch"] == 8 and settled.last_stats["prefixes"] == 4
    assert [o.tokens for o in got] == [o.tokens for o in want]
    np.testing.assert_allclose(np.concatenate([o.logprobs for o in got]),
                               np.concatenate([o.logprobs for o in want]), atol=1e-5)
  assert settled.compile_count == 1 and settled.overflow_compiles == 0
  assert exact.compile_count > 1
  settled.generate(_requests([prompts[0] * 3]), sp, seed=3)  # held by no program: compiled, and counted
  assert settled.compile_count == 2 and settled.overflow_compiles == 1


def test_prompt_buckets_pad_by_at_most_a_quarter():
  """Multiples of 64 up to 512, then four steps per doubling: a 300-id prompt prefills 320 slots, not 512."""
  assert [bucket_prompt(n) for n in (1, 64, 65, 300, 385, 512, 513, 1025)] == [64, 64, 128, 320, 448, 512, 640, 1280]
  for n in range(1, 5000):
    assert n <= bucket_prompt(n) <= (n + 63 if n <= 512 else 1.25 * n)
    assert bucket_prompt(bucket_prompt(n)) == bucket_prompt(n)


def test_multi_turn_rollout_compiles_once_per_bucket(params):
  """Conversations of growing, then bounded, context finish at different turns; the batch shrinks with them and
  the params change once. Compilations are counted by jax.monitoring, independently of the engine's own count."""
  sp = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=7)  # used by no other test: a fresh program
  eng = SamplingEngine(params, CFG)
  new_params = jax.tree.map(lambda x: x * 0.9, params)  # a training step's update, swapped in mid-rollout
  compiles = []
  listener = lambda event, duration, **kw: compiles.append(event) if event.endswith("backend_compile_duration") \
      else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    rng = np.random.RandomState(9)
    persona = {c: rng.randint(6, 128, size=rng.randint(3, 12)).tolist() for c in range(6)}
    turns = {c: [rng.randint(6, 128, size=rng.randint(2, 20)).tolist()] for c in range(6)}
    last_turn = dict(enumerate([2, 4, 6, 8, 8, 8]))  # 6, 5, 4 then 3 conversations left: batch buckets 8 and 4
    calls, shapes, cache_bytes = 0, set(), []
    for turn in range(max(last_turn.values())):
      active = [c for c in range(6) if turn < last_turn[c]]
      if turn == 3:
        eng.params = new_params
      reqs = [Request(persona[c] + sum(turns[c][-2:], []), 1000 * c + turn) for c in active]  # bounded context
      for c, o in zip(active, eng.generate(reqs, sp, seed=turn)):
        turns[c].append(o.tokens + rng.randint(6, 128, size=rng.randint(0, 40)).tolist())
      calls += 1
      st = eng.last_stats
      shapes.add((st["unique_prompts"], st["prompt_len"], st["batch"]))
      assert st["batch"] == bucket_batch(len(active))
      assert st["prompt_len"] == bucket_prompt(max(len(r.prompt_ids) for r in reqs))
      assert st["cache_bytes"] == st["batch"] * (st["prompt_len"] + 6) * 2 * 2 * 2 * 16 * 4
      cache_bytes.append(st["cache_bytes"])
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  n_batch = len({s[2] for s in shapes})
  n_len = len({s[1] for s in shapes})
  assert n_len >= 2 and n_batch >= 2
  assert len(compiles) == eng.compile_count == len(shapes) == len(eng.compiled_shapes) < calls
  assert max(cache_bytes) == bucket_batch(6) * (128 + 6) * 512  # sized per call: bounded context, bounded cache


@pytest.mark.parametrize("req, sp, seed, match", [
    (Request([], 3), SP, 0, "row_id=3: empty prompt"),
    (Request([5, 200], 4), SP, 0, "row_id=4: token ids \\[200\\]"),
    (Request([5] * 2045, 5), SP, 0, "row_id=5: prompt of 2045 tokens"),
    (Request([5], -1), SP, 0, "row_id=-1"),
    (Request([5], 1), SP, -2, "seed"),
])
def test_bad_requests_name_the_request(engine, req, sp, seed, match):
  with pytest.raises(ValueError, match=match):
    engine.generate([req], sp, seed=seed)


def test_a_repeated_row_id_is_refused(engine):
  with pytest.raises(ValueError, match="row_id=7: the id appears twice"):
    engine.generate([Request([5, 6], 7), Request([8], 7)], SP, seed=0)
