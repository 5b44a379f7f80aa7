"""Teacher-forced next-token distributions of MusicGen under edits of one LM site.

The shared instrument of downstream fidelity, layer ablation and activation patching
(bridge/localize/fidelity.py, bridge/localize/layer_ablation.py, bridge/localize/patching.py): one batched forward
over the delay-pattern sequence of given tokens (`lm.compute_predictions`), the
conditional and unconditional halves of classifier-free guidance in one batch
`[cond; uncond]`, combined as audiocraft's sampler does,

    logits = uncond + cfg_coef · (cond − uncond)      (cfg_coef = 1: the conditional model)

and returned as log-probabilities `[B, K, T, card]` aligned with the tokens (entry
[b, k, t] predicts tokens[b, k, t]) with the pattern's validity mask. Edits are steering
hooks (bridge/steering/hooks.py `_Steerer`), so `half` and `steps` mean what they mean there.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

from bridge.models import capture_sites
from bridge.capture import record
from bridge.models import audiocraft_musicgen
from bridge.steering import hooks


class TeacherForced:
  """Texts + tokens [B, K, T] prepared once; `log_probs(*edits)` runs one forward."""

  def __init__(self, model, texts, tokens: torch.Tensor, cfg_coef: float = 3.0):
    audiocraft_musicgen.import_audiocraft()
    from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout
    if tokens.dim() != 3 or tokens.shape[0] != len(texts):
      raise ValueError(f"tokens must be [B, K, T] with B = {len(texts)} texts; got "
                       f"{tuple(tokens.shape)}")
    self.model, self.lm, self.cfg_coef = model, model.lm, float(cfg_coef)
    self.B = len(texts)
    self.tokens = tokens.to(model.device)
    attributes, _ = model._prepare_tokens_and_attributes(list(texts), None)
    null = ClassifierFreeGuidanceDropout(p=1.0)(attributes)
    provider = self.lm.condition_provider
    self._inputs = provider.tokenize(attributes + null)
    self._codes = torch.cat([self.tokens, self.tokens])

  def _forward(self):
    provider = self.lm.condition_provider
    with torch.no_grad(), self.model.autocast:
      ct = provider(self._inputs)
      return self.lm.compute_predictions(self._codes, [], condition_tensors=ct)

  def log_probs(self, *edits) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p [B, K, T, card] float32 of the guided distribution, valid mask [B, K, T])."""
    with contextlib.ExitStack() as stack:
      for e in edits:
        stack.enter_context(e)
      out = self._forward()
    logits = out.logits.float()
    cond, uncond = logits[:self.B], logits[self.B:]
    guided = uncond + (cond - uncond) * self.cfg_coef
    mask = out.mask[:self.B].bool() & torch.isfinite(guided).all(-1)
    return torch.nan_to_num(guided).log_softmax(-1), mask

  def record(self, sites, *edits) -> dict[str, torch.Tensor]:
    """{site: output [2B, S, D]} of one forward (rows [:B] conditional), under `edits`."""
    with contextlib.ExitStack() as stack:
      for e in edits:
        stack.enter_context(e)
      rec = stack.enter_context(record.LayerRecorder(self.lm, list(sites), last_only=False))
      self._forward()
    return {s: rec.calls[s][0].float() for s in sites}

  def record_io(self, layers) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (input, output)} residual streams [2B, S, D] of the chosen blocks."""
    ins: dict[int, torch.Tensor] = {}
    handles = [self.lm.transformer.layers[i].register_forward_pre_hook(
        lambda m, a, i=i: ins.__setitem__(i, a[0].detach().float())) for i in layers]
    try:
      outs = self.record([f"{capture_sites.LAYER_PREFIX}{i}" for i in layers])
    finally:
      for h in handles:
        h.remove()
    return {i: (ins[i], outs[f"{capture_sites.LAYER_PREFIX}{i}"]) for i in layers}


# --------------------------------------------------------------------------------------
# Measures
# --------------------------------------------------------------------------------------
def ce_per_codebook(logp: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
  """[K] mean next-token cross-entropy (nats) over valid (b, t) of each codebook."""
  nll = -logp.gather(-1, tokens.to(logp.device).long()[..., None])[..., 0]   # [B, K, T]
  m = mask.float()
  return (nll * m).sum((0, 2)) / m.sum((0, 2)).clamp(min=1)


def kl_per_codebook(logp_ref: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  """[K] mean KL(p_ref || p) (nats) over valid (b, t) of each codebook."""
  kl = (logp_ref.exp() * (logp_ref - logp)).sum(-1)                           # [B, K, T]
  m = mask.float()
  return (kl * m).sum((0, 2)) / m.sum((0, 2)).clamp(min=1)


def loss_recovered(ce_clean: float, ce_edit: float, ce_zero: float) -> float | None:
  """(CE_zero − CE_edit) / (CE_zero − CE_clean): 1 = as good as the clean model, 0 = no
  better than zeroing the site; None when zeroing does not change the loss."""
  den = ce_zero - ce_clean
  return None if abs(den) < 1e-12 else float((ce_zero - ce_edit) / den)


# --------------------------------------------------------------------------------------
# Edits
# --------------------------------------------------------------------------------------
class replace_site(hooks._Steerer):
  """Replace the output of an LM site by `fn(x, rows, positions)` on the chosen half/steps.

  `x` [r, s, D] are the kept rows (a slice of the [cond; uncond] batch) and positions;
  `rows` is that slice, `positions` the absolute steps [s]."""

  def __init__(self, model, site, fn: Callable, half: str = "cond", steps=None):
    super().__init__(**hooks._layer_kwargs(model, site, half, steps))
    self.fn = fn

  def edit(self, x, w=None):
    return self.fn(x, self._cur_rows, self._cur_pos).to(x.dtype)


class ablate_block(hooks._Steerer):
  """Ablate block `layer`'s contribution to the residual stream: out = in + c', with
  c' = 0 (`zero`), a fixed vector [D] (`mean`), or the contribution of the next prompt of
  the same half at the same step (`resample`: the batch rolled by one)."""

  MODES = ("zero", "mean", "resample")

  def __init__(self, model, layer: int, mode: str, mean: torch.Tensor | None = None,
               half: str = "both", steps=None):
    if mode not in self.MODES:
      raise ValueError(f"ablation mode {mode!r}; choose from {', '.join(self.MODES)}")
    if mode == "mean" and mean is None:
      raise ValueError("mean ablation needs the mean contribution vector")
    super().__init__(**hooks._layer_kwargs(model, int(layer), half, steps))
    self.mode, self.mean = mode, mean
    self._in = None
    self._pre = None

  def __enter__(self):
    super().__enter__()
    self._pre = self.module.register_forward_pre_hook(
        lambda m, a: setattr(self, "_in", a[0]))
    return self

  def __exit__(self, *exc):
    if self._pre is not None:
      self._pre.remove()
      self._pre = None
    return super().__exit__(*exc)

  def edit(self, x, w=None):
    inp = self._in
    inp = (inp.unsqueeze(1) if inp.dim() == 2 else inp)[self._cur_rows][:, self._cur_keep]
    if self.mode == "zero":
      return inp
    if self.mode == "mean":
      return inp + self.mean.to(device=x.device, dtype=x.dtype)
    c = x - inp
    halves = c.chunk(2) if self.half == "both" and not self.two_step else (c,)
    if min(h.shape[0] for h in halves) < 2:
      raise ValueError("resample ablation needs at least 2 prompts per half")
    return inp + torch.cat([h.roll(1, dims=0) for h in halves])
