"""The training loop: sample episodes, judge them, compute advantages, step, log, checkpoint.

Both modes share it: `negotiation` (the paper: two persona agents, rewards from the CA score of Agent 1's final
completion, gradients on the dialogue turns) and `single_agent` (the predecessor's self-rewarding GRPO on open-ended
questions). Everything that can be checked is checked before any compute.
"""
from __future__ import annotations

import os
import time
from typing import Any

import httpx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deliberate import checkpointing, metrics_writer
from deliberate.data import loader
from deliberate.eval import conflict as conflict_eval
from deliberate.judge import judges
from deliberate.judge.runner import SyncJudge
from deliberate.model import registry, transformer
from deliberate.model import tokenizer as tok_lib
from deliberate.model.config import ModelConfig
from deliberate.negotiation import episode, metrics as neg_metrics, prompts, records, rows as rows_lib
from deliberate.rl import advantages as adv_lib, logprobs as lp_lib, lora as lora_lib, loss as loss_lib, optim
from deliberate.rl import step as step_lib
from deliberate.sampling.engine import Request, SamplingEngine, bucket_batch, bucket_length
from deliberate.sampling.sampler import SamplingParams

MODES = ("negotiation", "single_agent")
SINGLE_AGENT_SYSTEM = ("You are a thoughtful assistant. Answer in a way that expands the capacity of everyone "
                       "involved to act meaningfully: share knowledge, care for all stakeholders, preserve their "
                       "power to choose, and keep the future open.")


def validate_config(c: ml_collections.ConfigDict) -> None:
  """Errors name the config field at fault."""
  if c.mode not in MODES:
    raise ValueError(f"config.mode: {c.mode!r} is not one of {MODES}")
  g = c.negotiation.group_size if c.mode == "negotiation" else c.single_agent.group_size
  if g < 2:
    raise ValueError(f"config.{c.mode}.group_size: GRPO needs at least 2 samples per group, got {g}")
  if c.data.prompts_per_step < 1:
    raise ValueError(f"config.data.prompts_per_step: must be >= 1, got {c.data.prompts_per_step}")
  if c.rl.step not in ("pmap", "sharded"):
    raise ValueError(f"config.rl.step: {c.rl.step!r} is not 'pmap' or 'sharded'")
  for section in ("negotiation", "single_agent"):
    if c[section].failed_policy not in ("exclude", "zero"):
      raise ValueError(f"config.{section}.failed_policy: {c[section].failed_policy!r} is not 'exclude' or 'zero'")
  if c.num_steps < 1:
    raise ValueError(f"config.num_steps: must be >= 1, got {c.num_steps}")


def check_judge_reachable(judge_config: ml_collections.ConfigDict) -> None:
  """Any HTTP answer from the endpoint counts; a refused or timed-out connection fails before any compute."""
  if judge_config.embedded:
    return
  url = judge_config.base_url.rstrip("/") + "/models"
  try:
    httpx.get(url, timeout=min(10.0, judge_config.timeout_s))
  except httpx.HTTPError as e:
    raise ConnectionError(f"config.judge.base_url: the judge at {judge_config.base_url} is unreachable "
                          f"({type(e).__name__}: {e})") from None


def load_model(c: ml_collections.ConfigDict, workdir: str):
  """(params, ModelConfig, tokenizer). `tiny` is a random model with a sentencepiece tokenizer trained on the
  packaged dilemmas in seconds (tests and smoke runs); anything else goes through the registry."""
  if c.name == "tiny":
    from deliberate.data import schema
    texts = [d["text"] for d in schema.load_dilemmas()] + [p["a"]["description"] for p in schema.load_pairs()]
    tok = tok_lib.train_sentencepiece(texts, os.path.join(workdir, "tiny_tokenizer"), vocab_size=c.tiny.vocab_size)
    cfg = ModelConfig(arch="llama", vocab_size=len(tok), d_model=c.tiny.d_model, n_layers=c.tiny.n_layers,
                      n_heads=c.tiny.n_heads, n_kv_heads=c.tiny.n_kv_heads, head_dim=c.tiny.d_model // c.tiny.n_heads,
                      d_ff=c.tiny.d_ff, max_seq_len=c.tiny.max_seq_len, eos_ids=tuple(tok_lib.stop_ids(tok)),
                      param_dtype=c.param_dtype, compute_dtype=c.compute_dtype)
    return transformer.init_params(cfg, jax.random.key(c.tiny.seed)), cfg, tok
  try:
    params, cfg, tok = registry.load_policy(c.name, param_dtype=c.param_dtype)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"config.model.name: {e}") from None
  cfg = cfg.replace(compute_dtype=c.compute_dtype, eos_ids=tuple(sorted(set(cfg.eos_ids) | set(tok_lib.stop_ids(tok)))))
  return params, cfg, tok


def engine_chat_fn(engine: SamplingEngine, tokenizer):
  """generate_fn for the judge server's `model` backend: the policy judges with its own engine (self-judging)."""
  counter = iter(range(1 << 30))

  def generate(messages_lists, max_tokens: int, temperature: float) -> list[str]:
    sp = SamplingParams(greedy=temperature <= 0, temperature=max(temperature, 1e-3), max_new_tokens=max_tokens)
    reqs = [Request(tok_lib.render_ids(tokenizer, m), i) for i, m in enumerate(messages_lists)]
    outs = engine.generate(reqs, sp, seed=next(counter))
    return [tokenizer.decode(o.tokens, skip_special_tokens=True) for o in outs]
  return generate


class Trainer:
  """Owns the model, engine, judge, data, optimizer state and checkpoints of one run."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    validate_config(config)
    self.config, self.workdir = config, os.path.abspath(workdir)
    os.makedirs(self.workdir, exist_ok=True)
    c = config
    check_judge_reachable(c.judge)
    self.params, self.model_config, self.tokenizer = load_model(c.model, self.workdir)
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,)) \
        if c.sampling_sharded and jax.device_count() > 1 else None
    self.engine = SamplingEngine(self.params, self.model_config, stop_ids=tok_lib.stop_ids(self.tokenizer), mesh=mesh)
    data_dir = c.data.data_dir or os.path.join(self.workdir, "tfds")
    if c.mode == "negotiation":
      self.data = loader.PromptIterator(data_dir, c.seed, c.data.prompts_per_step, jax.process_index(),
                                        jax.process_count())
    else:
      self.data = loader.OpenQuestionIterator(data_dir, c.seed, c.data.prompts_per_step, jax.process_index(),
                                              jax.process_count())
    self._check_context()
    self._init_optimizer()
    self.judge = SyncJudge(c.judge, generate_fn=engine_chat_fn(self.engine, self.tokenizer)
                           if c.judge.embedded and c.judge.embedded_backend == "model" else None)
    self.negotiator = episode.Negotiator(self.engine, self.tokenizer, self.judge, c.negotiation)
    self.checkpointer = checkpointing.Checkpointer(os.path.join(self.workdir, "checkpoints"), c.keep_checkpoints,
                                                   c.checkpoint_every)
    self.records = records.RecordWriter(os.path.join(self.workdir, "records"),
                                        max_bytes=int(c.records_max_mb * (1 << 20)))
    self.writer = metrics_writer.MetricsWriter(self.workdir, c.num_steps, c.tensorboard, c.wandb_project)
    self.step = 0
    self.eval_items = conflict_eval.eval_items(loader.eval_conflict_tasks(data_dir)[:c.eval_tasks]) \
        if c.mode == "negotiation" and c.eval_every else []
    with open(os.path.join(self.workdir, "config.json"), "w") as f:  # what evaluate.py needs to rebuild the policy
      f.write(c.to_json_best_effort(indent=2))
    self._maybe_restore()

  # ------------------------------------------------------------------------------------------------------ setup

  def _check_context(self) -> None:
    """The longest prompt this config can build must fit the model's context, checked before any compute."""
    c, ctx = self.config, self.model_config.max_seq_len
    if c.mode == "negotiation":
      n = c.negotiation
      candidates = sorted((self.data.prompt_at(i) for i in range(min(self.data.num_items, 512))),
                          key=lambda it: len(it["dilemma"]["text"]) + len(str(it["pair"])))[-16:]
      opening_ids = lambda it: tok_lib.render_ids(self.tokenizer, prompts.turn_messages(
          it["dilemma"], it["pair"]["a"], it["pair"]["b"], []))
      opening, item = max(((len(opening_ids(it)), it) for it in candidates), key=lambda x: x[0])
      need = opening + (n.context_turns + 1) * (n.max_turn_tokens + 16)
      final = opening + n.max_turns * (n.max_turn_tokens + 16) + n.max_completion_tokens
      what = f"dilemma {item['dilemma']['id']} with pair {item['pair']['pair_id']}"
      for label, size in (("a turn prompt", need), ("the completion prompt", final)):
        if size > ctx:
          raise ValueError(f"config: {label} for {what} can reach {size} tokens, beyond the model's context of "
                           f"{ctx} (config.model / config.negotiation.max_turn_tokens)")
    else:
      longest = max(len(self._question_prompt(self.data.prompt_at(i)["question"]["question"]))
                    for i in range(self.data.num_items))
      if longest + c.single_agent.max_tokens > ctx:
        raise ValueError(f"config.single_agent.max_tokens: a {longest}-token prompt plus {c.single_agent.max_tokens} "
                         f"new tokens exceeds the model's context of {ctx}")

  def _question_prompt(self, question: str) -> list[int]:
    return tok_lib.render_ids(self.tokenizer, [{"role": "system", "content": SINGLE_AGENT_SYSTEM},
                                               {"role": "user", "content": question}])

  def _init_optimizer(self) -> None:
    c = self.config
    self.lora_config = (lora_lib.LoraConfig(rank=c.rl.lora_rank, alpha=c.rl.lora_alpha,
                                            targets=tuple(c.rl.lora_targets.split(",")))
                        if c.rl.lora_rank > 0 else None)
    loss_config = loss_lib.LossConfig(clip_eps_low=c.rl.clip_eps_low, clip_eps_high=c.rl.clip_eps_high,
                                      beta=c.rl.beta, norm_mode=c.rl.norm_mode, norm_constant=c.rl.norm_constant)
    self.step_config = step_lib.StepConfig(model=self.model_config, loss=loss_config, lora=self.lora_config,
                                           num_micro_batches=c.rl.micro_batches, remat=c.rl.remat,
                                           token_chunk=c.rl.token_chunk or None, temperature=(
                                               c.negotiation.turn_temperature if c.mode == "negotiation"
                                               else c.single_agent.temperature))
    self.optimizer, self.schedule = optim.make_optimizer(c.optim)
    state, self.frozen = step_lib.init_state(self.params, self.optimizer, self.step_config, jax.random.key(c.seed))
    if c.rl.step == "pmap":
      self.num_shards = jax.local_device_count()
      self.state = step_lib.replicate(state)
      self.frozen_dev = step_lib.replicate(self.frozen) if self.frozen is not None else None
      self.train_step = step_lib.make_pmap_step(self.optimizer, self.step_config)
    else:
      mesh = step_lib.make_mesh(c.rl.mesh_data or jax.device_count() // c.rl.mesh_fsdp, c.rl.mesh_fsdp)
      self.num_shards = mesh.size
      self.state = step_lib.init_sharded_state(state["params"], self.optimizer, mesh)
      self.frozen_dev = self.frozen
      self.train_step = step_lib.make_sharded_step(self.optimizer, self.step_config, mesh)
    self._ref_logprobs = jax.jit(lambda p, b, k: lp_lib.token_logprobs(
        p, b["tokens_BxT"], b["positions_BxT"], b["loss_mask_BxT"], config=self.model_config,
        targets_per_row=k, temperature=self.step_config.temperature)[0], static_argnums=2) if c.rl.beta > 0 else None
    self._ref_params = self.params if (c.rl.beta > 0 and self.lora_config is None) else self.frozen

  def _host_state(self) -> dict[str, Any]:
    return step_lib.unreplicate(self.state) if self.config.rl.step == "pmap" else self.state

  def _policy_params(self):
    """The params both agents sample with: the trainable params, or LoRA merged into the frozen base."""
    trainable = self._host_state()["params"]
    if self.lora_config is None:  # a copy: the sharded step donates (frees) the state's buffers
      return jax.tree.map(jnp.copy, trainable) if self.config.rl.step == "sharded" else trainable
    return lora_lib.merge(self.frozen, trainable, self.lora_config.alpha, self.lora_config.rank)

  def _maybe_restore(self) -> None:
    if self.checkpointer.latest_step is None:
      return
    step, state, meta = self.checkpointer.restore(self._host_state())
    self.state = step_lib.replicate(state) if self.config.rl.step == "pmap" else state
    self.data.restore(meta["data"])
    self.step = step
    print(f"resumed from {self.checkpointer.directory} at step {step}", flush=True)

  # ------------------------------------------------------------------------------------------------------- loop

  def _rollout(self, items, seed: int):
    """(training rows, advantages per dialogue, metrics, dialogues)."""
    c = self.config
    if c.mode == "negotiation":
      dialogues = self.negotiator.run(items, seed)
      rewards = np.array([d.reward for d in dialogues])
      valid = np.array([not d.excluded for d in dialogues])
      group_ids = np.array([d.group for d in dialogues])
      step_rows = rows_lib.dialogue_rows(dialogues, c.negotiation.agent1_only)
      metrics = neg_metrics.step_metrics(dialogues, c.negotiation.group_size)
    else:
      dialogues, step_rows, rewards, valid, group_ids, metrics = self._single_agent_rollout(items, seed)
    adv, _, adv_stats = adv_lib.group_advantages(rewards, group_ids, valid=valid,
                                                 scale_by_std=c.rl.scale_by_std)
    metrics.update({f"advantage/{k}": v for k, v in adv_stats.items()})
    return step_rows, adv, metrics, dialogues

  def _single_agent_rollout(self, items, seed: int):
    c, g = self.config.single_agent, self.config.single_agent.group_size
    items = [it["question"] for it in items]  # {"id", "domain", "question"}
    sp = SamplingParams(temperature=c.temperature, top_p=c.top_p, max_new_tokens=c.max_tokens)
    prompt_ids = [self._question_prompt(it["question"]) for it in items]
    reqs = [Request(prompt_ids[i], i * g + j) for i in range(len(items)) for j in range(g)]
    outs = self.engine.generate(reqs, sp, seed)
    texts = [self.tokenizer.decode(o.tokens, skip_special_tokens=True).strip() for o in outs]
    kwargs = [dict(dilemma=items[i // g]["question"], persona_a=None, persona_b=None, completion=t)
              for i, t in enumerate(texts)]
    results = self.judge.map(judges.judge_ca, kwargs)
    rewards = np.array([float(r.value) if r.ok else 0.0 for r in results])
    valid = np.array([r.ok or c.failed_policy == "zero" for r in results])
    step_rows = [rows_lib.Row(reqs[i].prompt_ids, o.tokens, o.logprobs, i, 1, True)
                 for i, o in enumerate(outs) if valid[i]]
    groups = rewards.reshape(-1, g)
    dialogues = [{"question_id": items[i // g]["id"], "text": t, "score": r.value if r.ok else None,
                  "failure": r.reason} for i, (t, r) in enumerate(zip(texts, results))]
    metrics = {"reward/group_min": float(groups.min(1).mean()), "reward/group_mean": float(groups.mean()),
               "reward/group_max": float(groups.max(1).mean()), "judge/ca_failures": int(sum(not r.ok for r in results)),
               "single_agent/tokens_per_answer": float(np.mean([len(o.tokens) for o in outs]))}
    return dialogues, step_rows, rewards, valid, np.repeat(np.arange(len(items)), g), metrics

  def _batch(self, step_rows, adv) -> dict[str, np.ndarray]:
    shards = self.num_shards * self.config.rl.micro_batches
    trained = [r for r in step_rows if r.trained]
    length = bucket_length(max(len(r.prompt_ids) + len(r.response_ids) for r in trained))
    batch = rows_lib.collate(trained, adv, pad_id=self.model_config.pad_id, length=length,
                             batch=bucket_batch(len(trained), shards))
    if self._ref_logprobs is not None:
      k = lp_lib.targets_per_row(batch["loss_mask_BxT"], self.step_config.targets_multiple)
      batch["ref_logprobs_BxT"] = np.asarray(self._ref_logprobs(self._ref_params, batch, k))
    return loss_lib.prepare_batch(batch, self.step_config.loss)

  def train_one_step(self) -> dict[str, float]:
    c = self.config
    items = self.data.next_batch()
    seed = int(jax.random.randint(jax.random.fold_in(jax.random.key(c.seed), self.step), (), 0, 2**31 - 1))
    t0 = time.time()
    timings0 = dict(self.negotiator.timings)
    self.engine.params = self._policy_params()
    judge_before = self.judge.metrics()
    step_rows, adv, metrics, dialogues = self._rollout(items, seed)
    t_rollout = time.time() - t0
    judge_s = self.negotiator.timings["judge_wait_s"] - timings0["judge_wait_s"]
    judge_after = self.judge.metrics()
    metrics.update({k: v for k, v in judge_after.items() if "latency" in k})
    for k in ("judge/requests", "judge/failures", "judge/cache_hits", "judge/cache_misses", "judge/retries"):
      metrics[k] = judge_after.get(k, 0) - judge_before.get(k, 0)
    if any(r.trained for r in step_rows):
      t1 = time.time()
      batch = self._batch(step_rows, adv)
      self.state, step_metrics = self.train_step(self.state, self.frozen_dev, batch)
      step_metrics = jax.device_get(step_metrics)
      if c.rl.step == "pmap":
        step_metrics = jax.tree.map(lambda x: np.asarray(x)[0], step_metrics)
      metrics.update(loss_lib.finalize_metrics(step_metrics))
      t_train = time.time() - t1
      tokens = float(batch["loss_mask_BxT"].sum())
      metrics.update({"time/train_s": t_train, "train/rows": len(batch["tokens_BxT"]), "train/tokens": tokens,
                      "train/tokens_per_s": float((batch["positions_BxT"] >= 0).sum()) / max(t_train, 1e-9)})
      if metrics.get("skipped", 0) > 0:
        print(f"step {self.step}: non-finite loss or gradient, update skipped (params unchanged)", flush=True)
    else:
      metrics["skipped_no_rows"] = 1.0
    metrics.update({"time/rollout_s": t_rollout, "time/judge_s": judge_s, "time/sample_s": t_rollout - judge_s,
                    "lr": float(self.schedule(self.step))})
    self.step += 1
    if c.mode == "negotiation":
      for d in dialogues:
        self.records.write(records.dialogue_record(d, self.step))
    else:
      for d in dialogues:
        self.records.write({"step": self.step, **d})
    self.last_dialogues = dialogues
    if self.eval_items and self.step % c.eval_every == 0:
      metrics.update(self.evaluate())
    self.writer.write(self.step, metrics)
    self.checkpointer.save(self.step, self._host_state(), {"data": self.data.state(), "seed": c.seed,
                                                           "step": self.step},
                           force=self.step == c.num_steps)
    return metrics

  def evaluate(self) -> dict[str, float]:
    """Figure 2's evaluation-set dynamics: the fixed eval tasks, a completion always written."""
    dialogues = self.negotiator.run(self.eval_items, seed=self.config.seed + 1, evaluation=True)
    m = neg_metrics.step_metrics(dialogues, self.config.negotiation.group_size)
    return {f"eval/{k}": v for k, v in m.items()}

  def run(self) -> None:
    try:
      while self.step < self.config.num_steps:
        self.train_one_step()
    finally:
      self.close()

  def close(self) -> None:
    self.checkpointer.close()
    self.records.close()
    self.writer.close()
    self.judge.close()
