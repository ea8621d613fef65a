"""The one mesh helper: a ('data', 'fsdp') mesh with Auto axes, for the sharded step and for sampling.

Auto axes let jit propagate shardings through unannotated code; `jax.make_mesh` would default to Explicit axes,
under which an input placed without a NamedSharding fails to match the program's specs.
"""
from __future__ import annotations

import jax
from jax.sharding import AxisType, Mesh

BATCH_AXES = ("data", "fsdp")  # rows are split over both: every device computes on its own rows (FSDP-style)


def make_mesh(data: int = 0, fsdp: int = 1, devices: list | None = None) -> Mesh:
  """data x fsdp devices (data = 0: all devices / fsdp)."""
  if fsdp < 1:
    raise ValueError(f"mesh: fsdp must be >= 1, got {fsdp}")
  n = len(devices) if devices is not None else jax.device_count()
  data = data or n // fsdp
  if data < 1 or data * fsdp > n:
    raise ValueError(f"mesh: {data} x {fsdp} (data x fsdp) needs {data * fsdp} devices, have {n}")
  devices = devices or jax.devices()[:data * fsdp]
  return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def agree_max(*values: int) -> tuple[int, ...]:
  """The element-wise maximum of `values` over all processes (they must all call it): static shapes that every
  host's program must share, e.g. a batch's padded (B, T), agreed from each host's own rows."""
  if jax.process_count() == 1:
    return tuple(int(v) for v in values)
  import numpy as np  # noqa: PLC0415
  from jax.experimental import multihost_utils  # noqa: PLC0415
  gathered = multihost_utils.process_allgather(np.asarray(values, np.int64))
  return tuple(int(v) for v in np.asarray(gathered).reshape(-1, len(values)).max(0))
