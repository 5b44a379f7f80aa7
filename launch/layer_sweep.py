"""Which layer for which concept: one SAE per layer, fidelity and probes, one table.

    python -m launch.layer_sweep --workdir=W [--config=configs/tiny.py] --layers=1,2,3
        [--kinds=resid,attn,cross_attn] [--config.train.steps=300 ...]

Extracts every chosen site once into `activations/<dataset>-layers/` (teacher-forced
capture), then per site runs the ordinary stages as `<run>-<site>` runs (train, analyze,
export, `launch.localize --what=fidelity`) and writes `reports/<run>-layers/
layer_sweep.json` + `layer_sweep.md`: per site FVU, L0, loss recovered and probe accuracy
per label (SAE latents / raw activations), and the best site per label
(musicsae_jax/analysis/layer_table.py). Each stage is a fresh process as in launch.demo;
rerunning resumes (extraction skips done prompts, training resumes).
"""
import os
import shlex
import subprocess
import sys
import time

from absl import app, flags

from launch import common

STAGES = ("extract", "train", "analyze", "export", "localize", "table")
KINDS = {"resid": "", "attn": ".attn", "cross_attn": ".cross_attn"}

_CONFIG = flags.DEFINE_string("config", "configs/tiny.py", "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workspace root.")
_LAYERS = flags.DEFINE_list("layers", None, "LM layers to compare, e.g. 1,2,3.")
_KINDS = flags.DEFINE_list("kinds", ["resid"], f"Sites per layer, from {tuple(KINDS)}.")
_STAGES = flags.DEFINE_list("stages", list(STAGES), f"Stages to run, from {STAGES}.")
flags.mark_flags_as_required(["workdir", "layers"])


def slug(site: str) -> str:
  """'lm.layer.3' -> 'l3', 'lm.layer.3.cross_attn' -> 'l3-cross_attn'."""
  rest = site.removeprefix("lm.layer.")
  i, _, kind = rest.partition(".")
  return f"l{i}" + (f"-{kind}" if kind else "")


def _config_value(config: str, field: str) -> str:
  """A field of the config file (config files load neither torch nor JAX)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("_layer_sweep_config", config.split(":", 1)[0])
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return str(mod.get_config()[field])


def main(argv):
  overrides = [a for a in argv[1:] if a.startswith("--config.")]
  extra = [a for a in argv[1:] if not a.startswith("--config.")]
  if extra:
    raise app.UsageError(f"unexpected arguments: {extra}")
  try:
    layers = [int(i) for i in _LAYERS.value]
  except ValueError as e:
    raise app.UsageError(f"--layers must be comma-separated ints: {e}") from e
  bad = [k for k in _KINDS.value if k not in KINDS] + [s for s in _STAGES.value if s not in STAGES]
  if bad:
    raise app.UsageError(f"unknown --kinds/--stages {bad}; kinds {tuple(KINDS)}, stages {STAGES}")
  config = os.path.abspath(common.resolve_config_path(_CONFIG.value))
  if not os.path.exists(config.split(":", 1)[0]):
    raise app.UsageError(f"--config={_CONFIG.value}: no such file")
  workdir = os.path.abspath(_WORKDIR.value)
  ov = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in overrides if "=" in a}
  run = ov.get("--config.run") or _config_value(config, "run")
  dataset = (ov.get("--config.dataset") or _config_value(config, "dataset")) + "-layers"
  sites = [f"lm.layer.{i}{KINDS[k]}" for i in layers for k in _KINDS.value]
  rest = [a for a in overrides if not a.startswith(("--config.run=", "--config.dataset="))]
  base = [f"--config={config}", f"--workdir={workdir}", f"--config.dataset={dataset}"]
  site_tuple = "(" + ",".join(repr(s) for s in sites + ["audio.descriptors"]) + ",)"
  plan = []
  if "extract" in _STAGES.value:
    plan.append(("extract", ["launch.extract"] + base + rest + [
        f"--config.extract.sites={site_tuple}", "--config.extract.capture=teacher_forced"]))
  for s in sites:
    r = [f"--config.run={run}-{slug(s)}", f"--config.train.site={s}"]
    for stage, mod, flags_ in (("train", "launch.train", []), ("analyze", "launch.analyze", []),
                               ("export", "launch.export", []),
                               ("localize", "launch.localize", ["--what=fidelity"])):
      if stage in _STAGES.value:
        plan.append((f"{stage} {s}", [mod] + base + rest + r + flags_))
  t0 = time.time()
  for i, (name, cmd) in enumerate(plan, 1):
    cmd = [sys.executable, "-m"] + cmd
    print(f"\n=== [{i}/{len(plan)}] {name}: python {shlex.join(cmd[1:])}", flush=True)
    if subprocess.run(cmd, cwd=common.REPO_ROOT).returncode:
      sys.exit(f"=== {name} failed; fix and rerun the same command (finished stages resume)")
  if "table" in _STAGES.value:
    from musicsae_jax.analysis import layer_table
    pj, pm = layer_table.write(workdir, f"{run}-layers", [(s, f"{run}-{slug(s)}") for s in sites])
    with open(pm) as f:
      print("\n" + f.read())
    print(f"{pj}\n{pm}")
  print(f"layer sweep finished in {time.time() - t0:.0f} s")


if __name__ == "__main__":
  common.run(main, known_only=True)
