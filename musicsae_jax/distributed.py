"""Multi-process start-up: find out who we are from flags or the launcher's environment.

JAX's multi-controller runtime is the distributed engine: every host runs the same
program, `jax.distributed.initialize(coordinator, num_processes, process_id)` joins them,
and `jax.devices()` then lists every device of the job. This module only decides the
three numbers (and calls initialize once, before anything touches devices).

Precedence, first match wins:
  1. explicit values (flags `--coordinator_address/--num_processes/--process_id`);
  2. `JAX_COORDINATOR_ADDRESS` + `JAX_NUM_PROCESSES` + `JAX_PROCESS_ID` (our own names);
  3. torchrun-style `MASTER_ADDR` + `RANK` + `WORLD_SIZE`; the coordinator listens on
     `JAX_COORDINATOR_PORT`, else `MASTER_PORT + 1` (torchrun's agent owns MASTER_PORT);
     `LOCAL_RANK` pins one GPU per process when `LOCAL_WORLD_SIZE` > 1;
  4. SLURM (`SLURM_PROCID`, `SLURM_NTASKS` > 1): JAX's own SLURM detection derives the
     coordinator from the node list and the local GPUs from `SLURM_LOCALID`;
  5. a Cloud TPU VM pod slice (`TPU_WORKER_HOSTNAMES` with more than one host, or
     `--multihost` on a TPU VM): JAX's TPU detection asks the metadata server.
Cases 4-5 call `jax.distributed.initialize()` with what is known and let JAX fill the rest.

Importing this module does not import JAX (the bridge uses `worker_from_env` for
extraction, and the bridge never imports JAX).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping

_ENV_SETS = (
    ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"),
)


class DistributedError(ValueError):
  """The multi-host settings are incomplete or contradictory."""


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
  """What to pass to `jax.distributed.initialize`; None fields are left to JAX."""
  source: str                       # 'flags' | 'jax-env' | 'torchrun' | 'slurm' | 'tpu' | 'auto'
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None

  def kwargs(self) -> dict:
    kw = {k: getattr(self, k) for k in ("coordinator_address", "num_processes",
                                        "process_id") if getattr(self, k) is not None}
    if self.local_device_ids is not None:
      kw["local_device_ids"] = list(self.local_device_ids)
    return kw


def _int(env: Mapping[str, str], name: str) -> int:
  try:
    return int(env[name])
  except ValueError:
    raise DistributedError(f"environment variable {name}={env[name]!r} is not an integer")


def detect(env: Mapping[str, str] | None = None, *, coordinator_address: str | None = None,
           num_processes: int | None = None, process_id: int | None = None,
           force: bool = False) -> ClusterSpec | None:
  """The cluster this process belongs to, or None for a single-process run.

  `force` (the `--multihost` flag) means "this is a multi-process job even if the
  environment says nothing": JAX's own auto-detection (TPU metadata, SLURM, Open MPI,
  Kubernetes) fills whatever is not given.
  """
  env = os.environ if env is None else env
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if None in explicit:
      raise DistributedError(
          "multi-host flags: give all of --coordinator_address, --num_processes and "
          f"--process_id (got {coordinator_address!r}, {num_processes!r}, {process_id!r}), "
          "or none of them to read the launcher's environment")
    return ClusterSpec("flags", coordinator_address, int(num_processes), int(process_id))
  for addr, n, i in _ENV_SETS:
    if addr in env and n in env and i in env:
      return ClusterSpec("jax-env", env[addr], _int(env, n), _int(env, i))
  if "RANK" in env and "WORLD_SIZE" in env and "MASTER_ADDR" in env:
    n = _int(env, "WORLD_SIZE")
    if n > 1 or force:
      # torchrun's agent already listens on MASTER_PORT (its rendezvous store): the JAX
      # coordinator takes JAX_COORDINATOR_PORT, else the next port.
      port = env.get("JAX_COORDINATOR_PORT") or str(_int(env, "MASTER_PORT") + 1
                                                    if "MASTER_PORT" in env else 29501)
      local = None
      if "LOCAL_RANK" in env and int(env.get("LOCAL_WORLD_SIZE", "1")) > 1:
        local = (_int(env, "LOCAL_RANK"),)          # one process per GPU
      return ClusterSpec("torchrun", f"{env['MASTER_ADDR']}:{port}", n, _int(env, "RANK"),
                         local)
  if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "SLURM_JOB_ID" in env:
    if _int(env, "SLURM_NTASKS") > 1 or force:
      return ClusterSpec("slurm", num_processes=_int(env, "SLURM_NTASKS"),
                         process_id=_int(env, "SLURM_PROCID"))
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  if len(hosts) > 1:
    return ClusterSpec("tpu")
  if force:
    return ClusterSpec("auto")
  return None


def is_initialized() -> bool:
  import jax
  return jax.distributed.is_initialized()


def initialize(spec: ClusterSpec | None) -> bool:
  """`jax.distributed.initialize` for `spec` (no-op for None or when already done).

  On CPU the cross-process collectives go through gloo (JAX 0.10's default, set
  explicitly so an older default cannot silently fall back to "no collectives").
  Returns whether this process is now part of a multi-process job.
  """
  import jax
  if jax.distributed.is_initialized():
    return True
  if spec is None:
    return False
  platforms = os.environ.get("JAX_PLATFORMS", "") or str(jax.config.jax_platforms or "")
  if platforms.split(",")[0] == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**spec.kwargs())
  return True


def worker_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
  """(worker_index, num_workers) for data-parallel tools (extraction), or None.

  Reads, in order: `JAX_PROCESS_ID/JAX_NUM_PROCESSES`, `RANK/WORLD_SIZE`,
  `SLURM_PROCID/SLURM_NTASKS`, `TPU_WORKER_ID` with `TPU_WORKER_HOSTNAMES`,
  `OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE`.
  """
  env = os.environ if env is None else env
  for i, n in (("JAX_PROCESS_ID", "JAX_NUM_PROCESSES"), ("RANK", "WORLD_SIZE"),
               ("SLURM_PROCID", "SLURM_NTASKS"),
               ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")):
    if i in env and n in env:
      index, num = _int(env, i), _int(env, n)
      if not 0 <= index < num:
        raise DistributedError(f"{i}={index} is not in [0, {n}={num})")
      return index, num
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  if "TPU_WORKER_ID" in env and hosts:
    return _int(env, "TPU_WORKER_ID"), len(hosts)
  return None
