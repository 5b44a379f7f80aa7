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

Both work on either backend (bridge.models.backends: audiocraft or transformers). transformers'
`generate` runs the first decoding pass twice (a prefill whose output it discards, then
the loop), so on that backend the layer rows are keyed by decoding position (the cache
length), not by call count; a position seen twice keeps its last call.
"""
from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import torch

from bridge.models import audiocraft_musicgen, backends, capture_sites


def _lm_sites(sites) -> list[str]:
  return [s for s in sites if capture_sites.is_lm_site(s)]


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
  """Appends the last position of every forward of the chosen LM sites (never overwrites),
  with the decoding position of each call in `offsets[i]`. `layers`: layer indices or LM
  site names (`lm.layer.<i>[.attn|.cross_attn]`); `calls` is keyed by what was given.

  `model` is a MusicGen on either backend (or its adapter), or audiocraft's `MusicGen.lm`.
  """

  def __init__(self, model, layers, last_only: bool = True):
    self.layers, self.last_only = list(layers), last_only
    if hasattr(model, "transformer") and hasattr(model, "condition_provider"):  # MusicGen.lm
      self.modules = {i: capture_sites.lm_site_module(model, i) if isinstance(i, str)
                      else model.transformer.layers[i] for i in self.layers}
      self.offset = lambda kwargs, S: backends.streaming_offset(model.transformer)
    else:
      be = backends.adapt(model)
      self.modules = {i: be.layer_module(i) for i in self.layers}
      self.offset = be.step_offset
    self.calls: dict[int, list[torch.Tensor]] = {i: [] for i in self.layers}
    self.offsets: dict[int, list[int]] = {i: [] for i in self.layers}
    self._handles = []

  def _hook(self, i):
    def hook(module, args, kwargs, output):
      out = output[0] if isinstance(output, tuple) else output
      self.calls[i].append((out[:, -1] if self.last_only else out).detach().clone())
      S = out.shape[1] if out.dim() == 3 else 1
      self.offsets[i].append(self.offset(kwargs, S) + (S - 1 if self.last_only else 0))
    return hook

  def __enter__(self):
    for i in self.layers:
      self._handles.append(self.modules[i].register_forward_hook(self._hook(i), with_kwargs=True))
    return self

  def by_position(self, i: int) -> torch.Tensor:
    """[steps, B', D]: one row set per decoding position 0..n-1 (a repeated position keeps
    its last call); raises if a position is missing."""
    seen = dict(zip(self.offsets[i], self.calls[i]))
    if sorted(seen) != list(range(len(seen))):
      raise RuntimeError(f"layer {i}: decoding positions {sorted(seen)[:5]}... are not 0..n-1")
    return torch.stack([seen[p] for p in range(len(seen))])



class TextRecorder(_Hooks):
  """Records T5 last hidden states, attention masks and projection outputs per call.

  audiocraft: T5 lives in the conditioner's `__dict__` (not a submodule), so it is hooked
  directly; pass the conditioner. transformers: pass `t5=` and `proj=` modules.
  """

  def __init__(self, conditioner=None, *, t5=None, proj=None):
    self.t5 = t5 if conditioner is None else conditioner.t5
    self.proj_module = proj if conditioner is None else conditioner.output_proj
    self.hidden, self.masks, self.proj = [], [], []
    self._handles = []

  @classmethod
  def for_model(cls, model, sites=()):
    be = backends.adapt(model)
    if be.name == "audiocraft":
      return cls(audiocraft_musicgen.text_conditioner(be.model))
    return cls(t5=be.text_module(), proj=be.proj_module() if "cond.proj" in sites else None)

  def _t5_hook(self, module, args, kwargs, output):
    self.hidden.append(output.last_hidden_state.detach().float().cpu())
    self.masks.append(kwargs["attention_mask"].detach().cpu())

  def _proj_hook(self, module, args, output):
    self.proj.append(output.detach().float().cpu())

  def __enter__(self):
    self._handles = [self.t5.register_forward_hook(self._t5_hook, with_kwargs=True)]
    if self.proj_module is not None:
      self._handles.append(self.proj_module.register_forward_hook(self._proj_hook))
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
  return [s for s in sites if s in capture_sites.TEXT_SITES]


# --------------------------------------------------------------------------------------
# Path 1: hooks during generation
# --------------------------------------------------------------------------------------
def generate_tokens(model, texts, seed: int | None = None) -> torch.Tensor:
  """Sample codes [B, K, T] for `texts` (one batch), seeding torch's RNG first if given."""
  return backends.adapt(model).generate_tokens(texts, seed)


def generate_with_capture(model, texts, sites, *, keep: str = "cond", seed: int | None = None,
                          return_audio: bool = False) -> Capture:
  """Generate `texts` as one batch with `model`'s generation params, recording `sites`."""
  if keep not in ("cond", "both"):
    raise ValueError(f"keep must be 'cond' or 'both', got {keep!r}")
  be = backends.adapt(model)
  info = be.info
  sites = capture_sites.parse_sites(sites, info.num_layers)
  layers, B = _lm_sites(sites), len(texts)
  two_step = be.two_step
  with LayerRecorder(be, layers) as lrec, TextRecorder.for_model(be, sites) as trec:
    tokens = be.generate_tokens(texts, seed)
  T = tokens.shape[-1]
  acts: dict[str, list[np.ndarray]] = {}
  for i in layers:
    calls = lrec.calls[i]
    if two_step:  # [B, D] per call, cond then uncond
      cond, uncond = torch.stack(calls[0::2], 1), torch.stack(calls[1::2], 1)
    else:         # [2B, D] per decoding position ([B, D] without guidance on transformers)
      both = (torch.stack(calls, 1) if be.name == "audiocraft"
              else lrec.by_position(i).transpose(0, 1))
      cond, uncond = both[:B], (both[B:] if both.shape[0] == 2 * B else None)
      if keep == "both" and uncond is None:
        raise ValueError("keep='both' needs classifier-free guidance (cfg_coef > 1)")
    if cond.shape[1] != T + info.max_delay:
      raise RuntimeError(f"{i}: {cond.shape[1]} decoding steps recorded for {T} frames; "
                         f"expected {T + info.max_delay} (delay pattern)")
    acts[i] = _np_rows(cond[:, :T])
    if keep == "both":
      acts[f"{i}{capture_sites.UNCOND_SUFFIX}"] = _np_rows(uncond[:, :T])
  for s in _text_sites(sites):
    acts[s] = trec.rows(s, B)
  audio = be.generate_audio(tokens) if return_audio else None
  return Capture(tokens=tokens, acts=acts, audio=audio)


# --------------------------------------------------------------------------------------
# Path 2: teacher-forced re-capture over generated tokens
# --------------------------------------------------------------------------------------
def teacher_forced_capture(model, texts, tokens: torch.Tensor, sites, *,
                           keep: str = "cond") -> Capture:
  """One forward over the delay-pattern sequence of `tokens` [B, K, T]; same rows as hooks."""
  be = backends.adapt(model)
  if be.name != "audiocraft":
    return _teacher_forced_transformers(be, texts, tokens, sites, keep=keep)
  model = be.model
  audiocraft = audiocraft_musicgen.import_audiocraft()  # noqa: F841
  from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout
  if keep not in ("cond", "both"):
    raise ValueError(f"keep must be 'cond' or 'both', got {keep!r}")
  info = backends.model_info(model)
  sites = capture_sites.parse_sites(sites, info.num_layers)
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

  with torch.no_grad(), model.autocast, TextRecorder(audiocraft_musicgen.text_conditioner(model)) as trec:
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
      acts[f"{i}{capture_sites.UNCOND_SUFFIX}"] = _np_rows(uncond[i])
  for s in _text_sites(sites):
    acts[s] = trec.rows(s, B)
  return Capture(tokens=tokens.cpu(), acts=acts)


def _teacher_forced_transformers(be, texts, tokens, sites, *, keep: str) -> Capture:
  """The transformers twin of teacher_forced_capture: decoder inputs rebuilt with the delay
  pattern (be.delay_sequence), text encoded once, the zero unconditional half appended as
  `generate` does when keep='both'."""
  if keep not in ("cond", "both"):
    raise ValueError(f"keep must be 'cond' or 'both', got {keep!r}")
  info = be.info
  sites = capture_sites.parse_sites(sites, info.num_layers)
  layers, B = _lm_sites(sites), len(texts)
  if tokens.shape[0] != B:
    raise ValueError(f"{tokens.shape[0]} token rows for {B} texts")
  T = tokens.shape[-1]
  seq = be.delay_sequence(tokens.to(be.device), T)
  with LayerRecorder(be, layers, last_only=False) as rec, \
       TextRecorder.for_model(be, sites) as trec:
    be.forward(texts, seq, cfg_batch=keep == "both")
  acts: dict[str, list[np.ndarray]] = {}
  for i in layers:
    out = rec.calls[i][0]
    acts[i] = _np_rows(out[:B])
    if keep == "both":
      acts[f"{i}{capture_sites.UNCOND_SUFFIX}"] = _np_rows(out[B:])
  for s in _text_sites(sites):
    acts[s] = trec.rows(s, B)
  return Capture(tokens=tokens.cpu(), acts=acts)
