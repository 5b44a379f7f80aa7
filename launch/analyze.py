"""Analyse a trained SAE: `python -m launch.analyze --config=configs/tiny.py --workdir=DIR`.

Writes reports/<run>/{features,selectivity,probes}.json and report.html (see WORKSPACE.md).
Override fields: `--config.analysis.label_keys="('emotion','genre')" --config.analysis.probe_folds=4`.
"""
from absl import app, flags, logging

from launch import common

from musicsae_jax import analysis

_CONFIG = common.define_config()
_WORKDIR = flags.DEFINE_string("workdir", None, "Workspace root (reports/<run>/ goes here).")
flags.mark_flags_as_required(["config", "workdir"])



def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  with common.user_errors():
    paths = analysis.analyze(_CONFIG.value, _WORKDIR.value, log=logging.info, bars=True)
  for name, path in paths.items():
    print(f"{name}: {path}")


if __name__ == "__main__":
  common.run(main)
