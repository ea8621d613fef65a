"""One door to a policy, for the trainer, the evaluation and the judge server's `model` backend alike.

A policy is a base model (a short name, an HF directory, a `.gguf` file, or `tiny`: a random model for tests and
smoke runs), optionally with a trained run's checkpoint on top. A run's checkpoint holds only its trainable params:
the full params after full fine-tuning, or the LoRA adapters alone. Adapters are recognised by their structure and
merged into the base with W + (alpha / rank) a @ b; the rank is read from the adapters and alpha from the run's own
saved `config.json` (`rl.lora_alpha`), so nobody retypes it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
import ml_collections

from deliberate import checkpointing
from deliberate.mesh import make_mesh
from deliberate.config import policy_config  # noqa: F401  (a policy's config section)
from deliberate.model import registry, transformer
from deliberate.model import tokenizer as tok_lib
from deliberate.model.config import ModelConfig, tiny_config
from deliberate.rl import lora as lora_lib
from deliberate.sampling.engine import Request, SamplingEngine
from deliberate.sampling.sampler import SamplingParams

GenerateFn = Callable[[list, int, float], list[str]]


def load_model(c: ml_collections.ConfigDict, scratch_dir: str):
  """(params, ModelConfig, tokenizer) from a run's `config.model`. `tiny` is a random model with a sentencepiece
  tokenizer trained on the packaged dilemmas in seconds (written under scratch_dir); anything else goes through the
  registry (short name, HF directory, .gguf)."""
  if c.name == "tiny":
    from deliberate.data import schema
    texts = [d["text"] for d in schema.load_dilemmas()] + [p["a"]["description"] for p in schema.load_pairs()]
    tok = tok_lib.train_sentencepiece(texts, os.path.join(scratch_dir, "tiny_tokenizer"), vocab_size=c.tiny.vocab_size)
    cfg = tiny_config(c, vocab_size=len(tok), eos_ids=tuple(tok_lib.stop_ids(tok)))
    return transformer.init_params(cfg, jax.random.key(c.tiny.seed)), cfg, tok
  try:
    params, cfg, tok = registry.load_policy(c.name, param_dtype=c.param_dtype)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"config.model.name: {e}") from None
  cfg = cfg.replace(compute_dtype=c.compute_dtype, eos_ids=tuple(sorted(set(cfg.eos_ids) | set(tok_lib.stop_ids(tok)))))
  return params, cfg, tok


def sampling_mesh(sharded: bool) -> jax.sharding.Mesh | None:
  """The sampler's 'data' mesh over this host's devices, or None (one device). Each host samples its own share of
  a step's dialogues, so the sampler never spans hosts."""
  if not sharded or jax.local_device_count() == 1:
    return None
  return make_mesh(jax.local_device_count(), 1, devices=jax.local_devices())


def build_engine(params, config: ModelConfig, tokenizer, *, sharded: bool = True, mesh=None,
                 row_axes: tuple[str, ...] = ("data",), lora=None, share_prefixes: bool = True) -> SamplingEngine:
  """The sampling engine of a policy: on `mesh` (e.g. the sharded train step's, sampling from its params as they are
  sharded, rows over `row_axes`), else with rows split over this host's devices when `sharded`. `lora`: a trained
  run's `transformer.Adapters`, sampled on their own path over the base (never merged)."""
  if mesh is not None:
    return SamplingEngine(params, config, stop_ids=tok_lib.stop_ids(tokenizer), mesh=mesh, row_axes=row_axes,
                          lora=lora, share_prefixes=share_prefixes)
  return SamplingEngine(params, config, stop_ids=tok_lib.stop_ids(tokenizer), mesh=sampling_mesh(sharded), lora=lora,
                        share_prefixes=share_prefixes)


def judge_fn(engine: SamplingEngine, params, config: ModelConfig, tokenizer, verdict_mode: str = "text"):
  """generate_fn of the judge server's `model` backend, the policy judging with its own engine (self-judging):
  text answers, or (verdict_mode 'logits') verdicts read from the logits after a bounded reasoning budget, which
  never fail to parse. The logit scoring reads `params` (the base under LoRA) and the engine's current adapters."""
  if verdict_mode == "logits":
    from deliberate.judge.logits import LocalJudgeModel  # noqa: PLC0415
    return LocalJudgeModel(params, config, tokenizer, engine)
  return chat_fn(engine, tokenizer)


def smollm2_judge():
  """Factory for `python -m deliberate.judge.serve --backend model --generate-fn deliberate.policy:smollm2_judge`:
  the embedded SmolLM2 as a local judge, with logit verdicts."""
  import tempfile  # noqa: PLC0415

  from deliberate.judge.logits import LocalJudgeModel  # noqa: PLC0415
  p = load_policy(policy_config("smollm2-135m"), tempfile.mkdtemp(prefix="judge-model-"))
  return LocalJudgeModel(p.params, p.config, p.tokenizer)


def chat_fn(engine: SamplingEngine, tokenizer) -> GenerateFn:
  """generate_fn for the judge server's `model` backend: the policy judges with its own engine (self-judging)."""
  counter = iter(range(1 << 30))

  def generate(messages_lists, max_tokens: int, temperature: float) -> list[str]:
    sp = SamplingParams(greedy=temperature <= 0, temperature=max(temperature, 1e-3), max_new_tokens=max_tokens)
    reqs = [Request(tok_lib.render_ids(tokenizer, m), i) for i, m in enumerate(messages_lists)]
    outs = engine.generate(reqs, sp, seed=next(counter))
    return [tokenizer.decode(o.tokens, skip_special_tokens=True) for o in outs]
  return generate


def run_config(run_workdir: str) -> dict[str, Any]:
  """The config a run saved in its workdir (`config.json`), as a dict; {} when it saved none."""
  path = os.path.join(run_workdir, "config.json")
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None


@dataclasses.dataclass
class Policy:
  params: Any                          # the base model's (LoRA) or the trained params (full fine-tuning)
  config: ModelConfig
  tokenizer: Any
  info: dict[str, Any]                 # where the params came from, for the summary
  adapters: Any = None                 # a LoRA run's `transformer.Adapters`, on their own path over `params`


def _is_lora(tree: Any) -> bool:
  return (isinstance(tree, dict) and bool(tree) and set(tree) <= set(lora_lib.LORA_TARGETS)
          and all(isinstance(v, dict) and set(v) == {"a", "b"} for v in tree.values()))


def restore_params(run_workdir: str, base_params: Any, *, step: int = 0,
                   lora_alpha: float = 0.0) -> tuple[Any, Any, dict[str, Any]]:
  """(params, adapters, info) from `<run_workdir>/checkpoints`, restored onto one device: the trained params and
  None, or (LoRA) the base params as given and the adapters, which run on their own path in the run's
  `rl.lora_dtype` as in training (a merge into a bf16 base would round small updates away). A LoRA checkpoint's
  alpha is `lora_alpha` when given, else the run's saved `rl.lora_alpha`."""
  directory = os.path.join(run_workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"policy workdir {run_workdir}: no checkpoints/ directory")
  ckpt = checkpointing.Checkpointer(directory)
  try:
    step = step or ckpt.latest_step
    if step is None or step not in ckpt.manager.all_steps():
      raise FileNotFoundError(f"policy workdir {run_workdir}: no checkpoint for step {step or 'latest'} "
                              f"(have {list(ckpt.manager.all_steps())})")
  finally:
    ckpt.close()
  trainable = checkpointing.read_params(directory, step)
  info = {"workdir": os.path.abspath(run_workdir), "step": int(step)}
  if _is_lora(trainable):
    ranks = {v["a"].shape[-1] for v in trainable.values()}
    if len(ranks) != 1:
      raise ValueError(f"policy workdir {run_workdir}: LoRA adapters of several ranks {sorted(ranks)}")
    for name, ab in trainable.items():
      if ab["a"].shape[:2] != base_params["layers"][name].shape[:2]:
        raise ValueError(f"policy workdir {run_workdir}: adapter {name} {ab['a'].shape} does not fit the base "
                         f"model's {base_params['layers'][name].shape} (is policy.model the run's base model?)")
    rank = ranks.pop()
    saved_rl = run_config(run_workdir).get("rl", {})
    if not lora_alpha:
      if saved_rl.get("lora_alpha") is None:
        raise ValueError(f"policy workdir {run_workdir}: a LoRA checkpoint, but no rl.lora_alpha in its config.json; "
                         "set the policy's lora_alpha")
      lora_alpha = float(saved_rl["lora_alpha"])
    info.update(kind="lora", rank=int(rank), alpha=float(lora_alpha))
    return base_params, transformer.Adapters(trainable, lora_alpha / rank, saved_rl.get("lora_dtype", "float32")), info
  want = jax.tree.map(lambda x: (x.shape, x.dtype), base_params)
  got = jax.tree.map(lambda x: (x.shape, x.dtype), trainable)
  if jax.tree.structure(want) != jax.tree.structure(got) or jax.tree.leaves(want) != jax.tree.leaves(got):
    raise ValueError(f"policy workdir {run_workdir}: the checkpoint's params are neither LoRA adapters nor the "
                     "base model's params in shape and dtype (is policy.model the run's base model?)")
  info["kind"] = "full"
  return trainable, None, info


def load_policy(spec: ml_collections.ConfigDict, scratch_dir: str) -> Policy:
  """The base model of `spec.model`, with `spec.workdir`'s checkpoint applied when one is given.

  scratch_dir receives what loading writes (the tiny model's tokenizer), so a run's workdir is never written to.
  """
  model = spec.model
  if spec.workdir:  # the run's own base model and dtypes, as it saved them
    saved = run_config(spec.workdir).get("model")
    if saved:
      if model.name not in ("", saved["name"]):
        raise ValueError(f"policy workdir {spec.workdir}: the run trained {saved['name']!r}, but the policy's "
                         f"model.name is {model.name!r} (leave it '' to use the run's)")
      model = ml_collections.ConfigDict(saved)
  if not model.name:
    raise ValueError("policy model.name: empty, and no run workdir with a config.json to read it from")
  params, cfg, tok = load_model(model, scratch_dir)
  info: dict[str, Any] = {"model": model.name, "kind": "base"}
  adapters = None
  if spec.workdir:
    params, adapters, restored = restore_params(spec.workdir, params, step=spec.step, lora_alpha=spec.lora_alpha)
    info.update(restored)
  return Policy(params, cfg, tok, info, adapters)
