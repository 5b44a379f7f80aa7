"""Capture site names and the module behind each: `lm.layer.<i>[.attn|.cross_attn]`, `t5.hidden`,
`t5.pooled`, `cond.proj` (bridge/capture/record.py describes what each records).

Both backends resolve a site to its module here (`lm_site_module`), and capture, steering
and extraction validate site names here (`parse_sites`), so the names have one definition.
"""
from __future__ import annotations

import re

import torch

from bridge.models import audiocraft_musicgen

LAYER_PREFIX = "lm.layer."
TEXT_SITES = ("t5.hidden", "t5.pooled", "cond.proj")
UNCOND_SUFFIX = ".uncond"
_LM_SITE_RE = re.compile(r"^lm\.layer\.(\d+)(?:\.(attn|cross_attn))?$")
ATTN_MODULES = {"attn": "self_attn", "cross_attn": "cross_attention"}   # site tail -> module


def is_lm_site(site: str) -> bool:
  """A per-frame LM site: `lm.layer.<i>`, `lm.layer.<i>.attn` or `lm.layer.<i>.cross_attn`."""
  return bool(_LM_SITE_RE.match(site))


def lm_site_module(lm, site: str, *, layers=None, attn_modules=None) -> torch.nn.Module:
  """The module whose forward output is `site` (a layer, or its attention sub-module).

  `lm` is audiocraft's `MusicGen.lm`; another backend passes its decoder `layers` and the
  names of its attention sub-modules (`attn_modules`, site tail -> attribute)."""
  m = _LM_SITE_RE.match(site)
  if not m:
    raise UnknownSiteError(f"{site!r} is not an LM site (lm.layer.<i>[.attn|.cross_attn])")
  layers = lm.transformer.layers if layers is None else layers
  attn_modules = ATTN_MODULES if attn_modules is None else attn_modules
  i = int(m.group(1))
  if not 0 <= i < len(layers):
    raise UnknownSiteError(f"site {site!r}: layer {i} out of range, the model has "
                           f"{len(layers)} layers")
  if m.group(2) is None:
    return layers[i]
  mod = getattr(layers[i], attn_modules[m.group(2)], None)
  if mod is None:
    raise UnknownSiteError(f"site {site!r}: layer {i} has no {attn_modules[m.group(2)]} "
                           f"(a model without text cross-attention)")
  return mod


class UnknownSiteError(ValueError):
  """A site name that is not one of the capture sites, or a layer out of range."""


def parse_sites(sites, num_layers: int) -> list[str]:
  """Validate site names against the model; returns them de-duplicated, in order."""
  if isinstance(sites, str):
    sites = [sites]
  out = []
  for s in sites:
    m = _LM_SITE_RE.match(s)
    if m:
      i = int(m.group(1))
      if not 0 <= i < num_layers:
        raise UnknownSiteError(f"site {s!r}: layer {i} out of range, the model has "
                               f"{num_layers} layers (lm.layer.0 .. lm.layer.{num_layers - 1})")
    elif s not in TEXT_SITES:
      raise UnknownSiteError(f"unknown site {s!r}: expected lm.layer.<i>[.attn|.cross_attn] (0 <= i < "
                             f"{num_layers}) or one of {', '.join(TEXT_SITES)} (and, for "
                             f"extraction, audio.descriptors; extract.keep='both' adds "
                             f"lm.layer.<i>.uncond by itself)")
    if s not in out:
      out.append(s)
  if not out:
    raise UnknownSiteError("no capture sites given")
  return out


def site_dim(site: str, info: audiocraft_musicgen.ModelInfo) -> int:
  """Row width of a capture site."""
  if site.startswith(LAYER_PREFIX) or site == "cond.proj":
    return info.d_model
  if site in ("t5.hidden", "t5.pooled"):
    return info.t5_dim
  raise UnknownSiteError(site)
