"""The import rules of the design: musicsae_jax/ never imports torch, bridge/ never imports
JAX, and the store loads with numpy + tensorstore only (the bridge writes through it)."""
import glob
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loaded_after(code: str) -> set[str]:
  out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sys.modules))"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
  return set(out.split())


def test_store_needs_neither_jax_nor_torch():
  mods = loaded_after("import musicsae_jax, musicsae_jax.store")
  assert "jax" not in mods and "torch" not in mods and "flax" not in mods


def test_bridge_never_loads_jax():
  names = [os.path.relpath(p, ROOT)[:-3].replace(os.sep, ".")
           for p in glob.glob(f"{ROOT}/bridge/**/*.py", recursive=True)]
  mods = loaded_after("; ".join(f"import {n}" for n in names if not n.endswith("__init__")))
  assert "torch" in mods and not {"jax", "flax", "optax"} & mods


def test_no_forbidden_import_statements():
  rule = {"musicsae_jax": r"^\s*(import torch|from torch)\b",
          "bridge": r"^\s*(import|from) (jax|flax|optax)\b"}
  for room, pattern in rule.items():
    for path in glob.glob(f"{ROOT}/{room}/**/*.py", recursive=True):
      for n, line in enumerate(open(path), 1):
        assert not re.match(pattern, line), f"{path}:{n}: {line.strip()}"
