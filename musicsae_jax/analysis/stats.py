"""Feature statistics streamed over a store site, one block at a time.

A *source* is a store `SiteReader` or a `data.ArraySource` (`num_blocks`, `block_rows(i)`,
`read_block(i)`, `read_rows(rows)`). Each block is scaled by the run's normalisation and
encoded by the SAE under `jax.jit`; only O(prompts x latents) accumulators stay in memory,
never the site. Latents are in RAW units (divided by the scale again): the units of the
exported SAE, `load_sae`, clamp_features and steering.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musicsae_jax import sae as sae_lib


class AnalysisError(ValueError):
  """Bad analysis input (names the file/site/label and what was expected)."""


# --- the SAE as a jitted block encoder ---------------------------------------------------


def sae_from_params(params: dict, sae_cfg: dict | None) -> sae_lib.SAE:
  """Rebuild an nnx SAE from restored arrays (`export.restore_params`) and its run config."""
  d, m = np.asarray(params["W_enc"]).shape
  cfg = {k: v for k, v in dict(sae_cfg or {}).items() if k != "d"}
  if sae_lib.resolve_config(cfg, d)["m"] != m:
    cfg["m"] = m                                    # the checkpoint's width is the truth
  model = sae_lib.make_sae(cfg, d=d, rngs=nnx.Rngs(0))
  for name, value in params.items():
    if hasattr(model, name):
      var = getattr(model, name)
      value = jnp.asarray(value, var[...].dtype)
      if value.shape != var[...].shape:
        raise AnalysisError(f"checkpoint array {name} has shape {value.shape}; the SAE "
                            f"built from the run config expects {var[...].shape}")
      var[...] = value
  return model


class Encoder:
  """x [n, d] raw activations -> latents [n, m] in raw units (numpy), one jitted `encode`.

  Rows are scaled by `scale` (the run's normalisation), encoded, and the latents divided
  by `scale` (the units the export uses); rows are padded to a power-of-two
  bucket (at most `batch_rows`) so only a few shapes ever compile.
  """

  def __init__(self, model: sae_lib.SAE, scale: float = 1.0, batch_rows: int = 4096):
    graphdef, state = nnx.split(model)
    self._state, self.scale, self.batch_rows = state, np.float32(scale), int(batch_rows)
    self.d, self.m = np.asarray(model.W_enc[...]).shape
    self._f = jax.jit(lambda st, x: nnx.merge(graphdef, st).encode(x * self.scale) / self.scale)

  def __call__(self, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] != self.d:
      raise AnalysisError(f"encoder expects rows of width d={self.d}, got {x.shape}")
    out = np.empty((len(x), self.m), np.float32)
    for s in range(0, len(x), self.batch_rows):
      xb = x[s:s + self.batch_rows]
      n = len(xb)
      bucket = min(self.batch_rows, 1 << max(n - 1, 1).bit_length())
      pad = np.zeros((bucket, self.d), np.float32)
      pad[:n] = xb
      out[s:s + n] = np.asarray(self._f(self._state, pad))[:n]
    return out


# --- per-prompt reductions -----------------------------------------------------------------


def segment_reduce(values: np.ndarray, pids: np.ndarray):
  """(unique prompt ids, per-id sum, per-id max, per-id count) of the rows of one block."""
  order = np.argsort(pids, kind="stable")
  sp = pids[order]
  uniq, starts, counts = np.unique(sp, return_index=True, return_counts=True)
  v = values[order]
  return uniq, np.add.reduceat(v, starts, axis=0), np.maximum.reduceat(v, starts, axis=0), counts


def prompt_means(source, num_prompts: int, progress: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Mean over each prompt's rows of a raw site, streamed: ([P, d] float32, counts [P])."""
  total = np.zeros((num_prompts, source.d), np.float64)
  count = np.zeros(num_prompts, np.int64)
  for i in range(source.num_blocks):
    acts, index = source.read_block(i)
    pids = _check_pids(index, num_prompts, source)
    u, s, _, c = segment_reduce(np.asarray(acts, np.float64), pids)
    total[u] += s
    count[u] += c
    if progress:
      progress(i + 1, source.num_blocks)
  return (total / np.maximum(count, 1)[:, None]).astype(np.float32), count


def _check_pids(index, num_prompts, source) -> np.ndarray:
  pids = np.asarray(index)[:, 0].astype(np.int64)
  if len(pids) and (pids.min() < 0 or pids.max() >= num_prompts):
    raise AnalysisError(f"site {getattr(source, 'name', '?')!r}: prompt id {int(pids.max())} "
                        f"outside the prompt table [0, {num_prompts})")
  return pids


# --- streamed feature statistics ------------------------------------------------------------


@dataclasses.dataclass
class FeatureStats:
  """Accumulated over every row of a site. Arrays are indexed [..., feature]."""
  num_rows: int
  fired: np.ndarray          # [m] rows with z > 0
  total: np.ndarray          # [m] sum of z (float64)
  max: np.ndarray            # [m]
  prompt_sum: np.ndarray     # [P, m]
  prompt_max: np.ndarray     # [P, m]
  prompt_count: np.ndarray   # [P] rows per prompt
  top_vals: np.ndarray       # [N, m] the N largest activations (unsorted)
  top_index: np.ndarray      # [N, m, 2] their (prompt_id, frame)
  grounding: dict | None = None   # streamed sums for descriptor correlations
  peak_vals: np.ndarray | None = None    # [N', m] largest per-prompt peaks, one per prompt
  peak_index: np.ndarray | None = None   # [N', m, 2] their (prompt_id, frame of the peak)
  row_span: np.ndarray | None = None     # [P, 2] first and last row of each prompt (-1: none)
  hist: np.ndarray | None = None         # [HIST_BINS, m] counts of log10(z) for z > 0

  @property
  def rate(self) -> np.ndarray:
    """Firing rate: fraction of rows where the feature is > 0."""
    return self.fired / max(self.num_rows, 1)

  @property
  def mean(self) -> np.ndarray:
    """Mean activation over all rows (zeros included)."""
    return self.total / max(self.num_rows, 1)

  @property
  def mean_active(self) -> np.ndarray:
    """Mean activation over the rows where it fires."""
    return self.total / np.maximum(self.fired, 1)

  @property
  def prompt_mean(self) -> np.ndarray:
    """[P, m] mean over each prompt's rows (0 for prompts without rows)."""
    return (self.prompt_sum / np.maximum(self.prompt_count, 1)[:, None]).astype(np.float32)

  def top_frames(self, f: int) -> list[tuple[float, int, int]]:
    """(activation, prompt_id, frame) of feature f, largest first, positive only."""
    v = self.top_vals[:, f]
    order = np.argsort(-v, kind="stable")
    return [(float(v[j]), int(self.top_index[j, f, 0]), int(self.top_index[j, f, 1]))
            for j in order if v[j] > 0]

  def top_prompts(self, f: int) -> list[tuple[float, int, int]]:
    """(peak activation, prompt_id, frame of the peak) of feature f: the prompts with the
    largest peaks, one entry per prompt, largest first, positive only (needs peak_n > 0)."""
    if self.peak_vals is None:
      raise AnalysisError("feature_stats ran without peak_n: no per-prompt peaks collected")
    v = self.peak_vals[:, f]
    order = np.argsort(-v, kind="stable")
    return [(float(v[j]), int(self.peak_index[j, f, 0]), int(self.peak_index[j, f, 1]))
            for j in order if v[j] > 0]

  def shift_correlations(self) -> np.ndarray | None:
    """[S, m, len(null_columns)] Pearson r of each feature with circularly shifted copies of
    the `null_columns` descriptors (the shift null; see `feature_stats`)."""
    g = self.grounding
    if g is None or "sum_za_shift" not in g:
      return None
    cols = g["null_columns"]
    n = float(self.num_rows)
    mz, ma = self.total / n, g["sum_a"][cols] / n
    cov = g["sum_za_shift"] / n - np.outer(mz, ma)[None]
    vz = np.maximum(g["sum_z2"] / n - mz ** 2, 0)
    va = np.maximum(g["sum_a2"][cols] / n - ma ** 2, 0)
    den = np.sqrt(np.outer(vz, va))[None]
    with np.errstate(invalid="ignore", divide="ignore"):
      r = np.where(den > 1e-12 * max(float(den.max(initial=0.0)), 1e-30), cov / den, np.nan)
    return np.clip(r, -1.0, 1.0)

  def correlations(self) -> np.ndarray | None:
    """[m, q] Pearson correlation of each feature with each descriptor column (nan: constant)."""
    g = self.grounding
    if g is None:
      return None
    n = float(self.num_rows)
    mz, ma = self.total / n, g["sum_a"] / n
    cov = g["sum_za"] / n - np.outer(mz, ma)
    vz = g["sum_z2"] / n - mz ** 2
    va = g["sum_a2"] / n - ma ** 2
    den = np.sqrt(np.outer(np.maximum(vz, 0), np.maximum(va, 0)))
    with np.errstate(invalid="ignore", divide="ignore"):
      r = np.where(den > 1e-12 * max(float(den.max(initial=0.0)), 1e-30), cov / den, np.nan)
    return np.clip(r, -1.0, 1.0)


def _merge_top(vals, idx, new_vals, new_idx, n):
  """Keep the n largest per column of concat(vals, new_vals)."""
  v = np.concatenate([vals, new_vals])
  ix = np.concatenate([idx, new_idx])
  if len(v) <= n:
    return v, ix
  sel = np.argpartition(-v, n - 1, axis=0)[:n]
  return np.take_along_axis(v, sel, 0), np.take_along_axis(ix, sel[..., None], 0)


# log10 bins of positive activations for the per-feature histogram: 0.05 decades from 1e-4
HIST_LO, HIST_WIDTH, HIST_BINS = -4.0, 0.05, 160


def hist_edges() -> np.ndarray:
  """The HIST_BINS + 1 bin edges (raw activation units) of `FeatureStats.hist`."""
  return 10.0 ** (HIST_LO + HIST_WIDTH * np.arange(HIST_BINS + 1))


def segment_peaks(z: np.ndarray, pids: np.ndarray, frames: np.ndarray):
  """(unique prompt ids [U], per-prompt max [U, m], frame of that max [U, m]) of one block;
  ties go to the prompt's first row in block order."""
  order = np.argsort(pids, kind="stable")
  sp = pids[order]
  uniq, starts = np.unique(sp, return_index=True)
  ends = np.append(starts[1:], len(sp))
  vals = np.empty((len(uniq), z.shape[1]), z.dtype)
  fr = np.empty((len(uniq), z.shape[1]), np.int32)
  cols = np.arange(z.shape[1])
  for u, (a, b) in enumerate(zip(starts, ends)):
    rows = order[a:b]
    best = np.argmax(z[rows], axis=0)
    vals[u] = z[rows[best], cols]
    fr[u] = frames[rows[best]]
  return uniq, vals, fr


def _merge_peaks(vals, pids, frames, new_vals, new_pids, new_frames, n):
  """Keep the n largest per column of concat(old, new) with at most one entry per prompt
  (a prompt seen in both keeps its larger peak; on a tie the older, earlier row)."""
  v = np.concatenate([vals, new_vals])
  p = np.concatenate([pids, new_pids])
  fr = np.concatenate([frames, new_frames])
  o1 = np.argsort(-v, axis=0, kind="stable")               # largest first, old before new
  v, p, fr = (np.take_along_axis(a, o1, 0) for a in (v, p, fr))
  o2 = np.argsort(p, axis=0, kind="stable")                # by prompt, largest first within
  ps = np.take_along_axis(p, o2, 0)
  dup_sorted = np.zeros(ps.shape, bool)
  dup_sorted[1:] = ps[1:] == ps[:-1]
  dup = np.empty_like(dup_sorted)
  np.put_along_axis(dup, o2, dup_sorted, 0)
  v = np.where(dup, -np.inf, v)
  if len(v) > n:
    sel = np.argpartition(-v, n - 1, axis=0)[:n]
    v, p, fr = (np.take_along_axis(a, sel, 0) for a in (v, p, fr))
  return v, p, fr


def feature_stats(source, encoder: Callable[[np.ndarray], np.ndarray], num_prompts: int, *,
                  top_n: int = 8, peak_n: int = 0, descriptors=None, null_columns=(),
                  null_shifts: int = 0,
                  progress: Callable[[int, int, float], None] | None = None) -> FeatureStats:
  """Stream `source` through `encoder` and accumulate `FeatureStats`.

  `top_n`: the largest activations per feature (any rows, so one sustained event can fill
  them). `peak_n` > 0: also the `peak_n` prompts with the largest peak per feature, one entry
  per prompt with the frame of its peak (the feature browser's top examples), plus each
  prompt's row span and a log-binned histogram of positive activations; memory O(peak_n x m
  + prompts), whatever the number of rows.
  `descriptors`: an optional source aligned row for row with `source` (audio.descriptors
  next to lm.layer.*); its (prompt_id, frame) index must equal the site's, else an error.
  `null_shifts` > 0 with `null_columns`: a shift null for those descriptor columns. Within
  each block the descriptor rows are rotated by j * rows / (S + 1), j = 1..S; the
  correlation of each feature with every rotated copy (`shift_correlations`) keeps both
  series' own time structure and loses their alignment.
  """
  m = encoder.m if hasattr(encoder, "m") else None
  st = None
  t0 = time.time()
  for i in range(source.num_blocks):
    acts, index = source.read_block(i)
    pids = _check_pids(index, num_prompts, source)
    z = np.asarray(encoder(acts), np.float32)
    if st is None:
      m = z.shape[1]
      st = FeatureStats(0, np.zeros(m, np.int64), np.zeros(m), np.full(m, -np.inf),
                        np.zeros((num_prompts, m), np.float32),
                        np.zeros((num_prompts, m), np.float32), np.zeros(num_prompts, np.int64),
                        np.zeros((0, m), np.float32), np.zeros((0, m, 2), np.int32))
      if peak_n:
        st.peak_vals, pk_p, pk_f = (np.zeros((0, m), np.float32), np.zeros((0, m), np.int32),
                                    np.zeros((0, m), np.int32))
        st.row_span = np.full((num_prompts, 2), -1, np.int64)
        st.hist = np.zeros((HIST_BINS, m), np.int64)
    st.num_rows += len(z)
    st.fired += (z > 0).sum(0)
    st.total += z.sum(0, dtype=np.float64)
    st.max = np.maximum(st.max, z.max(0))
    u, s, mx, c = segment_reduce(z, pids)
    st.prompt_sum[u] += s
    st.prompt_max[u] = np.maximum(st.prompt_max[u], mx)
    st.prompt_count[u] += c
    k = min(top_n, len(z))
    sel = np.argpartition(-z, k - 1, axis=0)[:k]
    bi = np.asarray(index, np.int32)[sel]                      # [k, m, 2]
    st.top_vals, st.top_index = _merge_top(st.top_vals, st.top_index,
                                           np.take_along_axis(z, sel, 0), bi, top_n)
    if peak_n:
      frames = np.asarray(index)[:, 1].astype(np.int32)
      uq, pv, pf = segment_peaks(z, pids, frames)
      pv = np.where(pv > 0, pv, -np.inf).astype(np.float32)
      st.peak_vals, pk_p, pk_f = _merge_peaks(
          st.peak_vals, pk_p, pk_f, pv, np.broadcast_to(uq[:, None].astype(np.int32), pv.shape),
          pf, peak_n)
      _spans(st.row_span, source.block_rows(i)[0], pids)
      _histogram(st.hist, z)
    if descriptors is not None:
      _ground(st, source, descriptors, i, z, index, tuple(null_columns), int(null_shifts))
    if progress:
      progress(i + 1, source.num_blocks, st.num_rows / max(time.time() - t0, 1e-9))
  if st is None:
    raise AnalysisError(f"site {getattr(source, 'name', '?')!r} has no committed rows")
  if peak_n:
    st.peak_vals = np.where(np.isfinite(st.peak_vals), st.peak_vals, 0).astype(np.float32)
    st.peak_index = np.stack([pk_p, pk_f], -1)
  return st


def _spans(span: np.ndarray, start: int, pids: np.ndarray) -> None:
  """Widen each prompt's [first, last] row span with the rows of one block."""
  rows = start + np.arange(len(pids))
  uq, first = np.unique(pids, return_index=True)
  last = len(pids) - 1 - np.unique(pids[::-1], return_index=True)[1]
  new = span[uq, 0] < 0
  span[uq, 0] = np.where(new, rows[first], np.minimum(span[uq, 0], rows[first]))
  span[uq, 1] = np.maximum(span[uq, 1], rows[last])


def _histogram(hist: np.ndarray, z: np.ndarray) -> None:
  r, c = np.nonzero(z > 0)
  b = np.clip(np.floor((np.log10(z[r, c]) - HIST_LO) / HIST_WIDTH), 0, HIST_BINS - 1).astype(np.int64)
  hist += np.bincount(b * z.shape[1] + c, minlength=hist.size).reshape(hist.shape)


def _ground(st: FeatureStats, source, descriptors, i: int, z: np.ndarray, index,
            null_columns: tuple = (), null_shifts: int = 0) -> None:
  start, stop = source.block_rows(i)
  if descriptors.num_rows != source.num_rows:
    raise AnalysisError(f"audio descriptors have {descriptors.num_rows} rows, site "
                        f"{getattr(source, 'name', '?')!r} has {source.num_rows}: not aligned")
  rows = np.arange(start, stop)
  if not np.array_equal(descriptors.read_index(rows), np.asarray(index)):
    raise AnalysisError(f"audio descriptors' (prompt_id, frame) index differs from site "
                        f"{getattr(source, 'name', '?')!r} in rows [{start}, {stop}): not aligned")
  a = np.asarray(descriptors.read_rows(rows), np.float64)
  zd = z.astype(np.float64)
  if st.grounding is None:
    q = a.shape[1]
    st.grounding = {"sum_a": np.zeros(q), "sum_a2": np.zeros(q),
                    "sum_z2": np.zeros(z.shape[1]), "sum_za": np.zeros((z.shape[1], q))}
    if null_shifts and null_columns:
      st.grounding["null_columns"] = list(null_columns)
      st.grounding["sum_za_shift"] = np.zeros((null_shifts, z.shape[1], len(null_columns)))
  g = st.grounding
  g["sum_a"] += a.sum(0)
  g["sum_a2"] += (a * a).sum(0)
  g["sum_z2"] += (zd * zd).sum(0)
  g["sum_za"] += zd.T @ a
  if "sum_za_shift" in g:                    # every shifted copy in one product (one read of z)
    a_null = a[:, g["null_columns"]]
    S, q = len(g["sum_za_shift"]), a_null.shape[1]
    rolled = np.concatenate([np.roll(a_null, (j * len(a)) // (S + 1), axis=0)
                             for j in range(1, S + 1)], axis=1)           # [n, S * q]
    g["sum_za_shift"] += (zd.T @ rolled).reshape(-1, S, q).transpose(1, 0, 2)
