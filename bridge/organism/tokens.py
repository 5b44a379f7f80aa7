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


def concept_accuracy(train_codes: np.ndarray, train_labels: list[dict], held_codes: np.ndarray,
                     held_labels: list[dict], keys, card: int, *, l2: float = 1e-3,
                     steps: int = 200) -> dict:
  """{key: {accuracy, chance, values, clips}} on held-out clips, per label."""
  xtr, xho = bag_of_codes(train_codes, card), bag_of_codes(held_codes, card)
  mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
  xtr, xho = (xtr - mu) / sd, (xho - mu) / sd
  out = {}
  for key in keys:
    tr = [i for i, l in enumerate(train_labels) if key in l]
    ho = [i for i, l in enumerate(held_labels) if key in l]
    values = sorted({str(train_labels[i][key]) for i in tr})
    if len(values) < 2 or not ho:
      continue
    pos = {v: j for j, v in enumerate(values)}
    ytr = np.array([pos[str(train_labels[i][key])] for i in tr])
    yho = np.array([pos.get(str(held_labels[i][key]), -1) for i in ho])
    with torch.enable_grad():
      lin = _fit(xtr[tr], ytr, len(values), l2, steps)
    with torch.no_grad():
      pred = lin(torch.from_numpy(xho[ho])).argmax(1).numpy()
    out[key] = {"accuracy": float(np.mean(pred == yho)), "chance": 1.0 / len(values),
                "values": len(values), "clips": len(ho)}
  return out
