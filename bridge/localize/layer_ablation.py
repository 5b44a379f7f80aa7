"""Layer ablation: how much does each transformer block's contribution matter?

Block i's contribution is c_i = out_i − in_i (what its attention, cross-attention and MLP
add to the residual stream). Ablating it replaces out_i by in_i + c' with c' = 0 (zero),
the mean contribution over the clean run (mean), or another prompt's contribution at the
same step (resample), on both halves of the CFG batch (`interventions.ablate_block`).

- teacher-forced: next-token CE increase and KL(clean || ablated) per block and mode;
- generation: the same seed sampled with the block ablated, and the change in clip audio
  descriptors (and CLAP text–audio similarity when a CLAP model is given).
"""
from __future__ import annotations

import numpy as np
import torch

from bridge.localize import interventions
from musicsae_jax import files

DESCRIPTORS = ("tempo_bpm", "loudness_db", "brightness_hz", "mode_major_minus_minor")


def mean_contributions(tf: interventions.TeacherForced, layers) -> dict[int, torch.Tensor]:
  """{layer: mean of out − in over every row (both halves) and position} of a clean run."""
  return {i: (o - x).mean((0, 1)) for i, (x, o) in tf.record_io(layers).items()}


def teacher_forced(model, texts, tokens, layers, modes, *, cfg_coef: float = 3.0,
                   half: str = "both") -> dict:
  """Per mode: CE increase (mean over codebooks), per-codebook CE and KL, per layer."""
  tf = interventions.TeacherForced(model, texts, tokens, cfg_coef)
  ref, mask = tf.log_probs()
  ce0 = interventions.ce_per_codebook(ref, mask, tf.tokens)
  means = mean_contributions(tf, layers) if "mean" in modes else {}
  out = {"layers": list(layers), "ce_clean": ce0.tolist(), "ce_clean_mean": float(ce0.mean()),
         "modes": {}}
  for mode in modes:
    rows = {"ce": [], "ce_increase": [], "kl": [], "kl_mean": []}
    for i in layers:
      lp, _ = tf.log_probs(interventions.ablate_block(model, i, mode, mean=means.get(i),
                                                      half=half))
      ce = interventions.ce_per_codebook(lp, mask, tf.tokens)
      kl = interventions.kl_per_codebook(ref, lp, mask)
      rows["ce"].append(ce.tolist())
      rows["ce_increase"].append(float(ce.mean() - ce0.mean()))
      rows["kl"].append(kl.tolist())
      rows["kl_mean"].append(float(kl.mean()))
    out["modes"][mode] = rows
  return out


def _clips(model, texts, seed: int, edit=None):
  """Audio [B, samples] (mono numpy) of one seeded generation, under `edit` if given."""
  from bridge.capture import record
  import contextlib
  with (edit if edit is not None else contextlib.nullcontext()):
    tokens = record.generate_tokens(model, texts, seed=seed)
  with torch.no_grad():
    wav = model.generate_audio(tokens)
  return wav.float().mean(1).cpu().numpy()


def generation(model, texts, tokens, layers, modes, *, seed: int, cfg_coef: float = 3.0,
               clap=None) -> dict:
  """Per mode and layer: mean change (ablated − clean, same seed) of clip descriptors, the
  standardised clip-vector distance, and of CLAP similarity to the prompt (if `clap`).
  `null_distance` is the same distance between the clean clips and clean clips of another
  seed: once sampling diverges, an ablation cannot look larger than a new sample."""
  from bridge.measures import audio_descriptors
  sr, fr = int(model.sample_rate), float(model.frame_rate)
  tf = interventions.TeacherForced(model, texts, tokens, cfg_coef)
  means = mean_contributions(tf, layers) if "mean" in modes else {}
  clean = _clips(model, texts, seed)

  def describe(wavs):
    d = [audio_descriptors.clip_descriptors(w, sr) for w in wavs]
    v = np.stack([audio_descriptors.clip_vector(w, sr, fr) for w in wavs])
    c = clap_sim(wavs) if clap is not None else None
    return {k: np.array([x[k] for x in d], float) for k in DESCRIPTORS}, v, c

  def clap_sim(wavs):
    a, t = clap.audio(list(wavs), sr), clap.text(list(texts))
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    t = t / np.linalg.norm(t, axis=-1, keepdims=True)
    return (a * t).sum(-1)

  d0, v0, c0 = describe(clean)
  _, v_null, _ = describe(_clips(model, texts, seed + 1))   # another seed: the null distance
  ablated = {(m, i): describe(_clips(model, texts, seed, interventions.ablate_block(
      model, i, m, mean=means.get(i), half="both"))) for m in modes for i in layers}
  allv = np.concatenate([v0, v_null] + [v for _, v, _ in ablated.values()])
  sd = allv.std(0) + 1e-9                      # pooled over every clip of the study
  out = {"layers": list(layers), "descriptors": list(DESCRIPTORS),
         "clean": {k: v.tolist() for k, v in d0.items()}, "modes": {},
         "null_distance": float(np.linalg.norm((v_null - v0) / sd, axis=-1).mean())}
  if c0 is not None:
    out["clean"]["clap"] = c0.tolist()
  for m in modes:
    rows = {"delta": {k: [] for k in DESCRIPTORS}, "distance": []}
    if c0 is not None:
      rows["delta_clap"] = []
    for i in layers:
      d, v, c = ablated[(m, i)]
      for k in DESCRIPTORS:
        rows["delta"][k].append(float((d[k] - d0[k]).mean()))
      rows["distance"].append(float(np.linalg.norm((v - v0) / sd, axis=-1).mean()))
      if c0 is not None:
        rows["delta_clap"].append(float((c - c0).mean()))
    out["modes"][m] = rows
  return out


def plot(result: dict, path: str) -> str:
  """Per-layer plot: CE increase per mode (teacher-forced) and, if measured, the audio
  descriptor distance per mode (generation)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  tfr, gen = result["teacher_forced"], result.get("generation")
  n = 2 if gen else 1
  fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.6), squeeze=False)
  x = tfr["layers"]
  ax = axes[0, 0]
  for mode, rows in tfr["modes"].items():
    ax.plot(x, rows["ce_increase"], "o-", label=mode)
  ax.axhline(0, color="0.6", lw=0.8)
  ax.set_xlabel("layer (block ablated)")
  ax.set_ylabel("token CE increase (nats)")
  ax.set_title("teacher-forced")
  ax.set_xticks(x)
  ax.legend(fontsize=8)
  if gen:
    ax = axes[0, 1]
    for mode, rows in gen["modes"].items():
      ax.plot(gen["layers"], rows["distance"], "s-", label=mode)
    ax.axhline(gen["null_distance"], color="0.5", ls="--", lw=1, label="clean, other seed")
    ax.set_xlabel("layer (block ablated)")
    ax.set_ylabel("audio descriptor distance (pooled sd)")
    ax.set_title("generation, same seed")
    ax.set_xticks(gen["layers"])
    ax.legend(fontsize=8)
  fig.tight_layout()
  files.save_figure(fig, path, dpi=90)
  plt.close(fig)
  return path
