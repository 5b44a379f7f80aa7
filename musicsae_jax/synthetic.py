"""Toy superposition data with known ground-truth features, and a recovery score.

m_true unit directions in d < m_true dimensions, each firing sparsely with a positive
magnitude: x = codes @ true_dirs. An SAE that works should find (cosine > 0.9) most
true directions among its decoder rows; this is the CI-sized check that an
architecture learns features, not just reconstructions.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np


def _unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def make_dirs(d: int, m_true: int, seed: int = 0) -> np.ndarray:
    """m_true random unit directions in R^d (float32)."""
    rng = np.random.default_rng(seed)
    return _unit_rows(rng.standard_normal((m_true, d))).astype(np.float32)


def sample_codes(rng: np.random.Generator, n: int, m_true: int, avg_active: float = 3.0,
                 magnitude: str = "uniform", correlated: bool = False) -> np.ndarray:
    """Sparse nonnegative codes [n, m_true] with on average ``avg_active`` features on.

    magnitude: 'uniform' (U[0.5, 1.5]), 'exponential' (1 + Exp(0.5)) or 'constant' (1).
    correlated: features fire in pairs (2i, 2i+1) half the time, a harder case in
    which feature absorption/merging can happen.
    """
    if not 0 < avg_active <= m_true:
        raise ValueError(f"avg_active={avg_active} must be in (0, m_true={m_true}]")
    p = avg_active / m_true
    on = rng.random((n, m_true)) < p
    if correlated:
        partner = np.arange(m_true) ^ 1
        partner = np.where(partner < m_true, partner, np.arange(m_true))
        on = on | (on[:, partner] & (rng.random((n, m_true)) < 0.5))
    if magnitude == "uniform":
        mag = rng.uniform(0.5, 1.5, (n, m_true))
    elif magnitude == "exponential":
        mag = 1.0 + rng.exponential(0.5, (n, m_true))
    elif magnitude == "constant":
        mag = np.ones((n, m_true))
    else:
        raise ValueError(f"magnitude={magnitude!r}; allowed: 'uniform', 'exponential', 'constant'")
    return (on * mag).astype(np.float32)


def make_toy(d: int, m_true: int, n: int, avg_active: float = 3.0, magnitude: str = "uniform",
             seed: int = 0, correlated: bool = False, noise: float = 0.0):
    """-> (x [n, d] float32, true_dirs [m_true, d] unit rows, codes [n, m_true])."""
    if d <= 0 or m_true <= 0 or n <= 0:
        raise ValueError(f"d={d}, m_true={m_true}, n={n} must all be positive")
    dirs = make_dirs(d, m_true, seed)
    rng = np.random.default_rng(seed + 1)
    codes = sample_codes(rng, n, m_true, avg_active, magnitude, correlated)
    x = codes @ dirs
    if noise:
        x = x + noise * rng.standard_normal(x.shape)
    return x.astype(np.float32), dirs, codes


def toy_batches(d: int, m_true: int, batch_size: int, avg_active: float = 3.0,
                magnitude: str = "uniform", seed: int = 0, correlated: bool = False,
                noise: float = 0.0) -> Iterator[np.ndarray]:
    """Endless fresh batches [batch_size, d] over the same true directions as make_toy."""
    dirs = make_dirs(d, m_true, seed)
    rng = np.random.default_rng(seed + 2)
    while True:
        x = sample_codes(rng, batch_size, m_true, avg_active, magnitude, correlated) @ dirs
        if noise:
            x = x + noise * rng.standard_normal(x.shape)
        yield x.astype(np.float32)


def recovery(W_dec_learned, true_dirs, threshold: float = 0.9) -> dict:
    """For each true direction, its best cosine with any learned decoder row.

    frac_recovered = fraction with best cosine > threshold; mean_max_cos = their mean.
    """
    w = _unit_rows(np.asarray(W_dec_learned, np.float64))
    t = _unit_rows(np.asarray(true_dirs, np.float64))
    best = (t @ w.T).max(axis=1)
    return {"frac_recovered": float(np.mean(best > threshold)),
            "mean_max_cos": float(np.mean(best))}
