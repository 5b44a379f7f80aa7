"""Run-directory safety: one trainer per run, a resumed run keeps its experiment.

A run directory (`<workdir>/runs/<run>/`) holds one experiment: its checkpoints,
normalisation scale and metrics only make sense together. This module

* validates the training config before anything is written (`validate_train_config`),
* locks the run for one live trainer (`RunLock`, an `flock` on `runs/<run>/run.lock`,
  the way the store locks a worker), and
* compares a resumed run's config with the one recorded in `config.json`
  (`config_diff`): every field that changes results must match; fields that cannot
  (logging and checkpoint cadence, device layout, steps when extending) may change.

JAX-free on purpose, so launch scripts and tests can use it cheaply.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from typing import Any

from musicsae_jax.files import WriteError

LOCK_FILE = "run.lock"

# train.* fields that may change on resume: they do not change the trained parameters.
RESUMABLE_TRAIN_FIELDS = frozenset({
    "steps",                        # extending a run (the decay schedule follows the new end)
    "log_every", "eval_every", "eval_batch_size", "checkpoint_every", "keep_best",
    "async_checkpoint", "plots", "stop_after", "prefetch", "read_threads",
    "num_devices", "mesh_data", "mesh_model", "sharding", "distributed",   # layout only
    "checkpoint_dir",
})


class RunConfigError(ValueError):
  """A config that must not start or resume this run (the message says what to do)."""


class RunLockedError(RunConfigError):
  """Another live process is training this run."""


def validate_train_config(t) -> None:
  """Reject values that would train nonsense or nothing, before any file is written."""
  problems = []
  if int(t.steps) <= 0:
    problems.append(f"train.steps={t.steps} must be > 0")
  if t.lr is not None and not float(t.lr) > 0:
    problems.append(f"train.lr={t.lr} must be > 0 (or None for the default)")
  if int(t.batch_size) <= 0:
    problems.append(f"train.batch_size={t.batch_size} must be > 0")
  for k in ("log_every", "eval_every", "checkpoint_every"):
    if int(t[k]) <= 0:
      problems.append(f"train.{k}={t[k]} must be > 0")
  if t.warmup_steps is not None and int(t.warmup_steps) < 0:
    problems.append(f"train.warmup_steps={t.warmup_steps} must be >= 0")
  if not 0 <= float(t.get("l1_warmup_frac", 0.0)) <= 1:
    problems.append(f"train.l1_warmup_frac={t.l1_warmup_frac} must be in [0, 1]")
  if t.dead_tokens is not None and int(t.dead_tokens) <= 0:
    problems.append(f"train.dead_tokens={t.dead_tokens} must be > 0 (or None for the default)")
  if problems:
    raise RunConfigError("; ".join(problems))


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(obj, dict):
    out = {}
    for k, v in obj.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: list(obj) if isinstance(obj, tuple) else obj}


def config_diff(stored: dict, current: dict, train_defaults: dict) -> list[str]:
  """'field: stored -> current' for every result-changing field that differs.

  Compared: all of `sae` and `train` except RESUMABLE_TRAIN_FIELDS. A train field the
  stored config lacks (added to the code later) counts as its default. `data_streams`
  differs only when the current config sets it (0 means: keep the recorded value).
  """
  have = _flat({"sae": stored.get("sae", {}),
                "train": {**train_defaults, **stored.get("train", {})}})
  want = _flat({"sae": current.get("sae", {}), "train": current.get("train", {})})
  out = []
  for k in sorted(set(have) | set(want)):
    field = k.split(".")[1] if k.startswith("train.") else None
    if field in RESUMABLE_TRAIN_FIELDS:
      continue
    if field == "data_streams" and not want.get(k):
      continue
    a, b = have.get(k), want.get(k)
    if a != b and not (_num(a) and _num(b) and float(a) == float(b)):
      out.append(f"{k}: {a!r} -> {b!r}")
  return out


def _num(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_resume(run_dir: str, current: dict, train_defaults: dict) -> None:
  """Raise RunConfigError when `run_dir` holds a run of another experiment."""
  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      stored = json.load(f)
  except (OSError, ValueError) as e:
    raise RunConfigError(f"{path}: unreadable ({e}); pass --overwrite to start the run "
                         f"over") from e
  diff = config_diff(stored, current, train_defaults)
  if diff:
    raise RunConfigError(
        f"{run_dir} was trained with another config (recorded -> now: {'; '.join(diff[:8])}"
        f"{'; ...' if len(diff) > 8 else ''}). Resume with the recorded config, pass "
        f"--overwrite to start this run over, or choose another --config.run")


class RunLock:
  """An exclusive, non-blocking lock on a run directory for one live trainer.

  Creates the directory; a failed start (`abandon()`, on leaving the `with` block by an
  exception) removes the directories this lock created when nothing but the lock file was
  written into them.
  """

  def __init__(self, run_dir: str):
    self.run_dir = run_dir
    self.created = []                  # directories made here, deepest first
    d = os.path.abspath(run_dir)
    while not os.path.isdir(d):
      self.created.append(d)
      d = os.path.dirname(d)
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_FILE)
    self._fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "?"
      os.close(self._fd)
      self._fd = None
      raise RunLockedError(f"{run_dir} is being trained by another live process (pid "
                           f"{holder}); wait for it or choose another --config.run") from None
    try:                               # the holder's pid, for the message above
      os.ftruncate(self._fd, 0)
      os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:               # a full disk: the lock holds without the pid
      if e.errno != errno.ENOSPC:
        self.release()
        raise WriteError(path, e) from e

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def abandon(self) -> None:
    """Release after a failed start; remove the directory if this lock made it empty."""
    self.release()
    if self.created and set(os.listdir(self.run_dir)) <= {LOCK_FILE}:
      shutil.rmtree(self.run_dir, ignore_errors=True)
      for d in self.created[1:]:       # e.g. <workdir>/runs, when this made it
        try:
          os.rmdir(d)
        except OSError:
          break

  def __enter__(self) -> "RunLock":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.release()
    else:
      self.abandon()


def clear_run(run_dir: str, checkpoint_dir: str = "") -> None:
  """--overwrite: delete everything of a run but its lock (held by the caller)."""
  if checkpoint_dir and "://" in checkpoint_dir:
    raise RunConfigError(f"--overwrite cannot delete the remote checkpoints at "
                         f"{checkpoint_dir}; delete them yourself or choose another run")
  if checkpoint_dir and os.path.isdir(checkpoint_dir):
    shutil.rmtree(checkpoint_dir)
  for name in os.listdir(run_dir):
    if name == LOCK_FILE:
      continue
    p = os.path.join(run_dir, name)
    shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)
