"""Steer MusicGen with exported directions and measure the change in the audio.

    python -m launch.steer --config=configs/tiny.py --workdir=DIR \
        --config.steer.strengths=0,2,4 --config.steer.num_prompts=2

Reads `exports/<run>/directions.*` (+ `sae.*` for the feature's own activation), writes
`reports/<run>/steer.json` and `reports/<run>/audio/*.wav`; prints per-strength deltas
for the steered direction and a matched-norm random control.
"""
from absl import app, flags

from bridge import steering
from launch import common

_CONFIG = common.define_config()
_WORKDIR = flags.DEFINE_string("workdir", None, "Workspace root (exports/<run>/ is read).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  with common.user_errors():
    res = steering.run_steering(_CONFIG.value, _WORKDIR.value)
  print(res["path"])


if __name__ == "__main__":
  common.run(main)
