"""The one mesh helper: a ('data', 'fsdp') mesh with Auto axes, for the sharded step and for sampling.

Auto axes let jit propagate shardings through unannotated code; `jax.make_mesh` would default to Explicit axes,
under which an input placed without a NamedSharding fails to match the program's specs.
"""
from __future__ import annotations

import jax
from jax.sharding import AxisType, Mesh

BATCH_AXES = ("data", "fsdp")  # rows are split over both: every device computes on its own rows (FSDP-style)


def mesh_shape(data: int, fsdp: int, n: int) -> tuple[int, int]:
  """(data, fsdp) on n devices: data = 0 takes the devices fsdp leaves; fsdp = 0 takes the devices data leaves
  (data = 1 then, unless given)."""
  if fsdp < 0 or data < 0:
    raise ValueError(f"mesh: data and fsdp must be >= 0, got {data} x {fsdp}")
  if fsdp == 0:
    data = data or 1
    return data, n // data
  return data or n // fsdp, fsdp


def make_mesh(data: int = 0, fsdp: int = 1, devices: list | None = None) -> Mesh:
  """data x fsdp devices (see `mesh_shape` for 0)."""
  n = len(devices) if devices is not None else jax.device_count()
  data, fsdp = mesh_shape(data, fsdp, n)
  if data < 1 or fsdp < 1 or data * fsdp > n:
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
