"""Every shipped config loads, resolves against each stage's defaults, and is self-consistent."""
import glob
import importlib.util
import os
import subprocess
import sys

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from bridge.models import capture_sites
from musicsae_jax import sae, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                     if not os.path.basename(p).startswith("_"))
LAYERS = {"facebook/musicgen-small": (24, 1024), "facebook/musicgen-medium": (48, 1536),
          "facebook/musicgen-large": (48, 2048)}


def load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_config_resolves(path):
  c = load(path)
  t = train.resolve_train_config(c.train)          # unknown train fields raise
  if "model" in c and c.model.name in LAYERS:
    num_layers, d = LAYERS[c.model.name]
    sites = capture_sites.parse_sites([s for s in c.extract.sites if s != "audio.descriptors"],
                                num_layers)                           # layers in range
    assert t.site in sites, f"train.site {t.site} is not extracted"
    assert c.sae.d == d
  d = c.sae.get("d") or 64
  cfg = sae.resolve_config({k: v for k, v in c.sae.items() if k != "d"}, d)
  assert 1 <= cfg["k"] < cfg["m"]


# --- every default is overridable from the command line ---------------------------------

def leaves(cfg, prefix=""):
  """(dotted name, declared type, value) for every leaf field of a ConfigDict."""
  for k in sorted(cfg.keys()):
    v = cfg[k]
    if isinstance(v, ml_collections.ConfigDict):
      yield from leaves(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", cfg.get_ref(k).get_type(), v


def another_value(kind, value):
  """(flag text, the value it must parse to): a valid value different from `value`."""
  if kind is bool:
    return str(not value), not value
  if kind is int:
    return str((value or 0) + 7), (value or 0) + 7
  if kind is float:
    return "0.375", 0.375
  if kind is str:
    return "other", "other"
  if kind is tuple:
    return "(3, 5)", (3, 5)
  raise AssertionError(f"no override value for type {kind}")


FIELDS = [(os.path.basename(p), name, kind, value) for p in EXPERIMENTS
          for name, kind, value in leaves(load(p))]


def parse(args):
  """The config the launch scripts would get from these command-line arguments."""
  argv = ["prog", *args]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  return fv.config


def test_every_stage_section_is_present():
  for path in EXPERIMENTS:
    c = load(path)
    assert {"model", "extract", "sae", "train", "analysis", "steer"} <= set(c.keys()), path


@pytest.mark.filterwarnings("ignore:the load_module")
@pytest.mark.parametrize("file,name,kind,value", FIELDS,
                         ids=[f"{f}:{n}" for f, n, _, _ in FIELDS])
def test_every_field_is_overridable(file, name, kind, value):
  text, want = another_value(kind, value)
  got = parse([f"--config={os.path.join(ROOT, 'configs', file)}", f"--config.{name}={text}"])
  for part in name.split("."):
    got = got[part]
  assert got == want and got != value


def test_issue_overrides_parse_on_the_demo_config():
  c = parse([f"--config={ROOT}/configs/tiny.py", "--config.train.decay=constant",
             "--config.train.grad_clip=0.5", "--config.sae.l1_coeff=3",
             "--config.steer.features=3,7", "--config.train.mesh_model=2", "--config.sae.m=1024"])
  assert (c.train.decay, c.train.grad_clip, c.sae.l1_coeff) == ("constant", 0.5, 3.0)
  assert (c.steer.features, c.train.mesh_model, c.sae.m) == ((3, 7), 2, 1024)
  t = train.resolve_train_config(c.train)
  assert t.decay == "constant" and t.mesh_model == 2


def test_launch_config_prints_the_resolved_config_from_any_directory(tmp_path):
  r = subprocess.run([sys.executable, "-m", "launch.config", "--config=configs/tiny.py",
                      "--config.train.decay=constant"], cwd=tmp_path, capture_output=True,
                     text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  assert "train.decay = 'constant'" in lines and "train.grad_clip = 1.0" in lines
  assert "sae.l1_coeff = 2.0" in lines and "steer.features = None" in lines
