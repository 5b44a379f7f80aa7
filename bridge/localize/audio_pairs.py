"""Pairs of audio clips that differ in one labelled concept, for activation patching.

A concept folder (`launch.make_concepts`, or any `extract.audio.dataset` spec with labels)
gives clips with exact labels. For a concept `KEY` (or `KEY:A/B`, values A and B only) a
pair is two clips whose `KEY` differs; it is *minimal* when every other label agrees (a
label a clip lacks, e.g. `chord` on a scale clip, counts as the value None). Pairs are
chosen fewest-other-differences first, clips used once where possible, ties broken by
the seed. When no exact minimal pair exists the nearest pairs are used and each pair
records the labels it also differs in (`other_diffs`), so the report can say so.

`codes(model, items, frames)` loads and encodes the clips exactly as audio extraction
does (bridge/capture/from_audio.py: `load_window`, the model's EnCodec).
"""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np


class AudioPairError(ValueError):
  """A bad audio concept spec, or a dataset with no pair for it (the message says which)."""


def parse_audio_concept(spec: str) -> tuple[str, str | None, str | None]:
  """`'tempo'` -> ('tempo', None, None); `'tempo:60/120'` -> ('tempo', '60', '120')."""
  key, sep, vals = str(spec).partition(":")
  a, _, b = vals.partition("/")
  if not key or (sep and (not a or not b or a == b)):
    raise AudioPairError(f"audio concept {spec!r}: expected a label name (e.g. tempo) or "
                         f"LABEL:A/B with two different values (e.g. tempo:60/120)")
  return key, (a if sep else None), (b if sep else None)


def _natural(v) -> tuple:
  """Sort numbers numerically, then everything else as text."""
  try:
    return (0, float(v), "")
  except (TypeError, ValueError):
    return (1, 0.0, str(v))


@dataclasses.dataclass(frozen=True)
class Pair:
  a: object                 # AudioItem with value_a
  b: object                 # AudioItem with value_b
  value_a: str
  value_b: str
  other_diffs: tuple        # the other labels the two clips differ in (() = minimal pair)

  def to_dict(self) -> dict:
    return {"id_a": self.a.id, "id_b": self.b.id, "value_a": self.value_a,
            "value_b": self.value_b, "other_diffs": list(self.other_diffs)}


def find_pairs(items, spec: str, n: int, seed: int = 0) -> list[Pair]:
  """Up to n pairs for `spec`, fewest other differing labels first (see module doc)."""
  key, va, vb = parse_audio_concept(spec)
  have = [it for it in items if it.labels.get(key) is not None]
  values = sorted({str(it.labels[key]) for it in have}, key=_natural)
  if va is not None and (va not in values or vb not in values):
    raise AudioPairError(f"audio concept {spec!r}: the dataset's {key!r} values are "
                         f"{values or 'absent'}")
  if len(values) < 2:
    raise AudioPairError(f"audio concept {spec!r}: needs clips with two different {key!r} "
                         f"values; the dataset has {values or 'none'}")
  others = sorted(set().union(*(it.labels for it in items)) - {key})
  rank = {v: i for i, v in enumerate(values)}
  tie = np.random.default_rng([int(seed), 0xA0D1]).permutation(len(have) ** 2)
  cands = []
  for i, j in itertools.combinations(range(len(have)), 2):
    x, y = have[i], have[j]
    sx, sy = str(x.labels[key]), str(y.labels[key])
    if sx == sy:
      continue
    if va is not None:
      if {sx, sy} != {va, vb}:
        continue
      if sx != va:
        x, y, sx, sy = y, x, sy, sx
    elif rank[sx] > rank[sy]:
      x, y, sx, sy = y, x, sy, sx
    diffs = tuple(o for o in others if str(x.labels.get(o)) != str(y.labels.get(o)))
    cands.append((len(diffs), int(tie[i * len(have) + j]), Pair(x, y, sx, sy, diffs)))
  cands.sort(key=lambda c: c[:2])
  chosen, taken, used = [], set(), set()
  for reuse in (False, True):                   # disjoint pairs first, then reuse clips
    for _, _, p in cands:
      if len(chosen) >= n:
        break
      if (p.a.id, p.b.id) in taken or (not reuse and (p.a.id in used or p.b.id in used)):
        continue
      chosen.append(p)
      taken.add((p.a.id, p.b.id))
      used |= {p.a.id, p.b.id}
  chosen.sort(key=lambda p: len(p.other_diffs))
  return chosen


def codes(model, items, frames: int):
  """Codes [B, K, frames] of the clips' first window (at each item's offset), encoded by
  the model's compression model, as audio extraction encodes them."""
  from bridge.capture import from_audio
  from bridge.models import backends
  info = backends.model_info(model)
  hop = int(round(info.sample_rate / info.frame_rate))
  dur = frames * hop / info.sample_rate
  wavs = np.stack([from_audio.load_window(it.audio, it.sample_rate, info.sample_rate,
                                             it.offset_s, dur)[0] for it in items])
  return from_audio.encode(model, wavs, frames)
