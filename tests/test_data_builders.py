"""TFDS builders: array_record round trip without TensorFlow, content versions, file:line errors, prepare time."""
import shutil
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from deliberate.data import builders, schema
from test_data_schema import write_jsonl, write_tiny_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  src = tmp_path_factory.mktemp("src")
  files = write_tiny_dataset(src)
  return src, files, tmp_path_factory.mktemp("tfds")


def _strip_index(rec):
  return {k: v for k, v in rec.items() if k != "index"}


def test_round_trip_of_every_builder(tiny):
  src, files, data_dir = tiny
  dilemmas = builders.read_split("dilemmas", "train", data_dir, src)
  shipped = [d for c in schema.CATEGORIES for d in files[schema.dilemma_file(c)]]
  assert [_strip_index(d) for d in dilemmas] == shipped  # file order, not shuffled
  assert [d["index"] for d in dilemmas] == list(range(len(shipped)))
  assert builders.read_split("persona_pairs", "train", data_dir, src) == files[schema.PERSONAS_FILE]
  assert builders.read_split("persona_pairs", "eval", data_dir, src) == files[schema.EVAL_PERSONAS_FILE]
  conflict = builders.read_split("eval", "test", data_dir, src, config="conflict")
  pairs = {p["pair_id"]: p for p in files[schema.EVAL_PERSONAS_FILE]}
  assert [_strip_index(t) for t in conflict] == [{**t, "pair": pairs[t["pair_id"]]}
                                                 for t in files[schema.EVAL_CONFLICT_FILE]]
  opens = builders.read_split("eval", "test", data_dir, src, config="open")
  assert [_strip_index(q) for q in opens] == files[schema.EVAL_OPEN_FILE]
  train_opens = builders.read_split("open_questions", "train", data_dir, src)
  assert [_strip_index(q) for q in train_opens] == files[schema.TRAIN_OPEN_FILE]
  assert list(builders.prepared("open_questions", data_dir, src).info.splits) == ["train"]  # eval stays in 'eval'


def test_raw_records_use_numpy_and_bytes_and_tfds_data_source_finds_them(tiny):
  src, files, data_dir = tiny
  builder = builders.prepared("dilemmas", data_dir, src)
  assert builder.info.features["index"].np_dtype == np.int64
  assert builder.info.file_format.value == "array_record"
  raw = builder.as_data_source("train")[0]
  assert isinstance(raw["text"], bytes) and isinstance(raw["index"], (np.integer, int))
  source = tfds.data_source("deliberate_dilemmas", data_dir=str(data_dir), builder_kwargs={"src_dir": src})
  assert len(source["train"]) == 12
  assert source["train"][5]["id"].decode() == files[schema.dilemma_file("interpersonal")][1]["id"]
  assert builder.info.metadata["content_sha256"] == builder.content_sha256


def test_a_data_change_changes_the_version(tiny, tmp_path):
  src, files, _ = tiny
  data_dir = tmp_path / "tfds"
  before = builders.prepared("dilemmas", data_dir, src)
  again = builders.DeliberateDilemmas(data_dir=str(data_dir), src_dir=src)
  assert again.version == before.version and again.is_prepared()
  edited = tmp_path / "edited"
  shutil.copytree(src, edited)
  records = [dict(d) for d in files[schema.dilemma_file("everyday")]]
  records[2]["text"] = records[2]["text"].replace(".", ", with one more clause of detail.", 1)
  write_jsonl(edited / schema.dilemma_file("everyday"), records)
  after = builders.prepared("dilemmas", data_dir, edited)
  assert after.version != before.version
  assert str(after.version).startswith(builders.SCHEMA_VERSION + ".")
  assert builders.to_python(after.as_data_source("train")[10])["text"] == records[2]["text"]
  assert builders.to_python(before.as_data_source("train")[10])["text"] == files[schema.dilemma_file(
      "everyday")][2]["text"]  # the old version stays readable beside the new one
  other_builder = builders.DeliberatePersonaPairs(data_dir=str(data_dir), src_dir=edited)
  assert other_builder.version == builders.DeliberatePersonaPairs(data_dir=str(data_dir), src_dir=src).version


def test_open_question_versions_follow_their_sources(tiny, tmp_path):
  src, files, _ = tiny
  edited = tmp_path / "edited"
  shutil.copytree(src, edited)
  questions = [dict(q) for q in files[schema.TRAIN_OPEN_FILE]]
  questions[1]["question"] = questions[1]["question"].replace("?", ", and for whom?")
  write_jsonl(edited / schema.TRAIN_OPEN_FILE, questions)
  versions = {d: (builders.DeliberateOpenQuestions(data_dir=str(tmp_path / "tfds"), src_dir=d).version,
                  builders.DeliberateEval(data_dir=str(tmp_path / "tfds"), src_dir=d, config="open").version)
              for d in (src, edited)}
  assert versions[src][0] != versions[edited][0]  # a training edit is a new training version ...
  assert versions[src][1] == versions[edited][1]  # ... and leaves the evaluation sets' version alone
  after = builders.read_split("open_questions", "train", tmp_path / "tfds", edited)
  assert after[1]["question"] == questions[1]["question"]


def test_training_question_copying_an_eval_question_fails_prepare(tmp_path):
  files = write_tiny_dataset(tmp_path / "src")
  files[schema.TRAIN_OPEN_FILE][3]["question"] = files[schema.EVAL_OPEN_FILE][0]["question"]
  write_jsonl(tmp_path / "src" / schema.TRAIN_OPEN_FILE, files[schema.TRAIN_OPEN_FILE])
  with pytest.raises(schema.DataError, match="^train_open.jsonl:4: .* eval question open-001 "):
    builders.prepared("open_questions", tmp_path / "tfds", tmp_path / "src")


@pytest.mark.parametrize("kind,config,name,index,field", [
    ("dilemmas", None, schema.dilemma_file("everyday"), 2, "text"),
    ("persona_pairs", None, schema.EVAL_PERSONAS_FILE, 1, "tension"),
    ("eval", "conflict", schema.EVAL_CONFLICT_FILE, 0, "title"),
    ("eval", "open", schema.EVAL_OPEN_FILE, 2, "question"),
    ("open_questions", None, schema.TRAIN_OPEN_FILE, 1, "question"),
])
def test_malformed_record_fails_prepare_with_file_and_line(tmp_path, kind, config, name, index, field):
  files = write_tiny_dataset(tmp_path / "src")
  files[name][index][field] = ""
  write_jsonl(tmp_path / "src" / name, files[name])
  with pytest.raises(schema.DataError, match=f"^{name}:{index + 1}: field '{field}' has 0 characters"):
    builders.prepared(kind, tmp_path / "tfds", tmp_path / "src", config)


@pytest.mark.parametrize("name,cls,kwargs", [(schema.EVAL_OPEN_FILE, builders.DeliberateEval, {"config": "open"}),
                                             (schema.TRAIN_OPEN_FILE, builders.DeliberateOpenQuestions, {})])
def test_missing_source_file_is_named(tmp_path, name, cls, kwargs):
  write_tiny_dataset(tmp_path)
  (tmp_path / name).unlink()
  with pytest.raises(schema.DataError, match=f"{name}: data file not found"):
    cls(data_dir=str(tmp_path / "tfds"), src_dir=tmp_path, **kwargs)


def test_shipped_data_prepares_offline_in_under_10s(tmp_path):
  t0 = time.perf_counter()
  sizes = {}
  for kind, config in [("dilemmas", None), ("persona_pairs", None), ("open_questions", None), ("eval", "conflict"),
                       ("eval", "open")]:
    b = builders.prepared(kind, tmp_path, None, config)
    sizes[(kind, config)] = {s: b.info.splits[s].num_examples for s in b.info.splits}
  elapsed = time.perf_counter() - t0
  print(f"prepared all shipped data in {elapsed:.2f} s: {sizes}")
  assert elapsed < 10
  data = schema.load_all()
  assert sizes[("dilemmas", None)] == {"train": len(data["dilemmas"])}
  assert sizes[("persona_pairs", None)] == {"train": len(data["train_pairs"]), "eval": len(data["eval_pairs"])}
  assert sizes[("eval", "conflict")] == {"test": len(data["eval_conflict"])}
  assert sizes[("eval", "open")] == {"test": len(data["eval_open"])}
  assert sizes[("open_questions", None)] == {"train": len(data["train_open"])} == {"train": 300}
