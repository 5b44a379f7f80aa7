"""The steering experiment behind `launch.steer`: per-prompt measures, controls, statistics.

One unsteered baseline per prompt (same seed for every condition, so each steered clip
has a paired baseline clip), then, for each method of `steer.method` (one, or several
comma-separated, side by side on that baseline), every exported direction x strength and
`steer.controls` controls x strength as the null (for add, per kind of `steer.control_kinds`:
other decoder rows, the baseline's activation covariance, isotropic Gaussian, all of the
features' norm (bridge.steering.controls); the same edit on other active features for
scale/set/transplant). The identity
strength (alpha 0 for add, 1 for scale) reuses the baseline (bit-identical to no hook;
tested). Clip names carry the method (`audio_name`), so methods never overwrite each other.

Every clip is measured (`MEASURES`): audio descriptors (librosa), the steered feature
during generation and on an unhooked re-read, the token NLL of the generated codes under
the UNSTEERED model (drift: how surprising the steered music is to the model itself), and
the target-concept probability from an in-run classifier on audio descriptors
(`bridge.measures.concept_classifier`). `steer.json` keeps every value per prompt; each condition also
gets `stats[measure]` = paired change vs baseline: mean, t interval, t / Wilcoxon p; each
steered strength `vs_controls`: the rank p of its concept change among the controls at that
strength; each feature and method one `verdict` line (bridge.steering.stats).
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

from bridge.models import backends, capture_sites
from bridge.steering import controls, hooks
from bridge.steering import stats as steer_stats
from musicsae_jax import files, progress

TEXT_SITES = ("cond.proj", "t5.hidden")   # steered with add_text_direction (no steps)
METHODS = ("add", "scale", "set", "transplant")
IDENTITY = {"add": 0.0, "scale": 1.0}     # the strength at which a method is exactly no hook
AUDIO_MEASURES = ("tempo_bpm", "loudness_db", "brightness_hz", "mode_major_minus_minor")
MEASURES = ("concept", "clap_concept", "clap_prompt", "nll", "feature_act",
            "feature_act_replay") + AUDIO_MEASURES


def unsteered_reread(model, texts, tokens: torch.Tensor, layer, sae, fids) -> dict:
  """Per-prompt token NLL of `tokens` and features `fids` on one unhooked teacher-forced pass.

  NLL: mean over valid (delay-pattern) positions and codebooks of -log p(code) under the
  conditional model (no classifier-free guidance mixing), nats per token. `feature_act_
  replay`: the features' mean over the first T positions of `layer` (pass i reads frame i).
  """
  be = backends.adapt(model)
  seen = []
  h = (hooks._site_module(be, layer).register_forward_hook(
      lambda m, a, o: seen.append((o[0] if isinstance(o, tuple) else o).detach()))
       if layer is not None else None)
  try:
    if be.name == "audiocraft":
      model, lm = be.model, be.model.lm
      attributes, _ = model._prepare_tokens_and_attributes(list(texts), None)
      with torch.no_grad(), model.autocast:
        provider = lm.condition_provider
        ct = provider(provider.tokenize(attributes))
        out = lm.compute_predictions(tokens.to(model.device), [], condition_tensors=ct)
      logits, mask = out.logits, out.mask
    else:
      logits, mask = be.conditional_logits(texts, tokens)
  finally:
    if h is not None:
      h.remove()
  logp = torch.log_softmax(logits.float(), -1)
  codes = tokens.to(logp.device).long()
  nll_tok = -logp.gather(-1, codes.unsqueeze(-1)).squeeze(-1)          # [B, K, T]
  mask = mask.to(nll_tok.device)
  nll_tok = torch.where(mask, nll_tok, torch.zeros_like(nll_tok))
  nll = (nll_tok.sum((1, 2)) / mask.sum((1, 2)).clamp(min=1)).cpu().numpy()
  res = {"nll": [float(v) for v in nll]}
  if sae is not None and fids and layer is not None:
    T = tokens.shape[-1]
    x = seen[0][:, :T].float()
    with torch.no_grad():
      z = sae.encode(x)[..., list(fids)].mean(1)                         # [B, F]
    res["replay"] = z.cpu().numpy()
  return res


class _FeatureProbe(contextlib.AbstractContextManager):
  """Per-prompt mean SAE activation of features on the conditional rows after all steering.

  With `offset_fn` (transformers, whose generate runs pass 0 twice) calls are keyed by
  decoding position, so a repeated pass counts once."""

  def __init__(self, module, sae, ids, B: int, offset_fn=None):
    self.module, self.sae, self.ids, self.B, self.acts = module, sae, list(ids), B, []
    self.offset_fn, self.by_pos = offset_fn, {}

  def __enter__(self):
    def hook(mod, args, kwargs, out):
      out = out[0] if isinstance(out, tuple) else out
      cond = out[: self.B] if out.shape[0] == 2 * self.B else out
      z = self.sae.encode(cond.float())[..., self.ids].mean(1)                # [B, F]
      if self.offset_fn is None:
        self.acts.append(z)
      else:
        self.by_pos[self.offset_fn(kwargs, out.shape[1])] = z
        self.acts = list(self.by_pos.values())
    self.h = self.module.register_forward_hook(hook, with_kwargs=True)
    return self

  def __exit__(self, *exc):
    self.h.remove()
    return False

  def per_prompt(self) -> np.ndarray:
    return torch.stack(self.acts).mean(0).cpu().numpy()


def _config(config) -> dict:
  sc = dict(hooks.STEER_DEFAULTS)
  sc.update({k: v.to_dict() if hasattr(v, "to_dict") else v
             for k, v in (config.get("steer") or {}).items() if v is not None})
  return sc


def methods_of(sc: dict) -> list[dict]:
  """[{method, strengths, controls}] for `steer.method` ("add", or several comma-separated,
  "add,scale"), each with its `steer.per_method` strengths and control count (None there:
  steer.strengths / steer.controls)."""
  names = [m.strip() for m in str(sc["method"]).split(",") if m.strip()]
  bad = [m for m in names if m not in METHODS]
  if not names or bad or len(set(names)) != len(names):
    raise ValueError(f"--config.steer.method={sc['method']!r}; choose from {', '.join(METHODS)} "
                     f"(several, each once, comma-separated: 'add,scale')")
  per = sc.get("per_method") or {}
  out = []
  for m in names:
    o = per.get(m) or {}
    strengths = o.get("strengths") if o.get("strengths") is not None else sc["strengths"]
    n_controls = o.get("controls") if o.get("controls") is not None else sc["controls"]
    out.append({"method": m, "strengths": [float(a) for a in strengths],
                "controls": int(n_controls)})
  return out


def audio_name(method: str, what: str, alpha: float) -> str:
  """The clip name stem of one condition (`_p<i>.wav` is appended per prompt): the method
  is part of it, so methods run side by side never overwrite each other's clips."""
  return f"{method}_{what}_a{alpha:g}"


def builtin_prompts(n: int) -> list[str]:
  """The first `n` built-in emotion prompts (round-robin over emotions, so balanced)."""
  from bridge.sources import prompts as prompts_lib
  return [p["text"] for p in prompts_lib.emotion_prompts(max(1, -(-int(n) // 4)))][: int(n)]


def few_prompts_warning(n: int) -> str | None:
  """One line when `n` prompts are too few for the intervals and p-values to mean much."""
  if n >= steer_stats.MIN_PROMPTS:
    return None
  return (f"WARNING steer: only {n} prompts (steer.num_prompts / steer.prompts): below "
          f"{steer_stats.MIN_PROMPTS} the t intervals are wide and the paired tests weak; "
          f"use 16 or more")


def _label_key(labels) -> str | None:
  keys = {str(lab).split("=", 1)[0] for lab in labels if lab and "=" in str(lab)}
  return keys.pop() if len(keys) == 1 else None


def run_steering(config, workdir: str) -> dict:
  """Baseline, steered and control generations; per-prompt measures to steer.json."""
  from bridge.measures import audio_descriptors, concept_classifier
  from bridge.capture import extract
  from bridge.models import audiocraft_musicgen as models_lib
  from bridge.models.sae_torch import TorchSAE
  import soundfile as sf
  sc = _config(config)
  exp_dir = os.path.join(workdir, "exports", config.run)
  dirs, man = hooks.load_directions(exp_dir)
  sel = hooks._selected(sc["features"], man, exp_dir)   # checked before the model loads
  kind = man.get("kind", "sae_decoder")     # or "mean_difference" / "probe" (no SAE features)
  sae = (TorchSAE.from_export(exp_dir) if kind == "sae_decoder" and
         os.path.exists(os.path.join(exp_dir, "cfg.json")) else None)
  layer = man["layer"]
  if layer is None and capture_sites.is_lm_site(man["site"]):
    layer = man["site"]              # an attention site: lm.layer.<i>.attn / .cross_attn
  text_site = man["site"] if man["site"] in TEXT_SITES else None
  if layer is None and text_site is None:
    raise ValueError(f"{exp_dir}/directions.json: site {man['site']!r} is neither an LM layer "
                     f"nor a text-conditioning site ({', '.join(TEXT_SITES)})")
  texts = list(sc["prompts"] or builtin_prompts(sc["num_prompts"]))
  B, seed = len(texts), int(sc["seed"])
  plan = methods_of(sc)
  names = [p["method"] for p in plan]
  kinds = controls.check_kinds(sc["control_kinds"])
  edits = [m for m in names if m != "add"]            # methods that edit SAE latents
  if text_site and edits:
    raise ValueError(f"--config.steer.method={edits[0]!r}: text-conditioning directions "
                     f"({text_site}) are added (method=add); SAE edits need an LM layer")
  W_dec = sae.W_dec.detach() if sae is not None else None    # decoder-row controls
  if text_site:
    sae = None                # its features live on the text site: no per-step probe there
  if edits and sae is None:
    raise ValueError(f"--config.steer.method={edits[0]!r} edits SAE latents but {exp_dir} has no "
                     f"SAE (cfg.json); export the SAE with launch.export")
  schedule = hooks.parse_schedule(sc["schedule"])       # checked before the model loads
  control_kinds = controls.resolve(kinds, has_decoder=W_dec is not None) \
      if "add" in names else []
  if "transplant" in names and not sc["transplant_from"]:
    raise ValueError("--config.steer.method=transplant needs --config.steer.transplant_from="
                     "'<source prompt>' (whose feature pattern is imposed)")
  strengths = plan[0]["strengths"]
  sizes = models_lib.expected_sizes(config.model)     # known without loading: check now
  if sizes:
    hooks.check_sizes(sizes, dirs, layer, text_site, exp_dir, config.model.name)
  threads = int(config.get("extract", {}).get("torch_threads", 0))
  if threads:
    torch.set_num_threads(threads)
  with progress.phase(f"steer: loading model {config.model.name}"):
    model = extract.build_model(config.model)
  hooks._check_fits(model, dirs, layer, exp_dir, config.model.name, text_site)
  model.set_generation_params(duration=float(sc["duration"]), use_sampling=True,
                              top_k=int(config.get("extract", {}).get("top_k", 50)))
  rel = man["mean_norm"] if sc["relative"] else None
  source = None
  if "transplant" in names:             # every feature's pattern over time on the source
    _, source = hooks.record_features(model, [str(sc["transplant_from"])], layer, sae,
                                         range(sae.m), seed=seed)
  out_dir = os.path.join(workdir, "reports", config.run)
  audio_dir = os.path.join(out_dir, "audio")
  os.makedirs(audio_dir, exist_ok=True)
  fids = [int(man["feature_ids"][i]) for i in sel]
  be = backends.adapt(model)
  layer_mod = hooks._site_module(be, layer) if layer is not None else None
  rec_mod = layer_mod if layer is not None else (        # where covariance controls come from
      be.text_module() if text_site == "t5.hidden" else be.proj_module())

  def generate(texts_, steer_ctx, probe_fids, name, record=None, keep_audio=True):
    """Tokens -> per-prompt measures and wav paths (relative to the report folder).
    `record`: a list that receives the conditional rows of the steered site at each call."""
    probe = (_FeatureProbe(layer_mod, sae, probe_fids, len(texts_), offset_fn=(
        be.step_offset if be.name == "transformers" else None))
             if sae is not None and probe_fids else contextlib.nullcontext())
    rec = (rec_mod.register_forward_hook(lambda m, a, o: record.append(
        _cond_rows(o, len(texts_)).detach().float().cpu())) if record is not None else None)
    try:
      with steer_ctx, probe as p:
        tokens = backends.adapt(model).generate_tokens(texts_, seed=seed)
    finally:
      if rec is not None:
        rec.remove()
    rr = unsteered_reread(model, texts_, tokens, layer, sae, probe_fids)
    wav = model.generate_audio(tokens).float().cpu().numpy()
    meas = {"nll": rr["nll"], **{k: [] for k in AUDIO_MEASURES}}
    vecs, paths = [], []
    for b, w in enumerate(wav):
      if sc["save_audio"] and name and keep_audio:
        rel_path = f"audio/{name}_p{b}.wav"
        sf.write(os.path.join(out_dir, rel_path), w.T, model.sample_rate)
        paths.append(rel_path)
      d = audio_descriptors.clip_descriptors(w, model.sample_rate)
      for k in AUDIO_MEASURES:
        meas[k].append(float(d[k]))
      vecs.append(audio_descriptors.clip_vector(w, model.sample_rate))
    if clap is not None and name:
      meas["_clap"] = clap.audio(wav, model.sample_rate)
    if isinstance(p, _FeatureProbe):
      meas["_probe"] = p.per_prompt()
    if "replay" in rr:
      meas["_replay"] = rr["replay"]
    return meas, np.stack(vecs), paths

  warning = few_prompts_warning(B)
  results = {"run": config.run, "site": man["site"], "layer": layer, "prompts": texts,
             "warnings": [warning] if warning else [],
             "significance": float(sc["significance"]),
             "ci": {"method": steer_stats.CI_METHOD, "level": steer_stats.LEVEL},
             "seed": seed, "mean_norm": man["mean_norm"], "relative": bool(sc["relative"]),
             "strengths": strengths, "measures": list(MEASURES), "method": ",".join(names),
             "directions_kind": kind, "transplant_from": sc["transplant_from"] or None,
             "schedule": sc["schedule"] or "every step", "steps": sc["steps"],
             "activation_units": "raw (feature_act*: the exported SAE's latents)",
             "nll_units": "nats per token, unsteered conditional LM"}
  for p in plan:
    p["nonzero"] = [a for a in p["strengths"] if a != IDENTITY.get(p["method"])]
  label_key = _label_key(man["labels"])
  refs = (concept_classifier.reference_prompts(label_key, int(sc["concept_per_value"]), texts)
          if label_key and int(sc["concept_per_value"]) > 0 else [])
  total = 1 + bool(refs) + sum((len(sel) + p["controls"] * (
      len(control_kinds) if p["method"] == "add" else 1)) * len(p["nonzero"]) for p in plan)
  bar = progress.Progress(total, "steer", "generation", warmup=1)
  if warning:
    bar.write(warning)

  # --- CLAP (optional; skipped with one line when no local model is named) --------------
  from bridge.measures.clap import ClapScorer
  clap, clap_what = ClapScorer.load(str(sc["clap"] or ""))
  values = sorted({str(lab).split("=", 1)[1] for lab in man["labels"] if lab and "=" in str(lab)})
  if clap is not None:
    prompt_emb = clap.text(texts)
    label_emb = dict(zip(values, clap.text([f"{v} music" for v in values]))) if values else {}
    results["clap"] = {"model": clap.name, "label_texts": {v: f"{v} music" for v in values}}
  else:
    results["clap"] = {"skipped": clap_what}
    bar.write(f"steer: CLAP measures skipped ({clap_what})")

  # --- the concept classifier, trained on unsteered reference clips ---------------------
  clf = None
  if refs:
    _, ref_vecs, _ = generate([p["text"] for p in refs], contextlib.nullcontext(), [], None)
    bar.update(1)
    clf = concept_classifier.CentroidClassifier(ref_vecs, [p["labels"][label_key] for p in refs])
    results["concept"] = {"kind": "nearest centroid on audio descriptors (mean, std over frames)",
                          "label_key": label_key, "values": clf.values,
                          "train_clips": len(refs), "loo_accuracy": clf.loo_accuracy(),
                          "chance": 1.0 / len(clf.values)}
  else:
    why = ("steer.concept_per_value=0" if int(sc["concept_per_value"]) <= 0 else
           f"labels {sorted(set(map(str, man['labels'])))} name no single key of the built-in "
           f"labelled prompts")
    results["concept"] = {"skipped": why}
    bar.write(f"steer: concept score skipped ({why})")
  cm, cm_why = concept_measure(results)
  results["concept_measure"] = {"name": cm, "why": cm_why}
  if cm is None:
    bar.write(f"steer: no independent concept score ({cm_why}); no concept verdicts")

  def condition(meas, vecs, paths, fpos: int | None) -> dict:
    """Per-prompt values of every measure for one clip set, seen from feature `fpos`."""
    per = {k: list(meas[k]) for k in ("nll",) + AUDIO_MEASURES}
    if fpos is not None and "_probe" in meas:
      per["feature_act"] = [float(v) for v in meas["_probe"][:, fpos]]
    if fpos is not None and "_replay" in meas:
      per["feature_act_replay"] = [float(v) for v in meas["_replay"][:, fpos]]
    if "_clap" in meas:
      emb = meas["_clap"]
      per["clap_prompt"] = [float(v) for v in (emb * prompt_emb).sum(1)]
      per["clap_label"] = {v: [float(x) for x in emb @ e] for v, e in label_emb.items()}
    if clf is not None:
      per["concept_proba"] = {v: [float(x) for x in col] for v, col in zip(clf.values, clf.proba(vecs).T)}
    return {"audio": paths, "per_prompt": per}

  def with_concept(cond: dict, target: str | None) -> dict:
    per = dict(cond["per_prompt"])
    probs = per.pop("concept_proba", None)
    if probs is not None and target in probs:
      per["concept"] = probs[target]
    sims = per.pop("clap_label", None)
    if sims and target in sims and len(sims) > 1:
      others = np.mean([sims[v] for v in sims if v != target], axis=0)
      per["clap_concept"] = [float(a - b) for a, b in zip(sims[target], others)]
    return {"audio": cond["audio"], "per_prompt": per}

  def stats(cond: dict, base: dict) -> dict:
    return {k: steer_stats.paired_summary(v, base["per_prompt"][k])
            for k, v in cond["per_prompt"].items() if k in base["per_prompt"]}

  # --- baseline: once per prompt and seed, shared by every method ----------------------
  others = [j for j in range(sae.m) if j not in fids] if edits else []
  acts = [] if any(u == "covariance" for _, u in control_kinds) else None
  base_raw = generate(texts, contextlib.nullcontext(), fids + others, "baseline", record=acts)
  bar.update(1)

  def steer_ctx(method, target, a):
    """`target`: a direction (add) or an SAE feature id (scale, set, transplant)."""
    kw = dict(half=sc["half"], steps=sc["steps"], schedule=schedule)
    if text_site:
      return hooks.add_text_direction(model, target, a, relative_to=rel, site=text_site,
                                         half=sc["half"])
    if method == "add":
      return hooks.add_direction(model, layer, target, a, relative_to=rel, **kw)
    if method == "transplant":
      t = int(target)
      return hooks.transplant_features(model, layer, sae, [t], source[:, :, [t]], alpha=a, **kw)
    spec = ("scale", a) if method == "scale" else a
    return hooks.clamp_features(model, layer, sae, {int(target): spec}, **kw)

  # --- controls per method, shared by every feature -----------------------------------
  probe_others = base_raw[0].get("_probe")
  if edits:
    base_raw[0]["_probe"] = probe_others[:, :len(fids)]
  controls_raw = {}
  for p in plan:
    method, n_ctrl = p["method"], p["controls"]
    g = torch.Generator().manual_seed(seed)
    if method == "add":        # per kind, directions of the features' norm
      norm = float(dirs[sel].norm(dim=1).mean())
      targets, kind_of, desc = [], [], {}
      for asked, kind in control_kinds:
        if kind == "gaussian":
          v = controls.gaussian(n_ctrl, dirs.shape[1], norm, g)
          desc[kind] = "isotropic Gaussian directions"
        elif kind == "decoder":
          v, rows = controls.decoder(n_ctrl, W_dec, fids, norm, g)
          desc[kind] = f"other decoder rows of the SAE ({rows[:8]}{' ...' if len(rows) > 8 else ''})"
        else:
          v = controls.covariance(n_ctrl, torch.cat([a.reshape(-1, a.shape[-1]) for a in acts]),
                                        norm, g)
          desc[kind] = ("directions ~ N(0, activation covariance of the baseline at the site)" +
                        (" (no SAE for 'decoder')" if asked != kind else ""))
        targets += list(v)
        kind_of += [kind] * n_ctrl
      p["controls"] = {"count": n_ctrl, "norm": norm, "per_kind": n_ctrl,
                       "kinds": [k for _, k in control_kinds], "kind_description": desc,
                       "kind": "; ".join(f"{k}: {d}" for k, d in desc.items()) +
                               " (each scaled to the features' norm)"}
    else:                      # the same edit on random other features active on the baseline
      act = probe_others.mean(0)[len(fids):]
      alive = [j for j, v in zip(others, act) if v > 0]
      pick = torch.randperm(len(alive), generator=g)[:n_ctrl].tolist()
      targets = [alive[i] for i in pick]
      kind_of = ["other_feature"] * len(targets)
      p["controls"] = {"count": len(targets), "features": targets, "kinds": ["other_feature"],
                       "kind": f"the same {method} on random other features active on the "
                               f"baseline ({len(alive)} candidates)"}
    controls_raw[method] = []
    for k, (tgt, kind) in enumerate(zip(targets, kind_of)):
      first = kind_of.index(kind) == k           # only the first of each kind keeps its clips
      for a in p["nonzero"]:
        controls_raw[method].append((k, kind, a, generate(
            texts, steer_ctx(method, tgt, a), fids,
            audio_name(method, f"control{k}", a), keep_audio=first)))
        bar.update(1)
  results["controls"] = plan[0]["controls"]
  results["methods"] = [{k: p[k] for k in ("method", "strengths", "controls")} for p in plan]

  results["features"] = []
  for p in plan:
    method, identity = p["method"], IDENTITY.get(p["method"])
    for pos, i in enumerate(sel):
      fid, label = fids[pos], man["labels"][i]
      target = str(label).split("=", 1)[1] if label and "=" in str(label) else None
      base = with_concept(condition(*base_raw, pos), target)
      entry = {"method": method, "feature": fid, "label": label, "target": target,
               "baseline": base, "steered": [], "control": []}
      for a in p["strengths"]:
        if a == identity:
          cond = {**base, "reused_baseline": True}
        else:
          raw = generate(texts, steer_ctx(method, dirs[i] if method == "add" else fid, a), fids,
                         audio_name(method, f"f{fid}", a))
          cond = with_concept(condition(*raw, pos), target)
          bar.update(1)
        entry["steered"].append({"alpha": a, **cond, "stats": stats(cond, base)})
        s = entry["steered"][-1]["stats"]
        bar.write(f"{method} feature {fid} ({label}) alpha={a:g}: " + ", ".join(
            f"Δ{k}={v['mean']:+.3g}" for k, v in s.items() if v["mean"] is not None))
      for k, kind, a, raw in controls_raw[method]:
        cond = with_concept(condition(*raw, pos), target)
        entry["control"].append({"control": k, "kind": kind, "alpha": a, **cond,
                                 "stats": stats(cond, base)})
      judge(entry, identity=identity, measure=cm, why_none=cm_why,
            level=float(sc["significance"]), n_per_kind=p["controls"]["count"])
      bar.write(f"{method} feature {fid} ({label}): {entry['verdict']['text']}")
      results["features"].append(entry)
  bar.close()
  path = os.path.join(out_dir, "steer.json")
  files.write_json(path, results, indent=1)
  results["plot"] = plot_steering(results, os.path.join(out_dir, "steer.png"))
  results["path"] = path
  return results


def judge(entry: dict, *, identity, measure: str | None, why_none: str, level: float,
          n_per_kind: int) -> dict:
  """Each steered strength's rank p among the controls at that strength (`vs_controls`, one
  band per strength, per kind of control) and the feature's `verdict`; returns the verdict."""
  points = []
  for s in entry["steered"]:
    if s.get("reused_baseline") or measure is None:
      continue
    obs = s["stats"].get(measure, {}).get("mean")
    by_kind: dict[str, list] = {}
    for c in entry["control"]:
      if c["alpha"] == s["alpha"]:
        by_kind.setdefault(c.get("kind", "control"), []).append(
            c["stats"].get(measure, {}).get("mean"))
    s["vs_controls"] = {"measure": measure, **steer_stats.vs_controls(obs, by_kind)}
    if identity is None or s["alpha"] > identity:      # pushes toward the feature
      points.append((s["alpha"], s["vs_controls"]["p_rank"]))
  entry["verdict"] = steer_stats.verdict(sorted(points), target=entry["target"], measure=measure,
                                         level=level, n_controls=n_per_kind, why_none=why_none)
  return entry["verdict"]


def _cond_rows(out, B: int) -> torch.Tensor:
  """The conditional rows of a site's output ([cond; uncond] under guidance)."""
  out = getattr(out, "last_hidden_state", out)
  out = out[0] if isinstance(out, tuple) else out
  return out[:B] if out.shape[0] == 2 * B else out


def concept_measure(results: dict) -> tuple[str | None, str]:
  """(the concept score the verdicts and the plot use, why none): the classifier on audio
  descriptors, else CLAP's label similarity; never the steered feature's own activation
  (for add that only says the vector was added)."""
  if "skipped" not in results.get("concept", {"skipped": 1}):
    return "concept", ""
  clap = results.get("clap") or {}
  if "skipped" not in clap and len(clap.get("label_texts") or {}) > 1:
    return "clap_concept", ""
  why = [f"concept classifier skipped: {results.get('concept', {}).get('skipped', 'not run')}"]
  why.append(f"CLAP skipped: {clap['skipped']}" if "skipped" in clap else
             "CLAP has fewer than 2 label values")
  return None, "; ".join(why)


def _axis(st: dict | None) -> tuple[float, float, float] | None:
  """(mean, lower error, upper error) of one stats entry."""
  if not st or st.get("mean") is None:
    return None
  m, ci = st["mean"], st.get("ci") or [st["mean"], st["mean"]]
  return m, m - ci[0], ci[1] - m


PLOT_COLUMNS = 3      # steer.png panels per row


def plot_steering(results: dict, path: str) -> str:
  """The standard plot: Δ concept score vs Δ drift (NLL), per feature and strength.

  Steered points (one per strength, joined in order, t-interval bars on both axes) and,
  per strength, the controls at that strength (points, and a box spanning their range on
  both axes, labelled with the strength): a steered point above its own strength's box
  moved the concept more than every control push of the same size. Without an
  independent concept score (`concept_measure`) the panel shows Δ NLL against strength
  and says so: the steered feature's own activation is never a stand-in.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.patches import Rectangle
  y_m, why = concept_measure(results)
  feats = results["features"]
  cols = min(PLOT_COLUMNS, max(1, len(feats)))        # a grid: 8 panels in one row are unreadable
  rows = -(-max(1, len(feats)) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.8 * rows), squeeze=False)
  for ax in axes.flat[len(feats):]:
    ax.set_visible(False)
  for ax, f in zip(axes.flat, feats):
    nonzero = [s["alpha"] for s in f["steered"] if not s.get("reused_baseline")]
    for j, a in enumerate(nonzero):
      ctrl = [c for c in f["control"] if c["alpha"] == a]
      if y_m is None:
        pts = [(a, p[0]) for p in (_axis(c["stats"].get("nll")) for c in ctrl) if p]
      else:
        pts = [(x[0], y[0]) for x, y in ((_axis(c["stats"].get("nll")), _axis(c["stats"].get(y_m)))
                                         for c in ctrl) if x and y]
      if not pts:
        continue
      xs, ys = zip(*pts)
      col = plt.cm.Greys(0.35 + 0.5 * j / max(1, len(nonzero) - 1))
      ax.scatter(xs, ys, s=8, color=col, zorder=1,
                 label=f"controls α={a:g} ({len(pts)})")
      if y_m is None:
        ax.plot([a, a], [min(ys), max(ys)], color=col, lw=6, alpha=0.4, zorder=0)
      else:
        ax.add_patch(Rectangle((min(xs), min(ys)), max(xs) - min(xs), max(ys) - min(ys),
                               color=col, alpha=0.25, zorder=0))
        ax.annotate(f"α={a:g}", (max(xs), max(ys)), fontsize=6, color="0.3")
    pts = []
    for s in f["steered"]:
      nll = _axis(s["stats"].get("nll"))
      y = nll if y_m is None else _axis(s["stats"].get(y_m))
      if nll and y:
        pts.append((s["alpha"], (s["alpha"], 0.0, 0.0) if y_m is None else nll, y))
    if pts:
      ax.errorbar([p[1][0] for p in pts], [p[2][0] for p in pts],
                  xerr=[[p[1][1] for p in pts], [p[1][2] for p in pts]],
                  yerr=[[p[2][1] for p in pts], [p[2][2] for p in pts]], fmt="-o", color="C0",
                  ms=4, capsize=2, zorder=2, label="steered")
      for a, x, y in pts:
        ax.annotate(f"{a:g}", (x[0], y[0]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="k", lw=0.5)
    tag = {"mean_difference": "caa", "probe": "probe"}.get(results.get("directions_kind"), "f")
    ax.set_title(f"{f.get('method', results.get('method', 'add'))}: {tag}{f['feature']} "
                 f"{f['label'] or ''}", fontsize=9)
    if y_m is None:
      ax.set_xlabel("strength α")
      ax.set_ylabel("Δ NLL (nats/token, unsteered LM)")
      ax.text(0.02, 0.98, "no independent concept score:\n" + "\n".join(why.split("; ")),
              ha="left", va="top", transform=ax.transAxes, fontsize=6, color="C3")
    else:
      ax.axvline(0, color="k", lw=0.5)
      ax.set_xlabel("Δ NLL (nats/token, unsteered LM)")
      ax.set_ylabel(f"Δ {y_m} ({f['target']})" if f.get("target") else f"Δ {y_m}")
    v = (f.get("verdict") or {}).get("text")
    if v:
      import textwrap
      ax.text(0.02, 0.02, textwrap.fill(v, 60), transform=ax.transAxes, fontsize=5.5, va="bottom")
  if axes[0][0].get_legend_handles_labels()[0]:
    axes[0][0].legend(fontsize=6, loc="best")
  fig.tight_layout()
  files.save_figure(fig, path, dpi=90)
  plt.close(fig)
  return path
