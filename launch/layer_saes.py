"""One SAE per layer: `python -m launch.layer_saes --config=CFG --workdir=DIR`.

Trains (or resumes) an SAE with the config's settings on every `lm.layer.<i>` site of
extract.sites as run `<run>-l<i>`; the run's own site (train.site) keeps `<run>`. With
`analysis.layer_sae_seeds=n`, n SAEs per site that differ in their init seed (`-s<j>`). The
organism scorecard scores each layer's best features per label from them
(musicsae_jax/analysis/scorecard_localize.py).
"""
from absl import app, flags

from launch import common

_CONFIG = common.define_config()
_WORKDIR = flags.DEFINE_string("workdir", None, "Workspace root (runs/<run>-l<i>/ go here).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from musicsae_jax.analysis import AnalysisError, scorecard_localize
  with common.user_errors(AnalysisError):
    runs = scorecard_localize.train_layer_saes(_CONFIG.value, _WORKDIR.value)
  for site, rs in runs.items():
    print(f"{site}: " + ", ".join(f"runs/{r}" for r in rs))


if __name__ == "__main__":
  common.run(main)
