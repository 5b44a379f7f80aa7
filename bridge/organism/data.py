"""The organism's data: concept clips with captions written from their exact labels, and a
held-out split that the codec, the LM and their metrics share."""
from __future__ import annotations

import os
import re

import numpy as np

from bridge.sources import concepts

DENSITY = {1: "quarter notes", 2: "eighth notes", 3: "triplets", 4: "sixteenth notes"}
DYNAMICS = {"pp": "very soft", "mf": "medium loud", "ff": "very loud"}


class OrganismError(ValueError):
  """Bad organism config or data; the message names the field or path."""


def caption(labels: dict) -> str:
  """A short lower-case caption naming every label: 'flute, 120 bpm, e major scale,
  eighth notes, very soft' (chord clips: 'g# diminished chord'). Every word of it is one
  token of the organism's T5 tokenizer (`words`)."""
  program = re.sub(r"[^a-z0-9 ]", "", labels["program"].lower())
  quality = labels.get("mode") if labels["family"] == "scale" else labels.get("chord")
  return (f"{program}, {labels['tempo']} bpm, {labels['key'].lower()} {quality} "
          f"{labels['family']}, {DENSITY.get(int(labels['density']), str(labels['density']) + ' per beat')}, "
          f"{DYNAMICS[labels['dynamics']]}")


def words(captions) -> list[str]:
  """Every distinct word of the captions, in first-seen order."""
  out = {}
  for c in captions:
    for w in c.replace(",", " ").split():
      out[w] = None
  return list(out)


def load_clips(folder: str, sample_rate: int, duration: float) -> dict:
  """The concept folder's clips as one [N, samples] float32 array, with ids, labels and
  captions. Every clip must be at `sample_rate` (render the set at the organism's rate)."""
  import soundfile as sf
  meta = os.path.join(folder, "metadata.jsonl")
  if not os.path.exists(meta):
    raise OrganismError(f"{meta} is missing: render the concept set first "
                        f"(python -m launch.make_concepts --out={folder})")
  rows = list(concepts.read_metadata(folder))
  n = int(round(duration * sample_rate))
  wav = np.zeros((len(rows), n), np.float32)
  for i, r in enumerate(rows):
    x, sr = sf.read(os.path.join(folder, r["path"]), dtype="float32", always_2d=True)
    if sr != sample_rate:
      raise OrganismError(f"{r['path']} is at {sr} Hz; the organism runs at {sample_rate} Hz "
                          f"(render with --config.concepts.sample_rate={sample_rate})")
    x = x.mean(1)[:n]
    wav[i, :len(x)] = x
  return {"ids": [r["id"] for r in rows], "labels": [r["labels"] for r in rows],
          "captions": [caption(r["labels"]) for r in rows], "wav": wav}


def split(n: int, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, held-out indices): a seeded random split of n clips."""
  if not 0 < heldout_fraction < 1:
    raise OrganismError(f"organism.heldout_fraction={heldout_fraction} must be in (0, 1)")
  perm = np.random.default_rng([int(seed), 0x0E6A]).permutation(n)
  k = max(1, int(round(heldout_fraction * n)))
  if k >= n:
    raise OrganismError(f"{n} clips are too few to hold out {heldout_fraction:.0%}")
  return np.sort(perm[k:]), np.sort(perm[:k])


def validation_split(train: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(fit, validation): a seeded split of the training indices for model selection, so the
  held-out clips are never used to choose a checkpoint. fraction 0 = no validation."""
  train = np.asarray(train)
  if fraction <= 0:
    return train, train[:0]
  if fraction >= 1:
    raise OrganismError(f"organism.lm.val_fraction={fraction} must be in [0, 1)")
  perm = np.random.default_rng([int(seed), 0x7A1]).permutation(len(train))
  k = max(1, int(round(fraction * len(train))))
  return np.sort(train[perm[k:]]), np.sort(train[perm[:k]])
