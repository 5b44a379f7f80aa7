"""Steer MusicGen with exported directions and measure the change in the audio.

    python -m launch.steer --config=configs/tiny.py --workdir=DIR \
        --config.steer.strengths=0,2,4 --config.steer.controls=32

Reads `exports/<run>/directions.*` (+ `sae.*` for the feature's own activation), writes
`reports/<run>/steer.json` (every measure per prompt, condition and strength, with paired
statistics, rank p against the controls at each strength and one verdict line per feature
and method, also printed), `steer.png` (concept vs drift, one control box per strength) and
`reports/<run>/audio/*.wav`, then adds the steering section to `report.html` in a
separate process (the report code is on the JAX side; this process holds torch).
"""
import os
import subprocess
import sys

from absl import app, flags

from bridge.steering import experiment
from launch import common

_CONFIG = common.define_config()
_WORKDIR = flags.DEFINE_string("workdir", None, "Workspace root (exports/<run>/ is read).")
flags.mark_flags_as_required(["config", "workdir"])
_REPORT = ("import sys; from musicsae_jax.analysis import report; "
           "print(report.update_steering(sys.argv[1]))")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  with common.user_errors():
    res = experiment.run_steering(_CONFIG.value, _WORKDIR.value)
  print(res["path"])
  report = subprocess.run([sys.executable, "-c", _REPORT, os.path.dirname(res["path"])],
                          cwd=common.REPO_ROOT)
  if report.returncode:
    sys.exit(f"steer.json written, but adding it to report.html failed (exit {report.returncode})")


if __name__ == "__main__":
  common.run(main)
