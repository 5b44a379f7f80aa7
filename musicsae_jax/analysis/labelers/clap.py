"""CLAP zero-shot labels from embeddings the bridge wrote (numpy only).

Every embedding is L2-normalised, so a dot product is a cosine. For a feature with
explain snippets E and the shared random snippets R, descriptor w scores
  similarity(w) = mean_e cos(a_e, t_w),   chance(w) = mean_r cos(a_r, t_w),
  margin(w) = similarity(w) - chance(w),  z(w) = margin(w) / (std_r cos(a_r, t_w) / sqrt(|E|)),
and descriptors are ranked by margin: closer to the feature's audio than to random audio
(a descriptor CLAP finds close to all music gains nothing). Detection: the label's text
embedding scores held-out activating vs non-activating snippets by cosine; AUROC.
"""
from __future__ import annotations

import numpy as np

from musicsae_jax.analysis.labelers import scoring


def rank(audio: np.ndarray, explain: list[int], random: list[int], text: np.ndarray,
         words: list[str], top: int) -> list[dict]:
  """The `top` descriptors by margin: [{word, margin, z, similarity, chance}]."""
  if not explain:
    return []
  sim_e = audio[explain] @ text.T                     # [n, V]
  sim_r = audio[random] @ text.T                      # [R, V]
  s, c = sim_e.mean(0), sim_r.mean(0)
  margin = s - c
  se = sim_r.std(0, ddof=1) / np.sqrt(len(explain)) if len(random) > 1 else np.zeros_like(c)
  z = np.where(se > 0, margin / np.where(se > 0, se, 1.0), 0.0)
  order = np.argsort(-margin, kind="stable")[:top]
  return [{"word": words[j], "margin": float(margin[j]), "z": float(z[j]),
           "similarity": float(s[j]), "chance": float(c[j])} for j in order]


def detection(audio: np.ndarray, label_vec: np.ndarray, pos: list[int], neg: list[int]) -> dict:
  """CLAP text-to-audio detection of one label on held-out snippets."""
  sp, sn = audio[pos] @ label_vec, audio[neg] @ label_vec
  return {"scorer": "clap", "auroc": scoring.auroc(sp, sn), "n_pos": len(pos), "n_neg": len(neg)}


def snippet_words(audio: np.ndarray, random: list[int], text: np.ndarray, words: list[str],
                  top: int = 3) -> list[list[str]]:
  """Per snippet, the descriptors most above their chance similarity (LLM example context)."""
  rel = audio @ text.T - (audio[random] @ text.T).mean(0)
  return [[words[j] for j in np.argsort(-r, kind="stable")[:top]] for r in rel]
