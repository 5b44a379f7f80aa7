"""The SAE section of a config, resolved and checked without JAX.

`musicsae_jax.sae.make_sae` builds from what `resolve_config` returns; `launch.config`
calls the same function, so a value the trainer would refuse (`architecture=topkk`,
`k >= m`) is refused when the config is printed too, with the same message.
"""
from __future__ import annotations

from musicsae_jax import config_defaults

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")

DEFAULTS = {k: v for k, v in config_defaults.sae().to_dict().items() if k != "d"}  # one copy


def default_prefixes(m: int, k: int) -> list[int]:
  """Matryoshka's default nesting: a ratio-4 geometric ladder m/256, m/64, m/16, m/4, m
  (sizes below k dropped: a prefix must be able to hold a token's k latents, as
  SAELens requires). Bussmann et al. (2025) nest a few sizes growing ~4x up to m;
  dictionary_learning and SAELens leave the ladder to the user."""
  return [m // 4 ** j for j in (4, 3, 2, 1) if m // 4 ** j >= max(k, 1)] + [m]


def resolve_config(cfg, d: int) -> dict:
  """Defaults + cfg, with m resolved and every constraint checked (clear ValueErrors)."""
  c = dict(DEFAULTS)
  if cfg is not None:
    c.update(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))
  arch = c["architecture"]
  if arch not in ARCHITECTURES:
    raise ValueError(f"sae.architecture={arch!r} is unknown; allowed: {', '.join(ARCHITECTURES)}")
  if int(d) <= 0:
    raise ValueError(f"input width d={d} must be positive")
  m = c["m"] if c["m"] is not None else c["expansion"] * d
  if int(m) != m or m <= 0:
    raise ValueError(f"sae.m={m!r} (number of latents, or expansion*d) must be a positive integer")
  c["m"] = m = int(m)
  if arch in ("topk", "batchtopk", "matryoshka"):
    k = c["k"]
    if not (1 <= int(k) < m):
      raise ValueError(f"sae.k={k} must satisfy 1 <= k < m={m}")
    if c["k_aux"] is not None and int(c["k_aux"]) < 1:
      raise ValueError(f"sae.k_aux={c['k_aux']} must be >= 1 (or None for d/2)")
  if arch == "matryoshka":
    p = list(c["matryoshka_prefixes"] or default_prefixes(m, int(c["k"])))
    if p[0] < 1 or any(b <= a for a, b in zip(p, p[1:])) or p[-1] != m:
      raise ValueError(f"sae.matryoshka_prefixes={p} must be strictly increasing "
                       f"positive ints ending at m={m}")
    c["matryoshka_prefixes"] = p
  if arch == "jumprelu":
    for f in ("jumprelu_bandwidth", "l0_coeff"):
      if not c[f] > 0:
        raise ValueError(f"sae.{f}={c[f]} must be > 0")
    if c["jumprelu_init_threshold"] is not None and not c["jumprelu_init_threshold"] > 0:
      raise ValueError(f"sae.jumprelu_init_threshold={c['jumprelu_init_threshold']} "
                       "must be > 0 (or None: set from data)")
    if c["target_l0"] is not None and not 0 <= c["target_l0"] < m:
      raise ValueError(f"sae.target_l0={c['target_l0']} must satisfy 0 <= target_l0 < "
                       f"m={m} (0: fixed l0_coeff; None: k)")
  return c
