"""Capture from audio instead of generating: load -> the model's EnCodec -> one teacher-forced
forward with the same rows as the generation path.

`capture_from_codes` is `record.teacher_forced_capture` (tests/test_capture.py shows it
equals the hook capture of a generation) with one addition: a text of `None` is MusicGen's
own null condition (audiocraft's `ClassifierFreeGuidanceDropout` sets the text to None,
and T5Conditioner masks it), so `conditioning="none"` rows are exactly the unconditional
half of a classifier-free-guidance batch.

Windows: the model sees `frames = duration * frame_rate` frames; a clip is cut into the
window(s) starting at its offset and zero-padded when shorter (the pad is recorded).
"""
from __future__ import annotations

import numpy as np
import torch

from bridge.models import capture_sites
from bridge.capture import record
from bridge.models import backends


class AudioInputError(ValueError):
  """Audio that cannot be loaded or does not fit the model (the message names the file)."""


def load_window(audio, sample_rate: int | None, target_sr: int, offset_s: float,
                duration_s: float) -> tuple[np.ndarray, float]:
  """(mono float32 [round(duration_s * target_sr)], seconds of real audio in it).

  `audio` is a path (wav/flac/mp3/ogg through librosa: soundfile, audioread as fallback;
  resampled with soxr) or an array [n] / [C, n] at `sample_rate`.
  """
  import librosa
  n = int(round(duration_s * target_sr))
  if isinstance(audio, np.ndarray):
    y = np.asarray(audio, np.float32)
    y = y.mean(0) if y.ndim == 2 else y
    y = y[int(round(offset_s * sample_rate)):][:int(np.ceil(duration_s * sample_rate)) + 1]
    if sample_rate != target_sr:
      y = librosa.resample(y, orig_sr=sample_rate, target_sr=target_sr)
  else:
    try:
      if str(audio).lower().endswith(".mp3") and offset_s > 0:
        # libsndfile's mp3 seek can return silence (seen with 1.2.2): decode from the start
        y, sr = librosa.load(audio, sr=None, mono=True, duration=offset_s + duration_s)
        y = librosa.resample(y[int(round(offset_s * sr)):], orig_sr=sr, target_sr=target_sr)
      else:
        y, _ = librosa.load(audio, sr=target_sr, mono=True, offset=offset_s, duration=duration_s)
    except FileNotFoundError:
      raise AudioInputError(f"{audio}: audio file not found") from None
    except Exception as e:  # noqa: BLE001 - soundfile/audioread raise many types
      raise AudioInputError(f"{audio}: cannot decode audio ({type(e).__name__}: "
                            f"{str(e)[:160]}); expected wav, flac, mp3 or ogg") from None
  real = min(len(y), n) / target_sr
  y = np.pad(y[:n], (0, max(0, n - len(y)))).astype(np.float32)
  return y, real


def audio_seconds(audio, sample_rate: int | None) -> float:
  """Length of a clip in seconds, from the file header when it is a path."""
  if isinstance(audio, np.ndarray):
    return audio.shape[-1] / sample_rate
  import librosa
  try:
    return float(librosa.get_duration(path=audio))
  except FileNotFoundError:
    raise AudioInputError(f"{audio}: audio file not found") from None
  except Exception as e:  # noqa: BLE001
    raise AudioInputError(f"{audio}: cannot read the audio header ({type(e).__name__})") from None


def encode(model, wavs: np.ndarray, frames: int) -> torch.Tensor:
  """Codes [B, K, frames] of mono windows [B, n] (at the model's sample rate) by the
  model's own compression model (EnCodec); stereo models get the mono signal twice."""
  comp = model.compression_model
  x = torch.from_numpy(np.ascontiguousarray(wavs, np.float32))[:, None].to(model.device)
  if comp.channels > 1:
    x = x.expand(-1, comp.channels, -1)
  with torch.no_grad():
    codes, _ = comp.encode(x)
  if codes.shape[-1] < frames:
    raise AudioInputError(f"the compression model gave {codes.shape[-1]} frames for a window "
                          f"of {frames}")
  return codes[..., :frames].contiguous()


def capture_from_codes(model, codes: torch.Tensor, texts, sites, *, keep: str = "cond"):
  """Teacher-forced capture of `codes` [B, K, T]; `texts[b] = None` is the null condition.

  Text sites (t5.*, cond.proj) need a real text for every row: T5 sees no token of a
  null text, so it has no rows (and no mean) to record.
  """
  info = backends.model_info(model)
  codes = torch.as_tensor(codes)
  if codes.dim() != 3 or codes.shape[1] != info.n_q:
    raise AudioInputError(f"codes must be [B, {info.n_q}, T], got {tuple(codes.shape)}")
  if codes.min() < 0 or codes.max() >= info.card:
    raise AudioInputError(f"codes must lie in [0, {info.card}); got [{int(codes.min())}, "
                          f"{int(codes.max())}]")
  texts = list(texts)
  sites = list(sites)
  if any(t is None or not t.strip() for t in texts) and any(s in capture_sites.TEXT_SITES for s in sites):
    raise AudioInputError(f"text sites {[s for s in sites if s in capture_sites.TEXT_SITES]} need a "
                          f"non-empty text for every clip (conditioning 'none' or an empty "
                          f"caption has no T5 tokens); drop them from extract.sites")
  texts = [t if t and t.strip() else None for t in texts]
  return record.teacher_forced_capture(model, texts, codes.long().contiguous(), sites, keep=keep)


def capture_from_audio(model, wavs: np.ndarray, texts, sites, frames: int, *,
                       keep: str = "cond"):
  """Encode mono windows [B, n] and capture them (`Capture.tokens` holds the codes)."""
  codes = encode(model, wavs, frames)
  return capture_from_codes(model, codes, texts, sites, keep=keep)
