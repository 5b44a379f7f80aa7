"""The notebooks under examples/ run top to bottom (tiny sizes), so they cannot rot.

Needs the test extra (nbclient, nbformat, ipykernel); skipped without it.
"""
import os

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat not installed (pip install -e '.[test]')")
nbclient = pytest.importorskip("nbclient", reason="nbclient not installed (pip install -e '.[test]')")
pytest.importorskip("ipykernel", reason="ipykernel not installed (pip install -e '.[test]')")
pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_load_sae_notebook_runs(tmp_path, monkeypatch):
  monkeypatch.setenv("PYTHONPATH", ROOT)          # the kernel imports this checkout
  monkeypatch.setenv("MUSICSAE_EXAMPLE_WORKDIR", str(tmp_path))
  monkeypatch.setenv("MUSICSAE_EXAMPLE_STEPS", "20")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "1")
  nb = nbformat.read(os.path.join(ROOT, "examples", "load_sae.ipynb"), as_version=4)
  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": ROOT}}).execute()
  out = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  assert "max |z_torch - z_jax|" in out and "raw units" in out
  assert (tmp_path / "exports" / "synthetic_tiny" / "sae_weights.safetensors").exists()
