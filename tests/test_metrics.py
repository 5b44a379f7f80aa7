"""Metric formulas against direct numpy computations, and pooled vs per-batch FVU."""
import numpy as np
import pytest

from musicsae_jax import metrics


def _data(seed=0, n=600, d=12):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.2, 3, d) + 5.0  # large mean, like residuals
    x_hat = x + rng.normal(scale=0.5, size=x.shape)
    return x.astype(np.float32), x_hat.astype(np.float32)


def test_fvu_and_ev_against_data_mean():
    x, x_hat = _data()
    x64, xh64 = x.astype(np.float64), x_hat.astype(np.float64)
    ref = np.sum((x64 - xh64) ** 2) / np.sum((x64 - x64.mean(0)) ** 2)
    assert metrics.fvu(x, x_hat) == pytest.approx(ref, rel=1e-9)
    assert metrics.explained_variance(x, x_hat) == pytest.approx(1 - ref, rel=1e-9)
    # against zero instead of the mean the number would look far better: guard the pitfall
    against_zero = np.sum((x64 - xh64) ** 2) / np.sum(x64 ** 2)
    assert against_zero < 0.5 * ref
    mu = np.zeros(x.shape[1])
    assert metrics.fvu(x, x_hat, mean=mu) == pytest.approx(against_zero, rel=1e-9)


def test_pooled_fvu_equals_all_at_once_not_batch_average():
    x, x_hat = _data()
    acc = metrics.PooledFVU()
    per_batch = []
    for lo, hi in [(0, 50), (50, 250), (250, 260), (260, 600)]:  # uneven batches
        acc.update(x[lo:hi], x_hat[lo:hi])
        per_batch.append(metrics.fvu(x[lo:hi], x_hat[lo:hi]))
    whole = metrics.fvu(x, x_hat)
    assert acc.n == 600
    assert acc.fvu() == pytest.approx(whole, rel=1e-6)
    assert acc.explained_variance() == pytest.approx(1 - whole, rel=1e-6)
    assert abs(np.mean(per_batch) - whole) > 1e-3  # the per-batch average really differs
    with pytest.raises(ValueError):
        metrics.PooledFVU().fvu()


def test_sparsity_metrics():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 20)) * (rng.random((50, 20)) < 0.2)
    z[:, 3] = 0.0  # a dead latent
    z[:, 7] = 1.0  # a dense latent
    assert metrics.l0(z) == pytest.approx(np.count_nonzero(z) / 50)
    counts = metrics.firing_counts(z)
    np.testing.assert_array_equal(counts, (z != 0).sum(0))
    assert counts[3] == 0 and counts[7] == 50
    assert metrics.dead_fraction(counts) == pytest.approx(np.mean(counts == 0))
    since = np.array([0, 10, 99, 100, 5000])
    assert metrics.dead_fraction(since, dead_after=100) == pytest.approx(2 / 5)
    freq = metrics.feature_density(counts, 50)
    np.testing.assert_allclose(freq, counts / 50)
    assert metrics.dense_fraction(freq, 0.5) == pytest.approx(np.mean(counts / 50 > 0.5))
    assert metrics.dense_fraction(freq, 0.5) >= 1 / 20
    with pytest.raises(ValueError):
        metrics.feature_density(counts, 0)
