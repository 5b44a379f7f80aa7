"""Control directions for add steering: decoder rows, covariance samples, Gaussian, all of
the features' norm; the kinds are checked and `decoder` without an SAE falls back."""
import numpy as np
import pytest
import torch

from bridge.steering import controls


def test_decoder_rows_exclude_the_steered_features_and_keep_the_norm():
  W = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
  v, rows = controls.decoder(10, W, [3, 4], 2.5, torch.Generator().manual_seed(1))
  assert len(set(rows)) == 10 and not {3, 4} & set(rows)
  assert torch.allclose(v.norm(dim=1), torch.full((10,), 2.5))
  ref = W[rows] / W[rows].norm(dim=1, keepdim=True) * 2.5          # same rows, rescaled
  assert torch.allclose(v, ref, atol=1e-6)
  with pytest.raises(ValueError, match="--config.steer.controls=30"):
    controls.decoder(30, W, [3], 1.0, torch.Generator())


def test_covariance_directions_follow_the_activations():
  """Activations that vary along one axis (sd 10) and little elsewhere (sd 0.1): sampled
  directions lie along that axis, as N(0, Σ) predicts: cos² = a² / (a² + r²) with a² of
  scale 100 and r² of scale 0.01 (d - 1), so the median is near 1."""
  rng = np.random.default_rng(0)
  d, axis = 16, 5
  x = rng.normal(0, 0.1, (400, d)) + 3.0                            # an offset: centred away
  x[:, axis] += rng.normal(0, 10.0, 400)
  v = controls.covariance(64, torch.tensor(x, dtype=torch.float32), 1.5,
                                torch.Generator().manual_seed(0))
  assert torch.allclose(v.norm(dim=1), torch.full((64,), 1.5), atol=1e-5)
  cos2 = (v[:, axis] / 1.5) ** 2
  assert float(cos2.median()) > 0.98 and float(cos2.mean()) > 0.9
  g = controls.gaussian(64, d, 1.5, torch.Generator().manual_seed(0))
  assert float(((g[:, axis] / 1.5) ** 2).median()) < 0.2              # isotropic: about 1/d


def test_kinds_are_checked_and_decoder_falls_back_to_covariance():
  assert controls.check_kinds(("decoder", "gaussian")) == ["decoder", "gaussian"]
  for bad in (("decoder", "decoder"), ("pca",), ()):
    with pytest.raises(ValueError, match="--config.steer.control_kinds"):
      controls.check_kinds(bad)
  assert controls.resolve(["decoder", "gaussian"], has_decoder=True) == [
      ("decoder", "decoder"), ("gaussian", "gaussian")]
  assert controls.resolve(["decoder", "covariance"], has_decoder=False) == [
      ("decoder", "covariance")]                                      # listed once
