"""The two schedulers of a step's dialogues (lockstep; async: rollouts that never wait), and one step off-policy.

Both compose the per-dialogue steps of negotiation/dialogue.py; negotiation/episode.py's `Negotiator` picks one.

The lockstep rollout samples a turn for every active dialogue, then waits for every verdict, so a step costs the sum
of sampling and N serial judge round trips. In the async rollout the sampler (the caller's thread) takes whichever
dialogues are ready for a turn (up to `scheduler_max_batch`, waiting at most `scheduler_fill_wait_s` for more verdicts
to fill the batch), agreement and CA verdicts stream back from the judge's own loop as they finish, and a dialogue
that agrees has its completion sampled at once. With `overlap_judge`, an otherwise idle sampler samples the next turn
of dialogues still waiting on their verdict; a 'no' then finds that turn ready. The G dialogues of a group need not
move together.

Same results as lockstep: every row's randomness is keyed by (dialogue, turn) through its row id, the prompts depend
only on the dialogue's own turns, and the judge sees the same requests, so with a deterministic judge the tokens,
verdicts and rewards are those of the lockstep rollout; the log-probs agree to float32 rounding (the engine's
numerics depend on a call's shapes: rows, unique prompts and prompt bucket).

Nothing lost: a judge failure (after the client's retries), an exception from the judge or a dialogue that reaches
N turns ends that dialogue alone, counted as in lockstep (docs/protocol.md, the negotiation episode).
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import threading
import time
from typing import Any, Callable

import jax
import numpy as np

from deliberate.negotiation.dialogue import Dialogue, DialogueSteps, Turn


@dataclasses.dataclass
class _Failed:
  """A judge call that raised instead of returning a JudgeResult: a failure of that dialogue alone."""
  reason: str
  ok: bool = False
  value: Any = None
  latency_s: float = 0.0


def run_lockstep(steps: DialogueSteps, dialogues: list[Dialogue], seed: int, evaluation: bool) -> None:
  """Per turn: every active dialogue sampled in one call, then all their verdicts; with `overlap_judge` the next turn
  is sampled speculatively while the verdicts run. Completions and CA scores are batched once the turns are over."""
  active, n_max = list(dialogues), steps.config.max_turns
  pending = steps.sample_turns(active, seed)
  for t in range(n_max):
    for d, turn in zip(active, pending):
      d.turns.append(turn)
    verdicts = steps.submit_agreement(active)
    speculative = None
    if steps.config.overlap_judge and t + 1 < n_max:
      speculative = steps.sample_turns(active, seed)  # row ids make these the same tokens as a later call
    for d, res in zip(active, steps.wait(verdicts)):
      steps.apply_verdict(d, res)
    still = [i for i, d in enumerate(active) if d.active]
    if speculative is not None:
      pending = [speculative[i] for i in still]
    active = [active[i] for i in still]
    if not active or t + 1 == n_max:
      break
    if speculative is None:
      pending = steps.sample_turns(active, seed)
  writers = [d for d in dialogues if steps.writes_completion(d, evaluation)]
  steps.sample_completions(writers, seed)
  for d, res in zip(writers, steps.wait(steps.submit_ca(writers)) if writers else []):
    steps.apply_score(d, res)


def _result(future: cf.Future):
  exc = future.exception()
  if exc is not None:
    return _Failed(f"{type(exc).__name__}: {exc}"[:200])
  return future.result()[0]


class AsyncScheduler:
  """One rollout of a step's dialogues; `stats` says how it went (engine calls, batches, speculation)."""

  def __init__(self, negotiator: DialogueSteps):
    self.neg = negotiator
    c = negotiator.config
    self.max_batch = int(c.scheduler_max_batch) or 1 << 30
    self.fill_wait_s = float(c.scheduler_fill_wait_s)
    self.speculate = bool(c.overlap_judge)
    self.stats = {"turn_calls": 0, "completion_calls": 0, "speculative_turns": 0, "speculative_used": 0,
                  "max_batch_rows": 0}

  def run(self, dialogues: list[Dialogue], seed: int, evaluation: bool) -> None:
    neg, n_max = self.neg, self.neg.config.max_turns
    ready: list[tuple[float, str, Dialogue]] = [(time.time(), "turn", d) for d in dialogues]
    agreement: dict[cf.Future, Dialogue] = {}
    scoring: dict[cf.Future, Dialogue] = {}
    spec: dict[int, Turn] = {}           # dialogue index -> its next turn, sampled before the verdict came

    def submit_agreement(d: Dialogue) -> None:
      agreement[neg.submit_agreement([d])] = d

    def on_verdict(d: Dialogue, res) -> None:
      neg.apply_verdict(d, res)
      nxt = spec.pop(d.index, None)
      if d.active and d.rounds < n_max:
        if nxt is not None:  # the speculative turn is the one a fresh call would sample (same row id and prompt)
          d.turns.append(nxt)
          self.stats["speculative_used"] += 1
          submit_agreement(d)
        else:
          ready.append((time.time(), "turn", d))
      elif neg.writes_completion(d, evaluation):
        ready.append((time.time(), "completion", d))

    def harvest(timeout: float | None) -> None:
      pending = list(agreement) + list(scoring)
      if not pending:
        return
      t0 = time.time()
      done, _ = cf.wait(pending, timeout=timeout, return_when=cf.FIRST_COMPLETED)
      neg.timings["judge_wait_s"] += time.time() - t0
      for f in done:
        if f in agreement:
          on_verdict(agreement.pop(f), _result(f))
        else:
          neg.apply_score(scoring.pop(f), _result(f))

    while ready or agreement or scoring:
      harvest(0)
      if ready:
        oldest = min(t for t, _, _ in ready)
        while len(ready) < self.max_batch and agreement and time.time() < oldest + self.fill_wait_s:
          harvest(oldest + self.fill_wait_s - time.time())
        ready.sort(key=lambda x: x[0])
        kind = ready[0][1]
        batch = [d for _, k, d in ready if k == kind][:self.max_batch]
        taken = {d.index for d in batch}
        ready[:] = [x for x in ready if not (x[1] == kind and x[2].index in taken)]
        self.stats["max_batch_rows"] = max(self.stats["max_batch_rows"], len(batch))
        if kind == "turn":
          self.stats["turn_calls"] += 1
          for d, turn in zip(batch, neg.sample_turns(batch, seed)):
            d.turns.append(turn)
            submit_agreement(d)
        else:
          self.stats["completion_calls"] += 1
          neg.sample_completions(batch, seed)
          for d in batch:
            scoring[neg.submit_ca([d])] = d
        continue
      waiting = [d for d in agreement.values() if d.index not in spec and d.rounds < n_max]
      if self.speculate and waiting:
        batch = sorted(waiting, key=lambda d: d.index)[:self.max_batch]
        self.stats["speculative_turns"] += len(batch)
        for d, turn in zip(batch, neg.sample_turns(batch, seed)):
          spec[d.index] = turn
        continue
      harvest(None)


# --- one step off-policy: the next step's rollout runs while this step's update does

class BackgroundRollout:
  """Runs `rollout_fn(items, seed)` on a thread against the weights set now, so the caller can train meanwhile.

  The engine is given its (base, adapters) snapshot before the thread starts and the trainer must not call
  `engine.set_params` until `result()` returned: the rollout then samples exactly the policy of `version`, and its
  rows' log-probs are that policy's (the behaviour policy the clipped ratio divides by). A sharded step that
  donates its buffers needs the runner's copy (`StepRunner.sampling_params` copies when `donates`).
  """

  def __init__(self, engine, sampling_params: tuple[Any, Any], rollout_fn: Callable[..., Any], items, seed: int,
               version: int):
    engine.set_params(*sampling_params)
    self.version, self.engine = version, engine
    self.fingerprint = params_fingerprint(engine)
    self._out: dict[str, Any] = {}
    self._thread = threading.Thread(target=self._run, args=(rollout_fn, items, seed), daemon=True,
                                    name=f"rollout-{version}")
    self.started = time.time()
    self._thread.start()

  def _run(self, rollout_fn, items, seed) -> None:
    try:
      self._out["rollout"] = rollout_fn(items, seed)
    except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
      self._out["error"] = e
    self._out["wall_s"] = time.time() - self.started

  def result(self, timeout: float | None = None):
    """The rollout (re-raising its error); fails if the engine's weights changed while it ran."""
    self._thread.join(timeout)
    if self._thread.is_alive():
      raise TimeoutError(f"rollout of policy version {self.version} still running after {timeout}s")
    if "error" in self._out:
      raise self._out["error"]
    if params_fingerprint(self.engine) != self.fingerprint:
      raise RuntimeError(f"rollout of policy version {self.version}: the engine's weights changed while it ran")
    return self._out["rollout"]

  @property
  def wall_s(self) -> float:
    return self._out.get("wall_s", float("nan"))


def params_fingerprint(engine) -> tuple:
  """Identity of the weights an engine samples with: the objects set, and a checksum of the adapters (small) or,
  without adapters, of a few leaves of the base. Catches a sync that silently did not happen."""
  lora = engine.lora
  tree = lora if lora is not None else engine.params
  leaves = jax.tree.leaves(tree)
  sums = tuple(float(np.asarray(x, np.float64).sum()) for x in (leaves if lora is not None else leaves[:4]))
  return id(engine.params), id(lora), sums


def staleness_stats(new_logprobs: np.ndarray, old_logprobs: np.ndarray, mask: np.ndarray, advantages: np.ndarray,
                    clip_eps_low: float = 0.2, clip_eps_high: float = 0.2) -> dict[str, float]:
  """The importance ratio pi_theta / pi_behaviour on the trained tokens, as rl/loss.py's surrogate clips it:
  its mean, extrema, the fraction of tokens where the clip binds, and the mean |log ratio| (the staleness)."""
  m = mask > 0
  if not m.any():
    return {}
  log_ratio = (new_logprobs - old_logprobs)[m]
  ratio = np.exp(log_ratio)
  adv = np.broadcast_to(np.asarray(advantages)[:, None], mask.shape)[m]
  lo, hi = 1 - clip_eps_low, 1 + clip_eps_high
  clipped = ((ratio < lo) & (adv < 0)) | ((ratio > hi) & (adv > 0))
  return {"offpolicy/ratio_mean": float(ratio.mean()), "offpolicy/ratio_min": float(ratio.min()),
          "offpolicy/ratio_max": float(ratio.max()), "offpolicy/clip_frac": float(clipped.mean()),
          "offpolicy/abs_log_ratio": float(np.abs(log_ratio).mean())}
