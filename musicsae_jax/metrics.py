"""SAE evaluation metrics: pure functions (numpy or jax arrays in, scalars out).

Two pitfalls seen in peer code are designed out here:

* explained variance must be measured against the **data mean**, not against zero
  (residual-stream activations have a large mean; against zero the score looks great
  for any model that learns b_dec);
* the numerator and denominator of FVU are **pooled** over the whole evaluation set,
  not averaged per batch (a per-batch ratio over-weights low-variance batches and
  uses each batch's own mean instead of the data mean).
"""
from __future__ import annotations

import numpy as np


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def fvu(x, x_hat, mean=None) -> float:
    """Fraction of variance unexplained: sum||x - x_hat||² / sum||x - mean||².

    ``mean`` is the data mean (default: the mean of ``x`` itself). Pass the mean of the
    whole eval set when ``x`` is only part of it.
    """
    x, x_hat = _f64(x), _f64(x_hat)
    mu = x.mean(0) if mean is None else _f64(mean)
    return float(np.sum((x - x_hat) ** 2) / np.sum((x - mu) ** 2))


def explained_variance(x, x_hat, mean=None) -> float:
    """1 - FVU, against the data mean (see module docstring)."""
    return 1.0 - fvu(x, x_hat, mean)


class PooledFVU:
    """Streaming FVU/EV over many batches with pooled sums, in float64.

    Keeps n, sum x, sum ||x||² and sum ||x - x_hat||², then uses
    sum||x - μ||² = sum||x||² - n||μ||² with μ the pooled data mean, so the result
    equals :func:`fvu` on the concatenated eval set without storing it.
    """

    def __init__(self):
        self.n = 0
        self.sum_x = None
        self.sum_sq = 0.0
        self.sum_err = 0.0

    def update(self, x, x_hat) -> None:
        x, x_hat = _f64(x).reshape(-1, np.shape(x)[-1]), _f64(x_hat).reshape(-1, np.shape(x)[-1])
        self.n += x.shape[0]
        self.sum_x = x.sum(0) if self.sum_x is None else self.sum_x + x.sum(0)
        self.sum_sq += float(np.sum(x * x))
        self.sum_err += float(np.sum((x - x_hat) ** 2))

    def total_variance(self) -> float:
        """sum over the eval set of ||x - μ||²."""
        if self.n == 0:
            raise ValueError("PooledFVU has seen no data; call update() first")
        mu = self.sum_x / self.n
        return self.sum_sq - self.n * float(mu @ mu)

    def fvu(self) -> float:
        return self.sum_err / self.total_variance()

    def explained_variance(self) -> float:
        return 1.0 - self.fvu()


def l0(z) -> float:
    """Mean number of nonzero latents per token."""
    return float(np.mean(np.sum(np.asarray(z) != 0, axis=-1)))


def firing_counts(z) -> np.ndarray:
    """Per-latent number of tokens on which it fired (z != 0), shape [m]."""
    z = np.asarray(z)
    return np.sum(z.reshape(-1, z.shape[-1]) != 0, axis=0).astype(np.int64)


def dead_count(counts_or_rates) -> int:
    """The one definition every summary and plot shows: latents that never fired on the
    rows measured (say which rows next to the number)."""
    return int(np.sum(np.asarray(counts_or_rates) == 0))


def dead_fraction(counts_or_steps_since, dead_after: int | None = None) -> float:
    """Fraction of dead latents.

    Given firing counts (``dead_after=None``): dead = never fired in the window. Given
    tokens-since-last-fire: dead = not fired for at least ``dead_after`` tokens (the
    AuxK definition: a latent is dead once it has been silent for N tokens).
    """
    a = np.asarray(counts_or_steps_since)
    dead = (a == 0) if dead_after is None else (a >= dead_after)
    return float(np.mean(dead))


def feature_density(counts, n_tokens: int) -> np.ndarray:
    """Per-latent firing frequency = counts / n_tokens (plotted as a log10 histogram)."""
    if n_tokens <= 0:
        raise ValueError(f"n_tokens={n_tokens} must be positive")
    return np.asarray(counts, dtype=np.float64) / n_tokens


def dense_fraction(freq, threshold: float = 0.1) -> float:
    """Fraction of latents firing on more than ``threshold`` of tokens.

    Dense latents are rarely interpretable and often absorb the mean/bias direction,
    so their count is tracked next to the dead fraction.
    """
    return float(np.mean(np.asarray(freq) > threshold))
