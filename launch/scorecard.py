"""The organism scorecard: `python -m launch.scorecard --config=configs/organism.py --workdir=W
--config.model.name=W/organism`.

After launch.make_organism, launch.extract and launch.train: scores the run's SAE features
against the exact concept labels (best feature per label value, held-out AUROC, max-null,
against raw neurons and random directions) with the organism's codec/LM metrics, into
W/reports/<run>/scorecard.json and a section of report.html (musicsae_jax/analysis/scorecard.py).
"""
from absl import app, flags

from launch import common

_CONFIG = common.define_config()
_WORKDIR = flags.DEFINE_string("workdir", None, "Workspace root.")
_STEERING_ONLY = flags.DEFINE_bool(
    "steering_only", False, "Only add reports/<run>/steering_tokens.json (launch.organism_steer) "
    "to an existing scorecard.json and its report section; no re-scoring.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _STEERING_ONLY.value:
    from musicsae_jax.analysis import scorecard_steering
    try:
      card = scorecard_steering.update(_WORKDIR.value, _CONFIG.value.run)
    except (FileNotFoundError, scorecard_steering.SteeringFileError) as e:
      raise common.UserError(str(e)) from e
    s = card["steering"]["summary"]
    print(f"scorecard steering: {s['beat_controls']}/{s['features']} features beat their controls")
    return
  from musicsae_jax.analysis import scorecard
  from musicsae_jax.analysis.stats import AnalysisError
  try:
    card = scorecard.build(_CONFIG.value, _WORKDIR.value)
  except AnalysisError as e:
    raise common.UserError(str(e)) from e
  print(f"scorecard: {card['path']}")


if __name__ == "__main__":
  common.run(main)
