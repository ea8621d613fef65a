"""Multi-process JAX: one `initialize` call at the start of a run, before anything touches a device.

Three cases, decided in this order:
  explicit  `coordinator_address`, `num_processes` and `process_id` all given (the launcher's flags): any set of
            hosts that can reach process 0's address, e.g. GPU machines without a scheduler, or 127.0.0.1 in tests.
  auto      a cluster JAX recognises (Cloud TPU pod slices, SLURM, Open MPI, Kubernetes): `jax.distributed.initialize()`
            with no arguments, JAX reads everything from the environment or the TPU metadata server.
  single    none of the above: one process, nothing to initialise.

CPU processes need a collectives implementation (gloo) to run cross-process computations at all; it is set here
whenever more than one process is expected, since it only affects the CPU backend.
"""
from __future__ import annotations

import os
import re
from typing import Mapping, Sequence

import jax
import numpy as np


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1, *,
               local_device_ids: Sequence[int] | None = None, auto: bool = True,
               initialization_timeout_s: int = 300, cpu_collectives: str = "gloo") -> str:
  """Initialises jax.distributed as described above; returns 'explicit', 'auto:<cluster>', 'single' or 'already'.

  num_processes=0 and process_id=-1 mean "not given" (the absl flag defaults). auto=False skips cluster detection
  (a SLURM allocation used as one big single-process machine, say)."""
  if _already_initialized():
    return "already"
  given = {"--coordinator_address": bool(coordinator_address), "--num_processes": num_processes > 0,
           "--process_id": process_id >= 0}
  if any(given.values()):
    missing = [name for name, ok in given.items() if not ok]
    if missing:
      raise ValueError(f"distributed: {', '.join(missing)} missing; give --coordinator_address, --num_processes and "
                       "--process_id together (or none of them, for automatic detection)")
    if not re.fullmatch(r"\[?[\w.:-]+\]?:\d+", coordinator_address):
      raise ValueError(f"distributed: --coordinator_address={coordinator_address!r} is not host:port")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"distributed: --process_id={process_id} is outside [0, --num_processes={num_processes})")
    if num_processes > 1:
      jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids,
                               initialization_timeout=initialization_timeout_s)
    return "explicit"
  cluster = detect_cluster() if auto else None
  if cluster is None:
    return "single"
  if local_device_ids is None and cluster == "SlurmCluster":
    local_device_ids = slurm_local_device_ids(os.environ)
  jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  jax.distributed.initialize(local_device_ids=local_device_ids, initialization_timeout=initialization_timeout_s)
  return f"auto:{cluster}"


def detect_cluster() -> str | None:
  """The name of the first cluster environment JAX would auto-detect here (e.g. 'GceTpuCluster', 'SlurmCluster'),
  or None. Opt-in methods (mpi4py) are skipped, as JAX skips them."""
  try:
    from jax._src import clusters  # private, but it is exactly JAX's own list; fail closed if it moves
  except ImportError:
    return None
  for env in clusters.ClusterEnv._cluster_types:  # pylint: disable=protected-access
    if getattr(env, "opt_in_only_method", False):
      continue
    try:
      if env.is_env_present():
        return env.__name__
    except Exception:  # noqa: BLE001  (a probe that cannot run means: not this environment)
      continue
  return None


def slurm_local_device_ids(env: Mapping[str, str]) -> list[int] | None:
  """JAX's SLURM detection gives each process the single GPU numbered by its SLURM_LOCALID, which is right for one
  task per GPU (`--ntasks-per-node=<GPUs>`). With one task on a node that task should own all of the node's GPUs
  instead; JAX would silently keep only GPU 0. Returns the device ids for that case, else None (JAX's default)."""
  tasks_on_node = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", "")
  first = re.match(r"\d+", tasks_on_node)
  if not first or int(first.group()) != 1:
    return None
  visible = env.get("CUDA_VISIBLE_DEVICES") or env.get("SLURM_STEP_GPUS") or env.get("SLURM_JOB_GPUS") or ""
  ids = [d for d in visible.split(",") if d.strip()]
  return list(range(len(ids))) if ids else None


def _already_initialized() -> bool:
  try:
    from jax._src import distributed as _dist
    return _dist.global_state.client is not None
  except (ImportError, AttributeError):
    return False


def is_main_process() -> bool:
  """Process 0 writes metrics and prints progress; every other process stays quiet."""
  return jax.process_index() == 0


def per_process(global_size: int, field: str) -> int:
  """The share of `global_size` items each process handles; refuses sizes that do not divide over the processes,
  naming the config field, so no host silently gets a different batch."""
  n = jax.process_count()
  if global_size % n:
    raise ValueError(f"{field}={global_size} does not divide over {n} processes")
  return global_size // n


def check_divides(global_batch: int, field: str, shards_per_process: int | None = None) -> None:
  """A global batch must split evenly over processes and then over each process's devices (or micro-batches x
  devices, as the caller counts shards)."""
  per = per_process(global_batch, field)
  shards = jax.local_device_count() if shards_per_process is None else shards_per_process
  if per % shards:
    raise ValueError(f"{field}={global_batch}: {per} per process does not divide over {shards} shards per process "
                     f"({jax.process_count()} processes x {jax.local_device_count()} local devices)")


def global_batch(mesh: jax.sharding.Mesh, local: Mapping[str, np.ndarray], axis: str | tuple[str, ...] = "data"):
  """Arrays of the global batch, leading axis split over `axis`, from this process's rows of it; every process
  passes its own rows (same shapes on every process) and gets the same global arrays."""
  spec = lambda x: jax.sharding.PartitionSpec(axis, *([None] * (np.ndim(x) - 1)))
  return {k: jax.make_array_from_process_local_data(jax.sharding.NamedSharding(mesh, spec(v)), np.asarray(v))
          for k, v in local.items()}
