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


def clip_descriptors(wav: np.ndarray, sample_rate: int) -> dict:
  """Tempo (BPM), loudness (dB RMS), brightness (mean centroid, Hz), key and mode."""
  import librosa
  y = np.asarray(wav, dtype=np.float32)
  if y.ndim == 2:
    y = y.mean(0)
  tempo, _ = librosa.beat.beat_track(y=y, sr=sample_rate)
  rms = float(np.sqrt(np.mean(y ** 2)) + 1e-12)
  chroma = librosa.feature.chroma_stft(y=y, sr=sample_rate).mean(1)
  scores = [(np.corrcoef(chroma, np.roll(prof, k))[0, 1], k, mode)
            for mode, prof in (("major", _MAJOR), ("minor", _MINOR)) for k in range(12)]
  score, key, mode = max(scores, key=lambda s: np.nan_to_num(s[0], nan=-2))
  return {"tempo_bpm": float(np.atleast_1d(tempo)[0]),
          "loudness_db": 20 * np.log10(rms),
          "brightness_hz": float(librosa.feature.spectral_centroid(y=y, sr=sample_rate).mean()),
          "key": PITCHES[key], "mode": mode, "mode_score": float(np.nan_to_num(score))}
