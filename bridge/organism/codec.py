"""Train the organism's compression model (audiocraft's EncodecModel: SEANet + RVQ) the way
audiocraft's CompressionSolver does, without the adversarial part: reconstruction losses
(`l1` on the waveform, `msspec` multi-scale mel) weighted through audiocraft's gradient
Balancer, plus the RVQ commitment penalty backpropagated apart, Adam with the solver's betas.
The RVQ codebooks learn by EMA in training mode (audiocraft's own update) and dead codes
are replaced from the batch. The adversarial losses (MS-STFT discriminator) are what makes
EnCodec sound good at 6 kbps; at this size and budget they are left out, and the metrics
below say how good the reconstruction is without them.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from bridge.organism import mel


def losses(sample_rate: int, clip_samples: int = 0):
  """audiocraft's reconstruction losses by solver name: l1, msspec (training), and the
  evaluation metrics mel (MelSpectrogramL1Loss) and sisnr (SISNR: minus SI-SNR in dB, over
  one segment of `clip_samples`: its epsilon grows with the segment, so audiocraft's 20 s
  default would cap a 2 s clip's SI-SNR near 33 dB)."""
  from torch import nn

  from bridge.models import audiocraft_musicgen
  audiocraft_musicgen.import_audiocraft()                   # the shim first: audiocraft imports torchaudio
  from audiocraft import losses as ac_losses
  mel.install()
  return {"l1": nn.L1Loss(),
          "msspec": ac_losses.MultiScaleMelSpectrogramLoss(sample_rate=sample_rate,
                                                           range_start=6, range_end=11,
                                                           n_mels=64, normalized=False),
          "mel": ac_losses.MelSpectrogramL1Loss(sample_rate=sample_rate, n_fft=1024,
                                                hop_length=256, n_mels=64, log=True),
          "sisnr": ac_losses.SISNR(sample_rate=sample_rate, overlap=0.0,
                                   segment=(clip_samples + 0.5) / sample_rate
                                   if clip_samples else 20)}


def train(model, wav: np.ndarray, cfg, *, log: Callable[[str], None] = print) -> dict:
  """Train `model` (an EncodecModel) in place on random crops of `wav` [N, samples].

  cfg: steps, batch_size, crop_seconds, lr, weights (l1, msspec through the Balancer;
  penalty: the RVQ commitment loss, backpropagated apart as the solver does), kmeans_restarts,
  seed. Returns a
  summary of the last steps' losses and the wall time.
  """
  from audiocraft.losses import Balancer
  from musicsae_jax.progress import Progress
  sr = int(model.sample_rate)
  crit = losses(sr)
  weights = {"l1": float(cfg.weights.l1), "msspec": float(cfg.weights.msspec)}
  balancer = Balancer(weights, balance_grads=True, total_norm=1.0, ema_decay=0.999,
                      per_batch_item=True)
  opt = torch.optim.Adam(model.parameters(), lr=float(cfg.lr), betas=(0.5, 0.9))
  gen = np.random.default_rng([int(cfg.seed), 0xC0DE])
  crop = min(int(round(float(cfg.crop_seconds) * sr)), wav.shape[1])
  steps, bs = int(cfg.steps), int(cfg.batch_size)
  restarts = {0, *(int(s) for s in cfg.kmeans_restarts)}
  model.train()
  t0, hist = time.time(), []
  bar = Progress(steps, "organism codec", unit="steps", warmup=2, log_every=20.0)
  for step in range(steps):
    idx = gen.integers(0, len(wav), bs)
    off = gen.integers(0, wav.shape[1] - crop + 1, bs)
    x = torch.from_numpy(np.stack([wav[i, o:o + crop] for i, o in zip(idx, off)]))[:, None]
    if step in restarts:
      pick = gen.integers(0, len(wav), int(cfg.kmeans_clips))
      init_codebooks(model, torch.from_numpy(wav[pick, :crop])[:, None])
    qres = model(x)
    y = qres.x[..., :crop]
    opt.zero_grad(set_to_none=True)
    if qres.penalty is not None and qres.penalty.requires_grad and float(cfg.weights.penalty):
      (float(cfg.weights.penalty) * qres.penalty).backward(retain_graph=True)
    ls = {k: crit[k](y, x) for k in weights}
    balancer.backward(ls, y)
    opt.step()
    hist.append({k: float(v.detach()) for k, v in ls.items()})
    bar.update(1, l1=f"{hist[-1]['l1']:.4f}", msspec=f"{hist[-1]['msspec']:.3f}")
  bar.close()
  # The encoder moves faster than the EMA codebooks follow: fit them once more to the
  # trained encoder (k-means on more crops), so the codes the LM learns are all in use.
  pick = gen.integers(0, len(wav), 2 * int(cfg.kmeans_clips))
  model.train()
  init_codebooks(model, torch.from_numpy(wav[pick, :crop])[:, None])
  model.eval()
  tail = hist[-max(1, steps // 10):]
  return {"steps": steps, "seconds": time.time() - t0,
          "final": {k: float(np.mean([h[k] for h in tail])) for k in weights}}


@torch.no_grad()
def init_codebooks(model, x: torch.Tensor) -> None:
  """audiocraft's k-means codebook init of every RVQ layer on the encoder outputs of `x`
  (the residual of the layers before), with the EMA state made consistent with it.

  audiocraft runs this once, on the first batch, while the encoder is still random; as the
  encoder learns, its outputs leave those codes and most die (dead-code replacement is
  undone by the EMA renormalisation of the same step). audiocraft's init also leaves
  `embed_avg = embed` with `cluster_size = counts`, so the next EMA step divides each code
  by its count and moves it off the data. Here the init runs on a larger batch at the
  steps `codec.kmeans_restarts`, and `embed_avg = embed * cluster_size` (counts >= 1).
  """
  emb = model.encoder(x)
  residual = emb
  for layer in model.quantizer.vq.layers:
    cb = layer._codebook                 # pylint: disable=protected-access
    z = layer.project_in(layer._preprocess(residual))   # pylint: disable=protected-access
    cb.inited.fill_(0)
    cb.init_embed_(z.reshape(-1, z.shape[-1]))
    cb.cluster_size.clamp_(min=1.0)
    cb.embed_avg.copy_(cb.embed * cb.cluster_size[:, None])
    residual = residual - layer.decode(layer.encode(residual))


@torch.no_grad()
def codes_used(model, wav: np.ndarray) -> list[int]:
  return [int(len(np.unique(c))) for c in np.swapaxes(encode_all(model, wav), 0, 1)]


@torch.no_grad()
def evaluate(model, wav: np.ndarray, batch_size: int = 16) -> dict:
  """Reconstruction of held-out clips [N, samples] through encode -> decode: audiocraft's
  msspec and mel distances and SI-SNR (dB, higher is better), each also for silence (a
  zero reconstruction) as the scale of 'nothing reconstructed'."""
  crit = losses(int(model.sample_rate), int(wav.shape[1]))
  model.eval()
  sums = {k: 0.0 for k in ("msspec", "mel", "sisnr_db", "msspec_silence", "mel_silence", "l1")}
  for s in range(0, len(wav), batch_size):
    x = torch.from_numpy(wav[s:s + batch_size])[:, None]
    codes, scale = model.encode(x)
    y = model.decode(codes, scale)[..., :x.shape[-1]]
    n = len(x)
    sums["msspec"] += float(crit["msspec"](y, x)) * n
    sums["mel"] += float(crit["mel"](y, x)) * n
    sums["sisnr_db"] += -float(crit["sisnr"](y, x)) * n
    sums["l1"] += float(torch.mean(torch.abs(y - x))) * n
    z = torch.zeros_like(x)
    sums["msspec_silence"] += float(crit["msspec"](z, x)) * n
    sums["mel_silence"] += float(crit["mel"](z, x)) * n
  return {k: v / len(wav) for k, v in sums.items()} | {"clips": int(len(wav))}


@torch.no_grad()
def encode_all(model, wav: np.ndarray, batch_size: int = 32) -> np.ndarray:
  """[N, n_q, frames] int64 codes of every clip."""
  model.eval()
  out = []
  for s in range(0, len(wav), batch_size):
    codes, _ = model.encode(torch.from_numpy(wav[s:s + batch_size])[:, None])
    out.append(codes.numpy())
  return np.concatenate(out)


@torch.no_grad()
def decode_codes(model, codes: np.ndarray) -> np.ndarray:
  """[N, samples] float32 audio of codes [N, n_q, frames]."""
  model.eval()
  return model.decode(torch.from_numpy(codes), None)[:, 0].numpy()
