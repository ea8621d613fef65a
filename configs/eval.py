"""The paper's evaluation: the negotiation model, the single-agent model and their base on the 100 conflict tasks and
100 open-ended questions; pairwise win rates judged by a strong judge in both orders; the cross-judge study.

  python launch/evaluate.py --config configs/eval.py --workdir /data/eval/greedy \
      --config.policies.base.model.name=/data/ckpt/Qwen3-14B \
      --config.policies.negotiation.model.name=/data/ckpt/Qwen3-14B \
      --config.policies.negotiation.workdir=/data/runs/neg14b \
      --config.policies.single_agent.model.name=/data/ckpt/Qwen3-14B \
      --config.policies.single_agent.workdir=/data/runs/single \
      --config.capability.ifeval_path=/data/benchmarks/ifeval/input_data.jsonl \
      --config.capability.gpqa_path=/data/benchmarks/gpqa/gpqa_diamond.csv \
      --config.capability.aime_path=/data/benchmarks/aime/aime_2024.jsonl
  Greedy and sampled decoding, each repeated `repeats` times (runs under <workdir>/<decoding>/seed<k>/), pooled into
  report.md: the paper's tables, mean ± SD over the runs.

A smoke run on tiny random policies, the deterministic local judge and the shipped sample sets (minutes on a CPU):
  python launch/train.py --config configs/tiny.py --workdir /tmp/tiny-run
  python launch/evaluate.py --config configs/eval.py:tiny --workdir /tmp/tiny-eval \
      --config.policies.negotiation.workdir=/tmp/tiny-run

Each policy is loaded, evaluated and released in turn; `--config.run=negotiation` generates one policy's outputs
only, and a later call with `--config.run=` and the same --workdir compares stored outputs. The training judge
(config.judge) gives agreement verdicts and CA scores; the strong judge (config.strong_judge) the pairwise verdicts
and the cross-judge re-scorings. A trained run's policy reads its base model and LoRA alpha from the run's config.json.
"""
from deliberate.config import policy_config
from deliberate.eval.suite import default_config


def get_config(variant: str = ""):
  if variant == "tiny":
    return tiny_config()
  if variant:
    raise ValueError(f"configs/eval.py: unknown variant {variant!r} (use configs/eval.py or configs/eval.py:tiny)")
  c = default_config()
  c.decoding = "greedy,sampled"
  c.repeats = 3                          # evaluation runs per decoding for mean ± SD (not disclosed: ours)
  for label, workdir in (("negotiation", "/data/runs/neg14b"), ("single_agent", "/data/runs/single"), ("base", "")):
    p = policy_config("" if workdir else "/path/to/Qwen3-14B", workdir)  # a run's model comes from its config.json
    p.model.param_dtype = "bfloat16"
    p.model.compute_dtype = "bfloat16"
    c.policies[label] = p
  c.run = "negotiation,single_agent,base"
  c.comparisons = "negotiation:single_agent,negotiation:base"
  c.judge.base_url = "https://api.openai.com/v1"
  c.judge.model = "gpt-4o-mini"          # the training judge class
  c.judge.cache_path = "judge_cache.sqlite"
  c.strong_judge.base_url = "https://api.openai.com/v1"
  c.strong_judge.model = "gpt-4o"        # the paper's strong judge is not named: ours
  c.strong_judge.cache_path = "judge_cache.sqlite"
  c.cross_judge.policy = "negotiation"   # 100 converged evaluation dialogues, stratified 2/18/40/40
  c.negotiation.overlap_judge = True     # a remote judge: sample the next turn while it answers
  c.capability.ifeval_path = "/data/benchmarks/ifeval/input_data.jsonl"   # users bring the benchmark files
  c.capability.gpqa_path = "/data/benchmarks/gpqa/gpqa_diamond.csv"
  c.capability.aime_path = "/data/benchmarks/aime/aime_2024.jsonl"
  return c


def tiny_config():
  """Tiny random policies (the negotiation one from a tiny run when its workdir is given), both judges the embedded
  deterministic local judge (lexicon), two tasks and questions, the shipped capability samples; greedy and sampled
  decoding, two seeds each, so that every table has mean ± SD."""
  c = default_config()
  c.decoding = "greedy,sampled"
  c.repeats = 2
  c.num_conflict_tasks = 2
  c.num_open_questions = 2
  c.sampling_sharded = False
  for label in ("negotiation", "base"):
    p = policy_config("tiny", "")          # --config.policies.negotiation.workdir=<a tiny run> to load its checkpoint
    c.policies[label] = p
  c.run = "negotiation,base"
  c.comparisons = "negotiation:base"
  for j in (c.judge, c.strong_judge):
    j.embedded, j.embedded_backend, j.api_key_env, j.model = True, "lexicon", "", "lexicon"
  c.negotiation.group_size = 2
  c.negotiation.max_turns = 2
  c.negotiation.max_turn_tokens = 8
  c.negotiation.max_completion_tokens = 8
  c.open.max_tokens = 8
  c.capability.limit = 3
  c.capability.ifeval_max_tokens = c.capability.gpqa_max_tokens = c.capability.aime_max_tokens = 8
  c.cross_judge.policy = "negotiation"
  c.cross_judge.quotas = "0:2,1:2,2:2,3:2,4:2,5:2"
  return c
