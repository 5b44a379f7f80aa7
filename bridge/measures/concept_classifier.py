"""The steering evaluation's target-concept score: a classifier on AUDIO descriptors.

Trained in the run on unsteered reference generations of labelled prompts (the built-in
prompt set, prompts disjoint from the evaluated ones), it answers "does the steered audio
sound more like the target label?". It never sees activations: a classifier on the
steered site's activations would only measure the added vector (circular).

Model: nearest centroid on standardised clip vectors (`audio_descriptors.clip_vector`);
P(value | clip) = softmax over values of -||z - c_value||^2 / (2 d). Its leave-one-out
accuracy on the reference set is reported next to chance, so a reader sees at once
whether the score can mean anything (on a random tiny model it cannot).
"""
from __future__ import annotations

import numpy as np


class CentroidClassifier:
  """Nearest-centroid classifier with softmax probabilities on standardised inputs."""

  def __init__(self, x: np.ndarray, y: list[str]):
    x = np.asarray(x, np.float64)
    self.values = sorted(set(y))
    if len(self.values) < 2:
      raise ValueError(f"the concept classifier needs at least 2 label values; got {self.values}")
    self.mu, self.sd = x.mean(0), x.std(0) + 1e-9
    z = (x - self.mu) / self.sd
    ya = np.array(y)
    self.centroids = np.stack([z[ya == v].mean(0) for v in self.values])
    self._x, self._y = x, list(y)

  def proba(self, x: np.ndarray) -> np.ndarray:
    """[n, len(values)] probabilities."""
    z = (np.atleast_2d(np.asarray(x, np.float64)) - self.mu) / self.sd
    d2 = ((z[:, None, :] - self.centroids[None]) ** 2).sum(-1) / (2 * z.shape[1])
    logits = -d2 - (-d2).max(1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)

  def loo_accuracy(self) -> float | None:
    """Leave-one-out accuracy on the training clips (None if a value has one clip only)."""
    ya = np.array(self._y)
    if min((ya == v).sum() for v in self.values) < 2:
      return None
    hits = []
    for i in range(len(ya)):
      keep = np.arange(len(ya)) != i
      clf = CentroidClassifier(self._x[keep], list(ya[keep]))
      hits.append(clf.values[int(clf.proba(self._x[i]).argmax())] == ya[i])
    return float(np.mean(hits))


def reference_prompts(label_key: str, per_value: int, exclude: list[str]) -> list[dict]:
  """Built-in labelled prompts carrying `label_key`, `per_value` per value, none in `exclude`."""
  from bridge.sources import prompts as prompts_lib
  pool = prompts_lib.emotion_prompts(per_value + len(exclude) // 4 + 2)
  if label_key not in pool[0]["labels"]:
    return []
  out, count, skip = [], {}, set(exclude)
  for p in pool:
    v = p["labels"].get(label_key)       # held-out-vocabulary prompts carry fewer labels
    if v is None or p["text"] in skip or count.get(v, 0) >= per_value:
      continue
    count[v] = count.get(v, 0) + 1
    out.append(p)
  return out
