"""Analyse a trained SAE: `python -m launch.analyze --config=configs/tiny.py --workdir=DIR`.

Writes reports/<run>/{features,selectivity,probes}.json, report.html and the feature browser
reports/<run>/browser/ (see WORKSPACE.md).
Feature labels (`--config.analysis.labelers="('words','clap','llm')"`): after the analysis, the
CLAP embeddings run in a separate torch process (`python -m bridge.label_clap REPORT_DIR`), then
reports/<run>/labels.json and the report's labels section are written (docs/analysis.md, "Feature labels").
Seed stability: `--compare_run=OTHER` matches the two runs' decoder rows (reports/<run>/stability.json
and a seed-stability section in report.html);
`--compare_only=1` skips the rest. Override fields: `--config.analysis.label_keys="('emotion','genre')" --config.analysis.probe_folds=4`.
"""
import os
import subprocess
import sys

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


def _labels(paths: dict) -> dict:
  """CLAP embeddings in a torch process (the bridge), then labels.json + report section (a
  second bridge pass embeds the LLM labels, so CLAP scores them too)."""
  from musicsae_jax.analysis import labelers, pipeline
  s = labelers.resolve(pipeline.resolve(_CONFIG.value))
  report_dir = os.path.dirname(paths["report"])
  env = dict(os.environ)
  if int(s["threads"]) > 0:            # read at start-up by OpenBLAS, OpenMP and torch
    env.update({v: str(int(s["threads"])) for v in
                ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})

  def bridge(*extra):
    from musicsae_jax import progress
    with progress.heartbeat("labels: CLAP embeddings (bridge.label_clap)", logging.info):
      r = subprocess.run([sys.executable, "-m", "bridge.label_clap", report_dir, *extra],
                         cwd=common.REPO_ROOT, env=env)
    if r.returncode:
      sys.exit(f"CLAP labels failed (exit {r.returncode}); rerun: python -m bridge.label_clap "
               f"{' '.join([report_dir, *extra])}")

  if "clap" in s["labelers"] and paths.get("label_examples"):
    bridge()
  return {"labels": labelers.write_labels(report_dir, s, _WORKDIR.value, log=logging.info,
                                          embed_label_texts=lambda _: bridge("--label_texts"))}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  paths = {}
  with common.user_errors():
    if not _ONLY.value:
      paths = analysis.analyze(_CONFIG.value, _WORKDIR.value, log=logging.info, bars=True)
      paths.update(_labels(paths))
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
  from musicsae_jax.analysis.labelers import llm
  common.run(main, extra=(llm.LLMError,))
