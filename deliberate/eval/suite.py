"""The evaluation suite behind launch/evaluate.py: outputs of each policy, pairwise win rates, cross-judge study.

Layout of the eval workdir:
  <label>/conflict.jsonl   one record per evaluation negotiation (dialogue record + policy, decoding, task, sample)
  <label>/open.jsonl       one record per single-agent answer to an open-ended question, with its CA score
  <label>/capability_<benchmark>.jsonl  one record per general-capability answer (IFEval, GPQA, AIME), scored
  pairwise/<a>_vs_<b>.jsonl  per-item verdicts in both orders and the outcome
  cross_judge.jsonl        training-judge score and the strong judge's scores of each sampled dialogue
  summary.json             every summary above, the policies' provenance and the judges' model names; a later
                           invocation on the same workdir updates what it recomputes and keeps the rest

Policies named in `comparisons` but not in `run` are read from their stored JSONL, so outputs can be generated in
separate invocations (one model per machine) and compared later; comparisons cover every stored output.

One workdir holds one evaluation run (one decoding, one seed). `run_grid` runs several (`decoding='greedy,sampled'`,
`repeats` seeds) under `<workdir>/<decoding>/seed<k>/`, which the report (eval/report.py) pools into mean ± SD.
"""
from __future__ import annotations

import copy
import json
import math
import os
from typing import Any, Mapping, Sequence

import jax
import ml_collections

from deliberate.data import loader
from deliberate import policy as policy_lib
from deliberate.eval import answers, conflict, cross_judge, pairwise
from deliberate.eval.capability import runner as capability
from deliberate.judge.config import default_judge_config
from deliberate.judge.runner import SyncJudge
from deliberate.model import tokenizer as tok_lib
from deliberate.negotiation.config import default_config as negotiation_config
from deliberate.negotiation.records import read_records
from deliberate.sampling.sampler import SamplingParams


def default_config() -> ml_collections.ConfigDict:
  """The paper's evaluation protocol; values it does not disclose are marked as ours."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data_dir = ""                     # TFDS data dir ('' = <workdir>/tfds, prepared offline on first use)
  c.num_conflict_tasks = -1           # the first N of the 100 conflict tasks (-1 = all, 0 = skip)
  c.num_open_questions = -1           # the first N of the 100 open-ended questions (-1 = all, 0 = skip)
  c.decoding = "greedy"               # 'greedy' | 'sampled' | 'greedy,sampled' (run_grid): the paper reports both
  c.repeats = 1                       # evaluation runs per decoding, seeds seed..seed+repeats-1 (run_grid; mean ± SD)
  c.batch_tasks = 0                   # tasks per batched negotiation call (0 = all at once)
  c.sampling_sharded = True           # split sampling over every local device
  c.negotiation = negotiation_config()
  c.negotiation.group_size = 1        # dialogues per task (not disclosed: ours; > 1 gives CA group min/mean/max)
  c.open = ml_collections.ConfigDict()
  c.open.samples = 1                  # answers per open-ended question
  c.open.temperature = 0.7            # 'sampled' decoding of answers (not disclosed: ours)
  c.open.top_p = 0.95
  c.open.max_tokens = 256             # not disclosed: ours, as the single-agent baseline's training answers
  c.capability = capability.default_config()  # IFEval / GPQA / AIME before and after training
  c.judge = default_judge_config()    # the training judge: agreement and CA scores of the evaluation outputs
  c.strong_judge = default_judge_config()  # pairwise comparisons and the cross-judge study
  c.strong_judge.model = "gpt-4o"     # the paper's strong judge is not named: ours
  c.policies = ml_collections.ConfigDict()  # label -> policy.policy_config()
  c.run = ""                          # labels whose outputs are generated now (comma-separated)
  c.comparisons = ""                  # 'a:b,a:c': win rates of a over b, judged by the strong judge
  c.cross_judge = ml_collections.ConfigDict()
  c.cross_judge.policy = ""           # labels whose conflict.jsonl feeds the cross-judge study ('' = skip it)
  c.cross_judge.quotas = cross_judge.PAPER_QUOTAS  # training-judge score: dialogues sampled at that score
  c.cross_judge.passes = 2            # re-scorings by the strong judge
  c.cross_judge.temperature = 0.7     # of the re-scorings; not 0, as test-retest agreement is measured (ours)
  c.cross_judge.seed = 0
  return c


def _names(spec: str) -> list[str]:
  return [s.strip() for s in spec.split(",") if s.strip()]


def comparisons(c: ml_collections.ConfigDict) -> list[tuple[str, str]]:
  out = []
  for item in _names(c.comparisons):
    a, sep, b = item.partition(":")
    if not sep or not a or not b or a == b:
      raise ValueError(f"config.comparisons: {item!r} is not 'policy_a:policy_b' with two different policies")
    out.append((a, b))
  return out


def validate(c: ml_collections.ConfigDict) -> None:
  """Errors name the config field at fault, before any model is loaded."""
  for d in _names(c.decoding) or [""]:
    if d not in conflict.DECODINGS:
      raise ValueError(f"config.decoding: {c.decoding!r} is not one or more of {conflict.DECODINGS}")
  if c.repeats < 1:
    raise ValueError(f"config.repeats: evaluation runs per decoding must be >= 1, got {c.repeats}")
  capability.benchmarks(c.capability)
  for label in _names(c.run) + [n for pair in comparisons(c) for n in pair] + _names(c.cross_judge.policy):
    if label not in c.policies:
      raise ValueError(f"config: policy {label!r} (in config.run, config.comparisons or config.cross_judge.policy) "
                       f"is not defined under config.policies ({sorted(c.policies)})")
  if c.negotiation.group_size < 1:
    raise ValueError(f"config.negotiation.group_size: dialogues per task must be >= 1, got {c.negotiation.group_size}")
  if c.strong_judge.embedded and c.strong_judge.embedded_backend == "model":
    raise ValueError("config.strong_judge: the embedded 'model' backend needs a policy engine; point "
                     "config.strong_judge.base_url at an endpoint serving the strong judge instead")
  cross_judge.parse_quotas(c.cross_judge.quotas)


def _finite(x: Any) -> Any:
  """NaN and inf become null: summary.json stays strict JSON."""
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _finite(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_finite(v) for v in x]
  return x


def write_jsonl(path: str, records: Sequence[Mapping[str, Any]]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(_finite(dict(r)), ensure_ascii=False) + "\n")


def _stored(workdir: str, label: str, name: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, label, name)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"policy {label!r}: {path} not found; add {label!r} to config.run to generate it")
  return list(read_records(path))


def _previous_summary(workdir: str, decoding: str) -> dict[str, Any]:
  """summary.json of earlier invocations on this workdir, so that split runs add up to one summary."""
  path = os.path.join(workdir, "summary.json")
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    previous = json.load(f)
  if previous.get("decoding") != decoding:
    raise ValueError(f"config.decoding: {path} holds {previous.get('decoding')!r} outputs, not {decoding!r}; "
                     "use another --workdir")
  return previous


def generate_outputs(c: ml_collections.ConfigDict, label: str, tasks, questions, workdir: str,
                     bench_items=None) -> dict[str, Any]:
  """Loads one policy, writes its conflict.jsonl and open.jsonl, returns their summaries. The model is released
  when this returns, so policies are evaluated one at a time."""
  spec = c.policies[label]
  pol = policy_lib.load_policy(spec, os.path.join(workdir, label, "scratch"))
  engine = policy_lib.build_engine(pol.params, pol.config, pol.tokenizer, sharded=c.sampling_sharded,
                                   lora=pol.adapters)
  self_judging = c.judge.embedded and c.judge.embedded_backend == "model"
  out: dict[str, Any] = {"info": pol.info}
  judge_fn = (policy_lib.judge_fn(engine, pol.params, pol.config, pol.tokenizer, c.judge.verdict_mode)
              if self_judging else None)
  with SyncJudge(c.judge, generate_fn=judge_fn) as j:
    out["judge_model"] = j.client.model
    if tasks:
      neg = conflict.make_negotiator(engine, pol.tokenizer, j, c.negotiation, c.decoding)
      recs = conflict.run_conflict_eval(neg, tasks, seed=c.seed, batch_tasks=c.batch_tasks, policy=label,
                                        decoding=c.decoding)
      write_jsonl(os.path.join(workdir, label, "conflict.jsonl"), recs)
      out["conflict"] = conflict.conflict_summary(recs)
    if questions:
      greedy = c.decoding == "greedy"
      sp = SamplingParams(greedy=greedy, temperature=c.open.temperature, top_p=c.open.top_p,
                          max_new_tokens=c.open.max_tokens)
      recs = answers.answer_questions(engine, pol.tokenizer, questions, sp, seed=c.seed + 1,
                                      samples=c.open.samples, policy=label, decoding=c.decoding)
      answers.score_answers(j, recs)
      write_jsonl(os.path.join(workdir, label, "open.jsonl"), recs)
      out["open"] = answers.answers_summary(recs)
  if bench_items:
    recs_by, out["capability"] = capability.evaluate(engine, pol.tokenizer, c.capability, bench_items,
                                                     decoding=c.decoding, seed=c.seed + 2, policy=label)
    for name, recs in recs_by.items():
      write_jsonl(os.path.join(workdir, label, f"capability_{name}.jsonl"), recs)
  return out


def run(c: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """One evaluation run (one decoding): what the config asks for; writes summary.json and returns it."""
  validate(c)
  if len(_names(c.decoding)) != 1:
    raise ValueError(f"config.decoding: {c.decoding!r}: one run has one decoding (run_grid runs several)")
  bench_items = capability.load_items(c.capability) if _names(c.run) else {}  # bad files fail before any model
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  data_dir = c.data_dir or os.path.join(workdir, "tfds")
  all_tasks, all_questions = loader.eval_conflict_tasks(data_dir), loader.eval_open_questions(data_dir)
  tasks = all_tasks if c.num_conflict_tasks < 0 else all_tasks[:c.num_conflict_tasks]
  questions = all_questions if c.num_open_questions < 0 else all_questions[:c.num_open_questions]
  summary = _previous_summary(workdir, c.decoding)
  summary.update(decoding=c.decoding, seed=c.seed, conflict_tasks=len(tasks), open_questions=len(questions))
  summary.setdefault("policies", {})
  for label in _names(c.run):
    summary["policies"][label] = generate_outputs(c, label, tasks, questions, workdir, bench_items)
    print(f"[evaluate] {label}: outputs written under {os.path.join(workdir, label)}", flush=True)
  pairs = comparisons(c)
  cross = _names(c.cross_judge.policy)
  if pairs or cross:
    with SyncJudge(c.strong_judge) as strong:
      summary["strong_judge_model"] = strong.client.model
      summary.setdefault("comparisons", {})
      for a, b in pairs:
        conf = [_stored(workdir, x, "conflict.jsonl") if tasks else [] for x in (a, b)]
        opens = [_stored(workdir, x, "open.jsonl") if questions else [] for x in (a, b)]
        result, recs = pairwise.compare_policies(strong, *conf, *opens, all_tasks, all_questions)
        write_jsonl(os.path.join(workdir, "pairwise", f"{a}_vs_{b}.jsonl"), recs)
        summary["comparisons"][f"{a}:{b}"] = result
      if cross:
        records = [r for label in cross for r in _stored(workdir, label, "conflict.jsonl")]
        chosen, shortfall = cross_judge.select_stratified(records, cross_judge.parse_quotas(c.cross_judge.quotas),
                                                          c.cross_judge.seed)
        dilemmas = {t["id"]: t for t in all_tasks}
        pairs_by_id = {t["pair"]["pair_id"]: t["pair"] for t in all_tasks}
        rows = cross_judge.rescore(strong, chosen, dilemmas, pairs_by_id, passes=c.cross_judge.passes,
                                   temperature=c.cross_judge.temperature)
        write_jsonl(os.path.join(workdir, "cross_judge.jsonl"), rows)
        summary["cross_judge"] = {"policies": cross, "quota_shortfall": shortfall,
                                  **cross_judge.cross_judge_summary(rows)}
  summary = _finite(summary)
  with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  return summary


def grid(c: ml_collections.ConfigDict, workdir: str) -> list[tuple[ml_collections.ConfigDict, str]]:
  """(config, workdir) of every evaluation run: one per decoding and repeat; a single run uses `workdir` itself."""
  decodings = _names(c.decoding)
  if len(decodings) == 1 and c.repeats == 1:
    return [(c, workdir)]
  out = []
  for d in decodings:
    for r in range(c.repeats):
      cc = copy.deepcopy(c)
      cc.decoding, cc.seed = d, c.seed + r
      out.append((cc, os.path.join(workdir, d, f"seed{c.seed + r}")))
  return out


def run_grid(c: ml_collections.ConfigDict, workdir: str) -> list[tuple[str, dict[str, Any]]]:
  """Every evaluation run of `grid`; returns (workdir, summary) of each."""
  validate(c)
  return [(w, run(cc, w)) for cc, w in grid(c, workdir)]
