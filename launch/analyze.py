"""Analyse a trained SAE: `python -m launch.analyze --config=configs/tiny.py --workdir=DIR`.

Writes reports/<run>/{features,selectivity,probes}.json, report.html and the feature browser
reports/<run>/browser/ (see WORKSPACE.md).
Seed stability: `--compare_run=OTHER` matches the two runs' decoder rows (reports/<run>/stability.json
and a seed-stability section in report.html);
`--compare_only=1` skips the rest. Override fields: `--config.analysis.label_keys="('emotion','genre')" --config.analysis.probe_folds=4`.
"""
from absl import app, flags, logging

from launch import common

from musicsae_jax import analysis

_CONFIG = common.define_config()
_WORKDIR = flags.DEFINE_string("workdir", None, "Workspace root (reports/<run>/ goes here).")
_COMPARE = flags.DEFINE_string(
    "compare_run", None, "Seed stability: also match this run's decoder rows to config.run's "
    "(Hungarian on cosine; greedy above 4096 features), write reports/<run>/stability.json and "
    "add a seed-stability section (fraction matched, cosine histogram) to report.html.")
_THRESHOLD = flags.DEFINE_float("match_threshold", 0.7, "Cosine for a --compare_run match.")
_ONLY = flags.DEFINE_bool("compare_only", False, "With --compare_run: skip the analysis.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  paths = {}
  with common.user_errors():
    if not _ONLY.value:
      paths = analysis.analyze(_CONFIG.value, _WORKDIR.value, log=logging.info, bars=True)
    if _COMPARE.value:
      from musicsae_jax.analysis import pipeline
      r = pipeline.seed_stability(_WORKDIR.value, _CONFIG.value.run, _COMPARE.value,
                                  threshold=_THRESHOLD.value)
      print(f"stability: {r['fraction_matched']:.3f} of {_CONFIG.value.run}'s features match "
            f"{_COMPARE.value} at cosine >= {r['threshold']} ({r['method']}; median cosine "
            f"{r['median_cosine']:.3f})")
      paths["stability"] = r["path"]
      paths["report"] = r["report"]
  for name, path in paths.items():
    print(f"{name}: {path}")


if __name__ == "__main__":
  common.run(main)
