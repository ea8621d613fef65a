"""TFDS builders over the shipped JSONL, in array_record, read back with `as_data_source` (random access, no TF).

The version is `SCHEMA_VERSION.<content hash>`: any edit of the source files prepares a new version directory, so
a run can never read stale examples, and the hash recorded in a run's metadata names the exact data it saw.

  builder = DeliberateDilemmas(data_dir="/tmp/tfds")         # src_dir= a folder of JSONL files; default: shipped
  builder.download_and_prepare()                              # offline, about a second
  ds = builder.as_data_source("train"); ds[17]                # dict of bytes / lists of bytes

or, once prepared, `tfds.data_source("deliberate_dilemmas", data_dir=...)` after importing this module.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from deliberate.data import schema

# Bump when the features or the record layout change; the patch number is derived from the data.
SCHEMA_VERSION = "1.0"


def content_version(sha256: str) -> tfds.core.Version:
  """tfds versions are x.y.z integers: the data hash's first 32 bits become the patch."""
  return tfds.core.Version(f"{SCHEMA_VERSION}.{int(sha256[:8], 16)}")


def _texts() -> tfds.features.Sequence:
  return tfds.features.Sequence(tfds.features.Text())


def _persona() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({"id": tfds.features.Text(), "name": tfds.features.Text(),
                                     "description": tfds.features.Text(), "values": _texts(),
                                     "priorities": _texts(), "red_lines": _texts()})


def _pair() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({"pair_id": tfds.features.Text(), "tension": tfds.features.Text(),
                                     "split": tfds.features.Text(), "a": _persona(), "b": _persona()})


def _dilemma_fields() -> dict[str, Any]:
  return {"index": np.int64, "id": tfds.features.Text(), "category": tfds.features.Text(),
          "domain": tfds.features.Text(), "title": tfds.features.Text(), "text": tfds.features.Text(),
          "considerations": _texts()}


def _open_question() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({"index": np.int64, "id": tfds.features.Text(), "domain": tfds.features.Text(),
                                     "question": tfds.features.Text()})


class _JsonlBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared plumbing: source folder, content-hash version, array_record, file order kept (no shuffling)."""

  VERSION = tfds.core.Version(f"{SCHEMA_VERSION}.0")  # replaced per instance by the content version
  # tfds 4.9.10 derives this for builders inside a package through `importlib_resources`, which is not installed
  # (and not needed: there are no download checksums); naming the file directly skips that import.
  code_path = epath.Path(__file__)
  SOURCE_FILES: tuple[str, ...] = ()
  DESCRIPTION = ""

  def __init__(self, *, src_dir: str | Path | None = None, **kwargs: Any):
    self.src_dir = schema.DATA_DIR if src_dir is None else Path(src_dir)
    paths = [self.src_dir / f for f in self.SOURCE_FILES]
    for p in paths:
      if not p.is_file():
        raise schema.MissingFileError(f"{p}: data file not found (builder {type(self).__name__})")
    self.content_sha256 = schema.file_sha256(paths)
    self.VERSION = content_version(self.content_sha256)
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _features(self) -> tfds.features.FeaturesDict:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION, features=self._features(), disable_shuffling=True,
        metadata=tfds.core.MetadataDict(content_sha256=self.content_sha256, source_files=list(self.SOURCE_FILES)))


class DeliberateDilemmas(_JsonlBuilder):
  """Training dilemmas of all three categories, in file order (professional, interpersonal, everyday)."""

  SOURCE_FILES = tuple(schema.dilemma_file(c) for c in schema.CATEGORIES)
  DESCRIPTION = "Training dilemmas for negotiation self-play."

  def _features(self):
    return tfds.features.FeaturesDict(_dilemma_fields())

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is local
    return {"train": self._generate_examples(schema.load_dilemmas(schema.CATEGORIES, self.src_dir))}

  def _generate_examples(self, records: list[dict]) -> Iterator[tuple[int, dict]]:
    for i, rec in enumerate(records):
      yield i, {"index": i, **rec}


class DeliberatePersonaPairs(_JsonlBuilder):
  """Opposing persona pairs: 'train' (used in self-play) and 'eval' (fixed to the conflict tasks only)."""

  SOURCE_FILES = (schema.PERSONAS_FILE, schema.EVAL_PERSONAS_FILE)
  DESCRIPTION = "Opposing persona pairs, one value tension each."

  def _features(self):
    return _pair()

  def _split_generators(self, dl_manager):
    del dl_manager
    train, evals = schema.load_pairs("train", self.src_dir), schema.load_pairs("eval", self.src_dir)
    schema.check_pairs_disjoint(train, evals)
    return {"train": self._generate_examples(train), "eval": self._generate_examples(evals)}

  def _generate_examples(self, records: list[dict]) -> Iterator[tuple[int, dict]]:
    yield from enumerate(records)


class DeliberateOpenQuestions(_JsonlBuilder):
  """Training open questions for the single-agent baseline, split 'train' only.

  The eval questions are a source too, though never served here: prepare checks that no training question
  paraphrases one, and an edit of either file gives a new version.
  """

  SOURCE_FILES = (schema.TRAIN_OPEN_FILE, schema.EVAL_OPEN_FILE)
  DESCRIPTION = "Open-ended training questions for the single-agent baseline."

  def _features(self):
    return _open_question()

  def _split_generators(self, dl_manager):
    del dl_manager
    train = schema.load_open("train", self.src_dir)
    schema.check_open_disjoint(train, schema.load_open("eval", self.src_dir))
    return {"train": self._generate_examples(train)}

  def _generate_examples(self, records: list[dict]) -> Iterator[tuple[int, dict]]:
    for i, rec in enumerate(records):
      yield i, {"index": i, **rec}


class DeliberateEval(_JsonlBuilder):
  """Evaluation sets, split 'test' of config 'conflict' (each task carries its eval pair) or 'open'."""

  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="conflict", description="Conflict-resolution tasks."),
                     tfds.core.BuilderConfig(name="open", description="Open-ended questions.")]
  SOURCE_FILES = (schema.EVAL_PERSONAS_FILE, schema.EVAL_CONFLICT_FILE, schema.EVAL_OPEN_FILE)
  DESCRIPTION = "Evaluation sets: conflict-resolution tasks with fixed eval persona pairs, and open questions."

  def _features(self):
    if self.builder_config.name == "conflict":
      return tfds.features.FeaturesDict({**_dilemma_fields(), "pair_id": tfds.features.Text(), "pair": _pair()})
    return _open_question()

  def _split_generators(self, dl_manager):
    del dl_manager
    if self.builder_config.name == "conflict":
      pairs = {p["pair_id"]: p for p in schema.load_pairs("eval", self.src_dir)}
      tasks = schema.load_eval_conflict(self.src_dir)
      return {"test": self._generate_examples([{**t, "pair": pairs[t["pair_id"]]} for t in tasks])}
    return {"test": self._generate_examples(schema.load_eval_open(self.src_dir))}

  def _generate_examples(self, records: list[dict]) -> Iterator[tuple[int, dict]]:
    for i, rec in enumerate(records):
      yield i, {"index": i, **rec}


BUILDERS = {"dilemmas": DeliberateDilemmas, "persona_pairs": DeliberatePersonaPairs,
            "open_questions": DeliberateOpenQuestions, "eval": DeliberateEval}


def to_python(x: Any) -> Any:
  """A decoded example as plain JSON-able Python: bytes -> str, numpy -> lists and ints."""
  if isinstance(x, dict):
    return {k: to_python(v) for k, v in x.items()}
  if isinstance(x, bytes):
    return x.decode("utf-8")
  if isinstance(x, np.ndarray):
    return [to_python(v) for v in x.tolist()]
  if isinstance(x, (list, tuple)):
    return [to_python(v) for v in x]
  if isinstance(x, np.generic):
    return x.item()
  return x


def prepared(kind: str, data_dir: str | Path, src_dir: str | Path | None = None,
             config: str | None = None) -> tfds.core.GeneratorBasedBuilder:
  """A builder of `kind` (see BUILDERS), prepared under data_dir if its content version is not there yet."""
  if kind not in BUILDERS:
    raise ValueError(f"unknown builder kind {kind!r}; expected one of {sorted(BUILDERS)}")
  kwargs = {"config": config} if config is not None else {}
  builder = BUILDERS[kind](data_dir=str(data_dir), src_dir=src_dir, **kwargs)
  builder.download_and_prepare()
  return builder


def read_split(kind: str, split: str, data_dir: str | Path, src_dir: str | Path | None = None,
               config: str | None = None) -> list[dict]:
  """A whole (small) split as plain Python dicts, in file order: for evaluation sets and inspection."""
  ds = prepared(kind, data_dir, src_dir, config).as_data_source(split)
  return [to_python(ds[i]) for i in range(len(ds))]
