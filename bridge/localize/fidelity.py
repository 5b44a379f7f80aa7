"""Downstream fidelity of an SAE: splice its reconstruction into MusicGen and measure the loss.

The language-model SAE standard (SAELens' "CE loss recovered"), on MusicGen's four
codebooks: teacher-forced over tokens, the site's output is replaced on `half` of the CFG
batch by

    clean          nothing (the reference)
    sae            x̂ = decode(encode(x))
    sae_plus_error x̂ + (x − x̂)  (must give the clean model back: the splice identity)
    zero           0
    mean           the site's mean over the clean run's rows of that half and positions

and each condition reports next-token cross-entropy per codebook (nats), KL(clean ||
condition) per codebook, and for `sae` the loss recovered (CE_zero − CE_sae) /
(CE_zero − CE_clean) per codebook and for the mean CE. The distribution is the guided one
the sampler uses (cfg_coef; 1 = conditional model only).
"""
from __future__ import annotations

import numpy as np
import torch

from bridge.models import capture_sites
from bridge.localize import interventions

CONDITIONS = ("clean", "sae", "sae_plus_error", "zero", "mean")


def site_of(sae) -> tuple[str, str | None]:
  """(LM site to splice, the half implied by an `.uncond` site or None) of an export."""
  site = sae.site or (f"{capture_sites.LAYER_PREFIX}{sae.layer}" if sae.layer is not None else None)
  if site is None:
    raise ValueError("the SAE export names no site (cfg.json musicsae.site)")
  base = site.removesuffix(capture_sites.UNCOND_SUFFIX)
  if not capture_sites.is_lm_site(base):
    raise ValueError(f"the SAE was trained on {site!r}; downstream fidelity needs an LM site "
                     f"(lm.layer.<i>[.attn|.cross_attn]) whose output feeds the next-token loss")
  return base, ("uncond" if site != base else None)


def _half_rows(half: str, B: int) -> slice:
  return {"cond": slice(0, B), "uncond": slice(B, 2 * B), "both": slice(0, 2 * B)}[half]


def measure(tf: interventions.TeacherForced, sae, site: str, half: str = "cond",
            steps=None) -> dict:
  """Every condition's CE/KL per codebook on `tf` (a TeacherForced batch), plus the splice
  identity residual and the SAE's FVU on the spliced rows."""
  model = tf.model
  clean_acts = tf.record([site])[site][_half_rows(half, tf.B)]          # [r, S, D]
  mean = clean_acts.mean((0, 1))
  sae = sae.to(clean_acts.device)

  def recon(x, rows, pos):
    with torch.no_grad():
      return sae(x.float())[0]

  def plus_error(x, rows, pos):
    with torch.no_grad():
      xh = sae(x.float())[0]
      return xh + (x.float() - xh)

  fns = {"sae": recon, "sae_plus_error": plus_error,
         "zero": lambda x, rows, pos: torch.zeros_like(x),
         "mean": lambda x, rows, pos: mean.to(x.dtype).expand_as(x)}
  ref, mask = tf.log_probs()
  out = {}
  for name in CONDITIONS:
    if name == "clean":
      lp = ref
    else:
      lp, _ = tf.log_probs(interventions.replace_site(model, site, fns[name], half=half,
                                                      steps=steps))
    ce = interventions.ce_per_codebook(lp, mask, tf.tokens)
    kl = interventions.kl_per_codebook(ref, lp, mask)
    out[name] = {"ce": ce.tolist(), "ce_mean": float(ce.mean()), "kl": kl.tolist(),
                 "kl_mean": float(kl.mean())}
    if name == "sae_plus_error":
      out[name]["max_abs_logprob_diff"] = float((lp - ref)[mask].abs().max())
  c0, cz, cs = (np.array(out[k]["ce"]) for k in ("clean", "zero", "sae"))
  out["loss_recovered"] = [interventions.loss_recovered(a, b, c) for a, b, c in zip(c0, cs, cz)]
  out["loss_recovered_mean"] = interventions.loss_recovered(
      out["clean"]["ce_mean"], out["sae"]["ce_mean"], out["zero"]["ce_mean"])
  with torch.no_grad():
    x = clean_acts.reshape(-1, clean_acts.shape[-1])
    xh, z = sae(x)
    out["splice_identity_max_abs_act_diff"] = float((xh + (x - xh) - x).abs().max())
    out["fvu"] = float(((x - xh) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    out["l0"] = float((z != 0).float().sum(-1).mean())
  return out


def run(model, sae, texts, tokens: torch.Tensor, *, cfg_coef: float = 3.0,
        halves=("cond", "both"), steps=None) -> dict:
  """`measure` for each half (an `.uncond` SAE is spliced into the unconditional half)."""
  site, implied = site_of(sae)
  tf = interventions.TeacherForced(model, texts, tokens, cfg_coef)
  halves = [implied] if implied else list(halves)
  res = {"site": site, "sae_site": sae.site, "architecture": sae.architecture,
         "cfg_coef": float(cfg_coef), "num_prompts": len(texts),
         "frames": int(tokens.shape[-1]), "codebooks": int(tokens.shape[1]),
         "halves": {h: measure(tf, sae, site, half=h, steps=steps) for h in halves}}
  return res
