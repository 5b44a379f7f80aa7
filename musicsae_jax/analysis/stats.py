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


def feature_stats(source, encoder: Callable[[np.ndarray], np.ndarray], num_prompts: int, *,
                  top_n: int = 8, descriptors=None,
                  progress: Callable[[int, int, float], None] | None = None) -> FeatureStats:
  """Stream `source` through `encoder` and accumulate `FeatureStats`.

  `descriptors`: an optional source aligned row for row with `source` (audio.descriptors
  next to lm.layer.*); its (prompt_id, frame) index must equal the site's, else an error.
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
    if descriptors is not None:
      _ground(st, source, descriptors, i, z, index)
    if progress:
      progress(i + 1, source.num_blocks, st.num_rows / max(time.time() - t0, 1e-9))
  if st is None:
    raise AnalysisError(f"site {getattr(source, 'name', '?')!r} has no committed rows")
  return st


def _ground(st: FeatureStats, source, descriptors, i: int, z: np.ndarray, index) -> None:
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
  g = st.grounding
  g["sum_a"] += a.sum(0)
  g["sum_a2"] += (a * a).sum(0)
  g["sum_z2"] += (zd * zd).sum(0)
  g["sum_za"] += zd.T @ a
