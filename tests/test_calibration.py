"""Data-set thresholds: the exact L0 quantile, and the deployed sparsity of short runs.

BatchTopK/Matryoshka deployed (threshold) L0 must be within ±10% of k and JumpReLU's
within ±20% of target_l0 on held-out rows; the runs are tiny toy-data runs (seconds).
"""
import numpy as np
import pytest

from configs import synthetic_tiny
from musicsae_jax import calibration, train


def _cands(a):
  """Reference candidates(kr): each row's kr largest ReLU'd values, sorted."""
  return lambda kr: -np.sort(-np.maximum(a, 0), axis=1)[:, :kr]


def test_threshold_for_l0_is_exact():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(300, 200))
  a[:5] += 4.0                      # outlier rows hold far more than 4·l0 of the winners
  for l0 in (1, 5, 12.5):
    seen = []

    def cands(kr):
      seen.append(kr)
      return _cands(a)(kr)

    tau = calibration.threshold_for_l0(cands, l0, a.shape[1])
    assert np.mean(np.sum(a > tau, axis=1)) == pytest.approx(l0, abs=0.5 / len(a))
    v = np.sort(np.maximum(a, 0).ravel())[::-1]
    n = int(round(len(a) * l0))
    assert v[n] < tau < v[n - 1]                          # strictly between neighbours
    assert len(seen) > 1                                  # the outliers forced a wider look
  # fewer positive values than asked for: θ = 0 keeps every positive one
  b = -np.abs(rng.normal(size=(50, 40)))
  b[:, 0] = 1.0
  assert calibration.threshold_for_l0(_cands(b), 3, 40) == 0.0


def _cfg(arch, steps=120, **sae):
  c = synthetic_tiny.get_config()
  c.run = arch
  c.sae.architecture = arch
  c.sae.m, c.sae.k, c.sae.k_aux = 128, 6, 16
  c.sae.update(sae)
  c.train.synthetic.update(d=32, m_true=96, n=8192, avg_active=8.0, magnitude="exponential",
                           noise=0.05, rows_per_prompt=32, chunk_rows=512)
  c.train.update(steps=steps, batch_size=256, lr=3e-3, warmup_steps=10, log_every=20,
                 eval_every=60, checkpoint_every=steps, eval_batch_size=1024, plots=False,
                 dead_tokens=4096, norm_samples=2048)
  return c


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_deployed_l0_is_k(tmp_path, arch):
  final = train.train_and_evaluate(_cfg(arch), str(tmp_path))
  assert final["eval_l0"] == pytest.approx(6, rel=0.10), final


def test_jumprelu_lands_on_target_l0(tmp_path):
  final = train.train_and_evaluate(_cfg("jumprelu", steps=200, target_l0=10), str(tmp_path))
  assert final["eval_l0"] == pytest.approx(10, rel=0.20), final
  assert final["eval_fvu"] < 0.5, final                 # sparse, and still reconstructs
