"""A torch module for an exported SAE: the same numbers as `musicsae_jax.sae`, raw inputs.

Reads `sae_weights.safetensors` + `cfg.json` written by `musicsae_jax.export` (normalisation
already folded in, so it takes raw activations and returns raw reconstructions; latents
are in raw units). Inference semantics per training architecture:

    relu        z = relu(pre)
    topk        z = relu of the k largest pre-activations per row, others 0
    jumprelu    z = pre * (pre > threshold[j])
    batchtopk   z = pre * (pre > threshold)      (the EMA threshold, broadcast to [m])
    matryoshka  as batchtopk

with pre = (x - b_dec) W_enc + b_enc and x̂ = z W_dec + b_dec. No jax imports here.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file
from torch import nn

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")


class TorchSAE(nn.Module):
  """Exported SAE as buffers (inference only; move with `.to(device, dtype)`)."""

  def __init__(self, tensors: dict[str, torch.Tensor], cfg: dict):
    super().__init__()
    ms = cfg.get("musicsae", {})
    self.architecture = ms.get("architecture")
    if self.architecture not in ARCHITECTURES:
      raise ValueError(f"cfg.json musicsae.architecture={self.architecture!r}; "
                       f"expected one of {ARCHITECTURES}")
    self.cfg = cfg
    self.k = ms.get("k")
    self.site, self.layer = ms.get("site"), ms.get("layer")
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
      self.register_buffer(name, tensors[name].float().contiguous())
    self.d, self.m = self.W_enc.shape
    if self.architecture in ("jumprelu", "batchtopk", "matryoshka"):
      if "threshold" not in tensors:
        raise ValueError(f"{self.architecture} export has no 'threshold' tensor")
      self.register_buffer("threshold", tensors["threshold"].float().reshape(self.m).contiguous())
    if self.architecture == "topk" and not (self.k and 1 <= self.k < self.m):
      raise ValueError(f"topk export needs 1 <= k < m, got k={self.k}")

  @classmethod
  def from_export(cls, path: str, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None) -> "TorchSAE":
    """Load `<path>/sae_weights.safetensors` (or an older export's `sae.safetensors`) +
    `<path>/cfg.json`."""
    sp, cp = os.path.join(path, "sae_weights.safetensors"), os.path.join(path, "cfg.json")
    if not os.path.exists(sp) and os.path.exists(os.path.join(path, "sae.safetensors")):
      sp = os.path.join(path, "sae.safetensors")
    for p in (sp, cp):
      if not os.path.exists(p):
        raise FileNotFoundError(f"{p} not found: not an SAE export directory "
                                f"(write one with launch/export.py)")
    with open(cp) as f:
      cfg = json.load(f)
    sae = cls(load_file(sp), cfg)
    return sae.to(device=device, dtype=dtype) if dtype is not None else sae.to(device)

  def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
    x = x.to(self.W_enc.dtype)
    return (x - self.b_dec) @ self.W_enc + self.b_enc

  def encode(self, x: torch.Tensor) -> torch.Tensor:
    """[..., d] raw activations -> [..., m] latents (raw units)."""
    pre = self.pre_acts(x)
    if self.architecture == "relu":
      return torch.relu(pre)
    if self.architecture == "topk":
      vals, idx = pre.topk(self.k, dim=-1)
      return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
    return pre * (pre > self.threshold)

  def decode(self, z: torch.Tensor) -> torch.Tensor:
    """[..., m] latents -> [..., d] raw reconstruction."""
    return z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂, z), like the JAX module's `__call__`."""
    z = self.encode(x)
    return self.decode(z), z

  def direction(self, feature: int) -> torch.Tensor:
    """Unit decoder row of one feature (the steering direction)."""
    w = self.W_dec[int(feature)]
    return w / w.norm()
