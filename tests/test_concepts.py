"""The ground-truth concept set (bridge/sources/concepts.py, launch.make_concepts): the audio a
clip renders to carries its labels (pitch classes by chroma, tempo by onsets), the folder
keeps the audio-dataset contract, the set is a pure function of the seed, and a machine
without the synthesizer gets one line naming the packages."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bridge.sources import concepts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
  concepts.synthesizer()
  HAVE_SYNTH = True
except concepts.SynthesizerMissing:
  HAVE_SYNTH = False
needs_synth = pytest.mark.skipif(not HAVE_SYNTH, reason=concepts.MISSING)


def tiny_config(**over):
  from configs import concepts_tiny
  cfg = concepts_tiny.get_config().concepts
  cfg.update(over)
  return cfg


def spec(family, key, quality, *, program=0, tempo=120, density=1, dynamics="mf"):
  labels = {"family": family, "tempo": tempo, "key": key,
            ("chord" if family == "chord" else "mode"): quality,
            "program": "p", "density": density, "dynamics": dynamics}
  return {"id": "t", "program": program, "labels": labels}


@pytest.fixture(scope="module")
def renderer():
  return concepts.Renderer(16000)


def _chroma(y, sr):
  import librosa
  return librosa.feature.chroma_stft(y=y, sr=sr, n_fft=4096, hop_length=1024).mean(1)


@needs_synth
@pytest.mark.parametrize("program", [0, 73])            # piano, flute
def test_triad_chroma_names_its_root_and_quality(renderer, program):
  """Best of the 12 roots x {major, minor, diminished} triad templates against the clip's
  mean chroma = its labels (augmented triads are excluded: C, E and G# aug share pitches)."""
  cfg = tiny_config(duration=1.5)
  names = [(r, q) for r in concepts.NOTE_NAMES for q in ("major", "minor", "diminished")]
  templates = np.array([np.isin(np.arange(12), [(concepts.NOTE_NAMES.index(r) + iv) % 12
                                                for iv in concepts.CHORDS[q]])
                        for r, q in names], np.float64)
  for key, quality in (("C", "major"), ("E", "minor"), ("G#", "diminished"), ("A#", "major")):
    ch = _chroma(renderer.render(spec("chord", key, quality, program=program), cfg), 16000)
    scores = [np.corrcoef(ch, t)[0, 1] for t in templates]
    assert names[int(np.argmax(scores))] == (key, quality), (program, key, quality)


@needs_synth
def test_scale_chroma_is_its_pitch_set(renderer):
  """A scale clip's seven strongest chroma bins are the scale's pitch classes."""
  cfg = tiny_config(duration=4.0)
  for key, mode in (("D", "major"), ("F#", "minor")):
    ch = _chroma(renderer.render(spec("scale", key, mode, tempo=120, density=2), cfg), 16000)
    want = {(concepts.NOTE_NAMES.index(key) + iv) % 12 for iv in concepts.SCALES[mode]}
    assert set(np.argsort(-ch)[:7].tolist()) == want, (key, mode)


@needs_synth
@pytest.mark.parametrize("tempo,density", [(60, 1), (120, 1), (120, 2)])
def test_onset_rate_matches_tempo_and_density(renderer, tempo, density):
  """librosa's onsets of a piano scale clip come every 60 / tempo / density seconds."""
  import librosa
  cfg = tiny_config(duration=4.0)
  y = renderer.render(spec("scale", "C", "major", tempo=tempo, density=density), cfg)
  onsets = librosa.onset.onset_detect(y=y, sr=16000, units="time", hop_length=256)
  step = 60.0 / tempo / density
  assert abs(len(onsets) - round(4.0 / step)) <= 1, (onsets, step)
  assert np.median(np.diff(onsets)) == pytest.approx(step, rel=0.05)   # hop 16 ms


@needs_synth
def test_dynamics_order_loudness(renderer):
  cfg = tiny_config(duration=1.0)
  rms = [np.sqrt(np.mean(renderer.render(spec("chord", "C", "major", dynamics=d), cfg) ** 2))
         for d in ("pp", "mf", "ff")]
  assert rms[0] < rms[1] < rms[2], rms


@needs_synth
def test_folder_contract_balance_and_determinism(tmp_path):
  import soundfile as sf
  cfg = tiny_config(num_clips=16, duration=0.5)
  out = tmp_path / "set"
  summary = concepts.make_concept_set(cfg, str(out), log=lambda s: None)
  rows = [json.loads(line) for line in open(out / "metadata.jsonl")]
  assert len(rows) == summary["clips"] == 16
  for r in rows:
    assert set(r) == {"id", "path", "caption", "labels"}
    assert isinstance(r["id"], str) and isinstance(r["caption"], str) and r["caption"]
    info = sf.info(str(out / r["path"]))
    assert (info.samplerate, info.frames) == (16000, 8000)
    lab = r["labels"]
    assert set(lab) == {"family", "tempo", "key", "program", "density", "dynamics",
                        "chord" if lab["family"] == "chord" else "mode"}
  assert len({r["id"] for r in rows}) == 16
  for key, values in (("family", cfg.families), ("tempo", cfg.tempos), ("key", cfg.tonics),
                      ("dynamics", cfg.dynamics)):
    counts = [sum(r["labels"][key] == v for r in rows) for v in values]
    assert max(counts) - min(counts) <= 1, (key, counts)
  with pytest.raises(concepts.ConceptError, match="--overwrite"):
    concepts.make_concept_set(cfg, str(out), log=lambda s: None)
  # Same seed: the same clips, bit for bit; another seed: another plan.
  out2 = tmp_path / "again"
  concepts.make_concept_set(cfg, str(out2), log=lambda s: None)
  assert open(out / "metadata.jsonl").read() == open(out2 / "metadata.jsonl").read()
  for r in rows[:4]:
    assert np.array_equal(sf.read(str(out / r["path"]))[0], sf.read(str(out2 / r["path"]))[0])
  assert concepts.plan(tiny_config(seed=1)) != concepts.plan(cfg)


def test_bad_config_names_the_field():
  with pytest.raises(concepts.ConceptError, match="concepts.chords"):
    concepts.plan(tiny_config(chords=("major", "sus9")))


def test_missing_synthesizer_is_one_line(tmp_path):
  """With tinysoundfont unimportable, launch.make_concepts ends with one line naming both
  packages (a shadowing module stands in for a machine without them)."""
  shadow = tmp_path / "shadow" / "tinysoundfont"
  shadow.mkdir(parents=True)
  (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'tinysoundfont'\")\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(tmp_path / "shadow"), ROOT, os.environ.get("PYTHONPATH", "")]))
  r = subprocess.run([sys.executable, "-m", "launch.make_concepts", f"--out={tmp_path / 'o'}",
                      "--config=configs/concepts_tiny.py"], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=120)
  lines = r.stderr.strip().splitlines()
  assert r.returncode != 0 and len(lines) == 1, r.stderr
  assert "tinysoundfont" in lines[0] and "pretty_midi" in lines[0] and "Traceback" not in r.stderr
  assert not (tmp_path / "o" / "metadata.jsonl").exists()
