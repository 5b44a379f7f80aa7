"""Activation patching: at which site does a concept's difference live?

A concept pair is two prompts that differ in one concept only (`"emotion:happy/sad"`:
"happy jazz music with piano" vs "sad jazz music with piano"). Both runs are teacher-forced
over the same tokens (B's own generation), so their next-token distributions differ only
through the text. The activations of run A at one site (optionally a step range, or the
SAE's features only) replace run B's, and the measure is how far B's distribution moves
toward A's:

    moved = 1 − KL(p_A || p_patched) / KL(p_A || p_B)     (per pair, then averaged)

1 means the site carries all of A's difference (nothing later re-reads the text to undo
it), 0 means patching it changes nothing toward A. A layer × concept heatmap of `moved`
shows where each concept lives. Patching a run into itself leaves it unchanged.

Audio pairs (`run_audio`, columns `audio:<label>`): two clips of a labelled concept folder
that differ in one label (bridge/localize/audio_pairs.py), each encoded by the model's EnCodec and
teacher-forced over its own codes, with no text by default (the null condition, so no
caption can carry the label). A's activations replace B's at the same positions on both
CFG halves (the clips differ in the tokens, which both halves read), and `moved` is the
same measure. With no text, the tokens are the only difference and they enter at the
embedding: a full-sequence residual patch at any layer then gives B all of A's later
computation (moved = 1 on every `lm.layer.<i>` row); the attention rows and the SAE row
say which component writes the difference. Patching a step window and measuring only the
frames after it (`measure`) makes the residual rows informative: how much of the concept
a layer's past states carry into later predictions (0 at the last layer, which nothing
later reads).
"""
from __future__ import annotations

import numpy as np
import torch

from bridge.capture import record
from bridge.localize import interventions
from bridge.sources import prompts as prompts_lib
from musicsae_jax import files

CONCEPT_KEYS = ("emotion", "instrument", "genre")


def parse_concept(spec: str) -> tuple[str, str, str]:
  """`'emotion:happy/sad'` -> ('emotion', 'happy', 'sad')."""
  key, _, vals = str(spec).partition(":")
  a, _, b = vals.partition("/")
  if key not in CONCEPT_KEYS or not a or not b or a == b:
    raise ValueError(f"concept {spec!r}: expected KEY:A/B with KEY one of "
                     f"{', '.join(CONCEPT_KEYS)} (e.g. emotion:happy/sad, instrument:piano/drums)")
  if key == "emotion":
    bad = [v for v in (a, b) if v not in prompts_lib.EMOTIONS]
    if bad:
      raise ValueError(f"concept {spec!r}: emotions {bad} unknown; known: "
                       f"{', '.join(prompts_lib.EMOTIONS)}")
  return key, a, b


def concept_pairs(spec: str, n: int) -> tuple[list[str], list[str]]:
  """n minimal pairs (texts A, texts B) for one concept: the same sentence with only that
  word changed, contexts (mood, genre, instrument) varied over pairs."""
  key, a, b = parse_concept(spec)
  inst, gen, emo = prompts_lib.INSTRUMENTS, prompts_lib.GENRES, prompts_lib.EMOTIONS
  ta, tb = [], []
  for k in range(n):
    ctx = {"emotion": prompts_lib._MOOD_WORDS[emo[k % len(emo)]][0],
           "genre": gen[(3 * k + 1) % len(gen)], "instrument": inst[(5 * k + 2) % len(inst)]}
    for val, out in ((a, ta), (b, tb)):
      c = dict(ctx)
      c[key] = prompts_lib._MOOD_WORDS[val][0] if key == "emotion" else val
      out.append(f"{c['emotion']} {c['genre']} music with {c['instrument']}")
  return ta, tb


def kl_per_prompt(logp_ref: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  """[B] mean KL(p_ref || p) over the valid (codebook, frame) entries of each prompt."""
  kl = (logp_ref.exp() * (logp_ref - logp)).sum(-1)                 # [B, K, T]
  m = mask.float()
  return (kl * m).sum((1, 2)) / m.sum((1, 2)).clamp(min=1)


def _rows(half: str, B: int) -> slice:
  return {"cond": slice(0, B), "uncond": slice(B, 2 * B), "both": slice(0, 2 * B)}[half]


def patch_site(model, site: str, source: torch.Tensor, *, half: str = "cond", steps=None,
               sae=None, features=None) -> interventions.replace_site:
  """An edit that puts `source` [2B, S, D] (run A's output of `site`) into run B at the same
  rows and positions; with `sae`, only the SAE's part moves: x + x̂(a) − x̂(x), or with
  `features` (ids) only theirs: x + Σ_j (z_j(a) − z_j(x)) W_dec[j]."""
  ids = None if not features else torch.tensor([int(j) for j in features])

  def fn(x, rows, pos):
    a = source[rows][:, pos.to(source.device)].to(x.device)
    if sae is None:
      return a
    with torch.no_grad():
      if ids is None:
        return x.float() + (sae(a.float())[0] - sae(x.float())[0])   # exact 0 when a == x
      dz = sae.encode(a.float())[..., ids] - sae.encode(x.float())[..., ids]
      return x.float() + dz @ sae.W_dec[ids]
  return interventions.replace_site(model, site, fn, half=half, steps=steps)


GAP_MIN = 1e-9       # nats: below this A and B give the same distribution; nothing to move


def patch_moved(model, texts_a, texts_b, tokens: torch.Tensor, sites, *, cfg_coef: float = 3.0,
                half: str = "cond", steps=None, sae=None, sae_site: str | None = None,
                features=None, tokens_a: torch.Tensor | None = None, measure=None) -> dict:
  """{row name: per-pair `moved`} for each site (and `<sae_site> (SAE)` if `sae`), with the
  unpatched gap KL(A || B) per pair (`moved` is None for a pair whose runs do not differ,
  gap <= GAP_MIN: e.g. two clips the codec encodes identically). Run A is teacher-forced
  over `tokens_a` when given (audio pairs: each clip's own codes), else over B's `tokens`.
  `measure` = (start, stop) frames: the KLs count only the predictions of those frames
  (e.g. patch steps (0, 50), measure (50, 100): how much of A's difference the site's past
  carries forward)."""
  tf_a = interventions.TeacherForced(model, texts_a, tokens if tokens_a is None else tokens_a,
                                     cfg_coef)
  tf_b = interventions.TeacherForced(model, texts_b, tokens, cfg_coef)
  lp_a, mask = tf_a.log_probs()
  lp_b, _ = tf_b.log_probs()
  if measure:
    keep = torch.zeros_like(mask)
    keep[..., int(measure[0]):int(measure[1])] = True
    mask = mask & keep
  gap = kl_per_prompt(lp_a, lp_b, mask)
  want = list(dict.fromkeys(list(sites) + ([sae_site] if sae is not None else [])))
  src = tf_a.record(want)
  out = {"gap_kl": gap.tolist(), "moved": {}}
  jobs = [(s, s, None) for s in sites]
  if sae is not None:
    jobs.append((f"{sae_site} (SAE{' ' + ','.join(map(str, features)) if features else ''})",
                 sae_site, sae))
  for name, site, s in jobs:
    lp, _ = tf_b.log_probs(patch_site(model, site, src[site], half=half, steps=steps, sae=s,
                                      features=features))
    kl = kl_per_prompt(lp_a, lp, mask)
    out["moved"][name] = [None if g <= GAP_MIN else float(m) for g, m in
                          zip(gap.tolist(), (1 - kl / gap.clamp(min=1e-12)).tolist())]
  return out


def run(model, concepts, sites, *, pairs: int, seed: int, cfg_coef: float = 3.0,
        half: str = "cond", steps=None, sae=None, features=None, generate: bool = False,
        references: int = 4, measure=None) -> dict:
  """The layer × concept table: mean `moved` per site row and concept column."""
  from bridge.localize import fidelity
  sae_site = fidelity.site_of(sae)[0] if sae is not None else None
  res = {"concepts": list(concepts), "sites": list(sites), "half": half,
         "steps": list(steps) if steps else None,
         "measure": list(measure) if measure else None, "cfg_coef": float(cfg_coef),
         "pairs": int(pairs), "features": list(features) if features else None,
         "per_concept": {}}
  for spec in concepts:
    ta, tb = concept_pairs(spec, pairs)
    tokens = record.generate_tokens(model, tb, seed=seed)
    r = patch_moved(model, ta, tb, tokens, sites, cfg_coef=cfg_coef, half=half, steps=steps,
                    sae=sae, sae_site=sae_site, features=features, measure=measure)
    r["texts_a"], r["texts_b"] = ta, tb
    res["per_concept"][spec] = r
  set_matrix(res)
  if generate and concepts:
    res["generation"] = {c: generation_moved(model, c, sites, pairs=pairs, seed=seed,
                                             references=references, half=half, steps=steps)
                         for c in concepts}
    res["matrix_generation"] = [[res["generation"][c]["moved"][s] for c in concepts]
                                for s in sites]
  return res


def set_matrix(res: dict) -> dict:
  """`rows` and `matrix` [rows][concepts] (mean `moved` over the pairs where it is defined;
  None when no pair differs) from `per_concept`."""
  concepts = res["concepts"]
  rows = list(res["per_concept"][concepts[0]]["moved"]) if concepts else []

  def mean(v):
    v = [x for x in v if x is not None]
    return float(np.mean(v)) if v else None
  res["rows"] = rows
  res["matrix"] = [[mean(res["per_concept"][c]["moved"][r]) for c in concepts] for r in rows]
  return res


AUDIO_PREFIX = "audio:"
AUDIO_CONDITIONING = ("none", "fixed", "caption")


def run_audio(model, items, concepts, sites, *, pairs: int, seed: int, frames: int,
              conditioning: str = "none", text: str = "", cfg_coef: float = 3.0, steps=None,
              sae=None, features=None, measure=None) -> dict:
  """{`audio:<concept>`: per-concept result} for clip pairs of `items` (AudioItems with
  labels) that differ in each concept; see the module doc. `conditioning`: none (the null
  condition), fixed (`text` for every clip) or caption (each clip's own caption)."""
  from bridge.localize import audio_pairs, fidelity
  from bridge.capture import extract_audio
  if conditioning not in AUDIO_CONDITIONING:
    raise ValueError(f"--config.localize.audio_conditioning={conditioning!r}; choose from "
                     f"{', '.join(AUDIO_CONDITIONING)}")
  sae_site = fidelity.site_of(sae)[0] if sae is not None else None
  acfg = {"conditioning": conditioning, "text": text}
  out = {}
  for spec in concepts:
    ps = audio_pairs.find_pairs(items, spec, pairs, seed=seed)
    ia, ib = [p.a for p in ps], [p.b for p in ps]
    ca, cb = audio_pairs.codes(model, ia, frames), audio_pairs.codes(model, ib, frames)
    ta = extract_audio.texts_for([extract_audio.Window(it, it.offset_s) for it in ia], acfg)
    tb = extract_audio.texts_for([extract_audio.Window(it, it.offset_s) for it in ib], acfg)
    r = patch_moved(model, ta, tb, cb, sites, cfg_coef=cfg_coef, half="both", steps=steps,
                    sae=sae, sae_site=sae_site, features=features, tokens_a=ca, measure=measure)
    r["texts_a"], r["texts_b"] = ta, tb
    r["pairs"] = [p.to_dict() for p in ps]
    r["minimal_pairs"] = sum(not p.other_diffs for p in ps)
    r["conditioning"] = conditioning
    out[AUDIO_PREFIX + spec] = r
  return out


def plot(result: dict, path: str) -> str:
  """Heatmaps: rows = patched sites, columns = concepts, colour = mean `moved`
  (teacher-forced; and from generation scored on the audio, when measured)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  panels = [(np.array(result["matrix"], float), result["rows"], result["concepts"],
             "teacher-forced: fraction of KL(A‖B) closed")]
  if result.get("matrix_generation") and result.get("generation"):
    panels.append((np.array(result["matrix_generation"], float), result["sites"],
                   list(result["generation"]), "generation: audio concept score moved"))
  n = max(len(r) for _, r, _, _ in panels)
  fig, axes = plt.subplots(1, len(panels), squeeze=False,
                           figsize=(sum(1.6 + 1.3 * len(c) for _, _, c, _ in panels),
                                    1.0 + 0.38 * n))
  for ax, (m, rows, cols, title) in zip(axes[0], panels):
    im = ax.imshow(m, cmap="viridis", vmin=min(0.0, np.nanmin(m)),
                   vmax=max(1.0, np.nanmax(m)), aspect="auto")
    for i in range(len(rows)):
      for j in range(len(cols)):
        ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                color="w" if m[i, j] < 0.6 else "k")
    ax.set_xticks(range(len(cols)), cols, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
  fig.tight_layout()
  files.save_figure(fig, path, dpi=90)
  plt.close(fig)
  return path


# --------------------------------------------------------------------------------------
# During generation, scored on the audio
# --------------------------------------------------------------------------------------
def _wav_vectors(model, texts, seed: int, edit=None) -> np.ndarray:
  """Clip vectors (audio descriptors, concept_classifier's input) of one seeded generation."""
  import contextlib
  from bridge.measures import audio_descriptors
  with (edit if edit is not None else contextlib.nullcontext()):
    tokens = record.generate_tokens(model, texts, seed=seed)
  with torch.no_grad():
    wav = model.generate_audio(tokens).float().mean(1).cpu().numpy()
  return np.stack([audio_descriptors.clip_vector(w, int(model.sample_rate),
                                              float(model.frame_rate)) for w in wav])


def generation_moved(model, spec: str, sites, *, pairs: int, seed: int, references: int = 4,
                     half: str = "cond", steps=None) -> dict:
  """Patch A's per-step activations into B's sampling (same seed, same steps) and score the
  audio with a nearest-centroid classifier of the concept's two values trained on
  reference clips of other contexts (bridge/measures/concept_classifier.py). Per site:
  moved = (p_A(patched) − p_A(B)) / (p_A(A) − p_A(B)), p_A averaged over the pairs."""
  from bridge.models import backends
  from bridge.measures import concept_classifier
  if backends.adapt(model).two_step:
    raise ValueError("generation patching records one [cond; uncond] call per step; "
                     "two_step_cfg is not supported")
  _, a, b = parse_concept(spec)
  ta_all, tb_all = concept_pairs(spec, pairs + references)
  ta, tb = ta_all[:pairs], tb_all[:pairs]
  ref = np.concatenate([_wav_vectors(model, ta_all[pairs:], seed + 1),
                        _wav_vectors(model, tb_all[pairs:], seed + 1)])
  clf = concept_classifier.CentroidClassifier(ref, [a] * references + [b] * references)
  ia = clf.values.index(a)
  lm = model.lm
  with record.LayerRecorder(lm, list(sites)) as rec:     # A's output of each site, per step
    va = _wav_vectors(model, ta, seed)
  source = {s: torch.stack(rec.calls[s], 1) for s in sites}    # [2B, steps, D]
  vb = _wav_vectors(model, tb, seed)
  pa, pb = clf.proba(va)[:, ia].mean(), clf.proba(vb)[:, ia].mean()
  out = {"p_a": {"A": float(pa), "B": float(pb)}, "loo_accuracy": clf.loo_accuracy(),
         "moved": {}}
  for s in sites:
    vp = _wav_vectors(model, tb, seed, patch_site(model, s, source[s], half=half, steps=steps))
    pp = clf.proba(vp)[:, ia].mean()
    out["p_a"][s] = float(pp)
    out["moved"][s] = None if abs(pa - pb) < 1e-9 else float((pp - pb) / (pa - pb))
  return out
