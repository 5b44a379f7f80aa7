"""Every shipped config loads, resolves against each stage's defaults, and is self-consistent."""
import glob
import importlib.util
import os

import pytest

from bridge import capture
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
    sites = capture.parse_sites([s for s in c.extract.sites if s != "audio.descriptors"],
                                num_layers)                           # layers in range
    assert t.site in sites, f"train.site {t.site} is not extracted"
    assert c.sae.d == d
  d = c.sae.get("d") or 64
  cfg = sae.resolve_config({k: v for k, v in c.sae.items() if k != "d"}, d)
  assert 1 <= cfg["k"] < cfg["m"]
