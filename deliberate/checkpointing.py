"""orbax checkpoints of the whole run: trainable params, optimizer state, step, data position and RNG seed.

Saves are asynchronous (training goes on while the previous step is written) and only the last N are kept. A run
killed at any moment resumes from the newest complete checkpoint: orbax finalises a step directory atomically.

A finalised checkpoint can still be damaged afterwards (a disk that filled up, a partial copy between buckets, a
truncated rsync). Restoring one then fails deep inside tensorstore with a long traceback that names neither the step
nor the file. `restore` instead names the step and the damaged file in one line and, unless told to refuse, moves the
damaged step aside and falls back to the newest intact one, so that a resumed run does not die on a bad last save.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

_JSON_FILES = ("_METADATA", "_sharding", "_CHECKPOINT_METADATA", "metadata")


class CorruptCheckpointError(RuntimeError):
  """A checkpoint step that cannot be restored; the message is one line naming the step and the file."""


class _ReadError(Exception):
  """A failed read's messages without its traceback; `inner` names the innermost error's type."""

  def __init__(self, inner: BaseException, text: str):
    super().__init__(text)
    self.inner_type, self.inner_text = type(inner).__name__, str(inner)


def read_params(directory: str, step: int) -> Any:
  """A checkpoint's params onto this process's first device, whatever mesh or number of hosts saved them (a restore
  with the saved shardings needs the saving topology; evaluation and tests read on one device)."""
  path = os.path.join(directory, str(step), "params")
  reader = ocp.StandardCheckpointer()
  meta = reader.metadata(path)
  tree = getattr(meta, "item_metadata", None) or getattr(meta, "tree", meta)
  tree = getattr(tree, "tree", tree)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  try:
    return reader.restore(path, abstract)
  finally:
    reader.close()


class Checkpointer:
  """fallback: when the newest checkpoint cannot be restored, restore the newest intact one (True, with a warning)
  or raise CorruptCheckpointError (False). The run config's `checkpoint_fallback` is meant to be passed here."""

  def __init__(self, directory: str, max_to_keep: int = 3, save_every: int = 1, fallback: bool = True):
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    self.fallback = fallback
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, save_interval_steps=save_every,
                                           enable_async_checkpointing=True, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  @property
  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: dict[str, Any], meta: dict[str, Any], force: bool = False) -> bool:
    """state: {'params', 'opt_state'}; meta: JSON-safe (data iterator state, seed, config summary)."""
    return self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state["params"]), opt_state=ocp.args.StandardSave(state["opt_state"]),
        meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, template_state: dict[str, Any], step: int | None = None,
              fallback: bool | None = None) -> tuple[int, dict[str, Any], dict]:
    """Restores into the structure, dtypes and shardings of `template_state`.

    step=None restores the newest checkpoint, falling back past damaged ones as `fallback` (default: the
    Checkpointer's) says. An explicit step never falls back: the caller asked for that one.
    """
    fallback = self.fallback if fallback is None else fallback
    steps = sorted(self.manager.all_steps(), reverse=True) if step is None else [step]
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    if step is not None and step not in self.manager.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory} "
                              f"(steps: {sorted(self.manager.all_steps())})")
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)), template_state)
    damaged: list[tuple[int, str]] = []
    for s in steps:
      line = self._check_step(s)
      if line is None:
        out, error = self._try_restore(s, abstract)
        if error is None:
          if damaged:
            skipped = ", ".join(str(d) for d, _ in damaged)
            logging.warning("restored checkpoint step %d instead of the damaged step(s) %s (moved aside to %s)",
                            s, skipped, self.corrupt_directory)
          return s, {"params": out["params"], "opt_state": out["opt_state"]}, dict(out["meta"])
        line = describe_damage(self.directory, s, error)
        if jax.process_count() > 1:  # the hosts may now be at different collectives inside orbax: stop here
          raise CorruptCheckpointError(line + " (a read failed on this host after the file checks passed; "
                                       "multi-host runs do not fall back from that)") from None
      if not fallback or step is not None:
        raise CorruptCheckpointError(line + ("" if step is not None else
                                             " (refusing to fall back: checkpoint_fallback is off)")) from None
      logging.warning("%s; falling back to the previous checkpoint", line)
      damaged.append((s, line))
      self._move_aside(s)
    raise CorruptCheckpointError(f"no intact checkpoint in {self.directory}: "
                                 + " | ".join(line for _, line in damaged)) from None

  @property
  def corrupt_directory(self) -> str:
    """Where damaged steps go: beside the checkpoints, outside orbax's view, kept for inspection."""
    return self.directory.rstrip("/") + ".corrupt"

  def _check_step(self, step: int) -> str | None:
    """The damage line for a step whose files fail the checks, before orbax reads anything. Every host checks and
    they agree before any host starts orbax's restore, whose internal collectives a failing host would leave."""
    found = find_damaged_file(epath.Path(self.directory) / str(step))
    line = None if found is None else f"checkpoint step {step} in {self.directory} cannot be restored: " \
        f"{found[0]} {found[1]}"
    if not _all_processes_ok(line is None) and line is None:
      line = f"checkpoint step {step} in {self.directory} cannot be restored: damaged as seen from another host"
    return line

  def _try_restore(self, step: int, abstract: dict[str, Any]) -> tuple[Any, BaseException | None]:
    """orbax's reads run in coroutines that, once one read fails, leave 'Exception ignored' noise on stderr: the
    noise is silenced here because the failure itself is reported in one line by the caller."""
    previous_hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract["params"]),
          opt_state=ocp.args.StandardRestore(abstract["opt_state"]), meta=ocp.args.JsonRestore()))
      return out, None
    except Exception as e:  # noqa: BLE001  (tensorstore raises bare Exception/ValueError; all mean "unreadable")
      # Keep the text only: the traceback holds orbax's failed coroutines, which must be collected right here.
      errors = list(_chain(e))
      summary = _ReadError(errors[-1], " || ".join(str(x) for x in errors))
      del e, errors
      return None, summary
    finally:
      import gc
      gc.collect()  # the failed coroutines are collected while the hook is silent
      sys.unraisablehook = previous_hook

  def _move_aside(self, step: int) -> None:
    """So that the run, resumed from an older step, can save this step number again."""
    if jax.process_index() == 0:
      source = epath.Path(self.directory) / str(step)
      target_dir = epath.Path(self.corrupt_directory)
      target_dir.mkdir(parents=True, exist_ok=True)
      target = target_dir / f"{step}-{int(time.time())}"
      try:
        source.rename(target)
      except Exception as e:  # noqa: BLE001  (object stores may not rename directories)
        logging.warning("could not move damaged step %d to %s (%s); deleting it", step, target, e)
        self.manager.delete(step)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"checkpoint_move_aside_{step}")
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _all_processes_ok(ok: bool) -> bool:
  """Every host must restore the same step: a file damaged on one host's shard is a failure for all."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(np.min(multihost_utils.process_allgather(np.array(ok, np.int32))))


# ------------------------------------------------------------------------------------------------ diagnosis


def describe_damage(directory: str, step: int, error: BaseException | None = None) -> str:
  """One line: the step, the file at fault and what is wrong with it (or the error's gist when no file is)."""
  step_dir = epath.Path(directory) / str(step)
  where = f"checkpoint step {step} in {directory} cannot be restored"
  found = find_damaged_file(step_dir, error)
  if found:
    path, why = found
    return f"{where}: {path} {why}"
  return f"{where}: {_gist(error)}"


def find_damaged_file(step_dir: epath.Path, error: BaseException | None = None) -> tuple[str, str] | None:
  """(file relative to the step directory, what is wrong) for the first damaged file found, or None.

  Checks that every JSON file parses and that every byte range the OCDBT b-trees point to lies inside its file
  (a truncated array file), then maps a tensorstore 'Error reading "<key>"' in `error` to the file holding the key
  (a file of the right size whose bytes are corrupt)."""
  files = _files(step_dir)
  rel = lambda p: str(p.relative_to(step_dir))
  for p in files:
    if p.name in _JSON_FILES or p.parent.name == "array_metadatas":
      try:
        json.loads(p.read_text())
      except (ValueError, UnicodeDecodeError) as e:
        return rel(p), f"is not valid JSON ({p.stat().length} bytes; {type(e).__name__}: {e})"
  key_files: dict[tuple[str, str], str] = {}
  for manifest in files:
    if manifest.name != "manifest.ocdbt" or manifest.parent.name.startswith("ocdbt.process_"):
      continue  # per-process manifests are reached from the item's top-level b-tree
    item = manifest.parent
    bad = _check_ocdbt(item, key_files)
    if bad:
      return f"{rel(item)}/{bad[0]}", bad[1]
  key = _failed_key(error)
  if key in key_files:
    return key_files[key], f"holds unreadable data for {key[1]!r} ({_gist(error)})"
  return None


def _files(directory: epath.Path) -> list[epath.Path]:
  """Every file under `directory` (a checkpoint holds a few dozen; epath has no recursive glob for buckets)."""
  out, pending = [], [directory]
  while pending:
    for p in pending.pop().iterdir():
      (pending if p.is_dir() else out).append(p)
  return sorted(out)


def _check_ocdbt(item: epath.Path, key_files: dict[tuple[str, str], str]) -> tuple[str, str] | None:
  """Walks one OCDBT database's b-tree; records which data file holds each key."""
  import tensorstore as ts
  url = str(item) if "://" in str(item) else "file://" + str(item)
  try:
    kv = ts.KvStore.open(url.rstrip("/") + "/").result()
    manifest = ts.ocdbt.dump(kv).result()
  except Exception as e:  # noqa: BLE001
    return "manifest.ocdbt", f"cannot be read as an OCDBT manifest ({_gist(e)})"
  pending = [v["root"]["location"] for v in manifest.get("versions", [])[-1:] if v.get("root", {}).get("location")]
  while pending:
    location = pending.pop()
    bad = _check_range(item, location)
    if bad:
      return bad
    try:
      node = ts.ocdbt.dump(kv, location).result()
    except Exception as e:  # noqa: BLE001
      return _parse_location(location)[0], f"holds an unreadable b-tree node ({_gist(e)})"
    for entry in node.get("entries", []):
      key = entry.get("key", b"").decode(errors="replace") if isinstance(entry.get("key"), bytes) else ""
      for field in ("indirect_value", "location", "node"):
        ref = entry.get(field)
        if isinstance(ref, dict):
          ref = ref.get("location")
        if not isinstance(ref, str):
          continue
        if ref.startswith("btreenode:"):
          pending.append(ref)
        elif ref.startswith("value:"):
          bad = _check_range(item, ref, key)
          if bad:
            return bad
          key_files[(item.name, key)] = f"{item.name}/{_parse_location(ref)[0]}"
  return None


def _parse_location(location: str) -> tuple[str, int, int]:
  """'value:<base>:<relative>:<offset>:<length>' (or 'btreenode:...') -> (file under the database, offset, len)."""
  head, offset, length = location.rsplit(":", 2)
  _, base, relative = head.split(":", 2)
  return base + relative, int(offset), int(length)


def _check_range(item: epath.Path, location: str, key: str = "") -> tuple[str, str] | None:
  path, offset, length = _parse_location(location)
  f = item / path
  holds = f", holds {key!r}" if key else ""
  if not f.exists():
    return path, f"is missing{holds}"
  size = f.stat().length
  if size < offset + length:
    return path, f"is truncated ({size} of at least {offset + length} bytes{holds})"
  return None


def _failed_key(error: BaseException | None) -> tuple[str, str] | None:
  """(item directory name, key) from tensorstore's 'Error reading "w/0.0" in OCDBT database at ... "<dir>/"'."""
  text = " ".join(str(e) for e in _chain(error))
  m = re.search(r'Error reading "([^"]+)" in OCDBT database at [^"]*"([^"]+)"', text)
  return (os.path.basename(m.group(2).rstrip("/")), m.group(1)) if m else None


def _chain(error: BaseException | None):
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def _gist(error: BaseException | None) -> str:
  """The innermost error's first line, cut short: the part of a tensorstore message a person can act on."""
  errors = list(_chain(error))
  if not errors:
    return "unknown error"
  inner = errors[-1]
  name, text = (inner.inner_type, inner.inner_text) if isinstance(inner, _ReadError) else (type(inner).__name__,
                                                                                          str(inner))
  first = (text.strip().splitlines() or [""])[0]
  return f"{name}: {first[:300]}"
