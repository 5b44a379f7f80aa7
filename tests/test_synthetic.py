"""Toy superposition data: shapes, the ground truth it claims, and the recovery score."""
import numpy as np
import pytest

from musicsae_jax import synthetic


def test_make_toy_shapes_and_ground_truth():
    x, dirs, codes = synthetic.make_toy(16, 40, 5000, avg_active=4.0, seed=3)
    assert x.shape == (5000, 16) and x.dtype == np.float32
    assert dirs.shape == (40, 16) and codes.shape == (5000, 40)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(x, codes @ dirs, rtol=1e-5, atol=1e-5)
    assert np.all(codes >= 0)
    assert np.mean((codes > 0).sum(1)) == pytest.approx(4.0, rel=0.05)
    on = codes[codes > 0]
    assert 0.5 <= on.min() and on.max() <= 1.5
    x2, dirs2, _ = synthetic.make_toy(16, 40, 5000, avg_active=4.0, seed=3)
    np.testing.assert_array_equal(x, x2)  # seeded


def test_correlated_and_magnitudes_and_errors():
    _, _, codes = synthetic.make_toy(8, 20, 20000, avg_active=2.0, correlated=True, seed=0)
    on = codes > 0
    both = np.mean(on[:, 0] & on[:, 1]) / np.mean(on[:, 0])
    assert both > 0.3  # partners co-fire far above independent (~0.1)
    _, _, c = synthetic.make_toy(8, 20, 1000, magnitude="constant")
    assert set(np.unique(c)) == {0.0, 1.0}
    with pytest.raises(ValueError, match="magnitude"):
        synthetic.make_toy(8, 20, 10, magnitude="cauchy")
    with pytest.raises(ValueError, match="avg_active"):
        synthetic.make_toy(8, 20, 10, avg_active=0)


def test_batches_share_the_directions():
    _, dirs, _ = synthetic.make_toy(16, 6, 10, seed=7)
    it = synthetic.toy_batches(16, 6, 64, seed=7)
    b1, b2 = next(it), next(it)
    assert b1.shape == (64, 16) and not np.array_equal(b1, b2)

    def resid(basis):  # distance of the batch from the span of 6 directions in 16-d
        coef, *_ = np.linalg.lstsq(basis.T.astype(np.float64), b1.T.astype(np.float64), rcond=None)
        return np.abs(basis.T @ coef - b1.T).max()

    assert resid(dirs) < 1e-5
    assert resid(synthetic.make_dirs(16, 6, seed=8)) > 0.1


def test_recovery_score():
    dirs = synthetic.make_dirs(10, 6, seed=0)
    rng = np.random.default_rng(0)
    learned = np.concatenate([dirs[:4] * 3.0, rng.normal(size=(5, 10))])  # scale-free
    rec = synthetic.recovery(learned[rng.permutation(9)], dirs)
    best = (dirs @ (learned / np.linalg.norm(learned, axis=1, keepdims=True)).T).max(1)
    assert rec["frac_recovered"] == pytest.approx(np.mean(best > 0.9))
    assert rec["frac_recovered"] >= 4 / 6
    assert rec["mean_max_cos"] == pytest.approx(best.mean())
    assert synthetic.recovery(dirs, dirs)["frac_recovered"] == 1.0
