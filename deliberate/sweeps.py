"""Sweeps over a run config: a sweep file expands into runs, each a workdir plus `--config.x=y` overrides.

A sweep file is itself an ml-collections config file whose `get_config()` returns:

  name     the sweep's name (the directory the runs go under)
  config   the base config file, as launch/train.py takes it ('configs/tiny.py', 'configs/eval.py:tiny')
  fixed    config fields set the same in every run: `s.fixed.num_steps = 200`
  product  fields whose lists of values are crossed: `s.product.optim.learning_rate = [1e-4, 3e-4]`
  zip      fields whose equally long lists are stepped together: `s.zip.seed = [0, 1]; s.zip.rl.beta = [0., .04]`
           (`zip_<anything>` adds another zipped group, crossed with the rest)

The fields mirror the run config's own tree, so a sweep reads like the config it changes. Every run's overrides are
parsed by ml-collections' own flag parser against the base config (exactly what launch/train.py will do) before any
run starts: a misspelt field fails at once, naming the field and the sweep file, instead of in run 7 of 12.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
from typing import Any, Iterable, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

_SPEC_KEYS = ("name", "config", "fixed", "product", "zip", "workdir_root", "description")
RECORD = "sweep.json"  # in every run's workdir: which sweep, which run, which overrides


@dataclasses.dataclass(frozen=True)
class Run:
  index: int
  workdir: str
  varying: dict[str, Any]      # the swept fields of this run
  overrides: dict[str, Any]    # fixed + varying, dotted field -> value

  def flags(self) -> list[str]:
    return [f"--config.{k}={format_value(v)}" for k, v in self.overrides.items()]


@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str
  path: str          # the sweep file
  config_file: str   # the base config, as passed to launch/train.py --config
  directory: str     # <sweep_dir>/<name>: every run's workdir is under it
  runs: list[Run]

  def command(self, run: Run, python: str = "python", train: str = "launch/train.py") -> list[str]:
    return [python, train, f"--config={self.config_file}", f"--workdir={run.workdir}", *run.flags()]


def format_value(value: Any) -> str:
  """The text config_flags parses back into `value` for a field of value's type."""
  if isinstance(value, (bool, str)):
    return str(value)
  return repr(value)


def _load_module_config(path: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(f"_sweep_{abs(hash(path))}", path)
  if spec is None or spec.loader is None:
    raise ValueError(f"sweep {path}: not a Python file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"sweep {path}: no get_config()")
  return module.get_config()


def _leaves(c: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
  """(dotted field, value) for every leaf of a (nested) ConfigDict or dict."""
  if isinstance(c, (ml_collections.ConfigDict, dict)):
    for k, v in c.items():
      yield from _leaves(v, f"{prefix}{k}.")
  else:
    yield prefix[:-1], c


def expand(spec: ml_collections.ConfigDict, path: str = "<sweep>") -> list[tuple[dict[str, Any], dict[str, Any]]]:
  """[(varying, fixed)] in order: the product axes (fields sorted, the last one fastest), then each zip group."""
  unknown = [k for k in spec.keys() if k not in _SPEC_KEYS and not k.startswith("zip_")]
  if unknown:
    raise ValueError(f"sweep {path}: unknown key(s) {', '.join(unknown)} (expected {', '.join(_SPEC_KEYS)}, zip_*)")
  fixed = dict(_leaves(spec.get("fixed", {}))) if "fixed" in spec else {}
  axes: list[list[dict[str, Any]]] = []
  for field, values in (_leaves(spec.product) if "product" in spec else []):
    if not isinstance(values, (list, tuple)) or not values:
      raise ValueError(f"sweep {path}: product.{field} must be a non-empty list of values, got {values!r}")
    axes.append([{field: v} for v in values])
  for group in sorted(k for k in spec.keys() if k == "zip" or k.startswith("zip_")):
    fields = list(_leaves(spec[group]))
    for field, values in fields:
      if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"sweep {path}: {group}.{field} must be a non-empty list of values, got {values!r}")
    lengths = {field: len(values) for field, values in fields}
    if len(set(lengths.values())) > 1:
      raise ValueError(f"sweep {path}: the lists of {group} differ in length: "
                       + ", ".join(f"{f} has {n}" for f, n in lengths.items()))
    if fields:
      axes.append([{f: vs[i] for f, vs in fields} for i in range(len(fields[0][1]))])
  seen: dict[str, str] = {}
  for where, names in [("fixed", fixed)] + [("swept", a[0]) for a in axes]:
    for name in names:
      if name in seen:
        raise ValueError(f"sweep {path}: field {name} is both {seen[name]} and {where}")
      seen[name] = where
  runs = []
  for combo in itertools.product(*axes):
    varying: dict[str, Any] = {}
    for part in combo:
      varying.update(part)
    runs.append((varying, fixed))
  return runs


def _resolve(config_file: str, sweep_path: str) -> str:
  """A base config path as given, or relative to the sweep file, or to the repository root."""
  file, _, arg = config_file.partition(":")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for candidate in (file, os.path.join(os.path.dirname(sweep_path), file), os.path.join(repo, file)):
    if os.path.isfile(candidate):
      rel = os.path.relpath(os.path.abspath(candidate), repo)
      shown = rel if not rel.startswith("..") else os.path.abspath(candidate)
      return shown + (f":{arg}" if arg else "")
  raise ValueError(f"sweep {sweep_path}: base config {config_file!r} not found")


def check_fields(base: ml_collections.ConfigDict, fields: Iterable[str], where: str) -> None:
  """Every dotted field must exist in the base config; the error names the field and the nearest real one."""
  every = [name for name, _ in _leaves(base)] + _inner_names(base)
  for field in fields:
    node, ok = base, True
    for part in field.split("."):
      if isinstance(node, ml_collections.ConfigDict) and part in node:
        node = node[part]
      else:
        ok = False
        break
    if not ok:
      near = difflib.get_close_matches(field, every, n=1)
      raise ValueError(f"{where}: field {field!r} does not exist in the config"
                       + (f" (did you mean {near[0]!r}?)" if near else ""))


def _inner_names(c: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  out = []
  for k, v in c.items():
    if isinstance(v, ml_collections.ConfigDict):
      out.append(prefix + k)
      out.extend(_inner_names(v, f"{prefix}{k}."))
  return out


def parse_overrides(config_file: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """The run config launch/train.py will build from `--config=<file> <overrides>`, by the same parser."""
  argv = ["sweep", f"--config={config_file}", *overrides]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", config_file, "base config", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  return fv.config


def _slug(varying: dict[str, Any]) -> str:
  parts = [f"{k.split('.')[-1]}={format_value(v)}" for k, v in varying.items()]
  return re.sub(r"[^A-Za-z0-9=.,+_-]", "_", ",".join(parts))[:120]


def load(path: str, sweep_dir: str = "") -> Sweep:
  """Loads, expands and checks a sweep file; raises before anything runs when a field or value is wrong."""
  path = os.path.abspath(path)
  spec = _load_module_config(path)
  for key in ("name", "config"):
    if key not in spec or not spec[key]:
      raise ValueError(f"sweep {path}: missing '{key}'")
  config_file = _resolve(spec.config, path)
  combos = expand(spec, path)
  base = parse_overrides(config_file, [])
  check_fields(base, list(combos[0][1]) + list(combos[0][0]), f"sweep {path}")
  root = sweep_dir or spec.get("workdir_root", "") or "/tmp/deliberate-sweeps"
  directory = os.path.join(os.path.abspath(root), spec.name)
  runs = []
  for i, (varying, fixed) in enumerate(combos):
    run = Run(i, os.path.join(directory, f"{i:03d}-{_slug(varying)}" if varying else f"{i:03d}"), varying,
              {**fixed, **varying})
    try:
      config = parse_overrides(config_file, run.flags())
    except Exception as e:  # noqa: BLE001  (absl raises IllegalFlagValueError, config_flags TypeError/KeyError)
      raise ValueError(f"sweep {path}: run {i} ({_slug(varying) or 'fixed fields'}): {e}") from None
    for field, want in run.overrides.items():
      got = config
      for part in field.split("."):
        got = got[part]
      if not _same(got, want):
        raise ValueError(f"sweep {path}: field {field}: value {want!r} is read back by the config parser as "
                         f"{got!r} (type {type(got).__name__})")
    runs.append(run)
  return Sweep(spec.name, path, config_file, directory, runs)


def _same(got: Any, want: Any) -> bool:
  if isinstance(got, float) and isinstance(want, (int, float)):
    return got == want or (math.isnan(got) and math.isnan(want))
  if isinstance(got, (list, tuple)) and isinstance(want, (list, tuple)):
    return list(got) == list(want)
  return got == want


def write_record(sweep: Sweep, run: Run, command: Sequence[str]) -> str:
  """<workdir>/sweep.json: the run knows its sweep, its index and its overrides (and the summary finds it)."""
  os.makedirs(run.workdir, exist_ok=True)
  path = os.path.join(run.workdir, RECORD)
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"sweep": sweep.name, "sweep_file": sweep.path, "sweep_dir": sweep.directory, "config": sweep.config_file,
               "index": run.index, "num_runs": len(sweep.runs), "varying": run.varying, "overrides": run.overrides,
               "command": shlex.join(command)}, f, indent=2, default=str)
  return path


# ------------------------------------------------------------------------------------------------ summary


def _finite(values) -> list[float]:
  return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def summary_rows(sweep_dir: str, metrics: Sequence[str], last: int = 10,
                 sweep: Sweep | None = None) -> tuple[list[str], list[list[str]]]:
  """(header, rows): one row per run found under `sweep_dir` (by its sweep.json; with `sweep`, also its runs that
  never started), the swept fields, the last step and the mean of each metric over the run's last `last` steps."""
  from deliberate.plots.figures import load_metrics  # the project's one metrics.jsonl reader
  records = []
  for entry in sorted(os.listdir(sweep_dir)) if os.path.isdir(sweep_dir) else []:
    rec_path = os.path.join(sweep_dir, entry, RECORD)
    if os.path.isfile(rec_path):
      with open(rec_path, encoding="utf-8") as f:
        records.append((os.path.join(sweep_dir, entry), json.load(f)))
  known = {r["index"] for _, r in records}
  records += [(run.workdir, {"index": run.index, "varying": run.varying})
              for run in (sweep.runs if sweep else []) if run.index not in known]
  if not records:
    raise ValueError(f"{sweep_dir}: no run directories with a {RECORD} (is this a sweep directory?)")
  fields = list(dict.fromkeys(k for _, r in records for k in r["varying"]))
  header = ["run", *fields, "steps", *[f"{m} (last {last})" for m in metrics]]
  rows = []
  for workdir, rec in sorted(records, key=lambda x: x[1]["index"]):
    row = [str(rec["index"]), *[format_value(rec["varying"][f]) if f in rec["varying"] else "" for f in fields]]
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
      rows.append(row + ["not started"] + ["-"] * len(metrics))
      continue
    m = load_metrics(path)
    row.append(str(int(m["step"][-1])))
    for name in metrics:
      values = _finite(m[name][-last:]) if name in m else []
      row.append(f"{sum(values) / len(values):.4g}" if values else "-")
    rows.append(row)
  return header, rows


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A Markdown table, aligned so it also reads in a terminal."""
  widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
  line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
  return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
