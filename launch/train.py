"""Train an SAE: `python -m launch.train --config=configs/synthetic_tiny.py --workdir=DIR`.

Re-running with the same workdir resumes the run (or reports that it is done); a
changed experiment is refused with a diff (`--overwrite` starts the run over).
Override any field: `--config.train.steps=100 --config.sae.architecture=batchtopk`.

Multi-host (docs/MULTIHOST.md): run the same command on every host. `--multihost` joins
the job with `jax.distributed.initialize` before anything touches devices; who-is-who
comes from `--coordinator_address/--num_processes/--process_id`, or the environment
(JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID, torchrun's
MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE, SLURM, a TPU VM pod slice), which is also
detected without the flag; `--nomultihost` forces a single-process run. Only process 0
logs progress and writes metrics, plots and config.json; all processes checkpoint.
SIGTERM (preemption, a time limit) saves a checkpoint at a step all processes agree on
and exits with status 143; rerun the same command to resume.
"""
from absl import app, flags, logging

from launch import common

from musicsae_jax import distributed

_CONFIG = common.define_config()
_WORKDIR = flags.DEFINE_string("workdir", None, "Workspace root (runs/<run>/ goes here).")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", None, "Join a multi-process job (default: when the environment shows one).")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PID = flags.DEFINE_integer("process_id", None, "This process's id in [0, num_processes).")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Delete runs/<run>/ (and its checkpoints) first and start over.")
flags.mark_flags_as_required(["config", "workdir"])



def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  spec = None
  if _MULTIHOST.value is not False:
    spec = distributed.detect(coordinator_address=_COORD.value, num_processes=_NPROC.value,
                              process_id=_PID.value, force=bool(_MULTIHOST.value))
  if distributed.initialize(spec):          # before anything touches devices
    import jax
    logging.info("multi-host (%s): process %d of %d, %d local / %d global devices",
                 spec.source if spec else "preset", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    if jax.process_index() != 0:            # one voice: process 0 reports progress
      logging.set_verbosity(logging.WARNING)
  from musicsae_jax import checkpoint, train
  with common.user_errors(checkpoint.CheckpointSaveError):
    final = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)
  import jax
  if jax.process_index() == 0:
    import os
    from musicsae_jax import summary
    print("\n".join(summary.train(final, os.path.join(os.path.abspath(_WORKDIR.value), "runs",
                                                       _CONFIG.value.run))))
  if final.get("preempted"):       # checkpointed on SIGTERM: not done, rerun to resume
    from musicsae_jax import preemption
    preemption.exit_preempted()


if __name__ == "__main__":
  common.run(main)
