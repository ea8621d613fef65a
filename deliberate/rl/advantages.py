"""Group-normalised advantages (GRPO), computed on the host in numpy before a step.

Every sample of a group shares its prompt; its advantage is its reward measured against the group's. A group whose
rewards are all equal carries no signal and gets exactly 0 (it stays in the batch, as in the paper). Excluded samples
(e.g. the judge failed on them) neither enter their group's statistics nor receive gradient: advantage 0, weight 0.
"""
from __future__ import annotations

import numpy as np


def group_advantages(rewards: np.ndarray, group_ids: np.ndarray | None = None, *, valid: np.ndarray | None = None,
                     scale_by_std: bool = True, eps: float = 1e-6
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
  """(r - mean_group) / (std_group + eps), or r - mean_group when `scale_by_std=False` (Dr.GRPO).

  Args:
    rewards: [P, G] (one row per prompt) or flat [N] together with `group_ids` [N].
    group_ids: the group of each flat reward; required for flat rewards, forbidden for [P, G].
    valid: same shape as rewards; False excludes a sample from its group's mean/std and gives it weight 0.
    scale_by_std: divide by the group's (population) standard deviation.
    eps: added to the std.
  Returns:
    (advantages, weights, stats): advantages and weights (1 or 0) in the shape of `rewards`, float32; stats holds
    reward and advantage mean/std/min/max over included samples, the zero-advantage fraction, the fraction of
    groups with equal rewards and the excluded fraction.
  """
  r = np.asarray(rewards, np.float64)
  if group_ids is None:
    if r.ndim != 2:
      raise ValueError(f"group_advantages: rewards must be [P, G] without group_ids, got shape {r.shape}")
    gid = np.broadcast_to(np.arange(r.shape[0])[:, None], r.shape)
  else:
    gid = np.asarray(group_ids)
    if r.ndim != 1 or gid.shape != r.shape:
      raise ValueError(f"group_advantages: flat rewards {r.shape} need group_ids of the same shape, got {gid.shape}")
  ok = np.ones(r.shape, bool) if valid is None else np.asarray(valid, bool)
  if ok.shape != r.shape:
    raise ValueError(f"group_advantages: valid has shape {ok.shape}, rewards {r.shape}")
  if not np.all(np.isfinite(r[ok])):
    raise ValueError("group_advantages: rewards of included samples must be finite")

  flat_r, flat_g, flat_ok = r.ravel(), gid.ravel(), ok.ravel()
  _, inverse = np.unique(flat_g, return_inverse=True)
  n_groups = inverse.max() + 1 if inverse.size else 0
  w = flat_ok.astype(np.float64)
  count = np.bincount(inverse, w, n_groups)
  mean = np.bincount(inverse, w * flat_r, n_groups) / np.maximum(count, 1)
  centred = np.where(flat_ok, flat_r - mean[inverse], 0.0)
  std = np.sqrt(np.bincount(inverse, w * centred ** 2, n_groups) / np.maximum(count, 1))
  big = np.where(flat_ok, flat_r, -np.inf)
  small = np.where(flat_ok, flat_r, np.inf)
  gmax = np.full(n_groups, -np.inf)
  gmin = np.full(n_groups, np.inf)
  np.maximum.at(gmax, inverse, big)
  np.minimum.at(gmin, inverse, small)
  equal = gmax[inverse] <= gmin[inverse]  # also true for a group with a single included sample
  adv = centred / (std[inverse] + eps) if scale_by_std else centred
  adv = np.where(flat_ok & ~equal, adv, 0.0)

  included = flat_ok.sum()
  inc_r, inc_a = flat_r[flat_ok], adv[flat_ok]
  has = count > 0
  stats = {
      "reward_mean": float(inc_r.mean()) if included else float("nan"),
      "reward_std": float(inc_r.std()) if included else float("nan"),
      "reward_min": float(inc_r.min()) if included else float("nan"),
      "reward_max": float(inc_r.max()) if included else float("nan"),
      "advantage_mean": float(inc_a.mean()) if included else float("nan"),
      "advantage_std": float(inc_a.std()) if included else float("nan"),
      "advantage_min": float(inc_a.min()) if included else float("nan"),
      "advantage_max": float(inc_a.max()) if included else float("nan"),
      "zero_advantage_frac": float((inc_a == 0).mean()) if included else float("nan"),
      "equal_reward_group_frac": float((gmax[has] <= gmin[has]).mean()) if has.any() else float("nan"),
      "excluded_frac": float(1.0 - included / max(flat_ok.size, 1)),
  }
  return (adv.reshape(r.shape).astype(np.float32), flat_ok.reshape(r.shape).astype(np.float32), stats)
