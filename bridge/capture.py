"""Record MusicGen activations at named sites, one row per generated frame (or T5 token).

Sites: `lm.layer.<i>` (residual stream after transformer block i), `lm.layer.<i>.attn`
and `lm.layer.<i>.cross_attn` (the output of block i's self-attention / text cross-attention
module: what that sub-block adds to the residual stream, MusicGen having no layer scale),
`t5.hidden` (T5 last
hidden state, per valid token), `t5.pooled` (its mean over valid tokens, per prompt),
`cond.proj` (T5 after audiocraft's `output_proj` into the LM width, per valid token).

Two capture paths that give the same numbers (tests/test_capture.py):
- `generate_with_capture`: hooks during sampling. The layer hook fires once per decoding
  step and APPENDS (keeping only the last step is the classic overwrite bug). Under
  classifier-free guidance the batch is `[cond; uncond]`; rows `[:B]` are kept (both with
  keep='both'). With `two_step_cfg` calls alternate cond, uncond. The delay pattern makes
  T frames take T + max_delay steps; step i predicts codebook 0 of frame i, so step i is
  frame i and the last max_delay steps are dropped.
- `teacher_forced_capture`: one batched forward over already generated tokens (the delay
  pattern sequence, first T steps), much faster when re-capturing many layers.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re

import numpy as np
import torch

from bridge import models

LAYER_PREFIX = "lm.layer."
TEXT_SITES = ("t5.hidden", "t5.pooled", "cond.proj")
UNCOND_SUFFIX = ".uncond"
_LM_SITE_RE = re.compile(r"^lm\.layer\.(\d+)(?:\.(attn|cross_attn))?$")
ATTN_MODULES = {"attn": "self_attn", "cross_attn": "cross_attention"}   # site tail -> module


def is_lm_site(site: str) -> bool:
  """A per-frame LM site: `lm.layer.<i>`, `lm.layer.<i>.attn` or `lm.layer.<i>.cross_attn`."""
  return bool(_LM_SITE_RE.match(site))


def lm_site_module(lm, site: str) -> torch.nn.Module:
  """The module whose forward output is `site` (a layer, or its attention sub-module)."""
  m = _LM_SITE_RE.match(site)
  if not m:
    raise UnknownSiteError(f"{site!r} is not an LM site (lm.layer.<i>[.attn|.cross_attn])")
  layers = lm.transformer.layers
  i = int(m.group(1))
  if not 0 <= i < len(layers):
    raise UnknownSiteError(f"site {site!r}: layer {i} out of range, the model has "
                           f"{len(layers)} layers")
  if m.group(2) is None:
    return layers[i]
  mod = getattr(layers[i], ATTN_MODULES[m.group(2)], None)
  if mod is None:
    raise UnknownSiteError(f"site {site!r}: layer {i} has no {ATTN_MODULES[m.group(2)]} "
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


def site_dim(site: str, info: models.ModelInfo) -> int:
  """Row width of a capture site."""
  if site.startswith(LAYER_PREFIX) or site == "cond.proj":
    return info.d_model
  if site in ("t5.hidden", "t5.pooled"):
    return info.t5_dim
  raise UnknownSiteError(site)


def _lm_sites(sites) -> list[str]:
  return [s for s in sites if _LM_SITE_RE.match(s)]


@dataclasses.dataclass
class Capture:
  """What one batch produced. `acts[site][b]` is prompt b's rows `[n, d]` (float32)."""
  tokens: torch.Tensor                       # [B, K, T] generated codes
  acts: dict[str, list[np.ndarray]]
  audio: torch.Tensor | None = None          # [B, C, samples]

  def index(self, site: str, prompt_ids) -> np.ndarray:
    """`(prompt_id, frame|token)` int32 rows for `acts[site]` concatenated over the batch."""
    parts = [np.stack([np.full(len(a), p), np.arange(len(a))], 1)
             for p, a in zip(prompt_ids, self.acts[site])]
    return np.concatenate(parts).astype(np.int32)


# --------------------------------------------------------------------------------------
# Hooks (context managers that remove themselves)
# --------------------------------------------------------------------------------------
class _Hooks(contextlib.AbstractContextManager):
  """Forward hooks registered on enter (`_handles`) and always removed on exit."""
  _handles: list

  def __exit__(self, *exc):
    for h in self._handles:
      h.remove()
    self._handles.clear()
    return False


class LayerRecorder(_Hooks):
  """Appends the last position of every forward of the chosen LM layers (never overwrites).

  `layers`: layer indices or LM site names (`lm.layer.<i>[.attn|.cross_attn]`); `calls` is
  keyed by what was given."""

  def __init__(self, lm, layers, last_only: bool = True):
    self.lm, self.layers, self.last_only = lm, list(layers), last_only
    self.calls: dict[int, list[torch.Tensor]] = {i: [] for i in self.layers}
    self._handles = []

  def _hook(self, i):
    def hook(module, args, output):
      out = output[0] if isinstance(output, tuple) else output
      self.calls[i].append((out[:, -1] if self.last_only else out).detach().clone())
    return hook

  def __enter__(self):
    for i in self.layers:
      mod = lm_site_module(self.lm, i) if isinstance(i, str) else self.lm.transformer.layers[i]
      self._handles.append(mod.register_forward_hook(self._hook(i)))
    return self



class TextRecorder(_Hooks):
  """Records T5 last hidden states, attention masks and `output_proj` outputs per call.

  T5 lives in the conditioner's `__dict__` (not a submodule), so it is hooked directly.
  """

  def __init__(self, conditioner):
    self.cond = conditioner
    self.hidden, self.masks, self.proj = [], [], []
    self._handles = []

  def _t5_hook(self, module, args, kwargs, output):
    self.hidden.append(output.last_hidden_state.detach().float().cpu())
    self.masks.append(kwargs["attention_mask"].detach().cpu())

  def _proj_hook(self, module, args, output):
    self.proj.append(output.detach().float().cpu())

  def __enter__(self):
    self._handles = [self.cond.t5.register_forward_hook(self._t5_hook, with_kwargs=True),
                     self.cond.output_proj.register_forward_hook(self._proj_hook)]
    return self


  def rows(self, site: str, B: int) -> list[np.ndarray]:
    """Per-prompt rows of the first (conditional) call; padded tokens dropped."""
    if not self.hidden:
      raise RuntimeError("the T5 conditioner was not called while recording")
    mask = self.masks[0][:B].bool()
    out = []
    for b in range(B):
      valid = mask[b]
      if site == "t5.hidden":
        out.append(self.hidden[0][b][valid].numpy())
      elif site == "t5.pooled":
        out.append(self.hidden[0][b][valid].mean(0, keepdim=True).numpy())
      else:  # cond.proj: audiocraft zeroes padded positions after the projection
        out.append(self.proj[0][b][valid].numpy())
    return out


def _np_rows(x: torch.Tensor) -> list[np.ndarray]:
  """[B, T, D] tensor -> list of B float32 arrays [T, D]."""
  x = x.float().cpu().numpy()
  return [np.ascontiguousarray(r) for r in x]


def _text_sites(sites):
  return [s for s in sites if s in TEXT_SITES]


# --------------------------------------------------------------------------------------
# Path 1: hooks during generation
# --------------------------------------------------------------------------------------
def generate_tokens(model, texts, seed: int | None = None) -> torch.Tensor:
  """Sample codes [B, K, T] for `texts` (one batch), seeding torch's RNG first if given."""
  if model.duration > model.max_duration:
    raise ValueError(f"duration {model.duration}s exceeds the model's window "
                     f"{model.max_duration}s; extended generation re-encodes context and "
                     f"cannot be captured one row per frame")
  if seed is not None:
    torch.manual_seed(seed)
  attributes, _ = model._prepare_tokens_and_attributes(list(texts), None)
  return model._generate_tokens(attributes, None, progress=False)


def generate_with_capture(model, texts, sites, *, keep: str = "cond", seed: int | None = None,
                          return_audio: bool = False) -> Capture:
  """Generate `texts` as one batch with `model`'s generation params, recording `sites`."""
  if keep not in ("cond", "both"):
    raise ValueError(f"keep must be 'cond' or 'both', got {keep!r}")
  info = models.model_info(model)
  sites = parse_sites(sites, info.num_layers)
  layers, B = _lm_sites(sites), len(texts)
  two_step = model.generation_params.get("two_step_cfg") or model.lm.two_step_cfg
  with LayerRecorder(model.lm, layers) as lrec, \
       TextRecorder(models.text_conditioner(model)) as trec:
    tokens = generate_tokens(model, texts, seed)
  T = tokens.shape[-1]
  acts: dict[str, list[np.ndarray]] = {}
  for i in layers:
    calls = lrec.calls[i]
    if two_step:  # [B, D] per call, cond then uncond
      cond, uncond = torch.stack(calls[0::2], 1), torch.stack(calls[1::2], 1)
    else:         # [2B, D] per call
      both = torch.stack(calls, 1)
      cond, uncond = both[:B], both[B:]
    if cond.shape[1] != T + info.max_delay:
      raise RuntimeError(f"{i}: {cond.shape[1]} decoding steps recorded for {T} frames; "
                         f"expected {T + info.max_delay} (delay pattern)")
    acts[i] = _np_rows(cond[:, :T])
    if keep == "both":
      acts[f"{i}{UNCOND_SUFFIX}"] = _np_rows(uncond[:, :T])
  for s in _text_sites(sites):
    acts[s] = trec.rows(s, B)
  audio = model.generate_audio(tokens) if return_audio else None
  return Capture(tokens=tokens, acts=acts, audio=audio)


# --------------------------------------------------------------------------------------
# Path 2: teacher-forced re-capture over generated tokens
# --------------------------------------------------------------------------------------
def teacher_forced_capture(model, texts, tokens: torch.Tensor, sites, *,
                           keep: str = "cond") -> Capture:
  """One forward over the delay-pattern sequence of `tokens` [B, K, T]; same rows as hooks."""
  audiocraft = models.import_audiocraft()  # noqa: F841
  from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout
  if keep not in ("cond", "both"):
    raise ValueError(f"keep must be 'cond' or 'both', got {keep!r}")
  info = models.model_info(model)
  sites = parse_sites(sites, info.num_layers)
  layers, B = _lm_sites(sites), len(texts)
  lm = model.lm
  if tokens.shape[0] != B:
    raise ValueError(f"{tokens.shape[0]} token rows for {B} texts")
  tokens = tokens.to(model.device)
  T = tokens.shape[-1]
  pattern = lm.pattern_provider.get_pattern(T)
  seq, _, _ = pattern.build_pattern_sequence(tokens, lm.special_token_id,
                                             keep_only_valid_steps=False)
  inp = seq[..., :T]  # generation step i feeds pattern step i and yields frame i
  two_step = model.generation_params.get("two_step_cfg") or lm.two_step_cfg
  provider = lm.condition_provider
  attributes, _ = model._prepare_tokens_and_attributes(list(texts), None)
  null = ClassifierFreeGuidanceDropout(p=1.0)(attributes)
  acts: dict[str, list[np.ndarray]] = {}

  def run(conds, x):
    with LayerRecorder(lm, layers, last_only=False) as rec:
      ct = provider(provider.tokenize(conds))
      lm(x, [], condition_tensors=ct)
    return {i: rec.calls[i][0][:, -T:] for i in layers}  # drop any prepended conditioning

  with torch.no_grad(), model.autocast, TextRecorder(models.text_conditioner(model)) as trec:
    if keep == "cond":
      cond, uncond = run(attributes, inp), None
    elif two_step:
      cond, uncond = run(attributes, inp), run(null, inp)
    else:
      both = run(attributes + null, torch.cat([inp, inp]))
      cond = {i: v[:B] for i, v in both.items()}
      uncond = {i: v[B:] for i, v in both.items()}
  for i in layers:
    acts[i] = _np_rows(cond[i])
    if uncond is not None:
      acts[f"{i}{UNCOND_SUFFIX}"] = _np_rows(uncond[i])
  for s in _text_sites(sites):
    acts[s] = trec.rows(s, B)
  return Capture(tokens=tokens.cpu(), acts=acts)
