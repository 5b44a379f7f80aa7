"""`musicsae_jax.load_sae` / `bridge.load_sae` take RAW activations, from a run or an export."""
import numpy as np
import pytest

import musicsae_jax
from musicsae_jax import export, train
from tests.test_train import _cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("load"))
  train.train_and_evaluate(_cfg(num_devices=1), wd)
  return wd, export.export_run(wd, "synthetic_tiny")


def test_run_and_export_load_the_same_raw_unit_sae(trained):
  wd, exp = trained
  run_dir = f"{wd}/runs/synthetic_tiny"
  from_run, from_export = musicsae_jax.load_sae(run_dir), musicsae_jax.load_sae(exp)
  model, info = train.load_run(run_dir, best=True)
  assert from_run.info["units"] == "raw" and from_run.info["scale"] == info["scale"] != 1.0
  x = np.random.default_rng(0).normal(size=(64, from_run.info["d"])).astype(np.float32)
  x /= info["scale"]                                   # raw activations of the training data
  z_run, z_exp = np.asarray(from_run.encode(x)), np.asarray(from_export.encode(x))
  np.testing.assert_array_equal(z_run, z_exp)          # the same float32 tensors either way
  # Against the training-space model fed scaled inputs: folding reorders float32 ops,
  # so allow float32 rounding (|z| ~ 1).
  z_train = np.asarray(model.encode(x * info["scale"])) / info["scale"]
  np.testing.assert_allclose(z_run, z_train, atol=1e-5, rtol=1e-5)
  assert (z_run > 0).any()
  x_hat = np.asarray(from_run.decode(z_run))
  np.testing.assert_allclose(x_hat, np.asarray(model.decode(model.encode(x * info["scale"])))
                             / info["scale"], atol=1e-5, rtol=1e-4)


def test_bridge_load_sae_matches_jax(trained):
  torch = pytest.importorskip("torch")
  import bridge
  _, exp = trained
  jsae = musicsae_jax.load_sae(exp)
  x = np.random.default_rng(1).normal(size=(32, jsae.info["d"])).astype(np.float32)
  with torch.no_grad():
    z_t = bridge.load_sae(exp).encode(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(z_t, np.asarray(jsae.encode(x)),
                             atol=1e-5, rtol=1e-5)      # two frameworks' float32 matmuls


def test_neither_run_nor_export_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither a run directory"):
    musicsae_jax.load_sae(str(tmp_path))
