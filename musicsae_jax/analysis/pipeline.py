"""`analyze(config, workdir)`: one trained run + its store -> reports/<run>/.

Writes `features.json` (discovery, position flags), `selectivity.json` (top features per
label value, selected on training prompts and scored on held-out prompts with a
max-statistic permutation null; ready for `export.export_directions`), `probes.json` (probes + cosine similarity),
`report.html` and the feature browser `browser/` (analysis.browser). Every input is checked before the long work starts.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Callable

import numpy as np

from musicsae_jax import config_defaults, files, metrics, progress, store as store_lib
from musicsae_jax.analysis import browser, labelers, labels as lab, layers, probes, report, stats, validity
from musicsae_jax.analysis.stats import AnalysisError

AUDIO_SITE = "audio.descriptors"
FORMAT_VERSION = 2
HELDOUT_VOCAB = "heldout_vocab"     # prompts.jsonl "split" of held-out-vocabulary prompts

DEFAULTS = config_defaults.analysis().to_dict()   # every config.analysis field and its default


def resolve(config) -> dict:
  """Defaults + `config.analysis`, with run/dataset following the top-level config."""
  a = dict(DEFAULTS)
  blk = config.get("analysis") if hasattr(config, "get") else None
  if blk is not None:
    a.update(blk.to_dict() if hasattr(blk, "to_dict") else dict(blk))
  unknown = sorted(set(a) - set(DEFAULTS))
  if unknown:
    raise AnalysisError(f"unknown config.analysis fields {unknown}; known: {sorted(DEFAULTS)}")
  a["run"] = a["run"] or config.get("run")
  a["dataset"] = a["dataset"] or config.get("dataset")
  b = dict(a["browser"].to_dict() if hasattr(a["browser"], "to_dict") else a["browser"])
  unknown = sorted(set(b) - set(DEFAULTS["browser"]))
  if unknown:
    raise AnalysisError(f"unknown config.analysis.browser fields {unknown}; known: "
                        f"{sorted(DEFAULTS['browser'])}")
  a["browser"] = browser.check_config({**DEFAULTS["browser"], **b})
  if isinstance(a["label_keys"], str):
    a["label_keys"] = (a["label_keys"],)
  lo, hi = a["rate_band"]
  if not 0 <= lo < hi <= 1:
    raise AnalysisError(f"analysis.rate_band={tuple(a['rate_band'])} must satisfy 0 <= lo < hi <= 1")
  return a


def _layer_key(site: str):
  order = {"t5.pooled": 0, "t5.hidden": 1, "cond.proj": 2}
  if site.startswith("lm.layer.") and site.rsplit(".", 1)[1].isdigit():
    return (3, int(site.rsplit(".", 1)[1]), site)
  return (order.get(site, 9), 0, site)


def _progress(log, what, bars: bool = False):
  """Per-block progress: a tqdm bar (launch.analyze) or log lines every 5 s; either way the
  rate and ETA start after the first block (jit compilation)."""
  if bars:
    state = {}

    def bar_cb(i, n, rows_per_s=None):
      if "bar" not in state:
        state["bar"] = progress.Progress(n, what, "block", warmup=1)
      state["bar"].update(1, **({"rows_per_s": f"{rows_per_s:.3g}"} if rows_per_s else {}))
      if i == n:
        state.pop("bar").close()
    return bar_cb

  t_first = [None]

  def cb(i, n, rows_per_s=None):
    if t_first[0] is None:
      t_first[0] = (time.time(), i)
    if i == n or time.time() - cb.last > 5:
      cb.last = time.time()
      t1, i1 = t_first[0]
      eta = (time.time() - t1) / (i - i1) * (n - i) if i > i1 else float("nan")
      rate = f", {rows_per_s:.3g} rows/s" if rows_per_s else ""
      log(f"{what}: block {i}/{n}{rate}, ETA {eta:.0f}s")
  cb.last = 0.0
  return cb


def _run_config_path(workdir: str, run: str) -> str:
  """runs/<run>/config.json; AnalysisError when the run was never trained."""
  cfg_path = os.path.join(workdir, "runs", run, "config.json")
  if not os.path.exists(cfg_path):
    raise AnalysisError(f"{cfg_path} not found: no trained run {run!r} in {workdir} "
                        f"(run launch.train first, or set config.run)")
  return cfg_path


def load_run(workdir: str, run: str, step=None):
  """(run config.json dict, normalisation dict, params, step) of runs/<run>."""
  from musicsae_jax import export
  run_dir = os.path.join(workdir, "runs", run)
  cfg_path = _run_config_path(workdir, run)
  with open(cfg_path) as f:
    run_cfg = json.load(f)
  norm_path = os.path.join(run_dir, "normalization.json")
  norm = json.load(open(norm_path)) if os.path.exists(norm_path) else {"scale": 1.0}
  params, step = export.restore_params(run_dir, step)
  return run_cfg, norm, params, step


def model_line(meta: dict) -> str:
  """'facebook/musicgen-small (audiocraft backend)': which model and implementation made
  the activations, from the store's manifest (activations differ between backends)."""
  name = meta.get("source") or meta.get("name") or "unknown model"
  backend = meta.get("backend") or ("audiocraft" if meta else None)
  return f"{name} ({backend} backend)" if backend else str(name)


def analyze(config, workdir: str, log: Callable[[str], None] = print,
            bars: bool = False) -> dict:
  """Run every analysis for config.run on config.dataset; returns the written paths."""
  a = resolve(config)
  _run_config_path(workdir, a["run"])        # inputs first: the run, the dataset's files
  ds_path = os.path.join(workdir, "activations", a["dataset"])
  if not store_lib.exists(ds_path):
    raise AnalysisError(f"{ds_path}: no activation dataset {a['dataset']!r} (run launch.extract)")
  ds = store_lib.open_dataset(ds_path)
  ds.check_files()         # a missing shard fails now, before any work (reads check again)
  run_cfg, norm, params, step = load_run(workdir, a["run"], a["step"])
  site_name = a["site"] or run_cfg.get("train", {}).get("site")
  if not site_name:
    raise AnalysisError(f"run {a['run']!r} was not trained on a store site; set analysis.site")
  if site_name not in ds.sites:
    raise AnalysisError(f"site {site_name!r} (the run's train.site) is not in {ds_path}; "
                        f"store sites: {sorted(ds.sites)}")
  site = ds.site(site_name)
  d_run, m = np.asarray(params["W_enc"]).shape
  if site.d != d_run:
    raise AnalysisError(f"run {a['run']!r} has an SAE of width d={d_run} but store site "
                        f"{site_name!r} in {ds_path} has d={site.d}: different run or dataset?")
  prompts = ds.prompts
  P = len(prompts)
  # Probes see one mean-pooled vector per prompt, and t5.pooled IS t5.hidden mean-pooled
  # over valid tokens: by default probe it once (as t5.pooled).
  probe_sites = list(a["probe_sites"]) or [
      s for s in ds.sites if s != AUDIO_SITE and not s.endswith(".uncond")
      and not (s == "t5.hidden" and "t5.pooled" in ds.sites)]
  for s in probe_sites:
    if s not in ds.sites:
      raise AnalysisError(f"analysis.probe_sites names {s!r}; store sites: {sorted(ds.sites)}")
  probe_sites.sort(key=_layer_key)
  # Held-out-vocabulary prompts (split "heldout_vocab") never train a probe or choose a
  # feature; they score what the training-vocabulary prompts chose (both splits reported).
  vocab = np.array([p.get("split") == HELDOUT_VOCAB for p in prompts], bool)
  lab_cfg = labelers.resolve(a)
  label_info = {}
  for key in a["label_keys"]:
    values, y = lab.label_vector(prompts, key)
    probes.stratified_folds(y[(y >= 0) & ~vocab], int(a["probe_folds"]), 0, values)  # fail early
    label_info[key] = (values, y)

  # --- streamed feature statistics -----------------------------------------------------
  model = stats.sae_from_params(params, run_cfg.get("sae"))
  enc = stats.Encoder(model, float(norm.get("scale", 1.0)), int(a["batch_rows"]))
  desc, desc_names = None, None
  if (site_name.startswith("lm.layer.") and AUDIO_SITE in ds.sites
      and ds.site(AUDIO_SITE).num_rows == site.num_rows):
    desc = ds.site(AUDIO_SITE)
    desc_names = (ds.manifest.get("extra", {}).get("audio_descriptors")
                  or ds.manifest.get("generation", {}).get("audio_descriptors")
                  or [f"descriptor_{j}" for j in range(desc.d)])
  log(f"analyze: run {a['run']} (step {step}, d={d_run}, m={m}) on {site_name}: "
      f"{site.num_rows} rows, {P} prompts")
  bcfg = a["browser"]
  null_cols = [desc_names.index(n) for n in ("onset_strength", "rms_db")
               if desc_names and n in desc_names]
  top_n = max(int(a["top_frames"]), 1)
  if (("clap" in lab_cfg["labelers"] or "llm" in lab_cfg["labelers"])
      and site_name.startswith("lm.layer.") and os.path.isdir(os.path.join(ds_path, "audio"))):
    top_n = max(top_n, int(lab_cfg["scan_frames"]))   # example frames for the labelers
  st = stats.feature_stats(site, enc, P, top_n=top_n, descriptors=desc,
                           peak_n=int(bcfg["top_n"]) if bcfg["enabled"] else 0,
                           null_columns=null_cols, null_shifts=int(bcfg["null_shifts"]),
                           progress=_progress(log, f"features {site_name}", bars))

  # --- discovery, selectivity ------------------------------------------------------------
  disc = lab.discover(st, prompts, rate_band=a["rate_band"], max_features=int(a["max_features"]),
                      top_prompts=int(a["top_prompts"]), top_frames=int(a["top_frames"]),
                      rank_by=a["rank_by"], descriptor_names=desc_names,
                      grounding_top=int(a["grounding_top"]))
  listed = {f["id"] for f in disc["features"]}
  has_rows = st.prompt_count > 0
  pm = st.prompt_mean
  sel_out, top_out, heat, label_scores, splits = {}, {}, {}, {}, {}
  audio_src = os.path.join(ds_path, "audio")
  out_dir = os.path.join(workdir, "reports", a["run"])
  os.makedirs(out_dir, exist_ok=True)
  corpus = lab.Counter(w for p in prompts for w in lab.words(p.get("text", "")))
  alpha = float(a["alpha"])
  for key, (values, y) in label_info.items():
    yk = np.where(has_rows, y, -1)
    v = _validate_label(pm, yk, values, a, vocab)
    splits[key] = v["masks"]
    sel, tops = v["heldout"], v["tops"]
    label_scores[key] = {"values": values, "auroc_train": v["train"]["auroc"],
                         "auroc": sel["auroc"], "p_fwer": v["p_fwer"]}
    per_value = {}
    for k, val in enumerate(values):
      feats = []
      for f in tops[val]:
        order = np.argsort(-pm[:, f], kind="stable")[: int(a["top_prompts"])]
        texts = [prompts[p]["text"] for p in order]
        feats.append({"id": f, **_feature_scores(v, k, f, alpha),
                      "heuristic_label": lab.word_label(texts, corpus, P)[0],
                      "top_prompts": [_prompt_entry(prompts[p], float(pm[p, f]), audio_src, out_dir)
                                      for p in order if pm[p, f] > 0]})
      per_value[val] = feats
    sel_out[key] = {"values": values, "counts": [int((yk == k).sum()) for k in range(len(values))],
                    "top_features": tops, "split": v["split"], "null": v["null"], "bh_features": v["bh_features"],
                    "features": {val: [{k2: f[k2] for k2 in _SCORE_KEYS + ("heldout_vocab",) if k2 in f}
                                       for f in fs] for val, fs in per_value.items()}}
    if "vocab" in v:
      sel_out[key]["null_heldout_vocab"] = v["vocab"]["null"]
    top_out[key] = per_value
    best = [fs[0] for fs in per_value.values() if fs]
    log(f"selectivity {key}: chosen on {sum(v['split']['train_counts'])} training prompts, "
        f"scored on {sum(v['split']['heldout_counts'])} held-out; {sum(f['passes'] for f in best)}"
        f" of {len(best)} values' best features pass the best-of-{m} null (alpha {alpha}); "
        f"{sum(map(len, v['bh_features'].values()))} features listed at FDR {alpha} (BH)")
    if "vocab" in v:
      log(f"selectivity {key} on {sum(v['split']['heldout_vocab_counts'])} held-out-vocabulary "
          f"prompts: {sum(f['heldout_vocab']['passes'] for f in best)} of {len(best)} values' "
          f"best features pass")
    rows = sorted({f for val in values for f in tops[val]})
    heat[key] = report.heatmap_png(sel["auroc"][:, rows].T, [f"f{f}" for f in rows], values,
                                   f"{key}: held-out AUROC per feature")
    if "vocab" in v:
      heat[f"{key} ({HELDOUT_VOCAB})"] = report.heatmap_png(
          v["vocab"]["sel"]["auroc"][:, rows].T, [f"f{f}" for f in rows], values,
          f"{key}: held-out-vocabulary AUROC per feature")

  # --- position flags: top frames concentrated at one frame index vs a same-prompt null ----
  listed |= {f["id"] for per in top_out.values() for fs in per.values() for f in fs}
  if bcfg["enabled"]:                     # the browser flags every feature that fires
    listed |= {int(f) for f in np.nonzero(st.fired > 0)[0]}
  pos = validity.position_flags(st, sorted(listed), top_n=int(a["top_frames"]),
                                alpha=float(a["position_alpha"]),
                                window=int(a["position_window"]), seed=int(a["seed"]))
  for e in disc["features"] + [f for per in top_out.values() for fs in per.values() for f in fs]:
    e["flags"] = ["position"] if pos[e["id"]]["position"] else []
    e["position"] = pos[e["id"]]
  for key, per in top_out.items():
    for val, fs in per.items():
      for f, out in zip(fs, sel_out[key]["features"][val]):
        out["flags"] = f["flags"]

  # --- probes and cosine similarity ------------------------------------------------------
  inputs = []
  for s in probe_sites:
    src = ds.site(s)
    x, cnt = stats.prompt_means(src, P, _progress(log, f"pooling {s}", bars))
    inputs.append((s, x, cnt > 0))
  inputs.append((f"sae:{site_name}", pm, has_rows))
  probe_out, sim_out, probe_pngs = {}, {}, {}
  rng = np.random.default_rng(a["seed"])
  for key, (values, y) in label_info.items():
    res, sims = [], []
    for name, x, ok in inputs:
      yk = np.where(ok, y, -1)
      t0 = time.time()
      with progress.heartbeat(f"probe {key} on {name}", log):
        r = probes.cross_validate(x, yk, values, folds=int(a["probe_folds"]),
                                  l2=float(a["probe_l2"]), steps=int(a["probe_steps"]),
                                  shuffles=int(a["probe_shuffles"]), seed=int(a["seed"]),
                                  heldout=vocab)
      r["name"] = name
      res.append(r)
      hv = (f"; held-out vocabulary {r['heldout_vocab']['accuracy']:.3f} on "
            f"{r['heldout_vocab']['n']} prompts" if "heldout_vocab" in r else "")
      log(f"probe {key} on {name}: {r['accuracy']:.3f} ± {r['accuracy_std']:.3f} "
          f"(shuffled {r.get('shuffled_accuracy', float('nan')):.3f}, chance {r['chance']:.3f}"
          f"{hv}) [{time.time() - t0:.1f}s]")
      idx = np.nonzero(yk >= 0)[0]
      if len(idx) > int(a["cosine_max_prompts"]):
        idx = np.sort(rng.choice(idx, int(a["cosine_max_prompts"]), replace=False))
      with progress.heartbeat(f"label cosine {key} on {name}", log):
        for center in (False, True):
          c = lab.label_cosine(x[idx], yk[idx], values, permutations=int(a["cosine_permutations"]),
                               seed=int(a["seed"]), center=center)
          sims.append({"site": name, **c})
    probe_out[key], sim_out[key] = res, sims
    probe_pngs[key] = report.probe_png(res, key)

  # --- write -------------------------------------------------------------------------------
  head = {"format_version": FORMAT_VERSION, "run": a["run"], "step": step,
          "dataset": a["dataset"], "site": site_name, "d": int(d_run), "m": int(m),
          "activation_units": "raw: the exported SAE's latents (training-space = raw x scale)",
          "scale": float(norm.get("scale", 1.0))}
  corr = st.correlations()
  grounding = None
  if corr is not None:
    ids = [f["id"] for f in disc["features"]] or list(np.argsort(-st.rate)[:20])
    grounding = [{"id": int(f), "heuristic_label": next((e["heuristic_label"] for e in
                                                          disc["features"] if e["id"] == f), ""),
                  "acoustic": lab.strongest_correlations(corr[f], desc_names, int(a["grounding_top"]))}
                 for f in ids]
  features = {**head, "num_rows": st.num_rows, "num_prompts": P,
              "density": {"dead": metrics.dead_count(st.fired),
                          "firing_rate_quantiles": {q: float(np.quantile(st.rate, float(q)))
                                                    for q in ("0.1", "0.5", "0.9")}},
              "descriptors": desc_names, **disc}
  selectivity_json = {**head, "labels": sel_out, "export": _export_lists(sel_out)}
  probes_json = {**head, "probes": probe_out, "similarity": sim_out,
                 "settings": {k: a[k] for k in ("probe_folds", "probe_l2", "probe_steps",
                                                "probe_shuffles", "cosine_permutations")}}
  paths = {}
  for name, obj in (("features", features), ("selectivity", selectivity_json), ("probes", probes_json)):
    paths[name] = os.path.join(out_dir, f"{name}.json")
    files.write_json(paths[name], obj, default=_jsonable)
  browser_link = None
  if bcfg["enabled"]:
    steer_path = os.path.join(out_dir, "steer.json")
    steer = json.load(open(steer_path)) if os.path.exists(steer_path) else None
    b = browser.build(out_dir, st=st, source=site, encoder=enc, prompts=prompts,
                      audio_src=audio_src if site_name.startswith("lm.layer.") else None,
                      frame_rate=float(ds.manifest.get("model", {}).get(
                          "frame_rate", 50.0)), W_dec=np.asarray(params["W_dec"]), cfg=bcfg,
                      label_scores=label_scores, descriptor_names=desc_names, position=pos,
                      dense_threshold=float(run_cfg.get("train", {}).get("dense_threshold", 0.1)),
                      info={"run": a["run"], "step": step, "site": site_name, "m": int(m),
                            "rows": st.num_rows, "prompts": P}, steer=steer, log=log)
    paths["browser"] = b["index"]
    browser_link = os.path.relpath(b["index"], out_dir)
  req = labelers.write_request(out_dir, st, disc["features"], lab_cfg, site=site_name,
                               frame_rate=ds.manifest.get("model", {}).get("frame_rate"),
                               dataset_path=ds_path,
                               descriptors=(desc, desc_names) if desc is not None else None)
  if req:
    paths["label_examples"] = req
  tr_png = os.path.join(workdir, "runs", a["run"], "training_curves.png")
  training = report.png_file(tr_png) if os.path.exists(tr_png) else _training_from_metrics(
      os.path.join(workdir, "runs", a["run"], "metrics.jsonl"))
  html_text = report.render({
      "summary": {"run": a["run"], "checkpoint step": step, "dataset": a["dataset"],
                  "model": model_line(ds.manifest.get("model") or {}),
                  "site": site_name, "SAE": f"{run_cfg.get('sae', {}).get('architecture')} d={d_run} m={m}",
                  "rows": st.num_rows, "prompts": P, "labels": ", ".join(label_info),
                  "dead features (never fire on these rows)": features["density"]["dead"]},
      "training_png": training, "density_png": report.density_png(st.rate),
      "rate_band": list(a["rate_band"]), "heatmaps": heat, "probes": probe_out,
      "probe_pngs": probe_pngs, "similarity": sim_out, "top_features": top_out,
      "nulls": {k: {**v["null"], "bh_features": v["bh_features"]} for k, v in sel_out.items()},
      "discovery": disc, "grounding": grounding, "sweep": _sweep_of(workdir, a["run"]),
      "browser": browser_link})
  paths["report"] = os.path.join(out_dir, "report.html")
  if os.path.exists(paths["report"]):   # keep what other launchers spliced in (steering, ...)
    with open(paths["report"]) as f:
      html_text = report.carry_sections(f.read(), html_text)
  report.write_page(paths["report"], html_text)
  raw = {name: (x, ok) for name, x, ok in inputs}
  rand = layers.random_direction_features(raw[site_name][0], {   # the features' own split
      k: (v, np.where(has_rows, y, -1)) for k, (v, y) in label_info.items()},
      m, a, splits=splits) if site_name in raw else None
  tab = layers.table(probe_out, layers.sae_best_features(sel_out), dataset=a["dataset"],
                     run=a["run"], settings=probes_json["settings"], random_directions=rand)
  if tab["label_keys"]:                   # concepts across lm.layer.* sites (+ the SAE)
    paths.update(layers.write(tab, out_dir))
  return paths


_SCORE_KEYS = ("id", "auroc", "auroc_train", "selectivity", "mean_in", "mean_out", "p_raw",
               "p_fwer", "q_bh", "passes")


def _validate_label(pm: np.ndarray, yk: np.ndarray, values: list[str], a: dict,
                    vocab: np.ndarray | None = None) -> dict:
  """Select on training prompts, score on held-out prompts, with the max-statistic null.

  pm: [P, m] per-prompt means; yk: [P] label ids (-1: unlabelled or no rows); vocab: [P]
  held-out-vocabulary prompts. These take no part in the random split or the selection;
  they are scored apart (`vocab`: selectivity, null, p_fwer) when they carry the label.
  """
  vocab = np.zeros(len(yk), bool) if vocab is None else np.asarray(vocab, bool)
  masks = validity.feature_split(yk, vocab, float(a["heldout_fraction"]), int(a["seed"]))
  yv = np.where(masks["heldout_vocab"], yk, -1)
  yk = np.where(vocab, -1, yk)
  train, held = masks["train"], masks["heldout"]
  sel_tr = lab.selectivity(pm[train], yk[train], values)
  tops = lab.top_features_per_label(sel_tr, int(a["top_per_label"]))
  sel_ho = lab.selectivity(pm[held], yk[held], values)
  null = validity.auroc_null(pm[held], yk[held], len(values),
                             permutations=int(a["null_permutations"]), seed=int(a["seed"]))
  q = validity.bh_qvalues(null["p_raw"])
  alpha = float(a["alpha"])
  bh = {}
  for k, val in enumerate(values):
    ok = np.nonzero((q[k] <= alpha) & (sel_ho["mean_in"][k] > sel_ho["mean_out"][k]))[0]
    bh[val] = [int(f) for f in ok[np.lexsort((-sel_ho["auroc"][k, ok], q[k, ok]))]]
  nm = null["null_max"]
  null_info = {"permutations": null["permutations"], "alpha": alpha,
               "max_auroc_threshold": {val: float(np.quantile(nm[:, k], 1 - alpha))
                                       for k, val in enumerate(values)},
               "max_auroc_median": {val: float(np.median(nm[:, k])) for k, val in enumerate(values)}}
  split = {"heldout_fraction": float(a["heldout_fraction"]), "seed": int(a["seed"]),
           "train_counts": sel_tr["counts"], "heldout_counts": sel_ho["counts"],
           **validity.split_prompts(masks)}
  out = {"masks": masks, "train": sel_tr, "heldout": sel_ho, "tops": tops, "null": null_info, "split": split,
         "p_raw": null["p_raw"], "p_fwer": null["p_fwer"], "q_bh": q, "bh_features": bh}
  if len(np.unique(yv[yv >= 0])) >= 2:
    on = yv >= 0
    sel_v = lab.selectivity(pm[on], yv[on], values)
    null_v = validity.auroc_null(pm[on], yv[on], len(values),
                                 permutations=int(a["null_permutations"]), seed=int(a["seed"]))
    nv = null_v["null_max"]
    split["heldout_vocab_counts"] = sel_v["counts"]
    out["vocab"] = {"sel": sel_v, "p_fwer": null_v["p_fwer"], "null": {
        "permutations": null_v["permutations"], "alpha": alpha,
        "max_auroc_threshold": {val: float(np.quantile(nv[:, k], 1 - alpha))
                                for k, val in enumerate(values)}}}
  return out


def _feature_scores(v: dict, k: int, f: int, alpha: float) -> dict:
  """Held-out scores of feature f for value k (selected on training prompts), and on the
  held-out-vocabulary prompts when there are some."""
  ho = v["heldout"]
  vocab = {}
  if "vocab" in v:
    sv = v["vocab"]["sel"]
    vocab["heldout_vocab"] = {
        "auroc": float(sv["auroc"][k, f]), "selectivity": float(sv["selectivity"][k, f]),
        "mean_in": float(sv["mean_in"][k, f]), "mean_out": float(sv["mean_out"][k, f]),
        "p_fwer": float(v["vocab"]["p_fwer"][k, f]),
        "passes": bool(v["vocab"]["p_fwer"][k, f] <= alpha
                       and sv["mean_in"][k, f] > sv["mean_out"][k, f])}
  return {"auroc": float(ho["auroc"][k, f]), "auroc_train": float(v["train"]["auroc"][k, f]),
          "selectivity": float(ho["selectivity"][k, f]), "mean_in": float(ho["mean_in"][k, f]),
          "mean_out": float(ho["mean_out"][k, f]), "p_raw": float(v["p_raw"][k, f]),
          "p_fwer": float(v["p_fwer"][k, f]), "q_bh": float(v["q_bh"][k, f]),
          "passes": bool(v["p_fwer"][k, f] <= alpha and ho["mean_in"][k, f] > ho["mean_out"][k, f]),
          **vocab}


def _prompt_entry(p: dict, value: float, audio_src: str, out_dir: str) -> dict:
  """A prompt for the report; copies its wav (if extracted) to reports/<run>/audio/."""
  e = {"prompt_id": p["prompt_id"], "text": p.get("text", ""), "labels": p.get("labels") or {},
       "mean": value}
  name = f"{int(p['prompt_id']):06d}.wav"
  src = os.path.join(audio_src, name)
  if os.path.exists(src):
    os.makedirs(os.path.join(out_dir, "audio"), exist_ok=True)
    dst = os.path.join(out_dir, "audio", name)
    if not os.path.exists(dst):
      shutil.copyfile(src, dst)
    e["audio"] = f"audio/{name}"
  return e


def _export_lists(sel_out: dict) -> dict:
  """Per label key: flat (feature_ids, labels, passes) of each value's best feature."""
  out = {}
  for key, s in sel_out.items():
    ids, names, passes = [], [], []
    for v, fs in s["features"].items():
      if fs:
        ids.append(fs[0]["id"])
        names.append(f"{key}={v}")
        passes.append(fs[0]["passes"])
    out[key] = {"feature_ids": ids, "labels": names, "passes": passes}
  return out


def _sweep_of(workdir: str, run: str) -> dict | None:
  """{'record': sweep.json, 'member': name} when runs/<run> is a member of a sweep."""
  from musicsae_jax import sweep
  record = sweep.read_sweep(workdir, run)
  return {"record": record, "member": run.rsplit("/", 1)[-1]} if record else None


def _training_from_metrics(path: str) -> str | None:
  if not os.path.exists(path):
    return None
  import tempfile
  from musicsae_jax import plots
  with tempfile.TemporaryDirectory() as tmp:
    p = os.path.join(tmp, "t.png")
    plots.plot_training(plots.read_metrics(path), p)
    return report.png_file(p)


def _jsonable(o):
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(f"not JSON serialisable: {type(o)}")


def seed_stability(workdir: str, run: str, other: str, *, threshold: float = 0.7,
                   method: str = "auto", step=None, other_step=None) -> dict:
  """Match the decoder rows of runs/<run> and runs/<other> (e.g. two seeds) one to one by
  cosine; writes reports/<run>/stability.json and the report's seed-stability section.
  fraction_matched: share of <run>'s features whose partner has cosine >= threshold."""
  _, _, pa, sa = load_run(workdir, run, step)
  _, _, pb, sb = load_run(workdir, other, other_step)
  r = validity.match_decoders(np.asarray(pa["W_dec"]), np.asarray(pb["W_dec"]), method=method,
                              threshold=threshold)
  cos = r["cosine"]
  out = {"format_version": FORMAT_VERSION, "run": run, "step": sa, "other": other,
         "other_step": sb, "method": r["method"], "threshold": r["threshold"],
         "fraction_matched": r["fraction_matched"], "median_cosine": r["median_cosine"],
         "cosine_quantiles": {q: float(np.nanquantile(cos, float(q))) for q in ("0.1", "0.5", "0.9")},
         "fraction_nearest": float(np.mean(r["best_cosine"] >= r["threshold"])),
         "match": r["b_of_a"], "cosine": cos, "best_cosine": r["best_cosine"]}
  out_dir = os.path.join(workdir, "reports", run)
  os.makedirs(out_dir, exist_ok=True)
  out["path"] = os.path.join(out_dir, "stability.json")
  files.write_json(out["path"], out, indent=1, default=_jsonable)
  out["report"] = report.update_stability(out_dir)
  return out


def selected_features(selectivity_path: str, label_key: str, per_value: int = 1, *,
                      allow_failing: bool = False, warn: Callable[[str], None] | None = None):
  """(feature_ids, labels) from selectivity.json: the best `per_value` features per value.

  Features were selected on training prompts; each must pass the held-out max-statistic
  null (`passes`), else an AnalysisError names the label, unless `allow_failing`, when
  `warn` gets one line per failing feature. Feed the result to
  `export.export_run(workdir, run, feature_ids=ids, labels=labels)`.
  """
  with open(selectivity_path) as f:
    sel = json.load(f)
  if label_key not in sel["labels"]:
    raise AnalysisError(f"{selectivity_path} has no label {label_key!r}; has {sorted(sel['labels'])}")
  entry = sel["labels"][label_key]
  if "null" not in entry and not allow_failing:
    raise AnalysisError(f"{selectivity_path} predates held-out validation (no p-values): rerun "
                        f"launch.analyze, or pass --allow_failing=1")
  alpha = entry.get("null", {}).get("alpha")
  ids, names = [], []
  for v, fs in entry["features"].items():
    for f in fs[:per_value]:
      if not f.get("passes", False):
        msg = (f"{label_key}={v}: feature {f['id']} does not pass the held-out null "
               f"(held-out AUROC {f['auroc']:.3f}, family-wise p {f.get('p_fwer', float('nan')):.3g}"
               f" > alpha {alpha})")
        if not allow_failing:
          raise AnalysisError(msg + "; pass --allow_failing=1 to export it anyway")
        if warn:
          warn("WARNING: " + msg + "; exported anyway (--allow_failing=1)")
      ids.append(int(f["id"]))
      names.append(f"{label_key}={v}")
  return ids, names
