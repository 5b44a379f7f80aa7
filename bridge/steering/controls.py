"""Control directions for `add` steering: what a push of the same norm does when it is not
the feature's direction.

An isotropic Gaussian direction is nearly orthogonal to everything the model writes, so it
understates what an in-distribution push of that size does. Beside it, controls drawn from
the data: other decoder rows of the same SAE (`decoder`), or directions sampled from the
activation covariance of the baseline generation at the steered site (`covariance`:
v = Xcᵀg, g ~ N(0, I), so v ~ N(0, Σ) up to scale). Every control is scaled to `norm`.
"""
from __future__ import annotations

import torch

KINDS = ("decoder", "covariance", "gaussian")


def check_kinds(kinds) -> list[str]:
  """`steer.control_kinds` as a list, checked."""
  kinds = [kinds] if isinstance(kinds, str) else list(kinds)
  bad = [k for k in kinds if k not in KINDS]
  if not kinds or bad or len(set(kinds)) != len(kinds):
    raise ValueError(f"--config.steer.control_kinds={tuple(kinds)!r}; choose one or more of "
                     f"{KINDS}, each once")
  return kinds


def resolve(kinds: list[str], *, has_decoder: bool) -> list[tuple[str, str]]:
  """[(kind asked, kind used)]: `decoder` without an SAE (CAA / probe directions) becomes
  `covariance` (listed once)."""
  out = []
  for k in kinds:
    use = "covariance" if k == "decoder" and not has_decoder else k
    if use not in [u for _, u in out]:
      out.append((k, use))
  return out


def _scaled(v: torch.Tensor, norm: float) -> torch.Tensor:
  return v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12) * norm


def gaussian(n: int, d: int, norm: float, generator: torch.Generator) -> torch.Tensor:
  """[n, d] isotropic Gaussian directions of norm `norm`."""
  return _scaled(torch.randn(n, d, generator=generator), norm)


def decoder(n: int, W_dec: torch.Tensor, exclude, norm: float,
            generator: torch.Generator) -> tuple[torch.Tensor, list[int]]:
  """([n, d], ids): random other rows of the SAE decoder (not `exclude`), norm `norm`."""
  skip = {int(i) for i in exclude}
  pool = [j for j in range(W_dec.shape[0]) if j not in skip]
  if len(pool) < n:
    raise ValueError(f"--config.steer.controls={n}: the SAE has only {len(pool)} other "
                     f"decoder rows")
  pick = [pool[i] for i in torch.randperm(len(pool), generator=generator)[:n].tolist()]
  return _scaled(W_dec[pick].float(), norm), pick


def covariance(n: int, acts: torch.Tensor, norm: float, generator: torch.Generator) -> torch.Tensor:
  """[n, d] directions ~ N(0, Σ) of activation rows `acts` [N, d] (centred), norm `norm`."""
  x = acts.reshape(-1, acts.shape[-1]).float()
  if x.shape[0] < 2:
    raise ValueError("covariance controls need at least 2 activation rows of the baseline")
  xc = x - x.mean(0)
  g = torch.randn(n, xc.shape[0], generator=generator)
  return _scaled(g @ xc, norm)
