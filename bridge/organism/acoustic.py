"""Can a concept be measured on the codec's decoded audio? Per label, a classifier on audio
descriptors (`audio_descriptors.clip_vector`, the steering evaluation's nearest-centroid
classifier) is fitted on original training clips and scored on held-out originals and on
the same clips after encode -> decode. Reconstructed accuracy near the originals' means
the concept survives the codec and can be scored acoustically; near chance means it must
be scored in token space instead."""
from __future__ import annotations

import numpy as np

from bridge.measures import audio_descriptors
from bridge.measures.concept_classifier import CentroidClassifier


def clip_vectors(wav: np.ndarray, sample_rate: int) -> np.ndarray:
  return np.stack([audio_descriptors.clip_vector(w, sample_rate) for w in wav])


def concept_survival(train_x: np.ndarray, train_labels: list[dict], held_x: np.ndarray,
                     recon_x: np.ndarray, held_labels: list[dict], keys) -> dict:
  """{key: {accuracy_original, accuracy_reconstructed, chance, values, clips}} per label."""
  out = {}
  for key in keys:
    tr = [i for i, l in enumerate(train_labels) if key in l]
    ho = [i for i, l in enumerate(held_labels) if key in l]
    ytr = [str(train_labels[i][key]) for i in tr]
    if len(set(ytr)) < 2 or not ho:
      continue
    clf = CentroidClassifier(train_x[tr], ytr)
    yho = np.array([str(held_labels[i][key]) for i in ho])
    vals = np.array(clf.values)

    def acc(x):
      return float(np.mean(vals[clf.proba(x[ho]).argmax(1)] == yho))
    out[key] = {"accuracy_original": acc(held_x), "accuracy_reconstructed": acc(recon_x),
                "chance": 1.0 / len(clf.values), "values": len(clf.values), "clips": len(ho)}
  return out
