"""Prompt sets: the built-in emotion set and loaders for .txt / .jsonl / MusicCaps-style .csv.

A prompt is `{"text": str, "labels": {name: value}}`. Labels are what analysis later
correlates features with, so the emotion set labels every aspect it varies (emotion,
instrument, genre, intensity, scene), with instrument and genre drawn independently of
emotion so they can be told apart.
"""
from __future__ import annotations

import ast
import csv
import itertools
import json
import random
from pathlib import Path

EMOTIONS = ("happy", "sad", "calm", "energetic")

_MOOD_WORDS = {
    "happy": ["happy", "joyful", "cheerful", "uplifting", "playful", "sunny"],
    "sad": ["sad", "melancholic", "mournful", "sorrowful", "heartbroken", "wistful"],
    "calm": ["calm", "peaceful", "serene", "soothing", "tranquil", "gentle"],
    "energetic": ["energetic", "driving", "powerful", "fiery", "pumping", "high-energy"],
}
_SCENES = {
    "happy": ["for a summer picnic", "for a birthday party", "on a sunny morning walk",
              "at a wedding dance", "for a road trip with friends", "at a spring festival"],
    "sad": ["for a rainy night alone", "at a farewell", "remembering a lost friend",
            "in an empty train station", "on a grey winter afternoon", "after a breakup"],
    "calm": ["for meditation", "by a quiet lake at dawn", "for falling asleep",
             "in a misty forest", "for reading by the fire", "on a slow Sunday morning"],
    "energetic": ["for a workout", "for a car chase", "at a stadium concert",
                  "for a sprint finish", "at a late-night club", "for a dance battle"],
}
_INTENSITY = ["soft", "moderate", "intense"]
INSTRUMENTS = ["piano", "acoustic guitar", "electric guitar", "violin", "cello", "drums",
               "synthesizer", "flute", "strings", "trumpet", "saxophone", "organ"]
GENRES = ["pop", "rock", "jazz", "classical", "ambient", "electronic", "folk", "lo-fi hip hop",
          "cinematic", "funk"]
_TEMPLATES = [
    "{intensity} {mood} {genre} music with {instrument}, {scene}",
    "a {mood} {genre} piece led by {instrument}, {intensity} dynamics, {scene}",
    "{mood} {instrument} {genre} track, {intensity}, {scene}",
]


class PromptFileError(ValueError):
  """A prompt file that is missing, empty or malformed (the message names file and line)."""


def emotion_prompts(per_emotion: int = 120) -> list[dict]:
  """The built-in emotion set, `per_emotion` distinct prompts each, deterministic.

  Ordered round-robin over emotions, so any prefix (and any fixed-size batch) is balanced.
  """
  per = {}
  for emo in EMOTIONS:
    combos = list(itertools.product(INSTRUMENTS, GENRES, _INTENSITY, range(len(_SCENES[emo]))))
    rng = random.Random(f"musicsae-emotions-{emo}")  # str seeds are stable across runs
    rng.shuffle(combos)
    if per_emotion > len(combos):
      raise ValueError(f"per_emotion={per_emotion} exceeds the {len(combos)} combinations")
    rows = []
    for k, (inst, genre, inten, s) in enumerate(combos[:per_emotion]):
      mood = _MOOD_WORDS[emo][k % len(_MOOD_WORDS[emo])]
      scene = _SCENES[emo][s]
      text = _TEMPLATES[k % len(_TEMPLATES)].format(
          intensity=inten, mood=mood, genre=genre, instrument=inst, scene=scene)
      rows.append({"text": text[0].upper() + text[1:],
                   "labels": {"emotion": emo, "instrument": inst, "genre": genre,
                              "intensity": inten, "scene": scene}})
    per[emo] = rows
  return [per[e][i] for i in range(per_emotion) for e in EMOTIONS]


def subsample(prompts: list[dict], per_label: int | None, label: str = "emotion") -> list[dict]:
  """The first `per_label` prompts of each value of `label`, in the original order."""
  if not per_label:
    return list(prompts)
  seen: dict = {}
  out = []
  for p in prompts:
    v = json.dumps(p.get("labels", {}).get(label), sort_keys=True)
    if seen.get(v, 0) < per_label:
      seen[v] = seen.get(v, 0) + 1
      out.append(p)
  return out


# --------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------
def load_txt(path) -> list[dict]:
  """One prompt per non-blank line; lines starting with '#' are comments."""
  out = []
  for line in _read_lines(path):
    s = line.strip()
    if s and not s.startswith("#"):
      out.append({"text": s, "labels": {}})
  return _nonempty(out, path, "no prompt lines (one prompt per line; '#' starts a comment)")


def load_jsonl(path) -> list[dict]:
  """One JSON object per line: {"text": str, "labels": {...}} (labels optional)."""
  out = []
  for n, line in enumerate(_read_lines(path), 1):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise PromptFileError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
      raise PromptFileError(f'{path}:{n}: expected an object with a non-empty "text" string, '
                            f"got {line.strip()[:80]!r}")
    labels = obj.get("labels", {})
    if not isinstance(labels, dict):
      raise PromptFileError(f'{path}:{n}: "labels" must be an object, got {labels!r}')
    out.append({"text": obj["text"].strip(), "labels": labels})
  return _nonempty(out, path, 'no prompts (expected one {"text": ..., "labels": {...}} per line)')


def load_csv(path) -> list[dict]:
  """MusicCaps-style CSV: a `caption` column (the text) and an optional `aspect_list`
  column (a Python/JSON list of strings) that becomes the `aspects` label."""
  lines = _read_lines(path)
  reader = csv.DictReader(lines)
  cols = reader.fieldnames or []
  if "caption" not in cols:
    raise PromptFileError(f"{path}:1: expected a header with a 'caption' column "
                          f"(MusicCaps style), got columns {cols}")
  out = []
  for row in reader:
    n = reader.line_num
    text = (row.get("caption") or "").strip()
    if not text:
      raise PromptFileError(f"{path}:{n}: empty caption")
    labels = {}
    if row.get("aspect_list"):
      try:
        aspects = ast.literal_eval(row["aspect_list"])
      except (ValueError, SyntaxError):
        raise PromptFileError(f"{path}:{n}: aspect_list is not a list literal: "
                              f"{row['aspect_list'][:80]!r}") from None
      if not isinstance(aspects, (list, tuple)) or not all(isinstance(a, str) for a in aspects):
        raise PromptFileError(f"{path}:{n}: aspect_list must be a list of strings")
      labels["aspects"] = list(aspects)
    if row.get("ytid"):
      labels["ytid"] = row["ytid"]
    out.append({"text": text, "labels": labels})
  return _nonempty(out, path, "no data rows under the header")


_LOADERS = {".txt": load_txt, ".jsonl": load_jsonl, ".csv": load_csv}


def load_prompts(source: str) -> list[dict]:
  """`'emotions'` (the built-in set) or a path to a .txt, .jsonl or .csv file."""
  if source == "emotions":
    return emotion_prompts()
  path = Path(source)
  loader = _LOADERS.get(path.suffix.lower())
  if loader is None:
    raise PromptFileError(f"{source}: unknown prompt source; use 'emotions' or a file ending "
                          f"in {', '.join(_LOADERS)}")
  return loader(path)


def _read_lines(path) -> list[str]:
  try:
    with open(path, encoding="utf-8", newline="") as f:
      return f.read().splitlines()
  except FileNotFoundError:
    raise PromptFileError(f"{path}: prompt file not found") from None
  except UnicodeDecodeError as e:
    raise PromptFileError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _nonempty(rows, path, why):
  if not rows:
    raise PromptFileError(f"{path}: empty prompt file: {why}")
  return rows
