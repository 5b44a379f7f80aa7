"""Statistics for steering evaluation: per-prompt paired changes, bootstrap CI, paired tests.

Steering is evaluated per prompt: the same prompt and seed are generated unsteered (the
baseline) and steered, so the change is a paired difference per prompt. `paired_summary`
gives its mean, a percentile bootstrap CI of the mean, and two paired tests against "no
change" (Student's paired t-test and the Wilcoxon signed-rank test, both from scipy).
With few prompts the CI is wide and the tests weak by construction; that is the point of
keeping them next to the mean.
"""
from __future__ import annotations

import numpy as np


def bootstrap_ci(x, *, level: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float] | None:
  """Percentile bootstrap CI of the mean of `x` (None with fewer than 2 values)."""
  x = np.asarray(x, dtype=np.float64)
  if x.size < 2:
    return None
  rng = np.random.default_rng(seed)
  means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(1)
  a = (1.0 - level) / 2
  lo, hi = np.quantile(means, [a, 1 - a])
  return float(lo), float(hi)


def paired_tests(diff) -> dict:
  """p-values of paired tests that the mean (t) / median (Wilcoxon) change is zero."""
  from scipy import stats
  d = np.asarray(diff, dtype=np.float64)
  out = {"p_ttest": None, "p_wilcoxon": None}
  if d.size < 2 or not np.any(d != 0):
    return out
  if np.std(d) > 0:
    out["p_ttest"] = float(stats.ttest_1samp(d, 0.0).pvalue)
  out["p_wilcoxon"] = float(stats.wilcoxon(d).pvalue)
  return out


def paired_summary(steered, baseline, *, seed: int = 0) -> dict:
  """Mean change, its bootstrap CI and paired-test p-values, from per-prompt values."""
  s, b = np.asarray(steered, np.float64), np.asarray(baseline, np.float64)
  if s.shape != b.shape:
    raise ValueError(f"paired values need equal shapes; got {s.shape} and {b.shape}")
  keep = np.isfinite(s) & np.isfinite(b)
  d = s[keep] - b[keep]
  ci = bootstrap_ci(d, seed=seed)
  return {"n": int(d.size), "mean": float(d.mean()) if d.size else None,
          "ci": list(ci) if ci else None, **paired_tests(d)}
