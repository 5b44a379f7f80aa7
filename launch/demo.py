"""The offline end-to-end demo: extract -> train -> analyze -> export -> steer.

    python -m launch.demo --workdir=/tmp/musicsae-demo [--config=configs/tiny.py]
        [--stages=extract,train,analyze,export,steer] [--config.train.steps=300 ...]
    python -m launch.demo --workdir=/tmp/musicsae-demo --stages=localize   # after the above

Each stage is its own launch script run in a fresh process with the same config file,
workdir and `--config.*` overrides, so the torch side and the JAX side never share a
process (the layering on disk is the contract) and every stage can be rerun alone with
the command this script prints. Rerunning the demo after a crash continues where it
stopped: extraction skips completed prompts, training resumes from its checkpoint.
"""
import os
import sys

from absl import flags

from launch import common

STAGES = ("extract", "train", "analyze", "export", "steer", "localize")
DEFAULT_STAGES = STAGES[:5]     # localize (fidelity, ablation, patching) on request
DEMO_STEER_METHODS = "add,set"

_CONFIG = flags.DEFINE_string("config", "configs/tiny.py", "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/musicsae-demo", "Workspace root.")
_STAGES = flags.DEFINE_list("stages", list(DEFAULT_STAGES),
                            f"Stages to run, in order, from {STAGES}.")
_FEATURES_PER_LABEL = flags.DEFINE_integer(
    "features_per_label", 1, "Top features per label value exported as steering directions.")


def stage_command(stage: str, config: str, workdir: str, overrides: list[str]) -> list[str]:
  cmd = [sys.executable, "-m", f"launch.{stage}", f"--config={config}", f"--workdir={workdir}"]
  if stage == "export":
    # The tiny model is random: its label features do not pass the held-out null, so the
    # demo exports them anyway (each logged as a WARNING) to exercise steering.
    cmd += [f"--from_selectivity={_FEATURES_PER_LABEL.value}", "--allow_failing=1"]
  if stage == "steer":
    # Two methods side by side on one baseline: add, and set through the SAE (its strengths
    # and controls: steer.per_method.set in the config). A later override wins.
    cmd += [f"--config.steer.method={DEMO_STEER_METHODS}"]
  return cmd + overrides


def main(argv):
  # absl has parsed the flags it knows; `--config.x=y` overrides pass through to the stages.
  overrides, config = common.chain_args(argv, _STAGES.value, STAGES, _CONFIG.value)
  workdir = os.path.abspath(_WORKDIR.value)
  os.makedirs(workdir, exist_ok=True)
  seconds = common.run_chain(
      [(s, stage_command(s, config, workdir, overrides)) for s in _STAGES.value],
      on_failure="; fix and rerun the demo: finished stages resume or are skipped")
  print(f"\nDemo finished in {seconds:.0f} s. Workspace: {workdir}")
  for name in ("activations", "runs", "exports", "reports"):
    path = os.path.join(workdir, name)
    if os.path.isdir(path):
      print(f"  {name + '/':13s} {', '.join(sorted(os.listdir(path)))}")
  report = os.path.join(workdir, "reports")
  for root, _, files in os.walk(report):
    for f in files:
      if f == "report.html":
        print(f"  open the report: {os.path.join(root, f)}")
      if f == "index.html" and os.path.basename(root) == "browser":
        print(f"  open the feature browser: {os.path.join(root, f)}")


if __name__ == "__main__":
  common.run(main, known_only=True)
