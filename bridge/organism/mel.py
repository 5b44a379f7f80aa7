"""A torch mel spectrogram with torchaudio's `MelSpectrogram` interface, for audiocraft's
spectral losses (`audiocraft.losses.specloss`), which import torchaudio's class at module
level. torchaudio does not load next to CPU torch here (bridge/models/audiocraft_musicgen.py installs a
placeholder), so `install()` puts this class where the losses look it up; the losses
themselves (padding, log floor, the multi-scale sum) stay audiocraft's.

Same numbers as torchaudio: power spectrogram of `torch.stft` with a Hann window, then
HTK-scale triangular filters without normalisation (torchaudio's `melscale_fbanks` formula).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _hz_to_mel(f):
  return 2595.0 * math.log10(1.0 + f / 700.0)


def mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int,
                   sample_rate: float) -> torch.Tensor:
  """[n_freqs, n_mels] HTK triangular filters (torchaudio.functional.melscale_fbanks)."""
  all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)
  m_pts = torch.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
  f_pts = 700.0 * (10 ** (m_pts / 2595.0) - 1.0)
  f_diff = f_pts[1:] - f_pts[:-1]
  slopes = f_pts[None, :] - all_freqs[:, None]
  down = -slopes[:, :-2] / f_diff[:-1]
  up = slopes[:, 2:] / f_diff[1:]
  return torch.clamp(torch.minimum(down, up), min=0.0).float()


class MelSpectrogram(nn.Module):
  """torchaudio.transforms.MelSpectrogram's constructor and output ([..., n_mels, frames])."""

  def __init__(self, sample_rate: int = 16000, n_fft: int = 400, win_length=None,
               hop_length=None, f_min: float = 0.0, f_max=None, pad: int = 0,
               n_mels: int = 128, window_fn=torch.hann_window, power: float = 2.0,
               normalized: bool = False, center: bool = True, pad_mode: str = "reflect",
               **unused):
    super().__init__()
    if pad:
      raise ValueError("MelSpectrogram: pad > 0 is not supported")
    self.n_fft, self.power, self.normalized = int(n_fft), float(power), bool(normalized)
    self.win_length = int(win_length or n_fft)
    self.hop_length = int(hop_length or self.win_length // 2)
    self.center, self.pad_mode = bool(center), pad_mode
    self.register_buffer("window", window_fn(self.win_length), persistent=False)
    f_max = float(f_max) if f_max is not None else float(sample_rate // 2)
    self.register_buffer("fb", mel_filterbank(self.n_fft // 2 + 1, float(f_min), f_max,
                                              int(n_mels), float(sample_rate)), persistent=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    shape = x.shape
    spec = torch.stft(x.reshape(-1, shape[-1]), self.n_fft, self.hop_length, self.win_length,
                      self.window, center=self.center, pad_mode=self.pad_mode,
                      normalized=self.normalized, return_complex=True)
    spec = spec.abs().pow(self.power)                                # [N, freqs, frames]
    mel = torch.matmul(spec.transpose(-1, -2), self.fb).transpose(-1, -2)
    return mel.reshape(*shape[:-1], mel.shape[-2], mel.shape[-1])


def install() -> None:
  """Make audiocraft's spectral losses use this class where torchaudio's is unavailable."""
  from audiocraft.losses import specloss
  real = getattr(specloss, "MelSpectrogram", None)
  if real is MelSpectrogram:
    return
  try:
    real(n_mels=8, sample_rate=16000, n_fft=64)    # a working torchaudio wins
  except Exception:  # noqa: BLE001 - the placeholder raises ImportError
    specloss.MelSpectrogram = MelSpectrogram
