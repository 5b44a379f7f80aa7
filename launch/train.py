"""Train an SAE: `python -m launch.train --config=configs/synthetic_tiny.py --workdir=DIR`.

Re-running with the same workdir resumes the run (or reports that it is done).
Override any field: `--config.train.steps=100 --config.sae.architecture=batchtopk`.
"""
import logging as pylogging

from absl import app, flags, logging
from ml_collections import config_flags

from musicsae_jax import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Workspace root (runs/<run>/ goes here).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietOrbax(pylogging.Filter):
  """Orbax logs every save step at INFO; keep its warnings, drop the chatter."""

  def filter(self, record):
    return record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietOrbax())
  final = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.info("final metrics: %s", final)
  print(final)


if __name__ == "__main__":
  app.run(main)
