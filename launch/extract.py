"""Extract activations: `python -m launch.extract --config=configs/tiny.py --workdir=/tmp/ws`.

Writes <workdir>/activations/<config.dataset>/. Rerun the same command to resume; run
N copies with --worker_index=i --num_workers=N to split the prompts.
"""
from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
flags.DEFINE_string("workdir", None, "Workspace directory.")
flags.DEFINE_integer("worker_index", 0, "This worker's index in [0, num_workers).")
flags.DEFINE_integer("num_workers", 1, "Number of extraction workers filling one dataset.")
flags.DEFINE_bool("overwrite", False, "Delete an existing dataset of the same name first.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from bridge.extract import extract
  extract(FLAGS.config, FLAGS.workdir, worker_index=FLAGS.worker_index,
          num_workers=FLAGS.num_workers, overwrite=FLAGS.overwrite)


if __name__ == "__main__":
  app.run(main)
