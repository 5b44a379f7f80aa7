"""Detection scores of a label: can a scorer tell held-out activating examples from
non-activating ones given only the label? AUROC for graded scores (CLAP text-to-audio
similarity), balanced accuracy for yes/no answers (an LLM), and their distribution over
features (the number that says whether the labels mean anything: 0.5 is chance)."""
from __future__ import annotations

import numpy as np

from musicsae_jax.analysis import labels as lab


def auroc(pos_scores, neg_scores) -> float | None:
  """P(score of a positive > score of a negative), ties count half; None without both."""
  pos, neg = np.asarray(pos_scores, np.float64), np.asarray(neg_scores, np.float64)
  if not len(pos) or not len(neg):
    return None
  x = np.concatenate([pos, neg])[:, None]
  return float(lab.auroc(x, np.arange(len(x)) < len(pos))[0])


def balanced_accuracy(truth, predicted) -> float | None:
  """Mean of the true-positive and true-negative rates of 0/1 predictions."""
  t, p = np.asarray(truth, bool), np.asarray(predicted, bool)
  if t.shape != p.shape or t.all() or not t.any():
    return None
  return float(((p & t).sum() / t.sum() + (~p & ~t).sum() / (~t).sum()) / 2)


def distribution(values) -> dict:
  """Summary of per-feature scores (None dropped): n, mean, quantiles, share above chance."""
  v = np.asarray([x for x in values if x is not None], np.float64)
  if not len(v):
    return {"n": 0}
  q = np.quantile(v, [0.1, 0.25, 0.5, 0.75, 0.9])
  return {"n": int(len(v)), "mean": float(v.mean()),
          "quantiles": {k: float(x) for k, x in zip(("0.1", "0.25", "0.5", "0.75", "0.9"), q)},
          "above_0.5": float((v > 0.5).mean()), "at_least_0.75": float((v >= 0.75).mean())}
