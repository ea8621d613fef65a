"""One step runner: where the GRPO step runs (pmap over replicated params, or jit over a sharded mesh) is decided
here and nowhere else. The trainer sees one interface: build it, `step(batch)`, read `state` back, `restore`.

A runner owns the train state {"params": trainable, "opt_state"} and the frozen base under LoRA, on its devices.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from deliberate.mesh import make_mesh
from deliberate.rl import logprobs as lp_lib, lora as lora_lib, loss as loss_lib
from deliberate.rl import step as step_lib


class StepRunner:
  """Common part: the trainable/frozen split, the optional reference log-probs, the host view of the state."""
  kind = ""
  donates = False     # True: a step frees the state's buffers, so samplers must hold their own copy

  def __init__(self, params: Any, optimizer: optax.GradientTransformation, cfg: step_lib.StepConfig,
               key: jax.Array, *, reference: bool = False):
    self.cfg = cfg
    state, self.frozen = step_lib.init_state(params, optimizer, cfg, key)
    self.state = self._place_state(state, optimizer)
    self._frozen_dev = self._place_frozen(self.frozen)
    self._step = self._make_step(optimizer)
    # beta > 0: log-probs of the reference (the base under LoRA, else the initial params)
    self._ref_params = (params if cfg.lora is None else self.frozen) if reference else None
    self._ref_fn = jax.jit(lambda p, b, k: lp_lib.token_logprobs(
        p, b["tokens_BxT"], b["positions_BxT"], b["loss_mask_BxT"], config=cfg.model, targets_per_row=k,
        temperature=cfg.temperature)[0], static_argnums=2) if reference else None

  # --- what each kind defines
  num_shards: int = 1

  def _place_state(self, state, optimizer):
    raise NotImplementedError

  def _place_frozen(self, frozen):
    raise NotImplementedError

  def _make_step(self, optimizer):
    raise NotImplementedError

  def sampling_mesh(self):
    """The mesh the sampler should run on (None: the sampler's own mesh over this host's devices)."""
    return None

  def host_state(self) -> dict[str, Any]:
    """The state as one copy (what is checkpointed)."""
    return self.state

  def load_state(self, state: dict[str, Any]) -> None:
    """Puts a restored host state (from `host_state`'s structure) back on the devices."""
    self.state = state

  # --- shared
  def add_reference(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Adds `ref_logprobs_BxT` when the objective has a KL term."""
    if self._ref_fn is None:
      return batch
    k = lp_lib.targets_per_row(batch["loss_mask_BxT"], self.cfg.targets_multiple)
    return {**batch, "ref_logprobs_BxT": np.asarray(self._ref_fn(self._ref_params, batch, k))}

  def step(self, batch: Mapping[str, np.ndarray]) -> dict[str, float]:
    """One update on a batch from `loss.prepare_batch`; host-side metrics."""
    self.state, metrics = self._step(self.state, self._frozen_dev, batch)
    return loss_lib.finalize_metrics(self._first(jax.device_get(metrics)))

  def _first(self, metrics):
    return metrics

  def sampling_params(self) -> tuple[Any, Any]:
    """(base, adapters) both agents sample with (`SamplingEngine.set_params`): the trainable params and no
    adapters, or the frozen base (the same object every step, laid out once) and the LoRA adapters on their own
    path, never merged."""
    trainable = self.host_state()["params"]
    if self.cfg.lora is None:  # a copy when the step donates (frees) the state's buffers
      return (jax.tree.map(jnp.copy, trainable) if self.donates else trainable), None
    return self.frozen, lora_lib.adapters(trainable, self.cfg.lora)


class PmapRunner(StepRunner):
  """Params replicated on every local device; rows split over them; gradients psum'd."""
  kind = "pmap"

  def _place_state(self, state, optimizer):
    self.num_shards = jax.local_device_count()
    return step_lib.replicate(state)

  def _place_frozen(self, frozen):
    return step_lib.replicate(frozen) if frozen is not None else None

  def _make_step(self, optimizer):
    return step_lib.make_pmap_step(optimizer, self.cfg)

  def _first(self, metrics):
    return step_lib.unreplicate(metrics)

  def host_state(self):
    state = step_lib.unreplicate(self.state)
    return jax.device_get(state) if jax.process_count() > 1 else state  # the same on every host: saved by one

  def load_state(self, state):
    self.state = step_lib.replicate(state)


class ShardedRunner(StepRunner):
  """jit over a (data, fsdp) mesh: rows over both axes, trainable params and optimizer state split along fsdp."""
  kind = "sharded"
  donates = True

  def __init__(self, *args, mesh_data: int = 0, mesh_fsdp: int = 1, **kwargs):
    self.mesh = make_mesh(mesh_data, mesh_fsdp)
    super().__init__(*args, **kwargs)

  def _place_state(self, state, optimizer):
    self.num_shards = self.mesh.size
    return step_lib.init_sharded_state(state["params"], optimizer, self.mesh)

  def _place_frozen(self, frozen):
    """The frozen base split along fsdp once, as the trainable params are: on one host the step and the sampler
    share it (`self.frozen` keeps the host copy each host samples from across hosts)."""
    if frozen is None:
      return None
    return jax.device_put(frozen, step_lib.fsdp_shardings(frozen, self.mesh))

  def sampling_mesh(self):
    """On one host the sampler runs on the step's mesh, from the params as sharded (no per-step copy of the base);
    across hosts each host samples on its own devices."""
    return self.mesh if jax.process_count() == 1 else None

  def _make_step(self, optimizer):
    return step_lib.make_sharded_step(optimizer, self.cfg, self.mesh)

  def sampling_params(self):
    """Across hosts a host samples from a whole copy of the trainable params (they are split over every host's
    devices), gathered once a step; on one host the sharded arrays themselves."""
    base, adapters = super().sampling_params()
    if jax.process_count() == 1:
      return (base if adapters is None else self._frozen_dev), adapters
    from jax.experimental import multihost_utils  # noqa: PLC0415
    gather = lambda t: multihost_utils.process_allgather(t, tiled=True)
    return (gather(base), None) if adapters is None else (base, gather(adapters))


RUNNERS: dict[str, type[StepRunner]] = {"pmap": PmapRunner, "sharded": ShardedRunner}


def make_runner(rl: ml_collections.ConfigDict, params: Any, optimizer: optax.GradientTransformation,
                cfg: step_lib.StepConfig, key: jax.Array) -> StepRunner:
  """The runner `config.rl.step` names, over `config.rl.mesh_*` for the sharded kind."""
  kwargs: dict[str, Any] = dict(reference=rl.beta > 0)
  if rl.step == "sharded":
    kwargs.update(mesh_data=rl.mesh_data, mesh_fsdp=rl.mesh_fsdp)
  return RUNNERS[rl.step](params, optimizer, cfg, key, **kwargs)


def step_config(rl: ml_collections.ConfigDict, model, temperature: float) -> step_lib.StepConfig:
  """The compiled step's static config from `config.rl` (and the mode's sampling temperature)."""
  lora = (lora_lib.LoraConfig(rank=rl.lora_rank, alpha=rl.lora_alpha, targets=tuple(rl.lora_targets.split(",")),
                              dtype=rl.lora_dtype) if rl.lora_rank > 0 else None)
  loss = loss_lib.LossConfig(clip_eps_low=rl.clip_eps_low, clip_eps_high=rl.clip_eps_high, beta=rl.beta,
                             norm_mode=rl.norm_mode, norm_constant=rl.norm_constant,
                             old_logprobs=rl.old_logprobs)
  return step_lib.StepConfig(model=model, loss=loss, lora=lora, num_micro_batches=rl.micro_batches, remat=rl.remat,
                             token_chunk=rl.token_chunk or None, temperature=temperature,
                             pack_targets=rl.get("pack_targets", 0))
