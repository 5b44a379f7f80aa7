"""Export a trained SAE for torch: `python -m launch.export --config=configs/tiny.py --workdir=DIR`.

Writes `<workdir>/exports/<run>/sae_weights.safetensors` + `cfg.json` (normalisation folded in),
and `directions.safetensors` + `directions.json` for `--features=1,2,3`, or for the best
`--from_selectivity=N` features per label value found by `launch.analyze`
(`reports/<run>/selectivity.json`, label key `--label_key`, default emotion); features that
do not pass the held-out null are refused unless `--allow_failing=1` (then each is warned).
"""
import os

from absl import app, flags, logging

from launch import common

from musicsae_jax import export

_CONFIG = common.define_config()
_WORKDIR = flags.DEFINE_string("workdir", None, "Workspace root (runs/<run>/ is read).")
_FEATURES = flags.DEFINE_list("features", [], "Feature ids whose decoder directions to export.")
_LABELS = flags.DEFINE_list("labels", [], "Optional labels, one per feature id.")
_FROM_SEL = flags.DEFINE_integer(
    "from_selectivity", 0, "Export the best N features per label value from "
    "reports/<run>/selectivity.json (written by launch.analyze) as directions.")
_ALLOW_FAILING = flags.DEFINE_bool(
    "allow_failing", False, "With --from_selectivity: export features that do not pass the "
    "held-out null too (each is logged as a WARNING); default: refuse.")
_LABEL_KEY = flags.DEFINE_string(
    "label_key", None, "Label key for --from_selectivity (default: the config's first "
    "analysis.label_keys).")
_MEAN_DIFF = flags.DEFINE_string(
    "mean_diff", None, "Label key: export difference-of-means (CAA) vectors of every value of "
    "this label on the run's site, from the store, to <workdir>/exports/<run>-meandiff (no SAE).")
_PROBE_DIRS = flags.DEFINE_string(
    "probe_dirs", None, "Label key: export the linear probe's weight direction per value (the "
    "analysis probe on per-prompt means, in raw units) to <workdir>/exports/<run>-probe.")
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
  labels = _LABELS.value or None
  if _MEAN_DIFF.value or _PROBE_DIRS.value:
    from musicsae_jax import steer_vectors
    cfg = _CONFIG.value
    kind, key, tag = (("mean_difference", _MEAN_DIFF.value, "meandiff") if _MEAN_DIFF.value
                      else ("probe", _PROBE_DIRS.value, "probe"))
    out = _OUT.value or os.path.join(_WORKDIR.value, "exports", f"{cfg.run}-{tag}")
    with common.user_errors():
      out = steer_vectors.export_mean_difference(
          os.path.join(_WORKDIR.value, "activations", cfg.dataset), cfg.train.site,
          key, out, run=f"{cfg.run}-{tag}", kind=kind)
    logging.info("%s vectors of %s on %s to %s", kind, key, cfg.train.site, out)
    print(out)
    return
  if _FROM_SEL.value:
    if ids:
      raise app.UsageError("give --features or --from_selectivity, not both")
    from musicsae_jax.analysis import pipeline
    sel = os.path.join(_WORKDIR.value, "reports", _CONFIG.value.run, "selectivity.json")
    if not os.path.exists(sel):
      raise app.UsageError(f"--from_selectivity: {sel} does not exist; run launch.analyze first")
    with common.user_errors():
      key = _LABEL_KEY.value or (tuple(_CONFIG.value.analysis.get("label_keys") or ())
                                 or ("emotion",))[0]
      ids, labels = pipeline.selected_features(sel, key, _FROM_SEL.value,
                                               allow_failing=_ALLOW_FAILING.value,
                                               warn=logging.warning)
    logging.info("directions from %s: %s", sel, list(zip(ids, labels)))
  with common.user_errors():
    out = export.export_run(_WORKDIR.value, _CONFIG.value.run, _OUT.value, step=_STEP.value,
                            feature_ids=ids, labels=labels)
  logging.info("exported run %s to %s", _CONFIG.value.run, out)
  print(out)


if __name__ == "__main__":
  common.run(main)
