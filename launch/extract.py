"""Extract activations: `python -m launch.extract --config=configs/tiny.py --workdir=/tmp/ws`.

Writes <workdir>/activations/<config.dataset>/. Rerun the same command to resume; run
N copies with --worker_index=i --num_workers=N to split the prompts.
`--config.extract.source=audio --config.extract.audio.dataset=folder:/clips` captures
audio files instead of generating (docs/extraction.md "Your own audio").

Without those flags the split comes from the launcher's environment
(`musicsae_jax.distributed.worker_from_env`): JAX_PROCESS_ID/JAX_NUM_PROCESSES,
torchrun's RANK/WORLD_SIZE, SLURM_PROCID/SLURM_NTASKS, Open MPI, or a TPU VM pod's
TPU_WORKER_ID. Under torchrun with several processes per host, each process is pinned
to GPU LOCAL_RANK (CUDA_VISIBLE_DEVICES) unless CUDA_VISIBLE_DEVICES is already set.
"""
import os

from absl import app, flags

from launch import common

common.define_config()
flags.DEFINE_string("workdir", None, "Workspace directory.")
flags.DEFINE_integer("worker_index", None, "This worker's index in [0, num_workers) "
                     "(default: from the launcher environment, else 0).")
flags.DEFINE_integer("num_workers", None, "Number of extraction workers filling one dataset "
                     "(default: from the launcher environment, else 1).")
flags.DEFINE_bool("overwrite", False, "Delete an existing dataset of the same name first.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  index, num = worker_split(FLAGS.worker_index, FLAGS.num_workers)
  pin_local_gpu()
  from bridge.extract import extract
  from bridge.models import ModelLoadError
  with common.user_errors(ModelLoadError):
    extract(FLAGS.config, FLAGS.workdir, worker_index=index, num_workers=num,
            overwrite=FLAGS.overwrite)


def worker_split(worker_index, num_workers, env=None):
  """(index, num): flags when given (both), else the launcher environment, else (0, 1)."""
  from musicsae_jax import distributed        # JAX-free module
  if worker_index is not None or num_workers is not None:
    if worker_index is None or num_workers is None:
      raise app.UsageError("give both --worker_index and --num_workers, or neither "
                           "(to take them from the launcher environment)")
    return worker_index, num_workers
  return distributed.worker_from_env(env) or (0, 1)


def pin_local_gpu(env=None):
  """torchrun, several processes per host: process LOCAL_RANK uses GPU LOCAL_RANK."""
  env = os.environ if env is None else env
  if ("CUDA_VISIBLE_DEVICES" not in env and "LOCAL_RANK" in env
      and int(env.get("LOCAL_WORLD_SIZE", "1")) > 1):
    env["CUDA_VISIBLE_DEVICES"] = env["LOCAL_RANK"]


if __name__ == "__main__":
  common.run(main)
