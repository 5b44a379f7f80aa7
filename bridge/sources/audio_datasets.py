"""Audio dataset plugins: where real (or rendered) audio comes from, with captions and labels.

A plugin is anything with `iter_items()` yielding `AudioItem`s (or tuples
`(id, audio, caption, labels[, sample_rate])`); `audio` is a file path or a float array
with its `sample_rate`. `open_audio_dataset(spec)` turns a config string into one:

    folder:<dir or metadata file>      metadata.jsonl / metadata.csv next to the audio
    musiccaps:<dir or csv>             musiccaps-public.csv, audio/<ytid>.<ext>
    song_describer:<dir or csv>        song_describer.csv, audio/<path>
    mtg_jamendo:<tsv>                  TRACK_ID, ARTIST_ID, ALBUM_ID, PATH, DURATION, TAGS...
    fma:<dir or tracks.csv>            fma_metadata/tracks.csv, fma_<size>/<nnn>/<id>.mp3
    <file.py>[:<location>]             a user plugin: the file defines iter_items(location)

`audio_root` (config `extract.audio.audio_root`) overrides where a built-in looks for the
audio; the defaults above follow each dataset's published layout. The folder layout is
the project's own contract (launch.make_concepts writes it):

    <dir>/metadata.jsonl   {"id": str, "path": audio path relative to <dir>,
                            "caption": str, "labels": {concept: value, ...}} per line
    <dir>/metadata.csv     or: columns id, path, caption; every other column is a label
"""
from __future__ import annotations

import ast
import csv
import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg")


class AudioDatasetError(ValueError):
  """A dataset spec, metadata file or plugin that does not match its documented layout."""


@dataclasses.dataclass
class AudioItem:
  """One clip. `offset_s`: where its music starts inside the file (MusicCaps-style excerpts)."""
  id: str
  audio: Any                      # str path, or np.ndarray [n] / [C, n]
  caption: str = ""
  labels: dict = dataclasses.field(default_factory=dict)
  sample_rate: int | None = None  # required when `audio` is an array
  offset_s: float = 0.0


def as_item(x, where: str) -> AudioItem:
  """An AudioItem from a plugin's yield (an AudioItem or `(id, audio, caption, labels)`)."""
  if isinstance(x, AudioItem):
    item = x
  elif isinstance(x, (tuple, list)) and len(x) in (4, 5):
    item = AudioItem(*x)
  else:
    raise AudioDatasetError(f"{where}: iter_items() must yield AudioItem or (id, audio, caption, "
                            f"labels[, sample_rate]) tuples, got {type(x).__name__}")
  if not isinstance(item.id, str) or not item.id:
    raise AudioDatasetError(f"{where}: item id must be a non-empty string, got {item.id!r}")
  item.caption = "" if item.caption is None else item.caption
  if not isinstance(item.caption, str):
    raise AudioDatasetError(f"{where}: item {item.id!r}: caption must be a string")
  if not isinstance(item.labels, dict):
    raise AudioDatasetError(f"{where}: item {item.id!r}: labels must be a dict")
  if isinstance(item.audio, Path):
    item.audio = str(item.audio)
  if isinstance(item.audio, np.ndarray):
    if not item.sample_rate:
      raise AudioDatasetError(f"{where}: item {item.id!r}: an array needs its sample_rate")
  elif not isinstance(item.audio, str):
    raise AudioDatasetError(f"{where}: item {item.id!r}: audio must be a path or an array")
  return item


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def _meta_file(location: str, default_name: str, what: str) -> Path:
  """`location` itself if a file, else `<location>/<default_name>`; must exist."""
  p = Path(location).expanduser()
  f = p / default_name if p.is_dir() else p
  if not f.is_file():
    raise AudioDatasetError(f"{what}: no metadata file at {f} (expected {default_name} in the "
                            f"dataset directory, or the file's own path)")
  return f


def _read_csv(path: Path, delimiter: str = ",") -> list[dict]:
  with open(path, encoding="utf-8", newline="") as f:
    return list(csv.DictReader(f, delimiter=delimiter))


def _need_columns(path: Path, rows: list[dict], cols: Iterable[str]) -> None:
  have = list(rows[0]) if rows else []
  missing = [c for c in cols if c not in have]
  if not rows or missing:
    raise AudioDatasetError(f"{path}: expected columns {', '.join(cols)}; "
                            f"{'no data rows' if not rows else f'missing {missing}, has {have}'}")


def _find_audio(root: Path, stem: str) -> str:
  """`root/stem` if it exists, else `root/stem.<ext>` for the first extension that exists;
  a missing file returns the first candidate (the loader reports it)."""
  cands = [root / stem] + [root / (stem + e) for e in AUDIO_EXTS]
  for c in cands:
    if c.is_file():
      return str(c)
  return str(cands[1] if Path(stem).suffix.lower() not in AUDIO_EXTS else cands[0])


def _list_literal(s: str) -> list:
  """A Python/JSON list literal (MusicCaps aspect_list, Song Describer tag lists)."""
  s = (s or "").strip()
  if not s:
    return []
  try:
    v = ast.literal_eval(s)
  except (ValueError, SyntaxError):
    return [t.strip() for t in s.split(",") if t.strip()]
  return list(v) if isinstance(v, (list, tuple)) else [v]


# --------------------------------------------------------------------------------------
# Built-ins
# --------------------------------------------------------------------------------------
class Folder:
  """A folder of audio with metadata.jsonl (or metadata.csv): the project's own layout."""

  def __init__(self, location: str, audio_root: str = ""):
    p = Path(location).expanduser()
    if p.is_dir():
      cands = [p / "metadata.jsonl", p / "metadata.csv"]
      found = [c for c in cands if c.is_file()]
      if not found:
        raise AudioDatasetError(f"folder:{location}: expected metadata.jsonl or metadata.csv "
                                f"in {p}")
      self.meta = found[0]
    elif p.is_file():
      self.meta = p
    else:
      raise AudioDatasetError(f"folder:{location}: no such directory or metadata file")
    self.root = Path(audio_root).expanduser() if audio_root else self.meta.parent

  def _rows(self) -> Iterator[tuple[int, dict]]:
    if self.meta.suffix.lower() == ".csv":
      rows = _read_csv(self.meta)
      _need_columns(self.meta, rows, ("id", "path"))
      for n, r in enumerate(rows, 2):
        labels = {k: v for k, v in r.items() if k not in ("id", "path", "caption") and k}
        yield n, {"id": r["id"], "path": r["path"], "caption": r.get("caption") or "",
                  "labels": labels}
      return
    with open(self.meta, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          obj = json.loads(line)
        except json.JSONDecodeError as e:
          raise AudioDatasetError(f"{self.meta}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("path"), str):
          raise AudioDatasetError(f'{self.meta}:{n}: expected {{"id", "path", "caption", '
                                  f'"labels"}}, got {line.strip()[:80]!r}')
        yield n, obj

  def iter_items(self) -> Iterator[AudioItem]:
    for n, r in self._rows():
      where = f"{self.meta}:{n}"
      item_id = r.get("id")
      item_id = str(item_id) if item_id not in (None, "") else Path(r["path"]).stem
      labels = r.get("labels") or {}
      if not isinstance(labels, dict):
        raise AudioDatasetError(f'{where}: "labels" must be an object, got {labels!r}')
      yield as_item(AudioItem(id=item_id, audio=str(self.root / r["path"]),
                              caption=r.get("caption") or "", labels=labels), where)


class MusicCaps:
  """musiccaps-public.csv (ytid, start_s, end_s, audioset_positive_labels, aspect_list,
  caption, author_id, is_balanced_subset, is_audioset_eval); audio/<ytid>.<ext> holds the
  10 s excerpts as the usual download scripts cut them (offset 0)."""

  def __init__(self, location: str, audio_root: str = ""):
    self.meta = _meta_file(location, "musiccaps-public.csv", f"musiccaps:{location}")
    self.root = Path(audio_root).expanduser() if audio_root else self.meta.parent / "audio"

  def iter_items(self) -> Iterator[AudioItem]:
    rows = _read_csv(self.meta)
    _need_columns(self.meta, rows, ("ytid", "start_s", "end_s", "caption"))
    for r in rows:
      labels = {"aspects": [str(a) for a in _list_literal(r.get("aspect_list", ""))],
                "audioset": r.get("audioset_positive_labels", ""),
                "start_s": float(r["start_s"]), "end_s": float(r["end_s"])}
      for k in ("is_balanced_subset", "is_audioset_eval"):
        if k in r:
          labels[k] = r[k]
      yield AudioItem(id=r["ytid"], audio=_find_audio(self.root, r["ytid"]),
                      caption=r["caption"].strip(), labels=labels)


class SongDescriber:
  """song_describer.csv (caption_id, track_id, caption, is_valid_subset, familiarity,
  artist_id, album_id, path, duration[, genre, instrument, mood/theme]); one item per
  caption (a track with two captions is two items); audio/<path>."""

  def __init__(self, location: str, audio_root: str = ""):
    self.meta = _meta_file(location, "song_describer.csv", f"song_describer:{location}")
    self.root = Path(audio_root).expanduser() if audio_root else self.meta.parent / "audio"

  def iter_items(self) -> Iterator[AudioItem]:
    rows = _read_csv(self.meta)
    _need_columns(self.meta, rows, ("caption_id", "track_id", "caption", "path"))
    for r in rows:
      labels = {k: r[k] for k in ("track_id", "artist_id", "album_id", "is_valid_subset",
                                  "familiarity") if k in r}
      for k in ("genre", "instrument", "mood/theme"):
        if r.get(k):
          tags = [str(t) for t in _list_literal(r[k])]
          labels[k.replace("/", "_")] = tags[0] if tags else ""
          labels[k.replace("/", "_") + "_all"] = tags
      yield AudioItem(id=str(r["caption_id"]), audio=_find_audio(self.root, r["path"]),
                      caption=r["caption"].strip(), labels=labels)


class MTGJamendo:
  """An MTG-Jamendo tag TSV (autotagging*.tsv, raw_30s_cleantags*.tsv): header TRACK_ID,
  ARTIST_ID, ALBUM_ID, PATH, DURATION, TAGS, then one tab-separated field per tag
  (`genre---rock`, `instrument---piano`, `mood/theme---happy`). Labels: per category the
  first tag (`genre`) and all of them (`genre_all`). Audio at <audio_root>/<PATH>
  (default: audio/ beside the TSV); the low-quality copies' `.low.mp3` names are found too."""

  CATEGORIES = {"genre": "genre", "instrument": "instrument", "mood/theme": "mood_theme"}

  def __init__(self, location: str, audio_root: str = ""):
    self.meta = _meta_file(location, "autotagging.tsv", f"mtg_jamendo:{location}")
    self.root = Path(audio_root).expanduser() if audio_root else self.meta.parent / "audio"

  def iter_items(self) -> Iterator[AudioItem]:
    with open(self.meta, encoding="utf-8", newline="") as f:
      lines = [ln.rstrip("\n").rstrip("\r") for ln in f if ln.strip()]
    head = lines[0].split("\t") if lines else []
    want = ["TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH", "DURATION", "TAGS"]
    if head[:6] != want:
      raise AudioDatasetError(f"{self.meta}:1: expected the MTG-Jamendo header "
                              f"{' '.join(want)} (tab-separated), got {head}")
    for n, line in enumerate(lines[1:], 2):
      cols = line.split("\t")
      if len(cols) < 5:
        raise AudioDatasetError(f"{self.meta}:{n}: expected >= 5 tab-separated fields")
      labels: dict = {"artist_id": cols[1], "album_id": cols[2], "duration_s": float(cols[4])}
      for tag in cols[5:]:
        cat, _, value = tag.partition("---")
        key = self.CATEGORIES.get(cat, cat.replace("/", "_"))
        labels.setdefault(key + "_all", []).append(value)
      for key in list(labels):
        if key.endswith("_all"):
          labels[key[:-4]] = labels[key][0]
      path = self.root / cols[3]
      if not path.is_file() and path.suffix == ".mp3":
        low = path.with_suffix(".low.mp3")
        path = low if low.is_file() else path
      yield AudioItem(id=cols[0], audio=str(path), caption="", labels=labels)


class FMA:
  """FMA: fma_metadata/tracks.csv (two header rows: top level, field; then a `track_id`
  row) and audio in fma_<size>/<first 3 digits>/<6-digit id>.mp3 (the first size folder
  holding the file). Labels: genre_top, subset, split. Captions: none."""

  SIZES = ("fma_small", "fma_medium", "fma_large", "fma_full")

  def __init__(self, location: str, audio_root: str = ""):
    p = Path(location).expanduser()
    default = p / "fma_metadata" / "tracks.csv"
    self.meta = default if p.is_dir() and default.is_file() else \
        _meta_file(location, "tracks.csv", f"fma:{location}")
    base = self.meta.parent.parent if self.meta.parent.name == "fma_metadata" else self.meta.parent
    self.roots = ([Path(audio_root).expanduser()] if audio_root
                  else [base / s for s in self.SIZES if (base / s).is_dir()] or [base])

  def iter_items(self) -> Iterator[AudioItem]:
    with open(self.meta, encoding="utf-8", newline="") as f:
      rows = list(csv.reader(f))
    if len(rows) < 3:
      raise AudioDatasetError(f"{self.meta}: expected FMA's two header rows and a track_id row")
    top, field = rows[0], rows[1]
    cols = {(t, s): i for i, (t, s) in enumerate(zip(top, field))}
    need = [("track", "genre_top")]
    if any(c not in cols for c in need):
      raise AudioDatasetError(f"{self.meta}: expected a two-row header with (track, genre_top), "
                              f"as in FMA's fma_metadata/tracks.csv")
    start = 3 if rows[2] and rows[2][0] == "track_id" else 2
    get = lambda r, t, s: r[cols[(t, s)]] if (t, s) in cols and cols[(t, s)] < len(r) else ""
    for r in rows[start:]:
      if not r or not r[0].strip():
        continue
      tid = int(r[0])
      rel = f"{tid:06d}"[:3] + f"/{tid:06d}.mp3"
      path = next((root / rel for root in self.roots if (root / rel).is_file()),
                  self.roots[0] / rel)
      labels = {"genre_top": get(r, "track", "genre_top"), "subset": get(r, "set", "subset"),
                "split": get(r, "set", "split")}
      title = get(r, "track", "title")
      yield AudioItem(id=str(tid), audio=str(path), caption="", labels=labels | {"title": title})


BUILTINS = {"folder": Folder, "musiccaps": MusicCaps, "song_describer": SongDescriber,
            "mtg_jamendo": MTGJamendo, "fma": FMA}


# --------------------------------------------------------------------------------------
# User plugins and the config string
# --------------------------------------------------------------------------------------
class UserPlugin:
  """A Python file defining `iter_items(location: str)`; `location` is the text after ':'."""

  def __init__(self, file: str, location: str = ""):
    path = Path(file).expanduser()
    if not path.is_file():
      raise AudioDatasetError(f"plugin {file}: no such file")
    spec = importlib.util.spec_from_file_location(f"musicsae_audio_plugin_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not callable(getattr(mod, "iter_items", None)):
      raise AudioDatasetError(f"plugin {file}: must define iter_items(location) yielding "
                              f"AudioItem or (id, audio, caption, labels)")
    self.file, self.fn, self.location = str(path), mod.iter_items, location

  def iter_items(self) -> Iterator[AudioItem]:
    for x in self.fn(self.location):
      yield as_item(x, f"plugin {self.file}")


def open_audio_dataset(spec: str, audio_root: str = ""):
  """A plugin from `extract.audio.dataset` (see the module docstring for the forms)."""
  if not spec:
    raise AudioDatasetError("extract.audio.dataset is empty: give folder:<dir>, musiccaps:<dir>, "
                            "song_describer:<dir>, mtg_jamendo:<tsv>, fma:<dir> or <plugin.py>")
  head, sep, rest = spec.partition(":")
  if head.endswith(".py"):
    return UserPlugin(head, rest)
  if head not in BUILTINS or not sep:
    raise AudioDatasetError(f"extract.audio.dataset={spec!r}: expected <name>:<path> with name "
                            f"one of {', '.join(BUILTINS)}, or a plugin file <file.py>[:<arg>]")
  return BUILTINS[head](rest, audio_root=audio_root)


def load_items(spec: str, audio_root: str = "", max_items: int = 0) -> list[AudioItem]:
  """Every item of the dataset (the first `max_items` if > 0); ids must be unique."""
  ds = open_audio_dataset(spec, audio_root)
  out, seen = [], set()
  for x in ds.iter_items():
    item = as_item(x, spec)
    if item.id in seen:
      raise AudioDatasetError(f"{spec}: duplicate item id {item.id!r}")
    seen.add(item.id)
    out.append(item)
    if max_items and len(out) >= max_items:
      break
  if not out:
    raise AudioDatasetError(f"{spec}: the dataset has no items")
  return out
