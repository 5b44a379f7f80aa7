"""A ground-truth concept set: MIDI clips whose music-theory labels are exact, rendered
through a General MIDI soundfont (SynTheory-style; `python -m launch.make_concepts`).

Every clip is one instrument (a GM program) playing, at one tempo, one dynamic level and
a fixed number of onsets per beat, either
  - `chord`: a triad of one quality on one root, struck `density` times per beat, or
  - `scale`: a major or natural-minor scale on one tonic, one note per onset, up and down.
The labels are the generator's own parameters, so they are exact: `tempo` (bpm), `key`
(pitch class of the chord root or scale tonic), `mode` (scale clips), `chord` (chord
clips), `program` (GM instrument name), `density` (onsets per beat), `dynamics`
(pp/mf/ff = MIDI velocity). Values are assigned balanced per concept (each value equally
often, shuffled by the seed), and the clip list depends on the seed and config only.

The synthesizer is TinySoundFont (`tinysoundfont`) playing `pretty_midi`'s bundled GM
soundfont (TimGM6mb.sf2, 6 MB): both install from wheels without root. The output folder
is the audio-dataset contract: `<out>/metadata.jsonl`, one
`{"id", "path" (relative to <out>), "caption", "labels"}` per line, and the clips under
`<out>/audio/`; `<out>/concepts.json` records the config, the synthesizer and the size.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Iterator

import numpy as np

from musicsae_jax import files

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
CHORDS = {"major": (0, 4, 7), "minor": (0, 3, 7), "diminished": (0, 3, 6),
          "augmented": (0, 4, 8)}
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11, 12), "minor": (0, 2, 3, 5, 7, 8, 10, 12)}
DYNAMICS = {"pp": 32, "mf": 72, "ff": 112}             # MIDI velocity per marking
DYNAMIC_WORDS = {"pp": "very softly", "mf": "moderately loud", "ff": "very loudly"}
DENSITY_WORDS = {1: "quarter notes", 2: "eighth notes", 3: "triplets", 4: "sixteenth notes"}
FAMILIES = ("chord", "scale")
LABEL_KEYS = ("family", "tempo", "key", "mode", "chord", "program", "density", "dynamics")
FORMATS = ("flac", "wav")
MISSING = ("the concept set needs the General MIDI synthesizer packages tinysoundfont and "
           "pretty_midi: `pip install pretty_midi` and `pip install --no-deps tinysoundfont` "
           "(scripts/setup.sh installs both)")


class ConceptError(ValueError):
  """Bad concept-set config or output folder; the message names the field or path."""


class SynthesizerMissing(ConceptError):
  """tinysoundfont / pretty_midi (or the soundfont file) are not installed."""


def synthesizer():
  """(tinysoundfont module, pretty_midi module), or SynthesizerMissing naming both."""
  try:
    import pretty_midi
    import tinysoundfont
  except ImportError as e:
    raise SynthesizerMissing(f"{MISSING} ({e})") from None
  return tinysoundfont, pretty_midi


def default_soundfont() -> str:
  """pretty_midi's bundled General MIDI soundfont (TimGM6mb.sf2)."""
  _, pretty_midi = synthesizer()
  path = os.path.join(os.path.dirname(pretty_midi.__file__), "TimGM6mb.sf2")
  if not os.path.exists(path):
    raise SynthesizerMissing(f"{path} is missing: reinstall pretty_midi ({MISSING})")
  return path


# --- the clip list -----------------------------------------------------------------------


def _check(cfg) -> None:
  for name in ("tempos", "tonics", "programs", "densities", "dynamics", "families"):
    if not tuple(cfg[name]):
      raise ConceptError(f"concepts.{name} is empty: give at least one value")
  bad = {
      "families": [f for f in cfg.families if f not in FAMILIES],
      "tonics": [k for k in cfg.tonics if k not in NOTE_NAMES],
      "modes": [m for m in cfg.modes if m not in SCALES],
      "chords": [c for c in cfg.chords if c not in CHORDS],
      "dynamics": [d for d in cfg.dynamics if d not in DYNAMICS],
      "programs": [p for p in cfg.programs if not 0 <= int(p) <= 127],
      "densities": [d for d in cfg.densities if int(d) < 1],
      "tempos": [t for t in cfg.tempos if not 20 <= float(t) <= 400],
  }
  allowed = {"families": FAMILIES, "tonics": NOTE_NAMES, "modes": tuple(SCALES),
             "chords": tuple(CHORDS), "dynamics": tuple(DYNAMICS), "programs": "0..127",
             "densities": ">= 1", "tempos": "20..400 bpm"}
  for name, vals in bad.items():
    if vals:
      raise ConceptError(f"concepts.{name} has {vals}; allowed: {allowed[name]}")
  if "scale" in cfg.families and not tuple(cfg.modes):
    raise ConceptError("concepts.modes is empty but concepts.families has 'scale'")
  if "chord" in cfg.families and not tuple(cfg.chords):
    raise ConceptError("concepts.chords is empty but concepts.families has 'chord'")
  if cfg.num_clips < 1 or cfg.duration <= 0 or cfg.sample_rate < 8000:
    raise ConceptError(f"concepts.num_clips={cfg.num_clips}, duration={cfg.duration}, "
                       f"sample_rate={cfg.sample_rate}: need >= 1, > 0 s, >= 8000 Hz")
  if cfg.format not in FORMATS:
    raise ConceptError(f"concepts.format={cfg.format!r}; allowed: {FORMATS}")


def _balanced(rng: np.random.Generator, values, n: int) -> list:
  """n draws where every value occurs floor(n/K) or ceil(n/K) times, in seeded order."""
  values = list(values)
  return [values[i] for i in rng.permutation(np.arange(n) % len(values))]


def plan(cfg) -> list[dict]:
  """The clip specs (id, family, exact labels) for a config: a pure function of it."""
  _check(cfg)
  n = int(cfg.num_clips)
  rng = np.random.default_rng([int(cfg.seed), 0xC0C0])
  cols = {name: _balanced(rng, cfg[name], n)
          for name in ("families", "tempos", "tonics", "programs", "densities", "dynamics")}
  fam = cols["families"]
  # Modes / chord qualities are balanced within their own family.
  modes = iter(_balanced(rng, cfg.modes or ("major",), max(1, fam.count("scale"))))
  chords = iter(_balanced(rng, cfg.chords or ("major",), max(1, fam.count("chord"))))
  specs = []
  for i in range(n):
    labels = {"family": fam[i], "tempo": int(cols["tempos"][i]), "key": cols["tonics"][i]}
    if fam[i] == "scale":
      labels["mode"] = next(modes)
    else:
      labels["chord"] = next(chords)
    labels.update(program=program_name(int(cols["programs"][i])),
                  density=int(cols["densities"][i]), dynamics=cols["dynamics"][i])
    specs.append({"id": f"c{i:05d}", "program": int(cols["programs"][i]), "labels": labels})
  return specs


def program_name(program: int) -> str:
  """The General MIDI name of a program number (pretty_midi's table)."""
  _, pretty_midi = synthesizer()
  return pretty_midi.program_to_instrument_name(program)


def notes(spec: dict, cfg) -> list[tuple[float, float, int, int]]:
  """The clip's MIDI notes: (start s, end s, pitch, velocity), onsets on the beat grid."""
  lab = spec["labels"]
  step = 60.0 / lab["tempo"] / lab["density"]            # seconds between onsets
  velocity = DYNAMICS[lab["dynamics"]]
  root = int(cfg.base_pitch) + NOTE_NAMES.index(lab["key"])
  onsets = np.arange(0.0, float(cfg.duration) - 1e-9, step)
  out = []
  if lab["family"] == "chord":
    pitches = [root + iv for iv in CHORDS[lab["chord"]]]
    for t in onsets:
      out += [(float(t), float(t + cfg.legato * step), p, velocity) for p in pitches]
  else:
    up = [root + iv for iv in SCALES[lab["mode"]]]
    cycle = up + up[-2:0:-1]                             # up, then down without repeats
    for j, t in enumerate(onsets):
      out.append((float(t), float(t + cfg.legato * step), cycle[j % len(cycle)], velocity))
  return out


def caption(spec: dict) -> str:
  """A plain English description of the labels."""
  lab = spec["labels"]
  article = "an" if lab["key"][0] in "AEF" else "a"
  what = (f"{article} {lab['key']} {lab['chord']} triad" if lab["family"] == "chord"
          else f"{article} {lab['key']} {lab['mode']} scale")
  rhythm = DENSITY_WORDS.get(lab["density"], f"{lab['density']} notes per beat")
  return (f"{lab['program'].lower()} playing {what} in {rhythm} at {lab['tempo']} bpm, "
          f"{DYNAMIC_WORDS[lab['dynamics']]}")


# --- rendering ---------------------------------------------------------------------------


def to_midi(spec: dict, cfg):
  """The clip as a pretty_midi.PrettyMIDI (one instrument), e.g. to save beside the audio."""
  _, pretty_midi = synthesizer()
  pm = pretty_midi.PrettyMIDI(initial_tempo=float(spec["labels"]["tempo"]))
  inst = pretty_midi.Instrument(program=spec["program"], name=spec["labels"]["program"])
  inst.notes = [pretty_midi.Note(velocity=v, pitch=p, start=s, end=e)
                for s, e, p, v in notes(spec, cfg)]
  pm.instruments.append(inst)
  return pm


class Renderer:
  """Renders clip specs to mono float32 audio with TinySoundFont.

  A fresh synthesizer per clip (the soundfont bytes are read once), so a clip's audio does
  not depend on which clips were rendered before it.
  """

  def __init__(self, sample_rate: int, soundfont: str = "", gain_db: float = 0.0):
    self.tsf, _ = synthesizer()
    self.soundfont = soundfont or default_soundfont()
    if not os.path.exists(self.soundfont):
      raise ConceptError(f"concepts.soundfont={self.soundfont!r} does not exist (an .sf2 file)")
    with open(self.soundfont, "rb") as f:
      self.sf_bytes = f.read()
    self.sample_rate, self.gain_db = int(sample_rate), float(gain_db)

  def render(self, spec: dict, cfg) -> np.ndarray:
    """[samples] float32 mono of exactly cfg.duration seconds (tails cut); not normalised,
    so dynamics stay absolute (concepts.gain_db keeps the loudest clips below 1)."""
    synth = self.tsf.Synth(gain=self.gain_db, samplerate=self.sample_rate)
    sfid = synth.sfload(self.sf_bytes)
    synth.program_select(0, sfid, 0, spec["program"])
    total = int(round(float(cfg.duration) * self.sample_rate))
    events = []                                           # (sample, order, on?, pitch, vel)
    for s, e, p, v in notes(spec, cfg):
      events.append((int(round(s * self.sample_rate)), 1, True, p, v))
      events.append((int(round(e * self.sample_rate)), 0, False, p, v))  # offs first
    events.sort()
    out = np.zeros((total, 2), np.float32)
    pos = 0
    for at, _, on, pitch, vel in events:
      at = min(at, total)
      if at > pos:
        out[pos:at] = np.frombuffer(synth.generate(at - pos), np.float32).reshape(-1, 2)
        pos = at
      if on:
        synth.noteon(0, pitch, vel)
      else:
        synth.noteoff(0, pitch)
    if pos < total:
      out[pos:] = np.frombuffer(synth.generate(total - pos), np.float32).reshape(-1, 2)
    return out.mean(1)


# --- the dataset folder ------------------------------------------------------------------


def make_concept_set(cfg, out: str, *, overwrite: bool = False,
                     log: Callable[[str], None] = print) -> dict:
  """Render every clip of `plan(cfg)` into `out/` (the audio-dataset folder contract).

  metadata.jsonl is written last, so a folder that has it is complete. Returns the
  summary also written to out/concepts.json (clips, bytes, seconds).
  """
  import soundfile as sf

  specs = plan(cfg)
  meta_path = os.path.join(out, "metadata.jsonl")
  if os.path.exists(meta_path) and not overwrite:
    raise ConceptError(f"{meta_path} exists: {out} already holds a dataset "
                       f"(pass --overwrite to render it again)")
  renderer = Renderer(cfg.sample_rate, cfg.soundfont, cfg.gain_db)
  os.makedirs(os.path.join(out, "audio"), exist_ok=True)
  if os.path.exists(meta_path):
    os.remove(meta_path)
  t0, nbytes, peak, clipped, rows = time.time(), 0, 0.0, 0, []
  last = t0
  for i, spec in enumerate(specs):
    audio = renderer.render(spec, cfg)
    peak = max(peak, float(np.abs(audio).max()))
    clipped += int(np.sum(np.abs(audio) >= 1.0))
    rel = f"audio/{spec['id']}.{cfg.format}"
    path = os.path.join(out, rel)
    sf.write(path, audio, renderer.sample_rate, subtype="PCM_16", format=cfg.format.upper())
    if cfg.write_midi:
      to_midi(spec, cfg).write(os.path.join(out, "audio", f"{spec['id']}.mid"))
      nbytes += os.path.getsize(os.path.join(out, "audio", f"{spec['id']}.mid"))
    nbytes += os.path.getsize(path)
    rows.append({"id": spec["id"], "path": rel,
                 "caption": caption(spec) if cfg.captions else "", "labels": spec["labels"]})
    if time.time() - last > 10 or i + 1 == len(specs):
      last = time.time()
      rate = (i + 1) / max(last - t0, 1e-9)
      log(f"make_concepts: {i + 1}/{len(specs)} clips, {rate:.1f} clips/s, "
          f"ETA {(len(specs) - i - 1) / rate:.0f}s")
  seconds = time.time() - t0
  summary = {"format_version": 1, "clips": len(rows), "bytes": nbytes, "seconds": seconds,
             "peak": peak, "clipped_samples": clipped, "soundfont": os.path.basename(renderer.soundfont),
             "synthesizer": _synth_version(), "config": _plain(cfg),
             "concepts": {k: sorted({str(r["labels"][k]) for r in rows if k in r["labels"]})
                          for k in LABEL_KEYS}}
  files.write_json(os.path.join(out, "concepts.json"), summary, indent=1)
  files.write_text(meta_path, "".join(json.dumps(r) + "\n" for r in rows))
  return summary



def read_metadata(folder: str) -> Iterator[dict]:
  """The rows of `folder/metadata.jsonl` (id, path, caption, labels)."""
  with open(os.path.join(folder, "metadata.jsonl")) as f:
    for line in f:
      if line.strip():
        yield json.loads(line)


def _synth_version() -> str:
  from importlib import metadata
  return ", ".join(f"{p} {metadata.version(p)}" for p in ("tinysoundfont", "pretty_midi"))


def _plain(cfg) -> dict:
  d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
  return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
