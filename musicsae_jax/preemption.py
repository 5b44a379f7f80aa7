"""Stop on SIGTERM (a preempted VM, a scheduler's time limit) at a step every process
agrees on, so the trainer saves a checkpoint there and exits instead of being killed.

One process: a Python SIGTERM handler sets a flag, seen at the next step. Several
processes: JAX's preemption service (started by `jax.distributed.initialize`) owns
SIGTERM and agrees on a step with the other processes;
`multihost_utils.reached_preemption_sync_point` is then true at the same step everywhere,
which the collective checkpoint save needs. It must be asked at every step.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

import jax

EXIT_STATUS = 128 + signal.SIGTERM     # what a SIGTERM'd process reports; schedulers requeue


def exit_preempted() -> None:
  """Exit with EXIT_STATUS after the checkpoint is on disk.

  One process: `os._exit` after flushing, not SystemExit: interpreter finalisation with the
  checkpointer's and TensorStore's native threads still parked could abort the process
  ("exception not rethrown", SIGABRT) instead of reporting 143. Several processes: a
  normal SystemExit, so `jax.distributed` shuts down in step with the others."""
  if jax.process_count() > 1:
    raise SystemExit(EXIT_STATUS)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(EXIT_STATUS)


class StopOnSigterm:
  """`should_stop(step)` turns true (on every process at the same step) after SIGTERM."""

  def __init__(self):
    self.multi = jax.process_count() > 1
    self._requested = False
    self._old = None
    if not self.multi and threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame) -> None:
    self._requested = True

  def should_stop(self, step: int) -> bool:
    if self.multi:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested

  def close(self) -> None:
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)
      self._old = None

  def __enter__(self) -> "StopOnSigterm":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
