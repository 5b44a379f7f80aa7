"""The model organism end to end: `python -m launch.organism --workdir=W` (`make organism`).

Stages, each its own launch script in a fresh process (torch and JAX never share one),
each printed with the command that reruns it alone:
  organism       launch.make_organism   W/concepts/ (rendered), W/organism/ (+ organism.json)
  extract        launch.extract         the concept clips through the organism, no text
  train          launch.train           a TopK SAE on c.train.site
  layer_saes     launch.layer_saes      the same SAE on every lm.layer site (<run>-l<i>), per init seed (-s<j>)
  probe_layers   launch.probe_layers    concepts across layers (probes_by_layer.json)
  localize       launch.localize        patching of concept-clip pairs (patching.json)
  scorecard      launch.scorecard       W/reports/<run>/scorecard.json + report section
  export         launch.export          the SAE for torch (W/exports/<run>/)
  steer          launch.organism_steer  steer with every passing latent, score in token space
                                        (W/reports/<run>/steering_tokens.json)
  steer_report   launch.scorecard --steering_only   that table into scorecard.json + report
Steering alone on a finished workdir: --stages=export,steer,steer_report.
`--config.model.name` and `--config.extract.audio.dataset` are set to W/organism and
folder:W/concepts for every stage; other `--config.*` overrides pass through. A stage that
is done (organism.json, a complete store, a trained run) is skipped or resumed.
"""
import os
import sys

from absl import flags

from launch import common

STAGES = ("organism", "extract", "train", "layer_saes", "probe_layers", "localize", "scorecard",
          "export", "steer", "steer_report")
_SCRIPTS = {"organism": "make_organism", "steer": "organism_steer", "steer_report": "scorecard"}
_FLAGS = {"steer_report": ["--steering_only"]}

_CONFIG = flags.DEFINE_string("config", "configs/organism.py", "Organism config file.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/musicsae-organism", "Workspace root.")
_STAGES = flags.DEFINE_list("stages", list(STAGES), f"Stages to run, in order, from {STAGES}.")


def stage_command(stage: str, config: str, workdir: str, overrides: list[str]) -> list[str]:
  cmd = [sys.executable, "-m", f"launch.{_SCRIPTS.get(stage, stage)}", f"--config={config}",
         f"--workdir={workdir}"]
  if stage != "organism":
    cmd += [f"--config.model.name={os.path.join(workdir, 'organism')}",
            f"--config.extract.audio.dataset=folder:{os.path.join(workdir, 'concepts')}"]
  if stage == "localize":
    cmd += ["--what=patching",
            f"--config.localize.pairs_from=folder:{os.path.join(workdir, 'concepts')}"]
  return cmd + _FLAGS.get(stage, []) + overrides


def main(argv):
  overrides, config = common.chain_args(argv, _STAGES.value, STAGES, _CONFIG.value)
  workdir = os.path.abspath(_WORKDIR.value)
  os.makedirs(workdir, exist_ok=True)

  def skipped(stage):
    if stage == "organism" and os.path.exists(os.path.join(workdir, "organism", "organism.json")):
      return (f"{workdir}/organism exists, skipped (--config.organism.overwrite=True with "
              f"--stages=organism trains it again)")
    return None

  seconds = common.run_chain(
      [(s, stage_command(s, config, workdir, overrides)) for s in _STAGES.value], skipped=skipped)
  print(f"\nOrganism chain finished in {seconds:.0f} s. Scorecard: "
        f"{workdir}/reports/<run>/scorecard.json")


if __name__ == "__main__":
  common.run(main, known_only=True)
