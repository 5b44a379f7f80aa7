"""Which feature claims survive a null: held-out selection, max-statistic permutation
p-values, Benjamini–Hochberg, position-feature flags, and seed stability of a dictionary.

Everything works on small per-prompt arrays ([prompts, features]) from `stats.FeatureStats`.
Permutations are cheap because AUROC only needs the ranks of each feature over prompts,
and those do not change when labels are shuffled: one permutation of K label values is a
[K, P] one-hot times the [P, m] rank matrix.
"""
from __future__ import annotations

import numpy as np
from scipy import optimize, stats as sstats

from musicsae_jax.analysis.stats import AnalysisError


# --- held-out split --------------------------------------------------------------------------


def heldout_split(y: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Boolean masks (train, heldout) over prompts, stratified by label value.

  Each value with >= 2 prompts puts round(fraction * n) of them (at least 1, at most n - 1)
  in the held-out set; unlabelled prompts (y < 0) are in neither.
  """
  if not 0 < fraction < 1:
    raise AnalysisError(f"analysis.heldout_fraction={fraction} must be in (0, 1)")
  y = np.asarray(y)
  rng = np.random.default_rng(seed)
  held = np.zeros(len(y), bool)
  for k in np.unique(y[y >= 0]):
    idx = np.nonzero(y == k)[0]
    if len(idx) < 2:
      continue
    n = int(np.clip(round(fraction * len(idx)), 1, len(idx) - 1))
    held[rng.choice(idx, n, replace=False)] = True
  return (y >= 0) & ~held, held


def feature_split(yk: np.ndarray, vocab: np.ndarray | None, fraction: float,
                  seed: int = 0) -> dict[str, np.ndarray]:
  """The one partition of prompts every feature claim and its controls use: boolean masks
  `train` (selection), `heldout` (scoring) and `heldout_vocab` (held-out-vocabulary prompts
  that carry the label: never in the random split, scored apart). yk: label ids, -1 where
  unlabelled or without rows; vocab: held-out-vocabulary prompts (None: none)."""
  yk = np.asarray(yk)
  vocab = np.zeros(len(yk), bool) if vocab is None else np.asarray(vocab, bool)
  train, held = heldout_split(np.where(vocab, -1, yk), fraction, seed)
  return {"train": train, "heldout": held, "heldout_vocab": vocab & (yk >= 0)}


def split_prompts(masks: dict[str, np.ndarray]) -> dict[str, list[int]]:
  """The partition as prompt positions (JSON): what a reader compares across outputs."""
  return {f"{k}_prompts": [int(i) for i in np.nonzero(v)[0]] for k, v in masks.items()}


# --- permutation null for AUROC over many features --------------------------------------------


def _auroc_from_ranks(onehot: np.ndarray, ranks: np.ndarray, n_pos: np.ndarray) -> np.ndarray:
  """AUROC [..., K, m] from one-hot labels [..., K, P] and column ranks [P, m]."""
  n = ranks.shape[0]
  n_neg = n - n_pos
  with np.errstate(invalid="ignore", divide="ignore"):
    return ((onehot @ ranks) - (n_pos * (n_pos + 1) / 2)[:, None]) / (n_pos * n_neg)[:, None]


def auroc_null(x: np.ndarray, y: np.ndarray, num_values: int, *, permutations: int = 1000,
               seed: int = 0, batch: int = 64) -> dict:
  """Observed AUROC and a label-permutation null that accounts for the max over features.

  x: [P, m] per-prompt feature values; y: [P] label ids in [0, num_values) (no -1s).
  Labels are shuffled across prompts `permutations` times; for each shuffle and value k
  the AUROC of every feature is recomputed. Returns, per value k and feature f:
    auroc [K, m]          observed (one-sided: higher in k than elsewhere)
    p_raw [K, m]          (1 + #{perm: AUROC_f >= observed_f}) / (1 + perms)
    p_fwer [K, m]         (1 + #{perm: max_g AUROC_g >= observed_f}) / (1 + perms):
                          family-wise over the m features (Westfall–Young single step)
    null_max [perms, K]   the best AUROC over all features in each shuffle
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.int64)
  if x.ndim != 2 or len(x) != len(y):
    raise AnalysisError(f"auroc_null: x must be [prompts, features] aligned with y; got "
                        f"{x.shape} and {y.shape}")
  if len(y) and (y.min() < 0 or y.max() >= num_values):
    raise AnalysisError("auroc_null: label ids must lie in [0, num_values)")
  K, (P, m) = num_values, x.shape
  ranks = sstats.rankdata(x, axis=0)                  # average ranks for ties
  eye = np.eye(K)
  n_pos = np.bincount(y, minlength=K).astype(np.float64)
  obs = _auroc_from_ranks(eye[y].T, ranks, n_pos)     # [K, m]
  obs_cmp = np.nan_to_num(obs, nan=np.inf) - 1e-12    # values without prompts never count
  rng = np.random.default_rng(seed)
  ge_raw = np.zeros((K, m), np.int64)
  null_max = np.empty((permutations, K))
  done = 0
  while done < permutations:
    b = min(batch, permutations - done)
    perm_y = np.stack([rng.permutation(y) for _ in range(b)])     # [b, P]
    onehot = np.swapaxes(eye[perm_y], 1, 2)                      # [b, K, P]
    a = np.nan_to_num(_auroc_from_ranks(onehot, ranks, n_pos), nan=-np.inf)   # [b, K, m]
    ge_raw += (a >= obs_cmp).sum(0)
    null_max[done:done + b] = a.max(-1)
    done += b
  ge_max = (null_max[:, :, None] >= obs_cmp[None]).sum(0)         # [K, m]
  undefined = np.isnan(obs)                           # a value with no (or only) prompts here
  p_raw = np.where(undefined, 1.0, (1 + ge_raw) / (1 + permutations))
  p_fwer = np.where(undefined, 1.0, (1 + ge_max) / (1 + permutations))
  return {"auroc": obs, "p_raw": p_raw, "p_fwer": p_fwer, "null_max": null_max,
          "permutations": int(permutations)}


def bh_qvalues(p: np.ndarray) -> np.ndarray:
  """Benjamini–Hochberg adjusted p-values (q-values) along the last axis.

  A feature is listed at FDR level alpha when its q <= alpha.
  """
  p = np.asarray(p, np.float64)
  return sstats.false_discovery_control(p, axis=-1, method="bh")


# --- position features ------------------------------------------------------------------------


def _modal_count(frames: np.ndarray, prompts: np.ndarray, window: int = 0) -> np.ndarray:
  """[..., N] frames of top frames from `prompts` [N] -> [...] the most distinct prompts
  with a top frame within +-window of one top frame (a sustained event in one prompt,
  several adjacent top frames, counts once)."""
  near = (np.abs(frames[..., :, None] - frames[..., None, :]) <= window).astype(np.float64)
  prompts = np.asarray(prompts)
  earlier_same = (prompts[:, None] == prompts[None, :]) & np.tri(len(prompts), k=-1, dtype=bool)
  dup = (near @ earlier_same.astype(np.float64)) > 0     # [.., i, j]: an earlier k, same prompt
  return (near.astype(bool) & ~dup).sum(-1).max(-1)


def position_test(top_prompts: np.ndarray, top_frames: np.ndarray, prompt_frames: np.ndarray,
                  *, window: int = 0, draws: int = 2000, seed: int = 0) -> tuple[int, float]:
  """(modal count, p) for one feature's top frames.

  Statistic: the most distinct prompts with a top frame within +-`window` frames of one
  top frame (window 0: in how many prompts one frame index recurs). Null: the same number of
  frames, each drawn uniformly from the frames of the same prompt as the observed top frame
  (frames 0..prompt_frames[p]-1). p = (1 + #{null >= observed}) / (1 + draws). A feature
  whose top frames sit at one position regardless of the prompt gets a tiny p; one whose
  top frames are spread over positions does not.
  """
  top_frames = np.asarray(top_frames, np.int64)
  if len(top_frames) < 2:
    return int(len(top_frames)), 1.0
  top_prompts = np.asarray(top_prompts, np.int64)
  obs = int(_modal_count(top_frames, top_prompts, window))
  lengths = np.maximum(np.asarray(prompt_frames, np.int64)[top_prompts], 1)
  rng = np.random.default_rng(seed)
  sim = np.floor(rng.random((draws, len(lengths))) * lengths).astype(np.int64)
  null = _modal_count(sim, top_prompts, window)
  return obs, float((1 + np.sum(null >= obs)) / (1 + draws))


def position_flags(st, features: list[int], *, top_n: int | None = None, alpha: float = 0.01,
                   window: int = 2, draws: int = 2000, seed: int = 0) -> dict[int, dict]:
  """{feature: {"position": bool, "modal_count", "top_frames", "window", "p"}} from
  `FeatureStats`. Frames of a prompt are taken as 0..prompt_count-1 (one row per frame).

  Flagged when p <= alpha and top frames of at least 3 prompts lie within +-window of one
  frame.
  """
  out = {}
  for f in features:
    tf = st.top_frames(int(f))[:top_n] if top_n else st.top_frames(int(f))
    pids = np.array([p for _, p, _ in tf], np.int64)
    frames = np.array([fr for _, _, fr in tf], np.int64)
    c, p = position_test(pids, frames, st.prompt_count, window=window, draws=draws,
                         seed=seed + int(f))
    out[int(f)] = {"position": bool(p <= alpha and c >= 3), "modal_count": int(c),
                   "top_frames": int(len(frames)), "window": int(window), "p": p}
  return out


# --- seed stability ------------------------------------------------------------------------------


def match_decoders(W_a: np.ndarray, W_b: np.ndarray, *, method: str = "auto",
                   threshold: float = 0.7, hungarian_max: int = 4096) -> dict:
  """Match the decoder rows of two dictionaries ([m_a, d], [m_b, d]) one to one by cosine.

  method: "hungarian" (scipy's linear_sum_assignment, optimal), "greedy" (best pairs
  first), or "auto" (hungarian up to `hungarian_max` rows, greedy above: the assignment is
  O(m^3)). Returns the match b_of_a [m_a] (-1 = unmatched), cosine [m_a], the fraction
  of A's features whose match has cosine >= threshold, and best_cosine [m_a] (each row's
  nearest row of B, not one to one: above the match's cosine where rows compete).
  """
  A = np.asarray(W_a, np.float64)
  B = np.asarray(W_b, np.float64)
  if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
    raise AnalysisError(f"decoders must be [m, d] with the same d; got {A.shape} and {B.shape}")
  A = A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-12)
  B = B / np.maximum(np.linalg.norm(B, axis=1, keepdims=True), 1e-12)
  if method == "auto":
    method = "hungarian" if max(len(A), len(B)) <= hungarian_max else "greedy"
  if method == "hungarian":
    b_of_a = np.full(len(A), -1, np.int64)
    r, c = optimize.linear_sum_assignment(A @ B.T, maximize=True)
    b_of_a[r] = c
  elif method == "greedy":
    b_of_a = greedy_match(A, B)
  else:
    raise AnalysisError(f"match method {method!r}; allowed: auto, hungarian, greedy")
  cos = np.full(len(A), np.nan)
  ok = b_of_a >= 0
  cos[ok] = np.einsum("ij,ij->i", A[ok], B[b_of_a[ok]])
  return {"method": method, "b_of_a": b_of_a, "cosine": cos, "threshold": float(threshold),
          "fraction_matched": float(np.mean(np.nan_to_num(cos, nan=-1.0) >= threshold)),
          "median_cosine": float(np.nanmedian(cos)), "best_cosine": nearest_cosine(A, B)}


def nearest_cosine(A: np.ndarray, B: np.ndarray, block_rows: int = 1024) -> np.ndarray:
  """[m_a]: each row of A's best cosine with any row of B (unit rows; not one to one), in
  row blocks so the m_a x m_b matrix is never held whole."""
  out = np.empty(len(A))
  for s in range(0, len(A), block_rows):
    out[s:s + block_rows] = (A[s:s + block_rows] @ B.T).max(1)
  return out


def greedy_match(A: np.ndarray, B: np.ndarray, *, candidates: int = 8,
                 block_rows: int = 1024) -> np.ndarray:
  """Exact greedy one-to-one matching on A @ B.T (best pair first) without the m x m matrix.

  Rounds: each free row keeps its `candidates` best free columns (computed in row blocks);
  candidate pairs are taken best first while both ends are free. Once some row has lost all
  its candidates at cosine v, its other pairs are all <= v, so the round stops before any
  pair below v; the next round recomputes candidates for what is left. Returns b_of_a [m_a].
  """
  b_of_a = np.full(len(A), -1, np.int64)
  free_a, free_b = np.arange(len(A)), np.arange(len(B))
  while len(free_a) and len(free_b):
    k = min(candidates, len(free_b))
    Bf = B[free_b]
    cols = np.empty((len(free_a), k), np.int64)
    vals = np.empty((len(free_a), k))
    for s in range(0, len(free_a), block_rows):
      C = A[free_a[s:s + block_rows]] @ Bf.T
      top = np.argpartition(-C, k - 1, axis=1)[:, :k] if k < C.shape[1] else \
          np.tile(np.arange(k), (len(C), 1))
      cols[s:s + len(C)] = free_b[top]
      vals[s:s + len(C)] = np.take_along_axis(C, top, 1)
    order = np.lexsort((np.arange(vals.size), -vals.ravel()))
    left = np.full(len(free_a), k)                     # candidates not yet rejected, per row
    taken_b = np.zeros(len(B), bool)
    barrier = -np.inf
    for flat in order:
      i, j = divmod(int(flat), k)
      v = vals[i, j]
      if v < barrier:
        break
      a, b = free_a[i], cols[i, j]
      if b_of_a[a] >= 0:
        continue
      if taken_b[b]:
        left[i] -= 1
        if left[i] == 0:                              # row i's remaining pairs are all <= v
          barrier = max(barrier, v)
        continue
      b_of_a[a], taken_b[b] = b, True
    free_a = free_a[b_of_a[free_a] < 0]
    free_b = free_b[~taken_b[free_b]]
  return b_of_a
