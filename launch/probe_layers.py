"""Concepts across layers: `python -m launch.probe_layers --config=CFG --workdir=DIR`.

For every label in activations/<dataset>/prompts.jsonl (or `--label_keys=tempo,key`) and
every `lm.layer.<i>` site (or `--sites=...`): a k-fold multinomial probe with its
shuffled-label control; with a trained run (runs/<config.run>, or `--run=NAME`; `--run=`
for none) also the probe on its SAE latents and each label value's best feature. Writes
reports/<run>/probes_by_layer.json and the `layers` section of reports/<run>/report.html.
`launch.analyze` writes the same section for its own label keys and probe sites.
"""
from absl import app, flags

from launch import common

_CONFIG = common.define_config()
_WORKDIR = flags.DEFINE_string("workdir", None, "Workspace root (activations/<dataset>/ is read).")
_KEYS = flags.DEFINE_list("label_keys", [], "Label keys to probe (default: every key the "
                          "prompts carry that has >= 2 values with enough prompts each).")
_SITES = flags.DEFINE_list("sites", [], "Sites to probe (default: every lm.layer.<i>).")
_RUN = flags.DEFINE_string("run", None, "Trained run for SAE features (default config.run "
                           "when runs/<run> exists; empty: none).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from musicsae_jax.analysis import AnalysisError, layer_probes
  from absl import logging
  with common.user_errors(AnalysisError):
    paths = layer_probes.probe_layers(_CONFIG.value, _WORKDIR.value, label_keys=_KEYS.value,
                                sites=_SITES.value, run=_RUN.value, log=logging.info)
  for name, path in paths.items():
    print(f"{name}: {path}")


if __name__ == "__main__":
  common.run(main)
