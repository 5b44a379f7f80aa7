"""The audio source of extraction (`extract.source = "audio"`): dataset items -> windows ->
prompt table, and one batch of windows -> a Capture (codes, rows, the input audio).

A window is one row of the prompt table: `(item, start_s)`. `extract.audio.window`:
`crop` takes one window per item at its offset; `segment` cuts the clip into consecutive
windows of `extract.duration` (the last partial one dropped unless it is the only one).
The table order is the dataset's order, so batches, resume and the worker split are
those of the prompt path (bridge/capture/extract.py); captures are teacher-forced (no sampling),
but a batch stays the unit of determinism: T5 pads each batch's captions to its longest.

Stems: with `extract.audio.stems_dir` and `extract.audio.stem`, each file `<name>.<ext>`
is replaced by `<stems_dir>/<name>/<stem>.wav`, the layout a source separator such as
Demucs writes (`demucs --two-stems=vocals -o out x.mp3` -> out/htdemucs/x/no_vocals.wav),
so instrumental-only capture is: separate outside this project, then point here.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import torch

from bridge.capture import from_audio
from bridge.sources import audio_datasets

CONDITIONING = ("caption", "fixed", "none")
WINDOWS = ("crop", "segment")


class AudioExtractError(ValueError):
  """A bad `extract.audio` config or a dataset that does not fit it."""


@dataclasses.dataclass(frozen=True)
class Window:
  item: audio_datasets.AudioItem
  start_s: float


def stem_path(path: str, stems_dir: str, stem: str) -> str:
  """`<stems_dir>/<file name without extension>/<stem>.wav` (Demucs's output layout)."""
  return str(Path(stems_dir).expanduser() / Path(path).stem / f"{stem}.wav")


def _acfg(ecfg) -> dict:
  a = dict(ecfg.get("audio", {}) or {})
  a.setdefault("conditioning", "caption")
  if a["conditioning"] not in CONDITIONING:
    raise AudioExtractError(f"extract.audio.conditioning={a['conditioning']!r}: expected one "
                            f"of {', '.join(CONDITIONING)}")
  if a["conditioning"] == "fixed" and not (a.get("text") or "").strip():
    raise AudioExtractError("extract.audio.conditioning='fixed' needs extract.audio.text")
  if a.get("window", "crop") not in WINDOWS:
    raise AudioExtractError(f"extract.audio.window={a.get('window')!r}: expected one of "
                            f"{', '.join(WINDOWS)}")
  if a.get("missing", "error") not in ("error", "skip"):
    raise AudioExtractError(f"extract.audio.missing={a.get('missing')!r}: expected error or skip")
  if bool(a.get("stems_dir")) != bool(a.get("stem")):
    raise AudioExtractError("extract.audio.stems_dir and extract.audio.stem go together "
                            "(e.g. stem=no_vocals for Demucs --two-stems=vocals)")
  return a


def plan(ecfg, log) -> tuple[list[dict], list[Window], dict]:
  """(prompt rows, windows, the manifest's `generation` record of the audio source)."""
  a = _acfg(ecfg)
  items = audio_datasets.load_items(a.get("dataset", ""), a.get("audio_root", ""),
                                    int(a.get("max_items", 0) or 0))
  if a.get("stems_dir"):
    for it in items:
      if not isinstance(it.audio, str):
        raise AudioExtractError(f"item {it.id!r}: stems need audio files, not arrays")
      it.audio = stem_path(it.audio, a["stems_dir"], a["stem"])
  missing = [it for it in items if isinstance(it.audio, str) and not os.path.isfile(it.audio)]
  if missing:
    if a.get("missing", "error") == "error":
      raise AudioExtractError(f"{len(missing)} of {len(items)} audio files are missing (first: "
                              f"{missing[0].audio}); set extract.audio.missing=skip to drop them")
    log(f"extract: {len(missing)} of {len(items)} items skipped, audio missing "
        f"(first: {missing[0].audio})")
    gone = {id(it) for it in missing}
    items = [it for it in items if id(it) not in gone]
    if not items:
      raise AudioExtractError(f"{a['dataset']}: no item has its audio")
  dur, offset = float(ecfg.duration), float(a.get("offset_s", 0.0))
  windows = []
  for it in items:
    start = it.offset_s + offset
    if a.get("window", "crop") == "crop":
      windows.append(Window(it, start))
      continue
    length = from_audio.audio_seconds(it.audio, it.sample_rate) - start
    n = max(1, math.floor(length / dur + 1e-9))
    if a.get("max_segments", 0):
      n = min(n, int(a["max_segments"]))
    windows += [Window(it, start + k * dur) for k in range(n)]
  rows = [{"text": w.item.caption or w.item.id, "seed": 0,
           "labels": dict(w.item.labels, audio_id=w.item.id, window_start_s=round(w.start_s, 6))}
          for w in windows]
  record = {"source": "audio", "dataset": a.get("dataset", ""),
            "audio_root": a.get("audio_root", ""), "conditioning": a["conditioning"],
            "text": a.get("text", "") if a["conditioning"] == "fixed" else "",
            "window": a.get("window", "crop"), "offset_s": offset,
            "max_segments": int(a.get("max_segments", 0) or 0),
            "stems": f"{a['stems_dir']}:{a['stem']}" if a.get("stems_dir") else "",
            "encoder": "the model's compression model (EnCodec), mono",
            "capture": "teacher_forced", "duration": dur}
  return rows, windows, record


def texts_for(windows: list[Window], a_cfg) -> list[str | None]:
  """The conditioning text of each window; None is the null (unconditional) condition."""
  mode = (a_cfg or {}).get("conditioning", "caption")
  if mode == "caption":
    return [w.item.caption or None for w in windows]
  if mode == "fixed":
    return [a_cfg["text"]] * len(windows)
  return [None] * len(windows)


def capture_batch(model, windows: list[Window], a_cfg, sites, keep, info, frames: int):
  """Load the windows, encode them, capture `sites`; `Capture.audio` is the input [B, 1, n]."""
  hop = int(round(info.sample_rate / info.frame_rate))
  dur = frames * hop / info.sample_rate
  wavs = np.stack([from_audio.load_window(w.item.audio, w.item.sample_rate, info.sample_rate,
                                             w.start_s, dur)[0] for w in windows])
  cap = from_audio.capture_from_audio(model, wavs, texts_for(windows, a_cfg), sites, frames,
                                         keep=keep)
  cap.audio = torch.from_numpy(wavs)[:, None]
  return cap
