"""Acoustic measurements of generated audio (librosa).

`frame_descriptors` gives one row per LM frame (hop = sample_rate / frame_rate, centred
windows), so row t describes the audio of frame t and lines up with `lm.layer.*` row t in
the store (`audio.descriptors`). `clip_descriptors` summarises a whole clip (tempo,
loudness, brightness, mode) for steering evaluation.
"""
from __future__ import annotations

import numpy as np

PITCHES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
FRAME_DESCRIPTORS = ("rms_db", "spectral_centroid_hz", "spectral_bandwidth_hz",
                     "spectral_flatness", "zero_crossing_rate", "onset_strength",
                     *(f"chroma_{p}" for p in PITCHES))


def _hop(sample_rate: int, frame_rate: float) -> int:
  hop = sample_rate / frame_rate
  if abs(hop - round(hop)) > 1e-6:
    raise ValueError(f"sample_rate {sample_rate} / frame_rate {frame_rate} is not an integer hop")
  return int(round(hop))


def frame_descriptors(wav: np.ndarray, sample_rate: int, frame_rate: float,
                      num_frames: int) -> np.ndarray:
  """[num_frames, len(FRAME_DESCRIPTORS)] float32 for a mono (or [C, n], averaged) clip."""
  import librosa
  y = np.asarray(wav, dtype=np.float32)
  if y.ndim == 2:
    y = y.mean(0)
  hop = _hop(sample_rate, frame_rate)
  n_fft = int(2 ** np.ceil(np.log2(4 * hop)))
  need = num_frames * hop
  y = np.pad(y, (0, max(0, need - len(y))))[:need]
  S = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop, center=True))
  rms = librosa.feature.rms(S=S, frame_length=n_fft, hop_length=hop)[0]
  cols = [
      librosa.amplitude_to_db(rms, ref=1.0, amin=1e-5),
      librosa.feature.spectral_centroid(S=S, sr=sample_rate, n_fft=n_fft, hop_length=hop)[0],
      librosa.feature.spectral_bandwidth(S=S, sr=sample_rate, n_fft=n_fft, hop_length=hop)[0],
      librosa.feature.spectral_flatness(S=S, n_fft=n_fft, hop_length=hop)[0],
      librosa.feature.zero_crossing_rate(y, frame_length=n_fft, hop_length=hop, center=True)[0],
      librosa.onset.onset_strength(S=librosa.amplitude_to_db(S, ref=np.max), sr=sample_rate,
                                   hop_length=hop),
  ]
  chroma = librosa.feature.chroma_stft(S=S ** 2, sr=sample_rate, n_fft=n_fft, hop_length=hop,
                                      tuning=0.0)  # A440; per-clip estimation is slow and noisy
  out = np.concatenate([np.stack([c[:num_frames] for c in cols], 1),
                        chroma[:, :num_frames].T], 1)
  if out.shape[0] < num_frames:  # centred STFT gives num_frames + 1; never fewer, but be safe
    out = np.pad(out, ((0, num_frames - out.shape[0]), (0, 0)), mode="edge")
  return np.nan_to_num(out).astype(np.float32)


# Krumhansl-Kessler key profiles (major, minor), C-rooted.
_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def mode_scores(chroma: np.ndarray) -> tuple[float, float, int, int]:
  """(best major r, best minor r, major key, minor key): Pearson r of a 12-bin chroma with
  the 12 rotations of each Krumhansl-Kessler profile (NaN-safe: a flat chroma gives 0)."""
  def best(prof):
    with np.errstate(invalid="ignore", divide="ignore"):
      r = np.array([np.corrcoef(chroma, np.roll(prof, k))[0, 1] for k in range(12)])
    r = np.nan_to_num(r, nan=0.0)
    return float(r.max()), int(r.argmax())
  (maj, kmaj), (mnr, kmin) = best(_MAJOR), best(_MINOR)
  return maj, mnr, kmaj, kmin


def clip_descriptors(wav: np.ndarray, sample_rate: int) -> dict:
  """Tempo (BPM), loudness (dB RMS), brightness (mean centroid, Hz), key and mode.

  `mode_major_minus_minor` is continuous (best major-key r minus best minor-key r, in
  [-2, 2]): a binary major/minor call hides every change smaller than a flip, and on audio
  dominated by one or two pitch classes (the tiny random codec emits a near-constant tone
  around G/G#) the call is the same for every clip while the margin still moves.
  """
  import librosa
  y = np.asarray(wav, dtype=np.float32)
  if y.ndim == 2:
    y = y.mean(0)
  tempo, _ = librosa.beat.beat_track(y=y, sr=sample_rate)
  rms = float(np.sqrt(np.mean(y ** 2)) + 1e-12)
  chroma = librosa.feature.chroma_stft(y=y, sr=sample_rate, tuning=0.0).mean(1)
  maj, mnr, kmaj, kmin = mode_scores(chroma)
  major = maj >= mnr
  return {"tempo_bpm": float(np.atleast_1d(tempo)[0]),
          "loudness_db": float(20 * np.log10(rms)),
          "brightness_hz": float(librosa.feature.spectral_centroid(y=y, sr=sample_rate).mean()),
          "key": PITCHES[kmaj if major else kmin], "mode": "major" if major else "minor",
          "mode_score": max(maj, mnr), "mode_major_minus_minor": maj - mnr}


def clip_vector(wav: np.ndarray, sample_rate: int, frame_rate: float = 50.0) -> np.ndarray:
  """Mean and std over frames of `FRAME_DESCRIPTORS`: one fixed-length vector per clip,
  the input of the steering evaluation's concept classifier (audio only, never activations)."""
  y = np.asarray(wav, dtype=np.float32)
  n = max(1, int(y.shape[-1] * frame_rate / sample_rate))
  f = frame_descriptors(y, sample_rate, frame_rate, n)
  return np.concatenate([f.mean(0), f.std(0)]).astype(np.float64)
