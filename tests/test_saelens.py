"""Exports load in SAELens itself (`SAE.load_from_disk`) and compute what TorchSAE computes.

Needs the test extra (`pip install -e .[test]`: sae-lens pinned); skipped without it.
"""
import json

import numpy as np
import pytest

sae_lens = pytest.importorskip("sae_lens", reason="sae-lens not installed (pip install -e '.[test]')")
torch = pytest.importorskip("torch")

from bridge.models.sae_torch import TorchSAE  # noqa: E402
from musicsae_jax import export as ex  # noqa: E402

D, M, K = 24, 96, 6
SAELENS_VERSION = "6.54.12"          # the version pinned in pyproject.toml's test extra


def training_params(arch: str, seed: int = 0) -> dict:
  """Training-space arrays as export.sae_params returns them (numpy only, no JAX)."""
  rng = np.random.default_rng(seed)
  w_dec = rng.normal(size=(M, D)).astype(np.float32)
  w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
  p = {"W_enc": np.ascontiguousarray(w_dec.T * 1.3), "W_dec": w_dec,
       "b_enc": rng.normal(0, 0.1, M).astype(np.float32),
       "b_dec": rng.normal(0, 0.2, D).astype(np.float32)}
  if arch == "jumprelu":
    p["log_threshold"] = np.log(rng.uniform(0.2, 0.8, M)).astype(np.float32)
  if arch in ("batchtopk", "matryoshka"):
    p["threshold"] = np.float32(0.6)
  return p


@pytest.mark.parametrize("arch", ex.ARCHITECTURES)
def test_saelens_loads_every_architecture_and_matches_torch_sae(tmp_path, arch):
  scale = 0.37                       # raw activations are ~3x the training scale
  ex.export_sae(training_params(arch), {"architecture": arch}, site="lm.layer.3", layer=3,
                d=D, m=M, k=K, architecture=arch, scale=scale, out_dir=str(tmp_path))
  assert sae_lens.__version__ == SAELENS_VERSION
  sl = sae_lens.SAE.load_from_disk(str(tmp_path))
  ours = TorchSAE.from_export(str(tmp_path))
  cfg = json.load(open(tmp_path / "cfg.json"))
  assert sl.cfg.metadata.hook_name == cfg["hook_name"] == "transformer.layers.3"
  assert cfg["musicsae"]["site"] == "lm.layer.3"
  assert (sl.cfg.d_in, sl.cfg.d_sae) == (D, M)

  x = torch.from_numpy(np.random.default_rng(1).normal(0, 1 / scale, (256, D)).astype(np.float32))
  with torch.no_grad():
    z_sl, z_ours = sl.encode(x), ours.encode(x)
    xhat_sl, xhat_ours = sl.decode(z_sl), ours.decode(z_ours)
  assert 0 < (z_ours > 0).float().mean() < 1                  # not vacuous
  # Same float32 ops in the same order: equal bit for bit.
  torch.testing.assert_close(z_sl, z_ours, rtol=0, atol=0)
  torch.testing.assert_close(xhat_sl, xhat_ours, rtol=0, atol=0)
