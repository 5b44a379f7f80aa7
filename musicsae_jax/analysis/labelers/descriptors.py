"""What a snippet sounds like, without any text: the store's `audio.descriptors` (loudness,
brightness, onset strength, chroma ...) averaged over the snippet's frames, as z-scores
against the shared random snippets, so "rms_db +1.5 sd" means louder than this dataset's
typical clip. The blind LLM detector reads these instead of captions (llm.DETECTION_MODES).
"""
from __future__ import annotations

import numpy as np


def snippet_means(source, snippets: list[list[int]], row_span: np.ndarray | None = None) -> np.ndarray:
  """[S, D] mean of `source` rows over each snippet `[prompt_id, start, frames]` (NaN where
  the snippet has no rows). `source`: a store site (`read_index`, `read_rows`) aligned with
  the prompts' frames; `row_span` [P, 2] (FeatureStats, when known) limits the index read to
  the snippets' prompts."""
  prompts = sorted({int(p) for p, _, _ in snippets})
  if row_span is not None:
    spans = [np.arange(row_span[p, 0], row_span[p, 1] + 1) for p in prompts if row_span[p, 0] >= 0]
    rows = np.concatenate(spans) if spans else np.zeros(0, np.int64)
    idx = np.asarray(source.read_index(rows)) if len(rows) else np.zeros((0, 2), np.int64)
  else:
    idx = np.asarray(source.read_index())
    rows = np.arange(len(idx))
  keep = np.isin(idx[:, 0], prompts)
  rows, idx = rows[keep], idx[keep]
  x = np.asarray(source.read_rows(rows), np.float64) if len(rows) else np.zeros((0, 0))
  out = np.full((len(snippets), x.shape[1] if x.size else source.d), np.nan)
  for s, (p, start, n) in enumerate(snippets):
    sel = (idx[:, 0] == p) & (idx[:, 1] >= start) & (idx[:, 1] < start + n)
    if sel.any():
      out[s] = x[sel].mean(0)
  return out


def zscores(means: np.ndarray, reference: list[int]) -> np.ndarray:
  """[S, D] (means − mean of the reference snippets) / their standard deviation (NaN where
  the reference does not vary)."""
  ref = means[list(reference)]
  mu, sd = np.nanmean(ref, 0), np.nanstd(ref, 0, ddof=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(sd > 0, (means - mu) / np.where(sd > 0, sd, 1), np.nan)


def summary(z, names: list[str], top: int = 3) -> list[str]:
  """The `top` descriptors furthest from typical, e.g. ["rms_db +1.5 sd", ...]."""
  z = np.asarray(z, np.float64)
  order = [j for j in np.argsort(-np.abs(np.nan_to_num(z, nan=0.0)), kind="stable")
           if np.isfinite(z[j])][:top]
  return [f"{names[j]} {z[j]:+.1f} sd" for j in order]
