"""Prompt iterators: deterministic, resumable from their state, and sharded disjointly across hosts."""
import collections
import json

import pytest

from deliberate.data import loader, schema
from test_data_schema import write_tiny_dataset

N_PER_CATEGORY, N_PAIRS = 5, 4  # 15 dilemmas


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  src = tmp_path_factory.mktemp("src")
  files = write_tiny_dataset(src, n_per_category=N_PER_CATEGORY, n_pairs=N_PAIRS, n_eval=6, n_open=6)
  data_dir = tmp_path_factory.mktemp("tfds")
  return {"src_dir": src, "data_dir": data_dir, "files": files}


def _it(data, seed=0, n=2, index=0, count=1, cls=loader.PromptIterator):
  return cls(data["data_dir"], seed, n, index, count, src_dir=data["src_dir"])


def _key(prompt):
  return (prompt["position"], prompt["dilemma"]["id"], prompt["pair"]["pair_id"], prompt["swapped"])


def test_same_seed_same_stream_and_another_seed_another(data):
  a, b, c = _it(data), _it(data), _it(data, seed=1)
  run_a = [[_key(p) for p in a.next_batch()] for _ in range(12)]
  assert run_a == [[_key(p) for p in b.next_batch()] for _ in range(12)]
  assert run_a != [[_key(p) for p in c.next_batch()] for _ in range(12)]


def test_each_epoch_is_a_permutation_and_epochs_differ(data):
  it = _it(data, n=3)
  epochs = [[p["dilemma"]["id"] for _ in range(5) for p in it.next_batch()] for _ in range(2)]
  ids = sorted(d["id"] for c in schema.CATEGORIES for d in data["files"][schema.dilemma_file(c)])
  assert sorted(epochs[0]) == ids and sorted(epochs[1]) == ids
  assert epochs[0] != epochs[1]
  assert it.state() == {"epoch": 2, "index": 0}


def test_prompts_carry_full_records_and_roles_swap_consistently(data):
  it = _it(data, n=5)
  pairs = {p["pair_id"]: p for p in data["files"][schema.PERSONAS_FILE]}
  prompts = [p for _ in range(24) for p in it.next_batch()]  # 120 positions, 8 epochs
  for p in prompts:
    src = pairs[p["pair"]["pair_id"]]
    expected = (src["b"], src["a"]) if p["swapped"] else (src["a"], src["b"])
    assert (p["pair"]["a"], p["pair"]["b"]) == expected
    assert set(p["dilemma"]) == {"index", "id", "category", "domain", "title", "text", "considerations"}
  assert collections.Counter(p["swapped"] for p in prompts) == {True: 60, False: 60}  # balanced per 2 positions
  per_pair = collections.Counter(p["pair"]["pair_id"] for p in prompts)
  assert set(per_pair.values()) == {30}  # every pair once per pair-epoch of 4 positions
  unswapped = _it(data, n=5)
  unswapped.swap_roles = False
  assert not any(p["swapped"] for p in unswapped.next_batch())


def test_resume_from_state_equals_uninterrupted(data):
  straight = _it(data, seed=3, n=4)
  expected = [[_key(p) for p in straight.next_batch()] for _ in range(12)]
  first = _it(data, seed=3, n=4)
  got = [[_key(p) for p in first.next_batch()] for _ in range(5)]
  saved = json.loads(json.dumps(first.state()))  # the checkpoint holds plain JSON
  resumed = _it(data, seed=3, n=4)
  resumed.restore(saved)
  got += [[_key(p) for p in resumed.next_batch()] for _ in range(7)]
  assert got == expected
  assert resumed.state() == straight.state() == {"epoch": 3, "index": 3}  # 48 positions over 15 dilemmas


@pytest.mark.parametrize("count,n", [(2, 1), (3, 2), (4, 3)])
def test_shards_are_disjoint_cover_each_epoch_and_agree_on_state(data, count, n):
  hosts = [_it(data, seed=7, n=n, index=h, count=count) for h in range(count)]
  single = _it(data, seed=7, n=n * count)
  steps = 15  # 15 * n * count positions: a whole number of epochs
  seen = collections.defaultdict(list)
  for _ in range(steps):
    whole = {p["position"]: _key(p) for p in single.next_batch()}
    for h, it in enumerate(hosts):
      for p in it.next_batch():
        seen[p["position"]].append(h)
        assert _key(p) == whole[p["position"]]  # a host's prompts are exactly the single-host run's
    assert len({json.dumps(it.state()) for it in hosts}) == 1
  assert sorted(seen) == list(range(steps * n * count))
  assert all(len(v) == 1 for v in seen.values())
  per_host = collections.Counter(v[0] for v in seen.values())
  assert set(per_host.values()) == {steps * n}


@pytest.mark.parametrize("state", [{"epoch": 0}, {"epoch": 1, "index": 15}, {"epoch": -1, "index": 0},
                                   {"epoch": "x", "index": 0}, None])
def test_restore_rejects_bad_state(data, state):
  with pytest.raises(ValueError, match="state"):
    _it(data).restore(state)


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"index": 2, "count": 2}, {"index": -1}])
def test_bad_arguments_are_named(data, kwargs):
  with pytest.raises(ValueError, match="num_prompts_per_step|process_index"):
    _it(data, **kwargs)


def test_open_question_iterator_reads_training_questions(data):
  questions = [q["id"] for q in data["files"][schema.TRAIN_OPEN_FILE]]
  a = _it(data, seed=5, n=1, index=0, count=2, cls=loader.OpenQuestionIterator)
  b = _it(data, seed=5, n=1, index=1, count=2, cls=loader.OpenQuestionIterator)
  epoch = [q["question"]["id"] for _ in range(3) for it in (a, b) for q in it.next_batch()]
  assert sorted(epoch) == sorted(questions)  # training questions only: no 'open-' eval id
  resumed = _it(data, seed=5, n=1, index=0, count=2, cls=loader.OpenQuestionIterator)
  resumed.restore(a.state())
  assert resumed.next_batch() == a.next_batch()


def test_eval_sets_in_file_order_with_their_pairs(data):
  tasks = loader.eval_conflict_tasks(data["data_dir"], data["src_dir"])
  assert [t["id"] for t in tasks] == [t["id"] for t in data["files"][schema.EVAL_CONFLICT_FILE]]
  assert all(t["pair"]["pair_id"] == t["pair_id"] for t in tasks)
  opens = loader.eval_open_questions(data["data_dir"], data["src_dir"])
  assert [q["question"] for q in opens] == [q["question"] for q in data["files"][schema.EVAL_OPEN_FILE]]


def test_shipped_open_questions_are_the_training_set(tmp_path):
  it = loader.OpenQuestionIterator(tmp_path, seed=0, num_prompts_per_step=4)
  assert it.num_items == len(schema.load_open("train")) == 300
  eval_ids = {q["id"] for q in schema.load_eval_open()}
  seen = [p["question"] for _ in range(3) for p in it.next_batch()]
  assert all(q["id"].startswith("topen-") and q["id"] not in eval_ids for q in seen)
  assert len({q["id"] for q in seen}) == 12


def test_shipped_training_prompts(tmp_path):
  it = loader.PromptIterator(tmp_path, seed=0, num_prompts_per_step=2)
  prompts = [p for _ in range(3) for p in it.next_batch()]
  pair_ids = {p["pair_id"] for p in schema.load_pairs("train")}
  assert all(p["pair"]["pair_id"] in pair_ids and p["pair"]["split"] == "train" for p in prompts)
  assert len({p["dilemma"]["id"] for p in prompts}) == 6
  assert it.num_items == len(schema.load_dilemmas())
