"""Concepts in token space: per label, a multinomial logistic regression on each clip's
bag of codec codes (the share of frames using each code of each codebook), fitted on
training clips and scored on held-out clips. It measures whether the codec's tokens carry
a concept, where decoded audio is too poor to measure it acoustically (acoustic.py), and
is the token-space concept score a steering evaluation on the organism can use."""
from __future__ import annotations

import numpy as np
import torch


def bag_of_codes(codes: np.ndarray, card: int) -> np.ndarray:
  """[N, K, T] codes -> [N, K * card] code frequencies per codebook."""
  N, K, T = codes.shape
  out = np.zeros((N, K, card), np.float32)
  for k in range(K):
    np.add.at(out[:, k], (np.arange(N)[:, None].repeat(T, 1), codes[:, k]), 1.0 / T)
  return out.reshape(N, K * card)


def _fit(x: np.ndarray, y: np.ndarray, classes: int, l2: float, steps: int) -> torch.nn.Linear:
  torch.manual_seed(0)
  lin = torch.nn.Linear(x.shape[1], classes)
  opt = torch.optim.LBFGS(lin.parameters(), max_iter=steps, line_search_fn="strong_wolfe")
  xt, yt = torch.from_numpy(x), torch.from_numpy(y)

  def closure():
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(lin(xt), yt) + l2 * lin.weight.pow(2).sum()
    loss.backward()
    return loss
  opt.step(closure)
  return lin


class TokenClassifier:
  """One logistic regression per label on standardised bags of codes, fitted on labelled
  clips' codes; `predict` names a value of every label for new codes (e.g. generated ones).
  A label whose clips have only some keys (mode: scale clips; chord: chord clips) is fitted
  on the clips that have it and predicts one of its values for every input."""

  def __init__(self, codes: np.ndarray, labels: list[dict], keys, card: int, *,
               l2: float = 1e-3, steps: int = 200):
    x = bag_of_codes(codes, card)
    self.card = int(card)
    self.mu, self.sd = x.mean(0), x.std(0) + 1e-6
    x = (x - self.mu) / self.sd
    self.values, self._lin = {}, {}
    for key in keys:
      rows = [i for i, l in enumerate(labels) if key in l]
      values = sorted({str(labels[i][key]) for i in rows})
      if len(values) < 2:
        continue
      pos = {v: j for j, v in enumerate(values)}
      y = np.array([pos[str(labels[i][key])] for i in rows])
      with torch.enable_grad():
        self._lin[key] = _fit(x[rows], y, len(values), l2, steps)
      self.values[key] = values

  @property
  def keys(self) -> list[str]:
    return list(self.values)

  def predict(self, codes: np.ndarray) -> dict[str, list[str]]:
    """{key: [value per clip]} for codes [N, K, T]."""
    x = torch.from_numpy((bag_of_codes(codes, self.card) - self.mu) / self.sd)
    with torch.no_grad():
      return {k: [self.values[k][j] for j in lin(x).argmax(1).tolist()]
              for k, lin in self._lin.items()}


def concept_accuracy(train_codes: np.ndarray, train_labels: list[dict], held_codes: np.ndarray,
                     held_labels: list[dict], keys, card: int, *, l2: float = 1e-3,
                     steps: int = 200) -> dict:
  """{key: {accuracy, chance, values, clips}} on held-out clips, per label."""
  clf = TokenClassifier(train_codes, train_labels, keys, card, l2=l2, steps=steps)
  pred = clf.predict(held_codes)
  out = {}
  for key in clf.keys:
    ho = [i for i, l in enumerate(held_labels) if key in l]
    if not ho:
      continue
    hit = [pred[key][i] == str(held_labels[i][key]) for i in ho]
    out[key] = {"accuracy": float(np.mean(hit)), "chance": 1.0 / len(clf.values[key]),
                "values": len(clf.values[key]), "clips": len(ho)}
  return out
