"""An audio dataset plugin: synthesized chords whose labels are exact (mode, register, root).

Used by the audio demo (configs/tiny_audio.py) as `extract.audio.dataset =
"examples/chord_plugin.py:<n>"`: `iter_items(location)` yields n clips as arrays at
22.05 kHz (the extractor resamples them to the model's rate). Run as a script it writes the
same clips as wav files in the folder layout instead:

    python examples/chord_plugin.py /tmp/chords 32    # then extract.audio.dataset=folder:/tmp/chords
"""
import json
import sys
from pathlib import Path

import numpy as np

SAMPLE_RATE = 22050
SECONDS = 2.5
ROOTS = ("C", "D", "E", "F", "G", "A")
TRIADS = {"major": (0, 4, 7), "minor": (0, 3, 7)}
REGISTERS = {"low": 3, "high": 5}          # octave of the root (C4 = MIDI 60)


def _chord(root: int, mode: str, octave: int, seed: int) -> np.ndarray:
  """A triad of harmonic tones with a soft attack and decay, plus a little noise."""
  t = np.arange(int(SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
  env = np.minimum(1.0, t / 0.02) * np.exp(-t / 1.5)
  y = np.zeros_like(t)
  for step in TRIADS[mode]:
    f0 = 440.0 * 2 ** ((12 * (octave + 1) + root + step - 69) / 12)
    for h in range(1, 6):
      y += np.sin(2 * np.pi * f0 * h * t) / h ** 1.5
  y = 0.25 * env * y / 3 + 0.003 * np.random.default_rng(seed).standard_normal(len(t))
  return y.astype(np.float32)


def clips(n: int):
  """(id, audio, caption, labels) for n clips cycling mode x register x root."""
  n_roots = len(ROOTS)
  for i in range(n):
    mode = ("major", "minor")[i % 2]
    register = ("low", "high")[(i // 2) % 2]
    root = ROOTS[(i // 4) % n_roots]
    pc = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9}[root]
    caption = f"a {register} {root} {mode} chord"
    yield (f"chord{i:03d}", _chord(pc, mode, REGISTERS[register], i), caption,
           {"mode": mode, "register": register, "root": root})


def iter_items(location: str):
  n = int(location or 32)
  for cid, y, caption, labels in clips(n):
    yield cid, y, caption, labels, SAMPLE_RATE


def write_folder(out: str, n: int) -> None:
  """The same clips as <out>/wav/<id>.wav plus <out>/metadata.jsonl (the folder layout)."""
  import soundfile as sf
  root = Path(out)
  (root / "wav").mkdir(parents=True, exist_ok=True)
  with open(root / "metadata.jsonl", "w") as f:
    for cid, y, caption, labels in clips(n):
      sf.write(root / "wav" / f"{cid}.wav", y, SAMPLE_RATE)
      f.write(json.dumps({"id": cid, "path": f"wav/{cid}.wav", "caption": caption,
                          "labels": labels}) + "\n")


if __name__ == "__main__":
  if len(sys.argv) not in (2, 3):
    sys.exit("usage: python examples/chord_plugin.py OUT_DIR [N=32]")
  write_folder(sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 32)
