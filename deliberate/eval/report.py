"""The paper's tables from evaluation runs: a JSON report and a Markdown file with the paper's rows and columns.

Input: the summary.json of one or more evaluation runs (launch/evaluate.py workdirs, or the runs `suite.run_grid`
writes under one). Runs of the same decoding are repeats: every cell is their mean ± SD (sample SD; a single run
shows its value alone), and the pairs dropped as inconsistent (the two orders disagreed) are summed and shown with
the pairs judged. Tables:
  1. Pairwise CA win rate (%) of one policy over another, conflict tasks and open-ended questions, greedy and sampled.
  2. Conflict-resolution win rate (%), greedy and sampled.
  3. Agreement rate (%) and mean rounds to agreement of each policy's evaluation negotiations.
  4. General capability (IFEval, GPQA-Diamond, AIME) of each policy: before (base) and after training.
A judge that is the deterministic local judge (lexicon) is named as such under every table whose numbers it gave.
"""
from __future__ import annotations

import glob
import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

DECODINGS = ("greedy", "sampled")
LEXICON_NOTE = "deterministic local judge (lexicon: a keyword heuristic, not an LLM)"
CAPABILITY_ROWS = (("ifeval", "prompt_strict", "IFEval, prompt-level strict acc."),
                   ("ifeval", "prompt_loose", "IFEval, prompt-level loose acc."),
                   ("ifeval", "instruction_strict", "IFEval, instruction-level strict acc."),
                   ("ifeval", "instruction_loose", "IFEval, instruction-level loose acc."),
                   ("gpqa", "loglik_accuracy", "GPQA-Diamond, option log-likelihood acc."),
                   ("gpqa", "generated_accuracy", "GPQA-Diamond, generated letter acc."),
                   ("aime", "accuracy", "AIME, exact-match acc."))


def find_summaries(workdirs: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
  """(path, summary) of every summary.json in or under the given eval workdirs (a run_grid workdir holds several)."""
  out, seen = [], set()
  for w in workdirs:
    paths = sorted(glob.glob(os.path.join(w, "summary.json")) + glob.glob(os.path.join(w, "**", "summary.json"),
                                                                          recursive=True))
    if not paths:
      raise FileNotFoundError(f"{w}: no summary.json (run launch/evaluate.py with this --workdir first)")
    for p in paths:
      p = os.path.abspath(p)
      if p not in seen:
        seen.add(p)
        with open(p, encoding="utf-8") as f:
          out.append((p, json.load(f)))
  return out


def judge_label(model: str | None) -> str:
  if not model:
    return "unknown judge"
  return f"{LEXICON_NOTE} [{model}]" if "lexicon" in model else model


def _stat(values: Sequence[float | None]) -> dict[str, Any]:
  x = [float(v) for v in values if v is not None and math.isfinite(float(v))]
  out: dict[str, Any] = {"n": len(x), "values": x}
  if x:
    out["mean"] = float(np.mean(x))
    out["sd"] = float(np.std(x, ddof=1)) if len(x) > 1 else None
  return out


def _fmt(cell: Mapping[str, Any] | None, digits: int = 1) -> str:
  if not cell or "mean" not in cell:
    return "–"
  if cell.get("sd") is None:
    return f"{cell['mean']:.{digits}f}"
  return f"{cell['mean']:.{digits}f} ± {cell['sd']:.{digits}f}"


def _by_decoding(summaries: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
  out: dict[str, list[Mapping[str, Any]]] = {d: [] for d in DECODINGS}
  for s in summaries:
    out.setdefault(s.get("decoding", "greedy"), []).append(s)
  return out


def _ordered(keys: Iterable[str]) -> list[str]:
  return list(dict.fromkeys(keys))


def build(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """The report: {'runs', 'tables': [{'id', 'title', 'columns', 'rows': [[label, cell...]], 'cells', 'notes'}]}."""
  runs = _by_decoding(summaries)
  n_runs = {d: len(v) for d, v in runs.items()}
  pairs = _ordered(k for s in summaries for k in s.get("comparisons", {}))
  policies = _ordered(k for s in summaries for k in s.get("policies", {}))
  strong = _ordered(s["strong_judge_model"] for s in summaries if s.get("strong_judge_model"))
  train = _ordered(p.get("judge_model") for s in summaries for p in s.get("policies", {}).values()
                   if p.get("judge_model"))

  def pair_cells(comparison: str) -> tuple[dict, dict]:
    cells, dropped = {}, {}
    for pair in pairs:
      for d in DECODINGS:
        results = [s["comparisons"][pair][comparison] for s in runs[d]
                   if comparison in s.get("comparisons", {}).get(pair, {})]
        cells[(pair, d)] = _stat([r.get("win_rate") for r in results])
        dropped[(pair, d)] = (sum(r["dropped_inconsistent"] for r in results), sum(r["pairs"] for r in results))
    return cells, dropped

  def pair_label(pair: str) -> str:
    a, _, b = pair.partition(":")
    return f"{a} vs {b}"

  def dropped_text(dropped, pair) -> str:
    return " / ".join(f"{dropped[(pair, d)][0]}/{dropped[(pair, d)][1]}" if dropped[(pair, d)][1] else "–"
                      for d in DECODINGS)

  strong_note = f"Judged in both orders by: {', '.join(judge_label(m) for m in strong) or 'no strong judge'}."
  tables = []
  ca = {k: pair_cells(k) for k in ("ca_conflict", "ca_open")}
  rows = []
  for pair in pairs:
    row = [pair_label(pair)] + [_fmt(ca[k][0][(pair, d)]) for k in ("ca_conflict", "ca_open") for d in DECODINGS]
    row += [dropped_text(ca[k][1], pair) for k in ("ca_conflict", "ca_open")]
    rows.append(row)
  tables.append({"id": "pairwise_ca", "title": "Table 1. Pairwise CA win rate (%) of the first policy over the second",
                 "columns": ["Comparison", "Conflict, greedy", "Conflict, sampled", "Open-ended, greedy",
                             "Open-ended, sampled", "Dropped inconsistent, conflict (greedy / sampled)",
                             "Dropped inconsistent, open-ended (greedy / sampled)"],
                 "rows": rows, "cells": _cells_json(ca), "notes": [strong_note]})
  res_cells, res_dropped = pair_cells("resolution")
  tables.append({"id": "resolution", "title": "Table 2. Conflict-resolution win rate (%) of the first policy over "
                 "the second", "columns": ["Comparison", "Greedy", "Sampled", "Dropped inconsistent (greedy / sampled)"],
                 "rows": [[pair_label(p)] + [_fmt(res_cells[(p, d)]) for d in DECODINGS] + [dropped_text(res_dropped, p)]
                          for p in pairs],
                 "cells": _cells_json({"resolution": (res_cells, res_dropped)}), "notes": [strong_note]})
  agree_rows, agree_cells = [], {}
  for label in policies:
    row = [label]
    for key, scale in (("agreement_rate", 100.0), ("mean_rounds_to_agreement", 1.0)):
      for d in DECODINGS:
        vals = [s["policies"][label]["conflict"].get(key) for s in runs[d]
                if "conflict" in s.get("policies", {}).get(label, {})]
        cell = _stat([None if v is None else scale * v for v in vals])
        agree_cells[f"{label}|{key}|{d}"] = cell
        row.append(_fmt(cell, 1 if scale > 1 else 2))
    agree_rows.append(row)
  tables.append({"id": "agreement", "title": "Table 3. Agreement rate and rounds to agreement (evaluation "
                 "negotiations)", "columns": ["Policy", "Agreement rate (%), greedy", "Agreement rate (%), sampled",
                                             "Mean rounds to agreement, greedy", "Mean rounds to agreement, sampled"],
                 "rows": agree_rows, "cells": agree_cells,
                 "notes": [f"Agreement verdicts by: {', '.join(judge_label(m) for m in train) or 'no judge'}."]})
  tables.append(_capability_table(summaries, policies, runs))
  return {"runs": {d: n for d, n in n_runs.items()}, "seeds": {d: [s.get("seed") for s in v] for d, v in runs.items()},
          "policies": policies, "comparisons": pairs, "strong_judge": strong, "training_judge": train,
          "tables": tables}


def _cells_json(cells_by_comparison) -> dict[str, Any]:
  return {f"{k}|{pair}|{d}": {**cell, "dropped_inconsistent": dropped[(pair, d)][0], "pairs": dropped[(pair, d)][1]}
          for k, (cells, dropped) in cells_by_comparison.items() for (pair, d), cell in cells.items()}


def _capability_table(summaries, policies, runs) -> dict[str, Any]:
  ordered = sorted(policies, key=lambda p: p != "base")  # before training first
  cols = [(p, d) for p in ordered for d in DECODINGS
          if any("capability" in s.get("policies", {}).get(p, {}) for s in runs[d])]
  sources = _ordered(f"{b['name']}: {b['source']}" for s in summaries for p in s.get("policies", {}).values()
                     for b in p.get("capability", {}).values())
  rows, cells = [], {}
  for bench, key, title in CAPABILITY_ROWS:
    if not any(bench in s.get("policies", {}).get(p, {}).get("capability", {}) for s in summaries for p in policies):
      continue
    row = [title]
    for p, d in cols:
      cell = _stat([s["policies"][p]["capability"][bench].get(key) for s in runs[d]
                    if bench in s.get("policies", {}).get(p, {}).get("capability", {})])
      cells[f"{bench}.{key}|{p}|{d}"] = cell
      row.append(_fmt(cell))
    rows.append(row)
  notes = ["Before training: the base model; after: the trained policies. Scored in code (no judge)."]
  if any(s.endswith(": sample") for s in sources):
    notes.append("Items marked 'sample' are the project's shipped sample sets, NOT the benchmarks: numbers are "
                 "smoke-test values only.")
  notes.append("Sources: " + ("; ".join(sources) or "none"))
  return {"id": "capability", "title": "Table 4. General capability (%) before and after training",
          "columns": ["Benchmark"] + [f"{p} ({'before' if p == 'base' else 'after'}), {d}" for p, d in cols],
          "rows": rows, "cells": cells, "notes": notes}


def markdown(report: Mapping[str, Any]) -> str:
  n = report["runs"]
  lines = ["# Evaluation report", "",
           "Mean ± SD over repeated evaluation runs: " + ", ".join(f"{d}: {n.get(d, 0)} run(s)" for d in DECODINGS)
           + " ('–': not evaluated).", ""]
  for t in report["tables"]:
    lines += [f"## {t['title']}", "", "| " + " | ".join(t["columns"]) + " |",
              "|" + "|".join("---" for _ in t["columns"]) + "|"]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in t["rows"]]
    if not t["rows"]:
      lines.append("| (none) |" + " |" * (len(t["columns"]) - 1))
    lines += [""] + [f"*{note}*" for note in t["notes"]] + [""]
  return "\n".join(lines)


def write(out_dir: str, workdirs: Sequence[str]) -> tuple[str, str, dict[str, Any]]:
  """report.json and report.md in out_dir from every summary under `workdirs`; returns (json, md, report)."""
  found = find_summaries(workdirs)
  report = build([s for _, s in found])
  report["summaries"] = [p for p, _ in found]
  os.makedirs(out_dir, exist_ok=True)
  json_path, md_path = os.path.join(out_dir, "report.json"), os.path.join(out_dir, "report.md")
  with open(json_path, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  with open(md_path, "w", encoding="utf-8") as f:
    f.write(markdown(report))
  return json_path, md_path, report
