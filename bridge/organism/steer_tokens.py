"""Steering on the organism, scored in token space.

For every label value whose best SAE latent passes the scorecard's max-null, generate with
the organism (no text, one batch of `n` generations with a fixed seed), add the latent's
unit decoder direction at the SAE's layer at several strengths (x the RMS activation norm
of that layer in the unsteered generation), and read every label of each generation with
the token-space classifier (bag of codes, fitted on the organism's training clips:
bridge/organism/tokens.py). The organism's decoded audio is too poor to score acoustically,
its tokens are not.

Per feature and strength:
  success   = rate(target value) steered - rate(target value) unsteered (same seed, paired)
  adherence = 1 - mean over the OTHER labels of the total variation distance between their
              value distributions in the steered and the unsteered batch (1 = the batch's
              other labels are distributed as before)
  same_seed_agreement = fraction of the other labels whose classified value equals that of
              the unsteered generation with the same seed
and the same for control directions of the same norm (random other decoder rows,
isotropic Gaussian: bridge.steering.controls), with the rank p of the feature's success among
the controls' success for the same target (both kinds pooled), and one verdict line
(bridge.steer_stats). Both adherence measures are also taken between the unsteered batch and
an unsteered batch of another seed (`*_resampled`). Sampling diverges after the first
changed token, so even a tiny push re-draws each clip and the same-seed agreement falls to
that of a fresh seed at once; adherence compares batches as populations and so separates
pushes that keep the other labels' distribution from those that move it (its ceiling, set
by sampling noise at this batch size, is `adherence_resampled`).
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable

import numpy as np
import torch

from bridge.steering import controls as steer_controls
from bridge.steering import hooks as steering
from bridge.steering import stats as steer_stats

FORMAT_VERSION = 2   # 2: adherence is distributional; the per-seed measure is same_seed_agreement
FILE = "steering_tokens.json"
CONTROL_KINDS = ("decoder", "gaussian")


class SteerTokensError(ValueError):
  """Missing inputs (scorecard, export, organism); the message names the file."""


def passing_features(scorecard: dict, keys=None) -> list[dict]:
  """[{key, value, id, auroc}] for every label value whose best SAE unit passes."""
  out = []
  for key, vals in scorecard["features"]["labels"].items():
    if keys is not None and key not in keys:
      continue
    for val, d in vals.items():
      s = d.get("sae")
      if s and s.get("passes"):
        out.append({"key": key, "value": str(val), "id": int(s["id"]),
                    "auroc": float(s["auroc"])})
  return out


def same_seed_agreement(base: dict, steered: dict, exclude: str | None = None) -> float:
  """Share of labels (all but `exclude`) whose classified value equals the unsteered
  generation's with the same seed, averaged over generations."""
  keys = [k for k in base if k != exclude]
  return float(np.mean([[a == b for a, b in zip(steered[k], base[k])] for k in keys]))


def adherence(base: dict, steered: dict, exclude: str | None = None) -> float:
  """1 - mean over labels (all but `exclude`) of the total variation distance between the
  label's value distribution in `base` and in `steered`: whether the batch as a population
  keeps its other labels, which sampling chaos does not erase (see the module docstring)."""
  tv = []
  for k in (k for k in base if k != exclude):
    values = sorted(set(base[k]) | set(steered[k]))
    p = np.array([np.mean([x == v for x in base[k]]) for v in values])
    q = np.array([np.mean([x == v for x in steered[k]]) for v in values])
    tv.append(0.5 * np.abs(p - q).sum())
  return float(1.0 - np.mean(tv))


def summarize(base: dict, steered: dict, key: str, value: str) -> dict:
  """success (rate of `value` steered minus unsteered), adherence and same-seed agreement
  (on the other labels) and the paired statistics of success (per generation: hit steered -
  hit unsteered)."""
  b_hit = np.array([v == value for v in base[key]], float)
  s_hit = np.array([v == value for v in steered[key]], float)
  return {"rate": float(s_hit.mean()), "base_rate": float(b_hit.mean()),
          "success": float(s_hit.mean() - b_hit.mean()),
          "adherence": adherence(base, steered, exclude=key),
          "same_seed_agreement": same_seed_agreement(base, steered, exclude=key),
          "paired": steer_stats.paired_summary(s_hit, b_hit)}


def _load(config, workdir: str, log):
  from bridge.models import audiocraft_musicgen as models
  from bridge.organism import codec as codec_lib
  from bridge.organism import data
  from bridge.organism import tokens as tok_lib
  from bridge.sources import concepts
  from bridge.models.sae_torch import TorchSAE
  run = config.run
  card_path = os.path.join(workdir, "reports", run, "scorecard.json")
  exp = os.path.join(workdir, "exports", run)
  model_dir = str(config.model.name)
  org_path = os.path.join(model_dir, "organism.json")
  for p, how in ((card_path, "python -m launch.scorecard (stage scorecard)"),
                 (os.path.join(exp, "cfg.json"), "python -m launch.export (stage export)"),
                 (org_path, "python -m launch.make_organism (stage organism)")):
    if not os.path.exists(p):
      raise SteerTokensError(f"{p} is missing: run {how} first")
  with open(card_path) as f:
    card = json.load(f)
  with open(org_path) as f:
    org = json.load(f)
  model = models.load_musicgen(model_dir)
  sae = TorchSAE.from_export(exp)
  clips = data.load_clips(org["concepts_dir"], int(model.sample_rate),
                          float(config.concepts.duration))
  held = set(org["heldout_ids"])
  tr = [i for i, c in enumerate(clips["ids"]) if c not in held]
  ho = [i for i, c in enumerate(clips["ids"]) if c in held]
  t = time.time()
  codes = codec_lib.encode_all(model.compression_model, clips["wav"])
  clf = tok_lib.TokenClassifier(codes[tr], [clips["labels"][i] for i in tr],
                                concepts.LABEL_KEYS, int(model.lm.card))
  pred = clf.predict(codes[ho])
  acc = {k: float(np.mean([pred[k][j] == str(clips["labels"][i][k])
                           for j, i in enumerate(ho) if k in clips["labels"][i]]))
         for k in clf.keys}
  log(f"steer tokens: classifier fitted on {len(tr)} training clips in {time.time() - t:.0f} s; "
      "held-out accuracy " + ", ".join(f"{k} {v:.2f}" for k, v in acc.items()))
  return card, model, sae, clf, acc


def run(config, workdir: str, *, log: Callable[[str], None] = print) -> dict:
  """Generate, steer, classify; writes reports/<run>/steering_tokens.json and returns it."""
  from bridge.capture import record as capture
  from bridge.models import backends
  sc = config.organism_steer
  t0 = time.time()
  threads = int(config.organism.torch_threads)    # 1: far faster than 2 on a shared machine
  if threads:
    torch.set_num_threads(threads)
  card, model, sae, clf, clf_acc = _load(config, workdir, log)
  feats = passing_features(card, clf.keys)
  if int(sc.max_features) > 0:
    feats = sorted(feats, key=lambda f: -f["auroc"])[:int(sc.max_features)]
  layer = int(sae.cfg["hook_layer"])
  n, seed = int(sc.num_generations), int(sc.seed)
  strengths = [float(a) for a in sc.strengths]
  model.set_generation_params(duration=float(config.concepts.duration), use_sampling=True,
                              top_k=int(sc.top_k))
  texts = [None] * n
  be = backends.adapt(model)
  W_dec = sae.W_dec.detach().float()

  def generate(ctx=None, record=None, seed=seed):
    h = (steering._site_module(be, layer).register_forward_hook(  # pylint: disable=protected-access
        lambda m, a, o: record.append((o[0] if isinstance(o, tuple) else o)[:n].detach()))
         if record is not None else None)
    try:
      if ctx is None:
        tokens = capture.generate_tokens(model, texts, seed=seed)
      else:
        with ctx:
          tokens = capture.generate_tokens(model, texts, seed=seed)
    finally:
      if h is not None:
        h.remove()
    return clf.predict(tokens.cpu().numpy())

  acts: list[torch.Tensor] = []
  base = generate(record=acts)
  # Sampling is chaotic: once one token differs, the rest of the clip is a new draw. Two
  # unsteered batches with different seeds give the same-seed agreement of a push that
  # re-rolls everything, and the adherence that sampling noise alone leaves.
  other_seed = generate(seed=seed + 1)
  x = torch.cat([a.reshape(-1, a.shape[-1]) for a in acts]).float()
  rms = float(x.pow(2).sum(-1).mean().sqrt())
  log(f"steer tokens: {len(feats)} features with a passing latent, {n} generations of "
      f"{config.concepts.duration:g} s, layer {layer} RMS norm {rms:.2f}, strengths {strengths}")

  def steered(direction, a):
    return generate(steering.add_direction(model, layer, direction, a, relative_to=rms,
                                           half=str(sc.half)))

  total = (len(feats) + 2 * int(sc.controls)) * len(strengths)
  done = 0

  def tick(what):
    nonlocal done
    done += 1
    if done % 10 == 0 or done == total:
      log(f"steer tokens: {done}/{total} steered batches ({what}), {time.time() - t0:.0f} s")

  out_feats = []
  for f in feats:
    v = W_dec[f["id"]] / W_dec[f["id"]].norm()
    preds = {}
    for a in strengths:
      preds[a] = steered(v, a)
      tick(f"{f['key']}={f['value']}")
    out_feats.append({**f, "preds": {f"{a:g}": p for a, p in preds.items()}})
  g = torch.Generator().manual_seed(seed)
  exclude = [f["id"] for f in feats]
  ctrl_dirs = {
      "decoder": steer_controls.decoder(int(sc.controls), W_dec, exclude, 1.0, g),
      "gaussian": (steer_controls.gaussian(int(sc.controls), W_dec.shape[1], 1.0, g), None)}
  controls = []
  for kind in CONTROL_KINDS:
    dirs, rows = ctrl_dirs[kind]
    for j, v in enumerate(dirs):
      preds = {}
      for a in strengths:
        preds[a] = steered(v, a)
        tick(f"{kind} control {j}")
      controls.append({"kind": kind, "row": None if rows is None else int(rows[j]),
                       "preds": {f"{a:g}": p for a, p in preds.items()}})

  # --- scores --------------------------------------------------------------------------
  level = float(sc.significance)
  n_per_kind = int(sc.controls)
  for f in out_feats:
    f["by_strength"] = []
    points = []
    for a in strengths:
      s = summarize(base, f["preds"][f"{a:g}"], f["key"], f["value"])
      ctl = {k: [summarize(base, c["preds"][f"{a:g}"], f["key"], f["value"])
                 for c in controls if c["kind"] == k] for k in CONTROL_KINDS}
      vs = steer_stats.vs_controls(s["success"], {k: [c["success"] for c in cs]
                                                  for k, cs in ctl.items()})
      # the verdict's p: rank among all controls pooled (2 x 10 reach p < 0.05; each kind's
      # own rank p, whose floor is 1/11, is kept in vs_controls)
      pooled = steer_stats.rank_p(s["success"], [c["success"] for cs in ctl.values() for c in cs])
      row = {"strength": a, **{k: s[k] for k in ("rate", "base_rate", "success", "adherence",
                                                 "same_seed_agreement")},
             "paired": s["paired"], "p_rank": pooled, "vs_controls": vs,
             "controls": {k: {"success_mean": float(np.mean([c["success"] for c in cs])),
                              "success_max": float(np.max([c["success"] for c in cs])),
                              "adherence_mean": float(np.mean([c["adherence"] for c in cs])),
                              "same_seed_agreement_mean": float(np.mean(
                                  [c["same_seed_agreement"] for c in cs]))}
                          for k, cs in ctl.items()}}
      f["by_strength"].append(row)
      points.append((a, pooled))
    f["verdict"] = steer_stats.verdict(points, target=f"{f['key']}={f['value']}",
                                       measure="token-space classifier", level=level,
                                       n_controls=n_per_kind * len(CONTROL_KINDS))
  ctl_all = {name: {k: {f"{a:g}": float(np.mean([fn(base, c["preds"][f"{a:g}"])
                                                 for c in controls if c["kind"] == k]))
                        for a in strengths} for k in CONTROL_KINDS}
             for name, fn in (("adherence", adherence), ("same_seed_agreement", same_seed_agreement))}
  res = {"format_version": FORMAT_VERSION, "run": config.run, "layer": layer,
         "site": card["features"]["site"], "rms_norm": rms,
         "strength_units": "x RMS activation norm of the layer in the unsteered generation",
         "strengths": strengths, "num_generations": n, "seed": seed, "text": None,
         "top_k": int(sc.top_k), "half": str(sc.half), "duration": float(config.concepts.duration),
         "significance": level, "controls_per_kind": n_per_kind,
         "control_kinds": {"decoder": "random other decoder rows of the SAE (unit norm)",
                           "gaussian": "isotropic Gaussian directions (unit norm)"},
         "control_adherence_all_labels": ctl_all["adherence"],
         "control_same_seed_agreement_all_labels": ctl_all["same_seed_agreement"],
         "adherence_resampled": adherence(base, other_seed),
         "same_seed_agreement_resampled": same_seed_agreement(base, other_seed),
         "classifier": {"kind": "logistic regression on bags of codec codes (bridge/organism/"
                                "tokens.py), fitted on the organism's training clips",
                        "heldout_accuracy": clf_acc,
                        "chance": {k: 1 / len(v) for k, v in clf.values.items()}},
         "baseline": {"preds": base, "preds_other_seed": other_seed, "other_seed": seed + 1,
                      "rates": {k: {v: float(np.mean([p == v for p in base[k]]))
                                    for v in clf.values[k]} for k in clf.keys}},
         "features": out_feats, "controls": controls, "seconds": time.time() - t0}
  out_dir = os.path.join(workdir, "reports", config.run)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, FILE), "w") as fh:
    json.dump(res, fh, indent=1)
  for f in out_feats:
    log(f"steer tokens: {f['key']}={f['value']} (latent {f['id']}): {f['verdict']['text']}")
  res["path"] = os.path.join(out_dir, FILE)
  return res
