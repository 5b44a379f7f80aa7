"""Label analyses on per-prompt vectors: selectivity/AUROC, top features per label,
within- vs between-label cosine similarity, and feature discovery with word labels.

Everything here takes small in-memory arrays ([prompts, features]) produced by the
streamed statistics; the unit of evidence is a prompt, because labels belong to prompts.
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np
from scipy import stats as sstats

from musicsae_jax.analysis.stats import AnalysisError, FeatureStats


def label_vector(prompts: list[dict], key: str) -> tuple[list[str], np.ndarray]:
  """(sorted label values, y [P] int with -1 where the prompt lacks `key`)."""
  raw = [(p.get("labels") or {}).get(key) for p in prompts]
  values = sorted({str(v) for v in raw if v is not None})
  if not values:
    have = sorted({k for p in prompts for k in (p.get("labels") or {})})
    raise AnalysisError(f"no prompt has label {key!r} (label keys present: {have or 'none'}); "
                        f"set analysis.label_keys to one of them")
  pos = {v: i for i, v in enumerate(values)}
  return values, np.array([pos[str(v)] if v is not None else -1 for v in raw], np.int64)


def auroc(x: np.ndarray, positive: np.ndarray) -> np.ndarray:
  """AUROC of each column of x [n, m] for the binary `positive` [n] (ties count half)."""
  x = np.asarray(x, np.float64)
  positive = np.asarray(positive, bool)
  n_pos, n_neg = int(positive.sum()), int((~positive).sum())
  if n_pos == 0 or n_neg == 0:
    return np.full(x.shape[1], np.nan)
  ranks = sstats.rankdata(x, axis=0)                 # average ranks for ties
  return (ranks[positive].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def selectivity(x: np.ndarray, y: np.ndarray, values: list[str], eps: float = 1e-8) -> dict:
  """Per label value k and feature f: mean in k, mean elsewhere, their ratio, AUROC.

  x: [P, m] per-prompt feature activations; y: [P] label ids (-1 = unlabelled, dropped).
  Returns arrays of shape [K, m].
  """
  keep = y >= 0
  x, y = np.asarray(x, np.float64)[keep], y[keep]
  K, m = len(values), x.shape[1]
  out = {k: np.zeros((K, m)) for k in ("mean_in", "mean_out", "selectivity", "auroc")}
  for k in range(K):
    pos = y == k
    mi = x[pos].mean(0) if pos.any() else np.zeros(m)
    mo = x[~pos].mean(0) if (~pos).any() else np.zeros(m)
    out["mean_in"][k], out["mean_out"][k] = mi, mo
    out["selectivity"][k] = mi / np.maximum(mo, eps)
    out["auroc"][k] = auroc(x, pos)
  out["values"] = list(values)
  out["counts"] = [int((y == k).sum()) for k in range(K)]
  return out


def top_features_per_label(sel: dict, n: int = 5) -> dict[str, list[int]]:
  """The n features per label value ranked by AUROC, ties broken by mean_in - mean_out.

  Only features more active in the label than elsewhere (mean_in > mean_out) qualify.
  """
  out = {}
  for k, v in enumerate(sel["values"]):
    a = np.nan_to_num(sel["auroc"][k], nan=0.0)
    diff = sel["mean_in"][k] - sel["mean_out"][k]
    order = np.lexsort((-diff, -a))                   # primary: auroc desc
    out[v] = [int(f) for f in order if diff[f] > 0][:n]
  return out


# --- within- vs between-label cosine similarity ---------------------------------------------


def label_cosine(x: np.ndarray, y: np.ndarray, values: list[str], *, permutations: int = 1000,
                 seed: int = 0, center: bool = False) -> dict:
  """Mean cosine similarity of prompt pairs with the same label vs different labels.

  The permutation p-value is (1 + #{perm: within - between >= observed}) / (1 + perms)
  with labels shuffled across prompts. `center`: subtract the mean vector first (raw
  activations share a large common direction that makes every pair look similar).
  """
  keep = y >= 0
  x, y = np.asarray(x, np.float64)[keep], y[keep]
  if center:
    x = x - x.mean(0)
  xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  C = xn @ xn.T
  n, K = len(y), len(values)
  total_off = C.sum() - np.trace(C)
  n_pairs = n * (n - 1)

  def stat(lab):
    onehot = np.eye(K)[lab]                              # [n, K]
    counts = onehot.sum(0)
    w_sum = float(np.sum(onehot * (C @ onehot))) - np.trace(C)
    w_pairs = float((counts * (counts - 1)).sum())
    within = w_sum / max(w_pairs, 1)
    between = (total_off - w_sum) / max(n_pairs - w_pairs, 1)
    return within, between

  within, between = stat(y)
  rng = np.random.default_rng(seed)
  perm = np.array([np.subtract(*stat(rng.permutation(y))) for _ in range(permutations)])
  obs = within - between
  per = {}
  for k, v in enumerate(values):
    idx = np.nonzero(y == k)[0]
    if len(idx) > 1:
      sub = C[np.ix_(idx, idx)]
      per[v] = float((sub.sum() - np.trace(sub)) / (len(idx) * (len(idx) - 1)))
  return {"within": float(within), "between": float(between), "difference": float(obs),
          "p_value": float((1 + np.sum(perm >= obs - 1e-12)) / (1 + permutations)),
          "permutations": int(permutations), "centered": bool(center), "within_per_label": per}


# --- feature discovery ---------------------------------------------------------------------

_STOP = set("a an the and or of in on with for to by at from is are was be this that it its "
            "as into over under very some".split())


def words(text: str) -> set[str]:
  return {w for w in re.findall(r"[a-z][a-z'-]+", text.lower()) if w not in _STOP and len(w) > 2}


def word_label(top_texts: list[str], corpus_df: Counter, num_docs: int, n_words: int = 3,
               alpha: float = 1.0) -> tuple[str, list[dict]]:
  """Words over-represented in the top prompts vs the corpus (document-frequency lift).

  score(w) = (df_top(w) + a) / (n_top + 2a)  /  ((df_all(w) + a) / (n_all + 2a)), kept
  only for words in at least half the top prompts and more frequent there than overall.
  """
  n = len(top_texts)
  if not n:
    return "", []
  df = Counter(w for t in top_texts for w in words(t))
  scored = []
  for w, c in df.items():
    p_top = (c + alpha) / (n + 2 * alpha)
    p_all = (corpus_df.get(w, 0) + alpha) / (num_docs + 2 * alpha)
    if c >= max(2, n / 2) and p_top > p_all:
      scored.append({"word": w, "lift": float(p_top / p_all), "in_top": int(c),
                     "in_corpus": int(corpus_df.get(w, 0))})
  scored.sort(key=lambda s: (-s["lift"], s["word"]))
  return " / ".join(s["word"] for s in scored[:n_words]), scored[:n_words]


def discover(st: FeatureStats, prompts: list[dict], *, rate_band=(1e-4, 0.25), max_features=50,
             top_prompts=5, top_frames=5, rank_by="max", descriptor_names=None,
             grounding_top=3) -> dict:
  """Features in the firing-rate band, ranked, each with top prompts/frames and labels."""
  lo, hi = float(rate_band[0]), float(rate_band[1])
  rate = st.rate
  in_band = np.nonzero((rate >= lo) & (rate <= hi))[0]
  key = {"max": st.max, "mean": st.mean, "rate": rate, "mean_active": st.mean_active}
  if rank_by not in key:
    raise AnalysisError(f"analysis.rank_by={rank_by!r}; allowed: {sorted(key)}")
  ranked = in_band[np.argsort(-key[rank_by][in_band], kind="stable")][:max_features]
  corpus_df = Counter(w for p in prompts for w in words(p.get("text", "")))
  pmax = st.prompt_max
  corr = st.correlations()
  feats = []
  for f in ranked:
    f = int(f)
    order = np.argsort(-pmax[:, f], kind="stable")
    tops = [int(p) for p in order[:top_prompts] if pmax[p, f] > 0]
    texts = [prompts[p].get("text", "") for p in tops]
    label, lifts = word_label(texts, corpus_df, len(prompts))
    label_counts = Counter(f"{k}={v}" for p in tops for k, v in (prompts[p].get("labels") or {}).items())
    entry = {
        "id": f, "firing_rate": float(rate[f]), "mean": float(st.mean[f]),
        "mean_active": float(st.mean_active[f]), "max": float(st.max[f]),
        "heuristic_label": label, "label_words": lifts,
        "top_label_values": dict(label_counts.most_common(5)),
        "top_prompts": [{"prompt_id": p, "text": prompts[p].get("text", ""),
                         "labels": prompts[p].get("labels") or {},
                         "max": float(pmax[p, f]), "mean": float(st.prompt_mean[p, f])}
                        for p in tops],
        "top_frames": [{"prompt_id": p, "frame": fr, "activation": a,
                        "text": prompts[p].get("text", "")}
                       for a, p, fr in st.top_frames(f)[:top_frames]],
    }
    if corr is not None and descriptor_names is not None:
      entry["acoustic"] = strongest_correlations(corr[f], descriptor_names, grounding_top)
    feats.append(entry)
  return {"rate_band": [lo, hi], "rank_by": rank_by, "num_in_band": int(len(in_band)),
          "features": feats}


def strongest_correlations(r: np.ndarray, names: list[str], n: int = 3) -> list[dict]:
  """The n descriptor columns with the largest |r| (nan-safe)."""
  a = np.nan_to_num(np.abs(r), nan=-1.0)
  order = np.argsort(-a, kind="stable")[:n]
  return [{"descriptor": names[j], "r": float(r[j])} for j in order if np.isfinite(r[j])]
