r"""Train a sweep of SAEs in one pass over the data.

    python -m launch.sweep --config=configs/synthetic_tiny.py --workdir=DIR \
        --sweep='sae.k=4,8,16' --sweep='train.lr=1e-3,3e-3'

Every combination of the --sweep values (or of `c.sweep` in the config file, a tuple of
the same 'field=v1,v2' strings; a flag replaces the config's axis over the same field) is
a member, trained as the ordinary run `runs/<run>/<member>/`; `runs/<run>/sweep.json`
and `sweep.png` compare them (FVU vs L0 with the Pareto front, dead % per member).
Analyse/export a member with `--config.run=<run>/<member>`. Re-running resumes.
Members may differ in sae.* and in the train fields of
musicsae_jax.sweep.MEMBER_TRAIN_FIELDS (lr, seed, the schedule's shape, grad_clip, adam_*,
dead_tokens, dense_threshold, b_dec_init, l1_warmup_frac); the data, batch, steps and
mesh are shared. See musicsae_jax/sweep.py for how members are grouped and placed.

Run safety as for launch.train: one live sweep per run (a second one, or a single run of
a member, fails at once); a resumed member whose experiment changed is refused with the
differing fields (`--overwrite` starts the whole sweep over). Multi-host: run the same
command on every host, as for launch.train (`--multihost`, or the environment).
"""

import os

from absl import app, flags, logging

from launch import common

from musicsae_jax import distributed

_CONFIG = common.define_config()
_WORKDIR = flags.DEFINE_string("workdir", None, "Workspace root (runs/<run>/ goes here).")
_SWEEP = flags.DEFINE_multi_string(
    "sweep", [], "A sweep axis FIELD=V1,V2,... (repeatable; the grid is their product), "
    "e.g. --sweep='sae.k=16,32,64' --sweep='train.lr=1e-4,3e-4'.")
_MEMBER_STEP = flags.DEFINE_enum(
    "member_step", "auto", ["auto", "vmap", "map"],
    "How a group of same-shaped members steps: vmap (batched into every op; accelerators, "
    "members split over 'model'), map (the single-run step once per member, one jitted "
    "step; fastest on CPU), auto (map on CPU unless members are split over devices).")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Delete runs/<run>/ (every member and its checkpoints) first.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", None, "Join a multi-process job (default: when the environment shows one).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _MULTIHOST.value is not False:          # before anything touches devices
    distributed.initialize(distributed.detect(force=bool(_MULTIHOST.value)))
  import jax
  if jax.process_index() != 0:              # one voice: process 0 reports progress
    logging.set_verbosity(logging.WARNING)
  from musicsae_jax import checkpoint, sweep
  with common.user_errors(checkpoint.CheckpointSaveError):         # one line, as in train
    record = sweep.train_sweep(_CONFIG.value, _WORKDIR.value, _SWEEP.value,  # SweepError too
                               _MEMBER_STEP.value, overwrite=_OVERWRITE.value)
  if jax.process_index() == 0:
    from musicsae_jax import summary
    print("\n".join(summary.sweep(record, os.path.join(os.path.abspath(_WORKDIR.value), "runs",
                                                       _CONFIG.value.run))))


if __name__ == "__main__":
  common.run(main)
