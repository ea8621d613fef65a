"""Schema validators on tiny fixtures, and the quality gates on the real shipped data."""
import collections
import json
import random
import time

import pytest

from deliberate.data import schema

DUP_THRESHOLD = schema.DUP_THRESHOLD


# ---------------------------------------------------------------------------------------------------------------
# Tiny, valid fixtures (imported by the other data tests).

_RNG = random.Random(0)
_WORDS = ["".join(_RNG.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_RNG.randint(3, 9))) for _ in range(800)]


def words(seed: int, n: int) -> str:
  r = random.Random(seed)
  return " ".join(r.choice(_WORDS) for _ in range(n)).capitalize() + "."


def persona(pid: str, side: str, seed: int) -> dict:
  return {"id": pid + side, "name": f"Persona {pid}{side} {words(seed, 1)[:-1]}", "description": words(seed + 1, 12),
          "values": [words(seed + 2, 3)], "priorities": [words(seed + 3, 3), words(seed + 4, 2)],
          "red_lines": [words(seed + 5, 4)]}


def pair(pid: str, split: str, seed: int) -> dict:
  return {"pair_id": pid, "tension": f"{words(seed, 2)[:-1]} vs {words(seed + 7, 2)[:-1]}", "split": split,
          "a": persona(pid, "a", seed + 10), "b": persona(pid, "b", seed + 20)}


def dilemma(category: str, i: int, seed: int) -> dict:
  return {"id": f"{schema.ID_PREFIX[category]}-{i:03d}", "category": category, "domain": words(seed, 1)[:-1],
          "title": words(seed + 1, 4)[:-1], "text": words(seed + 2, 30) + " " + words(seed + 3, 12),
          "considerations": [words(seed + 4, 5), words(seed + 5, 6)]}


def tiny_records(n_per_category: int = 4, n_pairs: int = 3, n_eval: int = 3,
                 n_open: int = 4) -> dict[str, list[dict]]:
  """Records for every file, keyed by file name; texts are random words, so no two are near-duplicates."""
  files = {schema.PERSONAS_FILE: [pair(f"p{i + 1:02d}", "train", 1000 + 50 * i) for i in range(n_pairs)],
           schema.EVAL_PERSONAS_FILE: [pair(f"e{i + 1:02d}", "eval", 5000 + 50 * i) for i in range(n_pairs)]}
  for c, cat in enumerate(schema.CATEGORIES):
    files[schema.dilemma_file(cat)] = [dilemma(cat, i + 1, 10000 + 1000 * c + 10 * i) for i in range(n_per_category)]
  files[schema.EVAL_CONFLICT_FILE] = [
      {**dilemma(schema.CATEGORIES[i % 3], i + 1, 20000 + 10 * i), "id": f"evalc-{i + 1:03d}",
       "pair_id": f"e{i % n_pairs + 1:02d}"} for i in range(n_eval)]
  files[schema.EVAL_OPEN_FILE] = [{"id": f"open-{i + 1:03d}", "domain": words(30000 + i, 1)[:-1],
                                   "question": words(30100 + 7 * i, 9)[:-1] + "?"} for i in range(n_eval)]
  files[schema.TRAIN_OPEN_FILE] = [{"id": f"topen-{i + 1:03d}", "domain": words(40000 + i, 1)[:-1],
                                    "question": words(40100 + 7 * i, 9)[:-1] + "?"} for i in range(n_open)]
  return files


def write_jsonl(path, records) -> None:
  path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def write_tiny_dataset(folder, **kwargs) -> dict[str, list[dict]]:
  folder.mkdir(parents=True, exist_ok=True)
  files = tiny_records(**kwargs)
  for name, records in files.items():
    write_jsonl(folder / name, records)
  return files


# ---------------------------------------------------------------------------------------------------------------
# Validators catch bad records, naming file, line and field.


def test_tiny_dataset_is_valid(tmp_path):
  files = write_tiny_dataset(tmp_path)
  data = schema.load_all(tmp_path)
  assert len(data["dilemmas"]) == 12 and len(data["train_pairs"]) == 3 and len(data["eval_conflict"]) == 3
  assert len(data["eval_open"]) == 3 and data["train_open"] == files[schema.TRAIN_OPEN_FILE]
  assert data["dilemmas"][0] == files[schema.dilemma_file("professional")][0]


def _set(path, value):
  def f(rec):
    *head, last = path
    for k in head:
      rec = rec[k]
    if value is KeyError:
      del rec[last]
    else:
      rec[last] = value
  return f


BAD = [  # (file, line index, mutation, expected fragment)
    (schema.dilemma_file("everyday"), 2, _set(["text"], "Too short."), "field 'text' has 10 characters"),
    (schema.dilemma_file("everyday"), 0, _set(["text"], KeyError), "missing field(s) ['text']"),
    (schema.dilemma_file("everyday"), 0, _set(["text"], words(1, 30)), "field 'text' has 1 sentences; expected 2..6"),
    (schema.dilemma_file("interpersonal"), 3, _set(["text"], " ".join(words(i, 6) for i in range(7))),
     "field 'text' has 7 sentences"),
    (schema.PERSONAS_FILE, 0, _set(["b", "description"], "Cares about money. Hates waste. Counts pennies. Always."),
     "persona 'b': field 'description' has 4 sentences; expected 1..3"),
    (schema.dilemma_file("everyday"), 1, _set(["text"], 42), "field 'text' must be a string, got int"),
    (schema.dilemma_file("everyday"), 1, _set(["considerations"], ["only one consideration"]),
     "field 'considerations' has 1 items"),
    (schema.dilemma_file("everyday"), 1, _set(["considerations"], "a, b"), "must be a list of strings"),
    (schema.dilemma_file("everyday"), 1, _set(["considerations", 1], ""), "field 'considerations[1]' has 0"),
    (schema.dilemma_file("everyday"), 3, _set(["category"], "professional"), "this file holds 'everyday'"),
    (schema.dilemma_file("everyday"), 3, _set(["category"], "spicy"), "field 'category' = 'spicy'"),
    (schema.dilemma_file("professional"), 1, _set(["id"], "prof-1"), "field 'id' = 'prof-1' does not match"),
    (schema.dilemma_file("professional"), 1, _set(["id"], "prof-001"), "duplicate id 'prof-001'"),
    (schema.dilemma_file("professional"), 0, _set(["tags"], ["x"]), "unexpected field(s) ['tags']"),
    (schema.PERSONAS_FILE, 1, _set(["a", "red_lines"], []), "persona 'a': field 'red_lines' has 0 items"),
    (schema.PERSONAS_FILE, 1, _set(["b", "id"], "p02a"), "persona 'b': field 'id' = 'p02a'; expected 'p02b'"),
    (schema.PERSONAS_FILE, 2, _set(["split"], "eval"), "field 'split' = 'eval'; expected 'train'"),
    (schema.PERSONAS_FILE, 0, _set(["pair_id"], "e01"), "field 'pair_id' = 'e01' does not match"),
    (schema.EVAL_PERSONAS_FILE, 0, _set(["a", "description"], "x" * 700), "field 'description' has 700"),
    (schema.EVAL_CONFLICT_FILE, 2, _set(["pair_id"], "e99"), "'e99' is not a pair of eval_personas.jsonl"),
    (schema.EVAL_CONFLICT_FILE, 0, _set(["pair_id"], KeyError), "missing field(s) ['pair_id']"),
    (schema.EVAL_OPEN_FILE, 1, _set(["question"], None), "field 'question' must be a string, got NoneType"),
    (schema.EVAL_OPEN_FILE, 2, _set(["id"], "q-3"), "field 'id' = 'q-3' does not match"),
    (schema.EVAL_OPEN_FILE, 0, _set(["id"], "topen-001"), "field 'id' = 'topen-001' does not match"),
    (schema.TRAIN_OPEN_FILE, 3, _set(["id"], "open-004"), "field 'id' = 'open-004' does not match"),
    (schema.TRAIN_OPEN_FILE, 2, _set(["id"], "topen-001"), "duplicate id 'topen-001'"),
    (schema.TRAIN_OPEN_FILE, 1, _set(["domain"], KeyError), "missing field(s) ['domain']"),
    (schema.TRAIN_OPEN_FILE, 0, _set(["question"], "Why?"), "field 'question' has 4 characters"),
]


@pytest.mark.parametrize("name,index,mutate,fragment", BAD, ids=[f"{b[0]}:{b[3][:30]}" for b in BAD])
def test_validators_name_file_line_and_field(tmp_path, name, index, mutate, fragment):
  files = write_tiny_dataset(tmp_path)
  records = files[name]
  mutate(records[index])
  write_jsonl(tmp_path / name, records)
  with pytest.raises(schema.DataError) as e:
    schema.load_all(tmp_path)
  assert str(e.value).startswith(f"{name}:{index + 1}: "), str(e.value)
  assert fragment in str(e.value), str(e.value)


@pytest.mark.parametrize("line,fragment", [("{not json\n", "invalid JSON"), ("\n", "empty line"),
                                           ("[1, 2]\n", "expected a JSON object, got list")])
def test_unreadable_lines_name_file_and_line(tmp_path, line, fragment):
  write_tiny_dataset(tmp_path)
  path = tmp_path / schema.EVAL_OPEN_FILE
  lines = path.read_text().splitlines(keepends=True)
  path.write_text("".join(lines[:1] + [line] + lines[1:]))
  with pytest.raises(schema.DataError, match=f"^{schema.EVAL_OPEN_FILE}:2: .*{fragment}"):
    schema.load_eval_open(tmp_path)


def test_missing_file_is_named(tmp_path):
  write_tiny_dataset(tmp_path)
  (tmp_path / schema.dilemma_file("interpersonal")).unlink()
  with pytest.raises(schema.DataError, match="dilemmas_interpersonal.jsonl: data file not found"):
    schema.load_dilemmas(data_dir=tmp_path)


@pytest.mark.parametrize("edit", [lambda q: q, lambda q: q.upper().replace(" ", "  ", 3),
                                  lambda q: "So, " + q.lower() + " Discuss."])
def test_training_question_paraphrasing_an_eval_question_is_rejected(tmp_path, edit):
  files = write_tiny_dataset(tmp_path)
  files[schema.TRAIN_OPEN_FILE][2]["question"] = edit(files[schema.EVAL_OPEN_FILE][1]["question"])
  write_jsonl(tmp_path / schema.TRAIN_OPEN_FILE, files[schema.TRAIN_OPEN_FILE])
  with pytest.raises(schema.DataError, match="^train_open.jsonl:3: question is a near-duplicate of eval question "
                                             "open-002 "):
    schema.load_all(tmp_path)


def test_eval_pair_repeating_a_training_pair_is_rejected(tmp_path):
  files = write_tiny_dataset(tmp_path)
  a, b = files[schema.PERSONAS_FILE][1]["tension"].split(" vs ")
  files[schema.EVAL_PERSONAS_FILE][2]["tension"] = f"{b.upper()} versus {a}"  # order and case do not matter
  write_jsonl(tmp_path / schema.EVAL_PERSONAS_FILE, files[schema.EVAL_PERSONAS_FILE])
  with pytest.raises(schema.DataError, match="^eval_personas.jsonl:3: tension .* repeats training pair p02"):
    schema.load_all(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Near-duplicate detection.

_TEXT = ("A nurse on a night shift notices that a senior colleague has been charting medication doses that were "
         "never given. Reporting it could end the colleague's career and strain an understaffed ward.")


def test_near_duplicates_finds_light_edits_and_ignores_unrelated():
  edited = _TEXT.replace("night shift", "late shift").replace("understaffed", "short-staffed")
  items = [("orig", _TEXT), ("other", words(7, 40)), ("edit", edited), ("other2", words(8, 40)),
           ("case", _TEXT.upper().replace(",", " ,"))]
  found = schema.near_duplicates(items, threshold=DUP_THRESHOLD)
  assert {frozenset(p[:2]) for p in found} == {frozenset(p) for p in [("orig", "edit"), ("orig", "case"),
                                                                       ("edit", "case")]}
  assert found[0][2] == pytest.approx(1.0)  # case and punctuation are normalised away
  assert all(DUP_THRESHOLD <= s <= 1.0 for _, _, s in found)


def test_near_dup_index_agrees_with_pairwise_jaccard():
  texts = [words(i, 30) for i in range(30)] + [_TEXT]
  index = schema.NearDupIndex(threshold=DUP_THRESHOLD)
  for i, t in enumerate(texts):
    index.add(str(i), t)
  key, sim = index.closest(_TEXT.replace("nurse", "doctor"))
  assert key == "30" and sim == pytest.approx(schema.jaccard(schema.shingles(_TEXT), schema.shingles(
      _TEXT.replace("nurse", "doctor"))))
  assert index.duplicate_of(words(999, 30)) is None
  brute = max(schema.jaccard(schema.shingles(words(999, 30)), schema.shingles(t)) for t in texts)
  assert index.closest(words(999, 30))[1] == pytest.approx(brute)


# ---------------------------------------------------------------------------------------------------------------
# Quality gates on the real shipped files.


class _Real(dict):
  """Shipped sets, loaded on first use: each gate fails only for the files it needs."""

  def __missing__(self, key):
    load = {"train_pairs": lambda: schema.load_pairs("train"), "eval_pairs": lambda: schema.load_pairs("eval"),
            "dilemmas": schema.load_dilemmas, "eval_conflict": schema.load_eval_conflict,
            "eval_open": schema.load_eval_open, "train_open": lambda: schema.load_open("train")}[key]
    self[key] = load()
    return self[key]


@pytest.fixture(scope="module")
def real():
  return _Real()


def test_real_files_pass_the_schema():
  assert set(schema.load_all()) == {"train_pairs", "eval_pairs", "dilemmas", "eval_conflict", "eval_open",
                                    "train_open"}


@pytest.mark.parametrize("key,low,high", [("train_pairs", 25, 25), ("eval_pairs", 25, 25), ("dilemmas", 330, None),
                                           ("eval_conflict", 100, 100), ("eval_open", 100, 100),
                                           ("train_open", 300, 300)])
def test_real_counts(real, key, low, high):
  assert low <= len(real[key]) <= (high or len(real[key]))
  if key == "dilemmas":
    per_category = collections.Counter(d["category"] for d in real["dilemmas"])
    assert all(per_category[c] >= 110 for c in schema.CATEGORIES), per_category


@pytest.mark.parametrize("key", ["dilemmas", "eval_conflict"])
def test_real_categories_balanced(real, key):
  counts = collections.Counter(d["category"] for d in real[key])
  mean = len(real[key]) / len(schema.CATEGORIES)
  assert all(abs(counts[c] - mean) <= 0.1 * mean for c in schema.CATEGORIES), counts


def test_real_domains_vary(real):
  for cat in schema.CATEGORIES:
    domains = collections.Counter(schema._norm(d["domain"]) for d in real["dilemmas"] if d["category"] == cat)
    top, top_n = domains.most_common(1)[0]
    assert len(domains) >= 6, (cat, domains)
    assert top_n <= 0.3 * sum(domains.values()), (cat, top, top_n)


def test_real_open_question_domains_vary(real):
  domains = collections.Counter(schema._norm(q["domain"]) for q in real["train_open"])
  assert len(domains) >= 20 and max(domains.values()) <= 0.1 * len(real["train_open"]), domains
  assert [q["id"] for q in real["train_open"]] == [f"topen-{i:03d}" for i in range(1, 301)]


def test_real_no_near_duplicates_in_dilemmas(real):
  items = [(d["id"], d["text"]) for d in real["dilemmas"]]
  items += [(d["id"] + ":title", d["title"]) for d in real["dilemmas"]]
  found = schema.near_duplicates(items, threshold=DUP_THRESHOLD)
  assert not found, f"{len(found)} near-duplicate pairs, most similar first: {found[:10]}"


def test_real_no_near_duplicates_across_all_texts(real):
  items = [(d["id"], d["text"]) for d in real["dilemmas"] + real["eval_conflict"]]
  items += [(q["id"], q["question"]) for q in real["eval_open"] + real["train_open"]]
  items += [(d["id"] + ":title", d["title"]) for d in real["dilemmas"] + real["eval_conflict"]]
  t0 = time.perf_counter()
  found = schema.near_duplicates(items, threshold=DUP_THRESHOLD)
  assert time.perf_counter() - t0 < 10
  assert not found, f"{len(found)} near-duplicate pairs, most similar first: {found[:10]}"


@pytest.mark.parametrize("keys", [("train_pairs",), ("train_pairs", "eval_pairs")])
def test_real_no_near_duplicate_personas(real, keys):
  personas = [p[s] for k in keys for p in real[k] for s in ("a", "b")]
  found = schema.near_duplicates([(p["id"], p["description"]) for p in personas], threshold=DUP_THRESHOLD)
  assert not found, found[:10]
  names = collections.Counter(schema._norm(p["name"]) for p in personas)
  assert max(names.values()) == 1, [n for n, k in names.items() if k > 1]


def test_real_eval_pairs_are_not_training_pairs(real):
  schema.check_pairs_disjoint(real["train_pairs"], real["eval_pairs"])
  train_ids = {p[s]["id"] for p in real["train_pairs"] for s in ("a", "b")}
  assert not train_ids & {p[s]["id"] for p in real["eval_pairs"] for s in ("a", "b")}


def test_real_eval_tasks_are_not_training_dilemmas(real):
  train = {schema._norm(d["text"]) for d in real["dilemmas"]}
  assert not [t["id"] for t in real["eval_conflict"] if schema._norm(t["text"]) in train]
  cross = schema.near_duplicates([("train:" + d["id"], d["text"]) for d in real["dilemmas"]]
                                 + [("eval:" + t["id"], t["text"]) for t in real["eval_conflict"]],
                                 threshold=0.35)
  assert not [c for c in cross if c[0].split(":")[0] != c[1].split(":")[0]], cross[:10]


def test_real_eval_open_questions_are_not_training_questions(real):
  schema.check_open_disjoint(real["train_open"], real["eval_open"])
  train = {schema._norm(q["question"]) for q in real["train_open"]}
  assert not [q["id"] for q in real["eval_open"] if schema._norm(q["question"]) in train]
  assert not {q["id"] for q in real["train_open"]} & {q["id"] for q in real["eval_open"]}
  cross = schema.near_duplicates([("train:" + q["id"], q["question"]) for q in real["train_open"]]
                                 + [("eval:" + q["id"], q["question"]) for q in real["eval_open"]],
                                 threshold=schema.CROSS_DUP_THRESHOLD)
  assert not [c for c in cross if c[0].split(":")[0] != c[1].split(":")[0]], cross[:10]


def test_real_every_eval_pair_is_used(real):
  used = collections.Counter(t["pair_id"] for t in real["eval_conflict"])
  assert set(used) == {p["pair_id"] for p in real["eval_pairs"]}, used
