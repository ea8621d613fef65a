"""orbax checkpoints of the whole run: trainable params, optimizer state, step, data position and RNG seed.

Saves are asynchronous (training goes on while the previous step is written) and only the last N are kept. A run
killed at any moment resumes from the newest complete checkpoint: orbax finalises a step directory atomically.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:

  def __init__(self, directory: str, max_to_keep: int = 3, save_every: int = 1):
    self.directory = os.path.abspath(directory)
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

  def restore(self, template_state: dict[str, Any], step: int | None = None) -> tuple[int, dict[str, Any], dict]:
    """Restores into the structure, dtypes and shardings of `template_state`."""
    step = self.manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)), template_state)
    out = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract["params"]), opt_state=ocp.args.StandardRestore(abstract["opt_state"]),
        meta=ocp.args.JsonRestore()))
    return step, {"params": out["params"], "opt_state": out["opt_state"]}, dict(out["meta"])

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
