"""Statistics for steering evaluation: paired changes, t intervals, a rank p against controls.

Steering is evaluated per prompt: the same prompt and seed are generated unsteered (the
baseline) and steered, so the change is a paired difference per prompt. `paired_summary`
gives its mean, a Student t interval of the mean and two paired tests against "no change"
(t and Wilcoxon signed-rank, from scipy). The t interval, not a percentile bootstrap: at 4
prompts the bootstrap covers the true mean about 80 % of the time for a nominal 95 %; the
t interval is exact for normal changes and, by simulation (tests/test_steer_stats.py,
2000 draws), covers 93 % at 4 prompts for a gamma(4) change (skewness 1).

Whether a direction moves the concept more than any push of its size is a question about
the controls, not about zero: `rank_p` places the steered mean among the control means at
the same strength, and `verdict` turns those p-values into one line per feature.
"""
from __future__ import annotations

import numpy as np

LEVEL = 0.95                   # coverage of every interval in steer.json
CI_METHOD = "student_t"
MIN_PROMPTS = 10               # below this, launch.steer warns


def t_interval(x, *, level: float = LEVEL) -> tuple[float, float] | None:
  """mean ± t_{n-1, (1+level)/2} · s / √n (None with fewer than 2 values)."""
  from scipy import stats
  x = np.asarray(x, dtype=np.float64)
  if x.size < 2:
    return None
  half = stats.t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
  m = x.mean()
  return float(m - half), float(m + half)


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


def paired_summary(steered, baseline) -> dict:
  """Mean change, its t interval (`ci`, coverage `level`) and paired-test p-values."""
  s, b = np.asarray(steered, np.float64), np.asarray(baseline, np.float64)
  if s.shape != b.shape:
    raise ValueError(f"paired values need equal shapes; got {s.shape} and {b.shape}")
  keep = np.isfinite(s) & np.isfinite(b)
  d = s[keep] - b[keep]
  ci = t_interval(d)
  return {"n": int(d.size), "mean": float(d.mean()) if d.size else None,
          "ci": list(ci) if ci else None, "ci_method": CI_METHOD, "level": LEVEL,
          **paired_tests(d)}


def rank_p(observed: float, controls) -> float | None:
  """One-sided p of `observed` among control values: (1 + #{c >= observed}) / (1 + n).

  Exact under the null that the steered direction is one more draw from the controls'
  distribution; its floor is 1 / (1 + n), so n >= 19 is needed to reach 0.05."""
  c = np.asarray([v for v in controls if v is not None and np.isfinite(v)], np.float64)
  if observed is None or not np.isfinite(observed) or not c.size:
    return None
  return float((1 + np.sum(c >= observed)) / (1 + c.size))


def vs_controls(observed: float | None, controls_by_kind: dict[str, list]) -> dict:
  """Rank p of `observed` against each kind of control (same strength); `p_rank` is the
  largest: the steered mean must stand out against every kind."""
  by_kind = {}
  for kind, vals in controls_by_kind.items():
    v = [x for x in vals if x is not None]
    by_kind[kind] = {"n": len(v), "band": [min(v), max(v)] if v else None,
                     "p_rank": rank_p(observed, v)}
  ps = [k["p_rank"] for k in by_kind.values()]
  return {"p_rank": None if not ps or None in ps else max(ps),
          "n_controls": sum(k["n"] for k in by_kind.values()), "by_kind": by_kind}


def verdict(points: list[tuple[float, float | None]], *, target: str | None, measure: str | None,
            level: float, n_controls: int, why_none: str = "") -> dict:
  """One line: "moves <target> beyond controls at alpha >= a, p = ..." or "no evidence ...".

  points: (strength, p_rank) in order of increasing push. The claim is for the weakest
  strength a such that every strength from a up has p_rank <= level; its p is the largest
  of those (an intersection-union test: level `level` for the whole claim)."""
  out = {"measure": measure, "level": level, "alpha": None, "p": None}
  what = target or "the concept"
  if measure is None:
    return {**out, "text": f"no evidence: no independent concept score ({why_none})"}
  if n_controls and 1 / (1 + n_controls) > level:
    return {**out, "text": f"no evidence: {n_controls} controls per strength cannot give "
                           f"p <= {level:g} (floor 1/(1+n) = {1 / (1 + n_controls):.2g}); "
                           f"use steer.controls >= {int(np.ceil(1 / level - 1))}"}
  start = None
  for i in range(len(points) - 1, -1, -1):
    p = points[i][1]
    if p is None or p > level:
      break
    start = i
  if start is None:
    ps = [p for _, p in points if p is not None]
    best = f" (smallest p = {min(ps):.2g})" if ps else ""
    return {**out, "text": f"no evidence that it moves {what} ({measure}) beyond controls{best}"}
  a = points[start][0]
  p = max(q for _, q in points[start:])
  return {**out, "alpha": a, "p": p,
          "text": f"moves {what} ({measure}) beyond controls at alpha >= {a:g}, p = {p:.2g}"}
