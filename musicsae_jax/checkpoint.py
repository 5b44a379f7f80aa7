"""Orbax checkpointing of the whole train state: async saves, best-N by eval FVU + latest.

The train state (nnx params and stats, optax state, dead-latent counters, step) is saved
as one flat {name: array} dict so any pytree (nnx State, optax namedtuples) round-trips
without Orbax needing to know its node types. Restoring takes an abstract target with
shardings (`abstract_like`), so a checkpoint written on 8 devices restores onto 1 and
vice versa: Orbax reads each shard the target asks for.

Multi-host: every process calls save/restore (collectively); each writes the shards it
owns and process 0 commits the step, so the directory must be shared by all hosts (a
network filesystem or a gs:// bucket). A run saved by P processes restores on any other
process/device count because the target shardings, not the saved layout, decide.
"""
from __future__ import annotations

import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

METRIC = "eval_fvu"


class CheckpointSaveError(RuntimeError):
  """A (background) checkpoint save failed; raised once, at the first step after it."""


def _key(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      v = getattr(k, attr, None)
      if v is not None:
        break
    if v == "value" and isinstance(k, jax.tree_util.GetAttrKey):
      continue
    parts.append(str(v))
  return ".".join(parts)


def flatten(tree: Any) -> tuple[dict, Any]:
  """{dotted.name: leaf} and the treedef to rebuild the original pytree."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  flat = {_key(p): x for p, x in leaves}
  if len(flat) != len(leaves):
    raise ValueError("checkpoint: state has colliding leaf names")
  return flat, treedef


def unflatten(flat: dict, like: Any) -> Any:
  leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  return jax.tree_util.tree_unflatten(treedef, [flat[_key(p)] for p, _ in leaves])


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the *target* shardings (those of the mesh restored onto)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def _async_safe_across_processes() -> bool:
  """Whether async saves are safe in a multi-process job: only with Orbax's
  coordination-service barriers, switched on here.

  Orbax's default barrier is `multihost_utils.sync_global_devices`, an all-gather over
  every device. Its async save thread runs that barrier while the main thread dispatches
  train steps; each process can order the two collectives differently on its devices and
  the job deadlocks (seen: 2 processes x 4 CPU devices hang after the first save).
  The `experimental_orbax_use_distributed_barrier` flag makes barriers use the JAX
  coordination service, which involves no device. absl flags must be parsed to be read
  (they are under `launch.train`); otherwise saves are made synchronous instead.
  """
  from absl import flags
  name = "experimental_orbax_use_distributed_barrier"
  if name not in flags.FLAGS or not flags.FLAGS.is_parsed():
    return False
  flags.FLAGS[name].value = True
  return True


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for one run directory."""

  def __init__(self, directory: str, *, keep_best: int = 2, async_save: bool = True,
               keep_latest: int = 1):
    """`keep_latest` > 1 keeps earlier steps too (a sweep resumes from a step that every
    member finished saving)."""
    policy = cm.AnyPreservationPolicy([
        cm.LatestN(n=keep_latest),
        cm.BestN(get_metric_fn=lambda m: m[METRIC], reverse=True, n=keep_best,
                 keep_checkpoints_without_metrics=False),
    ])
    if async_save and jax.process_count() > 1:
      async_save = _async_safe_across_processes()
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=async_save, create=True,
        # best_fn makes Orbax write each step's metrics to disk (without it they live in
        # memory only, and best-N forgets them on resume); preservation_policy decides.
        best_fn=lambda m: m[METRIC], best_mode="min",
        cleanup_tmp_directories=True)         # a save cut short by a kill leaves a tmp dir
    # Local paths must be on a disk every host sees (NFS, Filestore); URLs (gs://) pass as is.
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state",))
    self._saving: int | None = None

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, eval_fvu: float | None) -> bool:
    """Async save; `eval_fvu` ranks it for best-N (inf when no eval has run yet)."""
    self.check()
    flat, _ = flatten(state)
    fvu = float("inf") if eval_fvu is None else float(eval_fvu)
    prev, self._saving = self._saving, step
    try:            # waits for the previous save first, so a failure may be that one's
      return self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(flat)),
                               metrics={METRIC: fvu}, force=True)
    except Exception as e:
      raise self._error(step if prev is None else f"{prev} or {step}", e) from e

  def check(self) -> None:
    """Raise CheckpointSaveError once the last async save has failed. Cheap (no wait):
    call it every step, so a full disk stops training right away, not at the next save
    (Orbax keeps a background failure until the next `wait_until_finished`)."""
    if self._saving is None or self.manager.is_saving_in_progress():
      return
    step, self._saving = self._saving, None
    try:
      self.manager.wait_until_finished()          # done already: raises a failure
    except Exception as e:
      raise self._error(step, e) from e

  def _error(self, step, e: BaseException) -> CheckpointSaveError:
    reason = (str(e).strip().splitlines() or [""])[0]
    code = re.search(r"os_error_code='(\d+)'", reason)     # TensorStore's I/O errors
    if code and len(reason) > 200:      # the OS's reason first, then the path it names
      reason = f"[Errno {code[1]}] {os.strerror(int(code[1]))}: {reason[:160]}..."
    reason = reason[:300]
    return CheckpointSaveError(f"{self.directory}: saving the checkpoint of step {step} "
                               f"failed: {type(e).__name__}: {reason}")

  def restore(self, step: int | None, target: Any) -> Any:
    """Restore `step` (latest when None) into the structure/shardings of `target`.

    `target` is a pytree of arrays or ShapeDtypeStructs; leaves with a `.sharding`
    decide where the restored shards land.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract, _ = flatten(jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        target))
    out = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    return unflatten(out["state"], target)

  def best_step(self) -> int | None:
    """The kept step with the lowest eval FVU (None when no checkpoint has metrics)."""
    best, best_v = None, float("inf")
    for info in self.manager._checkpoints:  # noqa: SLF001 (no public per-step metrics API)
      v = (info.metrics or {}).get(METRIC, float("inf"))
      if v < best_v:
        best, best_v = info.step, v
    return best

  def wait_until_finished(self) -> None:
    step, self._saving = self._saving, None
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      raise self._error(step, e) from e

  def close(self) -> None:
    try:
      self.wait_until_finished()
    finally:
      self.manager.close()
