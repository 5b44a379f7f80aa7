"""TorchSAE on raw activations == the JAX module on normalised ones (then / scale)."""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")

from bridge.models.sae_torch import TorchSAE  # noqa: E402
from musicsae_jax import export as ex  # noqa: E402
from tests import numerics  # noqa: E402
from musicsae_jax import sae as sae_lib  # noqa: E402
from tests.test_export import ARCHS, D, K, M, random_sae  # noqa: E402

TOL = 1e-5   # the value tolerance below, in training units


def _near_boundary(model, arch, xs):
  """[B, m]: latents within TOL of the rule that decides whether they fire."""
  p = {n: np.asarray(getattr(model, n)[...], np.float64) for n in ("W_enc", "b_enc", "b_dec")}
  pre = (np.asarray(xs, np.float64) - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
  tol = np.full(pre.shape, TOL)
  if arch == "topk":
    return numerics.topk_ambiguous(pre, K, tol)
  if arch == "relu":
    return np.abs(pre) <= tol
  theta = (np.exp(np.asarray(model.log_threshold[...], np.float64)) if arch == "jumprelu"
           else float(model.threshold[...]))
  return np.abs(pre - theta) <= tol


@pytest.mark.parametrize("arch", ARCHS)
def test_parity_with_jax(tmp_path, arch):
  model, cfg = random_sae(arch, seed=7)
  scale = 0.21                                   # raw activations ~5x the training scale
  ex.export_sae(ex.sae_params(model), cfg, site="lm.layer.1", layer=1, d=D, m=M, k=K,
                architecture=arch, scale=scale, out_dir=str(tmp_path))
  sae = TorchSAE.from_export(str(tmp_path))
  assert sae.architecture == arch and (sae.d, sae.m) == (D, M)

  x = np.random.default_rng(0).normal(0, 1.0 / scale, (128, D)).astype(np.float32)
  xs = jax.numpy.asarray(x * np.float32(scale))
  z_j = np.asarray(model.encode(xs)) / scale
  xhat_j = np.asarray(model.decode(model.encode(xs))) / scale

  with torch.no_grad():
    xhat_t, z_t = sae(torch.from_numpy(x))
    dec_t = sae.decode(torch.from_numpy(z_j.astype(np.float32)))
  np.testing.assert_allclose(z_t.numpy(), z_j, atol=1e-5, rtol=1e-5)
  # Same support, except where a latent's pre-activation lies within the values'
  # tolerance of its decision boundary (torch and XLA sum in different orders).
  numerics.assert_support_equal_except(z_t.numpy(), z_j, _near_boundary(model, arch, xs))
  np.testing.assert_allclose(xhat_t.numpy(), xhat_j, atol=1e-5 / scale, rtol=1e-5)
  np.testing.assert_allclose(dec_t.numpy(), xhat_j, atol=1e-5 / scale, rtol=1e-5)
  l0 = (z_j > 0).sum(-1)
  assert l0.mean() > 0 and (z_j == 0).any()                          # the test is not vacuous
  if arch == "topk":
    assert (l0 <= K).all()


def test_batched_shapes_and_direction(tmp_path):
  model, cfg = random_sae("topk")
  ex.export_sae(ex.sae_params(model), cfg, site="lm.layer.1", layer=1, d=D, m=M, k=K,
                architecture="topk", scale=1.0, out_dir=str(tmp_path))
  sae = TorchSAE.from_export(str(tmp_path))
  x = torch.randn(2, 5, D)
  assert sae.encode(x).shape == (2, 5, M) and sae(x)[0].shape == (2, 5, D)
  assert torch.allclose(sae.direction(3).norm(), torch.tensor(1.0))
  with pytest.raises(FileNotFoundError):
    TorchSAE.from_export(str(tmp_path / "nope"))


@pytest.mark.parametrize("arch", ["jumprelu", "batchtopk"])
@pytest.mark.parametrize("scale", [0.21, 0.25, 3.7])
def test_parity_exactly_at_the_threshold(tmp_path, arch, scale):
  """Inputs exactly at the exported threshold are off on both sides, the next float up
  is on on both: the boundary is decided alike (identity encoder, zero biases, so both
  pre-activations are exact)."""
  from flax import nnx
  n = 16
  model = sae_lib.make_sae(dict(architecture=arch, m=n, k=2), d=n, rngs=nnx.Rngs(0))
  eye = jax.numpy.eye(n, dtype=jax.numpy.float32)
  model.W_enc[...], model.W_dec[...] = eye, eye
  rng = np.random.default_rng(1)
  if arch == "jumprelu":
    model.log_threshold[...] = jax.numpy.asarray(rng.uniform(-3, 1, n), jax.numpy.float32)
  else:
    model.threshold[...] = jax.numpy.float32(0.7)
  ex.export_sae(ex.sae_params(model), None, site="lm.layer.1", layer=1, d=n, m=n, k=2,
                architecture=arch, scale=scale, out_dir=str(tmp_path))
  sae = TorchSAE.from_export(str(tmp_path))
  thr = sae.threshold.numpy()
  at = np.tile(thr, (3, 1)).astype(np.float32)
  at[1] = np.nextafter(at[1], np.float32(np.inf))       # one float above: fires
  at[2] = np.nextafter(at[2], np.float32(-np.inf))      # one float below: off
  z_j = np.asarray(model.encode(jax.numpy.asarray(at * np.float32(scale)))) / scale
  with torch.no_grad():
    z_t = sae.encode(torch.from_numpy(at)).numpy()
  assert not z_t[0].any() and z_t[1].all() and not z_t[2].any()
  np.testing.assert_array_equal(z_t != 0, z_j != 0)
  np.testing.assert_allclose(z_t, z_j, rtol=1e-6, atol=0)
