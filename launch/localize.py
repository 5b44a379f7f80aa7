"""Where does a concept live? Downstream fidelity, layer ablation and activation patching.

    python -m launch.localize --config=configs/tiny.py --workdir=DIR \
        [--what=fidelity,ablation,patching] [--config.localize.layers=1,3 ...]

Reads `exports/<run>/` (the SAE: fidelity, SAE-feature patching), writes
`reports/<run>/fidelity.json`, `ablation.json` + `ablation.png`, `patching.json` +
`patching.png` (bridge/localize/stage.py), then adds their sections to `report.html` in a
separate process (the report code is on the JAX side; this process holds torch).
For a sweep (`runs/<run>/sweep.json`), fidelity is measured for every exported member
(`reports/<run>/<member>/fidelity.json`, compared in `reports/<run>/fidelity_members.json`).
"""
import os
import subprocess
import sys

from absl import app, flags

from launch import common

_CONFIG = common.define_config()
_WORKDIR = flags.DEFINE_string("workdir", None, "Workspace root (exports/<run>/ is read).")
_WHAT = flags.DEFINE_list("what", ["fidelity", "ablation", "patching"],
                          "Studies to run: fidelity, ablation, patching.")
flags.mark_flags_as_required(["config", "workdir"])
_REPORT = ("import sys; from musicsae_jax.analysis import localize_report; "
           "print(localize_report.update(sys.argv[1]))")


def fidelity_headline(path: str) -> str:
  """'fidelity: FVU 0.08, L0 31.9, loss recovered 0.94 (cond half)' from fidelity.json."""
  import json
  from musicsae_jax import summary
  with open(path) as f:
    halves = json.load(f).get("halves", {})
  parts = [f"FVU {summary.number(h.get('fvu'))}, L0 {summary.number(h.get('l0'))}, loss "
           f"recovered {summary.number(h.get('loss_recovered_mean'))} ({name} half)"
           for name, h in halves.items()]
  return "fidelity: " + ("; ".join(parts) or "no halves measured")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from bridge.localize import stage
  with common.user_errors():
    written = stage.run_localize(_CONFIG.value, _WORKDIR.value, _WHAT.value)
  for name, path in written.items():
    print(f"{name}: {path}")
  if "fidelity" in written:
    print(fidelity_headline(written["fidelity"]))
  dirs = sorted({os.path.dirname(p) for k, p in written.items() if k != "fidelity_members"})
  for report_dir in dirs:            # the run's folder, and each sweep member's
    report = subprocess.run([sys.executable, "-c", _REPORT, report_dir], cwd=common.REPO_ROOT)
    if report.returncode:
      sys.exit(f"results written, but adding them to {report_dir}/report.html failed "
               f"(exit {report.returncode})")


if __name__ == "__main__":
  common.run(main)
