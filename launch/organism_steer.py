"""Steering on the organism, scored in token space: `python -m launch.organism_steer
--workdir=W --config.model.name=W/organism` (stage `steer` of `make organism`).

Needs W/reports/<run>/scorecard.json (launch.scorecard: which latents pass) and the SAE
export W/exports/<run>/ (launch.export). For every label value with a passing SAE latent,
generates with and without its decoder direction added (and with control directions),
classifies the generated tokens, and writes W/reports/<run>/steering_tokens.json
(bridge/organism/steer_tokens.py); `launch.scorecard --steering_only` adds it to the scorecard.
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

from launch import common

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(common.REPO_ROOT, "configs", "organism.py"),
    "Organism config (`organism_steer` block; default configs/organism.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Workspace root of the organism chain.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg = _CONFIG.value
  if "organism_steer" not in cfg:
    raise common.UserError("--config: the config needs an `organism_steer` block "
                           "(start from configs/organism.py)")
  if not str(cfg.model.name):
    raise common.UserError("--config.model.name: give the organism directory (W/organism)")
  from bridge.organism import steer_tokens
  try:
    res = steer_tokens.run(cfg, _WORKDIR.value, log=logging.info)
  except steer_tokens.SteerTokensError as e:
    raise common.UserError(str(e)) from e
  for f in res["features"]:
    print(f"{f['key']}={f['value']} (latent {f['id']}): {f['verdict']['text']}")
  print(f"steering: {res['path']} ({res['seconds']:.0f} s)")


if __name__ == "__main__":
  common.run(main)
