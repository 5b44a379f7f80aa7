"""Export a trained SAE for torch: `python -m launch.export --config=configs/tiny.py --workdir=DIR`.

Writes `<workdir>/exports/<run>/sae.safetensors` + `cfg.json` (normalisation folded in),
and `directions.safetensors` + `directions.json` for `--features=1,2,3`.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from musicsae_jax import export

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Workspace root (runs/<run>/ is read).")
_FEATURES = flags.DEFINE_list("features", [], "Feature ids whose decoder directions to export.")
_LABELS = flags.DEFINE_list("labels", [], "Optional labels, one per feature id.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: best, else latest).")
_OUT = flags.DEFINE_string("out", None, "Output dir (default: <workdir>/exports/<run>).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    ids = [int(f) for f in _FEATURES.value]
  except ValueError as e:
    raise app.UsageError(f"--features must be comma-separated ints: {e}") from e
  out = export.export_run(_WORKDIR.value, _CONFIG.value.run, _OUT.value, step=_STEP.value,
                          feature_ids=ids, labels=_LABELS.value or None)
  logging.info("exported run %s to %s", _CONFIG.value.run, out)
  print(out)


if __name__ == "__main__":
  app.run(main)
