"""The paper's evaluation: the negotiation model, the single-agent model and their base on the 100 conflict tasks and
100 open-ended questions; pairwise win rates judged by a strong judge in both orders; the cross-judge study.

  python launch/evaluate.py --config configs/eval.py --workdir /data/eval/greedy \
      --config.policies.base.model.name=/data/ckpt/Qwen3-14B \
      --config.policies.negotiation.model.name=/data/ckpt/Qwen3-14B \
      --config.policies.negotiation.workdir=/data/runs/neg14b \
      --config.policies.single_agent.model.name=/data/ckpt/Qwen3-14B \
      --config.policies.single_agent.workdir=/data/runs/single
  (then again with --config.decoding=sampled and another --workdir)

Each policy is loaded, evaluated and released in turn; `--config.run=negotiation` generates one policy's outputs
only, and a later call with `--config.run=` and the same --workdir compares stored outputs. The training judge
(config.judge) gives agreement verdicts and CA scores; the strong judge (config.strong_judge) the pairwise verdicts
and the cross-judge re-scorings. A trained run's policy reads its base model and LoRA alpha from the run's config.json.
"""
from deliberate.policy import policy_config
from deliberate.eval.suite import default_config


def get_config():
  c = default_config()
  c.decoding = "greedy"
  for label, workdir in (("negotiation", "/data/runs/neg14b"), ("single_agent", "/data/runs/single"), ("base", "")):
    p = policy_config("/path/to/Qwen3-14B", workdir)
    p.model.param_dtype = "bfloat16"
    p.model.compute_dtype = "bfloat16"
    p.lora_alpha = 32.0                  # configs/negotiation_qwen3_14b.py trains with the base config's alpha
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
  return c
