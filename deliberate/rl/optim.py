"""optax AdamW with a warmup then cosine or constant schedule and global-norm clipping."""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from deliberate.rl.config import SCHEDULES
from deliberate.rl.config import optim_config as default_config  # noqa: F401  (the section's defaults)


def make_schedule(cfg: ml_collections.ConfigDict) -> optax.Schedule:
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f"optimizer config: schedule {cfg.schedule!r} is not one of {SCHEDULES}")
  if cfg.learning_rate <= 0 or cfg.warmup_steps < 0:
    raise ValueError("optimizer config: learning_rate must be > 0 and warmup_steps >= 0")
  warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps) if cfg.warmup_steps else None
  if cfg.schedule == "constant":
    main = optax.constant_schedule(cfg.learning_rate)
  else:
    decay = cfg.total_steps - cfg.warmup_steps
    if decay <= 0:
      raise ValueError(f"optimizer config: total_steps ({cfg.total_steps}) must exceed warmup_steps")
    main = optax.cosine_decay_schedule(cfg.learning_rate, decay, alpha=cfg.end_lr_ratio)
  return optax.join_schedules([warmup, main], [cfg.warmup_steps]) if warmup else main


def _decay_mask(params: Any) -> Any:
  """No weight decay on norms and biases."""
  def wants_decay(path, _):
    name = jax.tree_util.keystr(path)
    return not any(s in name for s in ("norm", "'bq'", "'bk'", "'bv'"))
  return jax.tree_util.tree_map_with_path(wants_decay, params)


def make_optimizer(cfg: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The transformation and its schedule (for logging the learning rate)."""
  schedule = make_schedule(cfg)
  tx = optax.chain(
      optax.clip_by_global_norm(cfg.max_grad_norm) if cfg.max_grad_norm else optax.identity(),
      optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=_decay_mask),
  )
  return tx, schedule
