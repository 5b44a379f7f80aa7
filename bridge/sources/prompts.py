"""Prompt sets: the built-in emotion set and loaders for .txt / .jsonl / MusicCaps-style .csv.

A prompt is `{"text": str, "labels": {name: value}}`. Labels are what analysis later
correlates features with, so the emotion set labels every aspect it varies (emotion,
instrument, genre, intensity, scene), with instrument and genre drawn independently of
emotion so they can be told apart.

Every training prompt names its mood (`_MOOD_WORDS`) and an emotion-laden scene, so a
probe could succeed on words alone. Every `heldout_every`-th prompt of each emotion is
therefore a held-out-vocabulary prompt (`"split": "heldout_vocab"`): it describes the
music that carries the emotion (key and harmony, tempo in bpm, articulation, rhythm,
texture) and shares no emotion-bearing word with the training prompts. The rule, checked
by tests/test_prompts.py:
  1. every word of a held-out prompt is either used by the training prompts of every
     emotion (instrument, genre and template words) or by none of them;
  2. no word (nor part of a hyphenated word) equals a label word, a training mood word
     or a listed affect synonym (`AFFECT_SYNONYMS`), or starts with one of 4 letters or
     more (e.g. "sorrow" also rules out "sorrowing"; "fun" rules out "fun", not "funk").
A feature or probe that reads the mood words does well on training-vocabulary prompts and
falls to chance on these; one that reads the music does well on both.
"""
from __future__ import annotations

import ast
import csv
import itertools
import json
import random
import re
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
# Affect words a held-out prompt must not use, besides the label words and _MOOD_WORDS:
# synonyms and near-synonyms of each emotion, as whole words or stems (an entry of 4+
# letters also rules out every word starting with it), with the forms a stem does not
# catch listed (energy vs energetic).
AFFECT_SYNONYMS = {
    "happy": ["happiness", "glad", "merry", "jolly", "cheer", "upbeat", "joy", "joyous",
              "delight", "elated", "euphori", "bliss", "glee", "festive", "carefree",
              "lighthearted", "light-hearted", "optimis", "bubbly", "exuberan", "fun",
              "bright", "celebrat", "sunshine", "smil"],
    "sad": ["sorrow", "melanchol", "gloom", "somber", "sombre", "tear", "grief", "griev",
            "blue", "depress", "downcast", "doleful", "lament", "plaintive", "tragic",
            "heartbreak", "lonel", "forlorn", "bleak", "desolat", "elegi", "dark", "bitter",
            "dreary", "mourn", "weep", "cry", "cries", "crying", "longing", "nostalgi",
            "regret"],
    "calm": ["relax", "rest", "quiet", "still", "placid", "mellow", "chill", "laid-back",
             "meditat", "dream", "hush", "lull", "easygoing", "soft", "peace", "sooth",
             "tranquil", "serene", "ease", "zen", "sleep", "lullab", "breez", "warm"],
    "energetic": ["energy", "energi", "lively", "vigor", "vigour", "dynamic", "excit",
                  "thrill", "intens", "hype", "frantic", "furious", "aggressi", "explosi",
                  "punch", "rousing", "vibrant", "spirit", "pump", "adrenalin", "power",
                  "fierce", "wild", "rage", "hard-hitting", "upbeat", "bold", "fast", "slow"],
}
# Held-out-vocabulary descriptors: what the music does, not what it feels like.
_HELDOUT_VOCAB = {
    "happy": {"key": ["major key", "major triads", "major-key harmony"],
              "tempo": ["120 bpm", "126 bpm", "132 bpm"],
              "motion": ["staccato syncopated melody", "swung eighth-note rhythm",
                         "upward melodic leaps", "pizzicato bass line"]},
    "sad": {"key": ["minor key", "minor triads", "minor-key harmony"],
            "tempo": ["56 bpm", "60 bpm", "64 bpm"],
            "motion": ["descending melodic lines", "long legato phrases",
                       "sustained notes over sparse accompaniment", "rubato phrasing"]},
    "calm": {"key": ["major seventh chords", "suspended chords", "modal harmony over a drone"],
             "tempo": ["70 bpm", "74 bpm", "78 bpm"],
             "motion": ["long reverb tails", "sparse arpeggios", "pianissimo pads",
                        "sustained chords without percussion"]},
    "energetic": {"key": ["distorted riffs", "syncopated horn stabs", "accented downbeats"],
                  "tempo": ["150 bpm", "160 bpm", "174 bpm"],
                  "motion": ["kick drum every beat", "constant sixteenth-note hi-hats",
                             "fortissimo accents", "loud distorted bass"]},
}
_HELDOUT_TEMPLATES = [
    "{genre} music with {instrument}: {key}, {tempo}, {motion}",
    "a {genre} piece led by {instrument}, {motion}, {key} at {tempo}",
    "{instrument} {genre} track, {tempo}, {key} and {motion}",
]
TRAIN, HELDOUT_VOCAB = "train", "heldout_vocab"   # the prompt's "split" (prompts.jsonl)
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


def emotion_prompts(per_emotion: int = 120, heldout_every: int = 4) -> list[dict]:
  """The built-in emotion set, `per_emotion` distinct prompts each, deterministic.

  Every `heldout_every`-th prompt of each emotion (positions heldout_every-1, 2*heldout_every-1,
  ...) is a held-out-vocabulary prompt (`"split": "heldout_vocab"`, see the module doc);
  the others are training prompts (`"split": "train"`). 0 = training prompts only.
  Ordered round-robin over emotions, so any prefix (and any fixed-size batch) is balanced.
  """
  per = {}
  for emo in EMOTIONS:
    combos = list(itertools.product(INSTRUMENTS, GENRES, _INTENSITY, range(len(_SCENES[emo]))))
    rng = random.Random(f"musicsae-emotions-{emo}")  # str seeds are stable across runs
    rng.shuffle(combos)
    if per_emotion > len(combos):
      raise ValueError(f"per_emotion={per_emotion} exceeds the {len(combos)} combinations")
    held = _heldout_vocab_prompts(emo)
    rows, k, h = [], 0, 0
    for pos in range(per_emotion):
      if heldout_every and pos % heldout_every == heldout_every - 1:
        rows.append(held[h])
        h += 1
        continue
      inst, genre, inten, s = combos[k]
      mood = _MOOD_WORDS[emo][k % len(_MOOD_WORDS[emo])]
      scene = _SCENES[emo][s]
      text = _TEMPLATES[k % len(_TEMPLATES)].format(
          intensity=inten, mood=mood, genre=genre, instrument=inst, scene=scene)
      rows.append({"text": text[0].upper() + text[1:],
                   "labels": {"emotion": emo, "instrument": inst, "genre": genre,
                              "intensity": inten, "scene": scene}, "split": TRAIN})
      k += 1
    per[emo] = rows
  return [per[e][i] for i in range(per_emotion) for e in EMOTIONS]


def _heldout_vocab_prompts(emo: str) -> list[dict]:
  """Held-out-vocabulary prompts of one emotion, in a fixed shuffled order (instrument and
  genre drawn from the same lists as the training prompts)."""
  v = _HELDOUT_VOCAB[emo]
  combos = list(itertools.product(INSTRUMENTS, GENRES, v["key"], v["tempo"], v["motion"]))
  random.Random(f"musicsae-emotions-heldout-{emo}").shuffle(combos)
  out = []
  for j, (inst, genre, key, tempo, motion) in enumerate(combos):
    text = _HELDOUT_TEMPLATES[j % len(_HELDOUT_TEMPLATES)].format(
        genre=genre, instrument=inst, key=key, tempo=tempo, motion=motion)
    out.append({"text": text[0].upper() + text[1:],
                "labels": {"emotion": emo, "instrument": inst, "genre": genre},
                "split": HELDOUT_VOCAB})
  return out


def heldout_vocab_violations(prompts: list[dict], label: str = "emotion") -> list[str]:
  """Why each held-out-vocabulary prompt breaks the module doc's rule ([] when none does).

  Rule 1 compares with the words of the training prompts (`split` "train" or absent) per
  value of `label`; rule 2 with the label values, `_MOOD_WORDS` and `AFFECT_SYNONYMS`.
  """
  def words(text):
    out = []
    for w in re.findall(r"[a-z0-9]+(?:[-'][a-z0-9]+)*", text.lower()):
      out += [w] + (w.split("-") if "-" in w else [])
    return out

  train = [p for p in prompts if p.get("split", TRAIN) != HELDOUT_VOCAB]
  values = {str((p.get("labels") or {}).get(label)) for p in train}
  seen: dict[str, set] = {}
  for p in train:
    for w in words(p["text"]):
      seen.setdefault(w, set()).add(str((p.get("labels") or {}).get(label)))
  lexicon = set(EMOTIONS) | values | {w for ws in _MOOD_WORDS.values() for w in ws} | {
      w for ws in AFFECT_SYNONYMS.values() for w in ws}
  out = []
  for p in prompts:
    if p.get("split") != HELDOUT_VOCAB:
      continue
    for w in words(p["text"]):
      if w in seen and seen[w] != values:
        out.append(f"{p['text']!r}: {w!r} is used by the training prompts of "
                   f"{sorted(seen[w])} only (rule 1)")
      hit = [f for f in lexicon if w == f or (len(f) >= 4 and w.startswith(f))]
      if hit:
        out.append(f"{p['text']!r}: {w!r} matches the affect word {hit[0]!r} (rule 2)")
  return out


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
  """One JSON object per line: {"text": str, "labels": {...}, "split": "train" |
  "heldout_vocab"} (labels and split optional)."""
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
    row = {"text": obj["text"].strip(), "labels": labels}
    if "split" in obj:
      if obj["split"] not in (TRAIN, HELDOUT_VOCAB):
        raise PromptFileError(f'{path}:{n}: "split" must be "{TRAIN}" or "{HELDOUT_VOCAB}", '
                              f"got {obj['split']!r}")
      row["split"] = obj["split"]
    out.append(row)
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
