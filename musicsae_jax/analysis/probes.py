"""Linear probes: k-fold cross-validated multinomial logistic regression in JAX + Optax.

Each fold standardises features on its train rows, then minimises
    mean_train CE(softmax(x W + b), y) + l2/2 * ||W||^2
with L-BFGS (optax) from zero. All folds, and the shuffled-label controls, are one
`jax.vmap`-ed, jitted call (train/test are masks, so every problem has the same shape).
The control permutes labels across prompts: a probe that beats it reads real structure.
Held-out-vocabulary prompts (`heldout`) stay out of the folds and score a probe fit on all
the others: a probe that reads mood words does well in the folds and not there.
"""
from __future__ import annotations

from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from musicsae_jax.analysis.stats import AnalysisError


def stratified_folds(y: np.ndarray, k: int, seed: int = 0, values: list[str] | None = None) -> np.ndarray:
  """Fold id [n] per sample, each class spread evenly over the k folds (seeded)."""
  y = np.asarray(y)
  if k < 2:
    raise AnalysisError(f"analysis.probe_folds={k} must be >= 2")
  classes, counts = np.unique(y, return_counts=True)
  small = [(c, n) for c, n in zip(classes, counts) if n < k]
  if small:
    names = ", ".join(f"{values[c] if values else c!r} ({n} prompts)" for c, n in small)
    raise AnalysisError(f"too few prompts per label for {k}-fold probes: {names}; need >= {k} "
                        f"each (extract more prompts or lower analysis.probe_folds)")
  rng = np.random.default_rng([seed, 0xF01D])
  folds = np.empty(len(y), np.int64)
  offset = 0
  for c in classes:
    idx = rng.permutation(np.nonzero(y == c)[0])
    folds[idx] = (np.arange(len(idx)) + offset) % k     # offset balances fold sizes
    offset += len(idx)
  return folds


def _objective(params, xs, y, w, l2, num_classes):
  W, b = params
  logp = jax.nn.log_softmax(xs @ W + b)
  ce = -jnp.take_along_axis(logp, y[:, None], 1)[:, 0]
  return jnp.sum(w * ce) + 0.5 * l2 * jnp.sum(W * W)


@partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit_eval(x, y, train, test, *, num_classes: int, steps: int, l2: float):
  """One problem: (test accuracy, final objective, W, b) for label vector y, train/test masks."""
  w = train / jnp.maximum(train.sum(), 1.0)
  mu = jnp.sum(w[:, None] * x, 0)
  sd = jnp.sqrt(jnp.sum(w[:, None] * (x - mu) ** 2, 0))
  xs = (x - mu) / jnp.where(sd > 1e-8, sd, 1.0)
  params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros(num_classes))
  f = lambda p: _objective(p, xs, y, w, l2, num_classes)
  opt = optax.lbfgs()
  state = opt.init(params)
  vg = optax.value_and_grad_from_state(f)

  def step(carry, _):
    p, s = carry
    value, grad = vg(p, state=s)
    upd, s = opt.update(grad, s, p, value=value, grad=grad, value_fn=f)
    return (optax.apply_updates(p, upd), s), None

  (params, _), _ = jax.lax.scan(step, (params, state), None, length=steps)
  pred = jnp.argmax(xs @ params[0] + params[1], -1)
  acc = jnp.sum((pred == y) * test) / jnp.maximum(test.sum(), 1.0)
  return acc, f(params), params


@lru_cache(maxsize=16)
def _batched(num_classes: int, steps: int, l2: float):
  """_fit_eval over [label vectors, problems] (train, test masks), one jitted call."""
  f = partial(_fit_eval, num_classes=num_classes, steps=steps, l2=l2)
  return jax.jit(jax.vmap(jax.vmap(f, in_axes=(None, None, 0, 0)), in_axes=(None, 0, 0, 0)))


def cross_validate(x: np.ndarray, y: np.ndarray, values: list[str], *, folds: int = 5,
                   l2: float = 1e-3, steps: int = 100, shuffles: int = 3, seed: int = 0,
                   heldout: np.ndarray | None = None) -> dict:
  """k-fold probe accuracy (mean ± std over folds) and the shuffled-label control.

  x [n, d] per-prompt vectors, y [n] label ids (-1 = unlabelled, dropped).
  heldout [n] bool (e.g. the held-out-vocabulary prompts): kept out of the folds; one more
  probe is fit on every other prompt and scored on these (`heldout_vocab`: accuracy, and
  the same for the shuffled-label controls).
  """
  keep = np.asarray(y) >= 0
  x, y = np.asarray(x, np.float32)[keep], np.asarray(y, np.int32)[keep]
  held = np.zeros(len(y), bool) if heldout is None else np.asarray(heldout, bool)[keep]
  transfer = bool(held.any())
  d, K = x.shape[1], len(values)
  x = _pad_width(x)
  rng = np.random.default_rng([seed, 0x5AFF])
  ys = [y] + [rng.permutation(y) for _ in range(shuffles)]
  trains, tests = [], []
  for j, yy in enumerate(ys):
    fid = np.full(len(y), -1)
    fid[~held] = stratified_folds(yy[~held], folds, seed + j, values)
    tr = [(fid >= 0) & (fid != f) for f in range(folds)]
    te = [fid == f for f in range(folds)]
    if transfer:
      tr.append(~held)
      te.append(held)
    trains.append(np.stack(tr).astype(np.float32))
    tests.append(np.stack(te).astype(np.float32))
  acc, obj, _ = _batched(K, int(steps), float(l2))(
      jnp.asarray(x), jnp.asarray(np.stack(ys)), jnp.asarray(np.stack(trains)),
      jnp.asarray(np.stack(tests)))
  acc = np.asarray(acc, np.float64)                       # [1 + shuffles, folds (+1)]
  cv = acc[:, :folds]
  counts = np.bincount(y[~held], minlength=K)
  out = {"accuracy": float(cv[0].mean()), "accuracy_std": float(cv[0].std()),
         "fold_accuracy": [float(a) for a in cv[0]],
         "chance": 1.0 / K, "majority": float(counts.max() / counts.sum()),
         "n": int((~held).sum()), "d": int(d), "folds": int(folds), "l2": float(l2),
         "classes": list(values)}
  if shuffles:
    out.update(shuffled_accuracy=float(cv[1:].mean()),
               shuffled_std=float(cv[1:].mean(1).std()) if shuffles > 1 else float(cv[1].std()))
  if transfer:
    hc = np.bincount(y[held], minlength=K)
    out["heldout_vocab"] = {"accuracy": float(acc[0, folds]), "n": int(held.sum()),
                            "majority": float(hc.max() / hc.sum()),
                            **({"shuffled_accuracy": float(acc[1:, folds].mean())}
                               if shuffles else {})}
  return out


def _pad_width(x: np.ndarray) -> np.ndarray:
  """Zero-pad columns to a power of two so sites of different widths share one compile.

  A zero column standardises to zero and only the L2 term touches its weights, so the
  optimum (and the accuracy) is unchanged.
  """
  width = max(64, 1 << (x.shape[1] - 1).bit_length())
  return np.pad(x, ((0, 0), (0, width - x.shape[1])))


def fit(x: np.ndarray, y: np.ndarray, num_classes: int, *, l2: float = 1e-3, steps: int = 100):
  """Fit on all rows; (objective, W, b) in standardised space (tests compare to references)."""
  train = jnp.ones(len(y), jnp.float32)
  _, obj, (W, b) = _fit_eval(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32), train,
                             1.0 - train, num_classes=num_classes, steps=steps, l2=l2)
  return float(obj), np.asarray(W), np.asarray(b)
