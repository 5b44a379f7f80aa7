"""The `launch.localize` stage: downstream fidelity, layer ablation, activation patching.

Reads `exports/<run>/` (the SAE, for fidelity and SAE-feature patching), builds the model of
`config.model`, generates the scored tokens from `config.localize` prompts, and writes into
`reports/<run>/`: fidelity.json, ablation.json + ablation.png, patching.json + patching.png.
Patching pairs are `localize.concepts` (prompts one word apart) and, with
`localize.pairs_from`, clips of a labelled dataset one label apart (`audio_concepts`).
"""
from __future__ import annotations

import json
import os

import torch

from bridge import config_defaults
from musicsae_jax import files

WHAT = ("fidelity", "ablation", "patching")
LOCALIZE_DEFAULTS = config_defaults.localize().to_dict()


def _config(config) -> dict:
  lc = dict(LOCALIZE_DEFAULTS)
  lc.update({k: v for k, v in (config.get("localize") or {}).items() if v is not None})
  for k in ("concepts", "audio_concepts", "patch_sites"):   # `--config.localize.k=a,b` gives
    lc[k] = tuple(x for v in lc[k] for x in str(v).split(",") if x)   # ('a,b',) for strings
  return lc


def _texts(lc: dict) -> list[str]:
  from bridge.sources import prompts as prompts_lib
  if lc["prompts"]:
    return [str(t) for t in lc["prompts"]]
  n = int(lc["num_prompts"])
  if n < 1:
    raise ValueError(f"--config.localize.num_prompts={n}; need at least 1")
  allp = prompts_lib.emotion_prompts(120)     # the last n: not in a per_label<=(120-n/4) set
  return [p["text"] for p in allp[-n:]]


def _sites(lc: dict, layers: list[int]) -> list[str]:
  kinds = {"resid": "", "attn": ".attn", "cross_attn": ".cross_attn"}
  bad = [k for k in lc["patch_sites"] if k not in kinds]
  if bad:
    raise ValueError(f"--config.localize.patch_sites: {bad} unknown; choose from "
                     f"{', '.join(kinds)}")
  return [f"lm.layer.{i}{kinds[k]}" for i in layers for k in lc["patch_sites"]]


def _audio_items(lc: dict):
  """The labelled clips of `localize.pairs_from` (None without audio pairs); the pairs of
  every `localize.audio_concepts` label are checked here, before the model loads."""
  from bridge.sources import audio_datasets
  from bridge.localize import audio_pairs, patching
  spec, concepts = str(lc["pairs_from"] or ""), list(lc["audio_concepts"])
  if bool(spec) != bool(concepts):
    raise ValueError("--config.localize.pairs_from and --config.localize.audio_concepts go "
                     "together (e.g. pairs_from=folder:DIR, audio_concepts=tempo,key)")
  if not spec:
    return None
  if lc["audio_conditioning"] not in patching.AUDIO_CONDITIONING:
    raise ValueError(f"--config.localize.audio_conditioning={lc['audio_conditioning']!r}; "
                     f"choose from {', '.join(patching.AUDIO_CONDITIONING)}")
  if lc["audio_conditioning"] == "fixed" and not str(lc["audio_text"]).strip():
    raise ValueError("--config.localize.audio_conditioning=fixed needs localize.audio_text")
  items = audio_datasets.load_items(spec)
  for c in concepts:
    audio_pairs.find_pairs(items, c, 1)
  return items


def _write(path: str, obj: dict) -> str:
  files.write_json(path, obj, indent=1)
  return path


def _sae(workdir: str, run: str, required: bool):
  from bridge.models.sae_torch import TorchSAE
  exp = os.path.join(workdir, "exports", run)
  if not os.path.exists(os.path.join(exp, "cfg.json")):
    if required:
      raise FileNotFoundError(f"{exp}/cfg.json not found: fidelity needs an exported SAE; run "
                              f"launch.export for run {run!r} first (or drop 'fidelity' from "
                              f"--what)")
    return None, exp
  return TorchSAE.from_export(exp), exp


def sweep_members(workdir: str, run: str) -> list[str]:
  """Members of the sweep `runs/<run>/sweep.json` that have an export (exports/<run>/<m>/)."""
  p = os.path.join(workdir, "runs", run, "sweep.json")
  if not os.path.exists(p):
    return []
  with open(p) as f:
    names = [m["name"] for m in json.load(f).get("members", [])]
  return [n for n in names
          if os.path.exists(os.path.join(workdir, "exports", run, n, "cfg.json"))]


def _fidelity_members(model, workdir, run, members, texts, tokens, cfg, halves, common, log):
  """Fidelity of every exported sweep member: reports/<run>/<member>/fidelity.json and the
  comparison reports/<run>/fidelity_members.json."""
  from bridge.localize import fidelity
  from bridge.models.sae_torch import TorchSAE
  written, rows = {}, []
  for name in members:
    sae = TorchSAE.from_export(os.path.join(workdir, "exports", run, name))
    log(f"localize: fidelity of sweep member {name}")
    res = fidelity.run(model, sae, texts, tokens, cfg_coef=cfg, halves=halves)
    out = os.path.join(workdir, "reports", run, name)
    os.makedirs(out, exist_ok=True)
    written[f"fidelity:{name}"] = _write(os.path.join(out, "fidelity.json"),
                                         {**common, "run": f"{run}/{name}", **res})
    rows.append({"member": name, **{h: {"loss_recovered": r["loss_recovered_mean"],
                                        "ce_sae": r["sae"]["ce_mean"], "kl_sae": r["sae"]["kl_mean"],
                                        "fvu": r["fvu"], "l0": r["l0"]}
                                    for h, r in res["halves"].items()}})
  written["fidelity_members"] = _write(
      os.path.join(workdir, "reports", run, "fidelity_members.json"),
      {**common, "members": rows})
  return written


def run_localize(config, workdir: str, what=WHAT, log=print) -> dict[str, str]:
  """Run the chosen studies; returns {name: path written}."""
  from bridge.capture import record, extract
  from bridge.localize import fidelity, layer_ablation, patching
  from bridge.models import backends
  what = list(what)
  bad = [w for w in what if w not in WHAT]
  if bad or not what:
    raise ValueError(f"--what={','.join(what)}: choose from {', '.join(WHAT)}")
  lc = _config(config)
  members = sweep_members(workdir, config.run)
  sae, exp = _sae(workdir, config.run, "fidelity" in what and not members)
  if sae is not None and "fidelity" in what:
    fidelity.site_of(sae)                      # fail before the model loads
  bad = [h for h in lc["halves"] if h not in ("cond", "uncond", "both")]
  if bad:
    raise ValueError(f"--config.localize.halves: {bad}; choose from cond, uncond, both")
  audio_items = None
  if "patching" in what:
    for c in lc["concepts"]:
      patching.parse_concept(c)
    if lc["patch_half"] not in ("cond", "uncond", "both"):
      raise ValueError(f"--config.localize.patch_half={lc['patch_half']!r}; choose from "
                       f"cond, uncond, both")
    _sites(lc, [0])
    for k in ("patch_steps", "patch_measure"):
      w = lc[k]
      if w and (len(w) != 2 or not 0 <= int(w[0]) < int(w[1])):
        raise ValueError(f"--config.localize.{k}={tuple(w)}: expected (start, stop) with "
                         f"0 <= start < stop")
    audio_items = _audio_items(lc)
    if not lc["concepts"] and audio_items is None:
      raise ValueError("--what=patching needs localize.concepts or localize.audio_concepts")
  bad = [m for m in list(lc["ablation_modes"]) + list(lc["ablation_generate"])
         if m not in ("zero", "mean", "resample")]
  if bad:
    raise ValueError(f"--config.localize.ablation_modes/ablation_generate: {bad}; choose "
                     f"from zero, mean, resample")
  texts = _texts(lc)
  threads = int(config.get("extract", {}).get("torch_threads", 0))
  if threads:
    torch.set_num_threads(threads)
  log(f"localize: loading model {config.model.name} ...")
  model = extract.build_model(config.model)
  info = backends.model_info(model)
  layers = [int(i) for i in lc["layers"]] or list(range(info.num_layers))
  if any(not 0 <= i < info.num_layers for i in layers):
    raise ValueError(f"--config.localize.layers={tuple(layers)}: the model has "
                     f"{info.num_layers} layers")
  model.set_generation_params(duration=float(lc["duration"]), use_sampling=True,
                              top_k=min(int(config.get("extract", {}).get("top_k", 250)),
                                        info.card),
                              cfg_coef=float(lc["cfg_coef"]))
  seed, cfg = int(lc["seed"]), float(lc["cfg_coef"])
  out_dir = os.path.join(workdir, "reports", config.run)
  os.makedirs(out_dir, exist_ok=True)
  written: dict[str, str] = {}
  tokens = None
  if "fidelity" in what or "ablation" in what:
    log(f"localize: generating {len(texts)} prompts x {lc['duration']} s (seed {seed})")
    tokens = record.generate_tokens(model, texts, seed=seed)
  common = {"run": config.run, "model": info.to_dict(), "texts": texts, "seed": seed}
  if "fidelity" in what and members:
    written.update(_fidelity_members(model, workdir, config.run, members, texts, tokens, cfg,
                                     tuple(lc["halves"]), common, log))
  if "fidelity" in what and sae is not None:
    log(f"localize: fidelity of {exp} on {fidelity.site_of(sae)[0]}")
    res = fidelity.run(model, sae, texts, tokens, cfg_coef=cfg, halves=tuple(lc["halves"]))
    written["fidelity"] = _write(os.path.join(out_dir, "fidelity.json"), {**common, **res})
  if "ablation" in what:
    log(f"localize: ablating layers {layers} ({', '.join(lc['ablation_modes'])})")
    res = {**common, "teacher_forced": layer_ablation.teacher_forced(
        model, texts, tokens, layers, list(lc["ablation_modes"]), cfg_coef=cfg)}
    gen_modes = [m for m in lc["ablation_generate"]]
    if gen_modes:
      clap = None
      spec = str(config.get("steer", {}).get("clap", "") or "")
      if spec:
        from bridge.measures.clap import ClapScorer
        clap, why = ClapScorer.load(spec)
        res["clap"] = why
      log(f"localize: sampling with each layer ablated ({', '.join(gen_modes)})")
      res["generation"] = layer_ablation.generation(model, texts, tokens, layers, gen_modes,
                                                    seed=seed, cfg_coef=cfg, clap=clap)
    written["ablation"] = _write(os.path.join(out_dir, "ablation.json"), res)
    written["ablation_png"] = layer_ablation.plot(res, os.path.join(out_dir, "ablation.png"))
  if "patching" in what:
    sites = _sites(lc, layers)
    psae = sae if lc["patch_sae"] else None
    if psae is not None:
      try:
        fidelity.site_of(psae)
      except ValueError as e:                  # e.g. an SAE of a text-conditioning site
        log(f"localize: no SAE row in patching: {e}")
        psae = None
    log(f"localize: patching {len(lc['concepts'])} concepts x {len(sites)} sites")
    steps = tuple(lc["patch_steps"]) if lc["patch_steps"] else None
    measure = tuple(lc["patch_measure"]) if lc["patch_measure"] else None
    feats = [int(j) for j in lc["patch_features"]] or None
    res = patching.run(model, list(lc["concepts"]), sites, pairs=int(lc["pairs"]), seed=seed,
                       cfg_coef=cfg, half=str(lc["patch_half"]), steps=steps, sae=psae,
                       features=feats, generate=bool(lc["patch_generate"]),
                       references=int(lc["patch_references"]), measure=measure)
    if audio_items is not None:
      if "attn" not in lc["patch_sites"] and psae is None:
        log("localize: audio pairs without text: the residual rows are 1 and the cross_attn "
            "rows 0 by construction; add attn to localize.patch_sites for informative rows")
      log(f"localize: patching audio pairs of {lc['pairs_from']}: "
          f"{', '.join(lc['audio_concepts'])} x {len(sites)} sites")
      aud = patching.run_audio(model, audio_items, list(lc["audio_concepts"]), sites,
                               pairs=int(lc["pairs"]), seed=seed,
                               frames=int(round(float(lc["duration"]) * info.frame_rate)),
                               conditioning=str(lc["audio_conditioning"]),
                               text=str(lc["audio_text"]), cfg_coef=cfg, steps=steps,
                               sae=psae, features=feats, measure=measure)
      res["per_concept"].update(aud)
      res["concepts"] += list(aud)
      res["pairs_from"] = str(lc["pairs_from"])
      patching.set_matrix(res)
    written["patching"] = _write(os.path.join(out_dir, "patching.json"), {**common, **res})
    written["patching_png"] = patching.plot(res, os.path.join(out_dir, "patching.png"))
  return written
