"""Ground-truth feature scores on a store whose prompts carry exact labels (the concept set
captured from the model organism, or any labelled store).

For every label value: the best unit of each family, chosen on training prompts and scored
on held-out prompts, with the max-statistic permutation null of `validity` (the same
selection and null as selectivity.json: `pipeline._validate_label`). Families:
  - `sae`:     the SAE's latents (per-prompt means) on its site,
  - `neurons`: the raw site's coordinates, both signs (a neuron may track a value by falling),
  - `random`:  as many random unit directions of the raw site as the SAE has latents.
A value "has a feature" when its best unit passes the null (family-wise p <= alpha and more
active in the value). The summary counts those per family and averages the best held-out
AUROC, so "SAE features find the planted concepts" is one comparison against both controls.
"""
from __future__ import annotations

import os

import numpy as np

from musicsae_jax.analysis import labels as lab
from musicsae_jax.analysis.stats import AnalysisError

FAMILIES = ("sae", "neurons", "random")


def families(x_site: np.ndarray, sae_pm: np.ndarray | None, *, seed: int = 0,
             random_m: int | None = None) -> dict[str, np.ndarray]:
  """{family: [P, units]} per-prompt values: SAE latents, ±neurons, random projections."""
  x = np.asarray(x_site, np.float64)
  out = {}
  if sae_pm is not None:
    out["sae"] = np.asarray(sae_pm, np.float64)
  out["neurons"] = np.concatenate([x, -x], 1)
  m = int(random_m or (sae_pm.shape[1] if sae_pm is not None else x.shape[1]))
  R = np.random.default_rng([int(seed), 0x6A7]).normal(size=(x.shape[1], m))
  out["random"] = x @ (R / np.linalg.norm(R, axis=0))
  return out


def score(fams: dict[str, np.ndarray], prompts: list[dict], label_keys, a: dict,
          has_rows: np.ndarray | None = None) -> dict:
  """{"labels": {key: {value: {family: {id, auroc, auroc_train, p_fwer, passes}}}},
  "summary": {family: {values, passing, passing_fraction, mean_best_auroc}}}.

  a: the resolved analysis settings (heldout_fraction, seed, alpha, null_permutations,
  top_per_label). Labels lacking two values are skipped (listed under "skipped").
  """
  from musicsae_jax.analysis import pipeline
  P = len(prompts)
  ok = np.ones(P, bool) if has_rows is None else np.asarray(has_rows, bool)
  alpha = float(a["alpha"])
  out, skipped = {}, {}
  for key in label_keys:
    try:
      values, y = lab.label_vector(prompts, key)
    except AnalysisError as e:
      skipped[key] = str(e)
      continue
    y = np.where(ok, y, -1)
    if len(np.unique(y[y >= 0])) < 2:
      skipped[key] = "fewer than two values with rows"
      continue
    per_value = {v: {} for v in values}
    for fam, x in fams.items():
      if x.shape[0] != P:
        raise AnalysisError(f"ground_truth: family {fam!r} has {x.shape[0]} rows for {P} prompts")
      v = pipeline._validate_label(x, y, values, a)   # pylint: disable=protected-access
      for k, val in enumerate(values):
        tops = v["tops"][val]
        if not tops:
          continue
        f = int(tops[0])
        s = pipeline._feature_scores(v, k, f, alpha)  # pylint: disable=protected-access
        per_value[val][fam] = {"id": f, "auroc": s["auroc"], "auroc_train": s["auroc_train"],
                               "p_fwer": s["p_fwer"], "passes": s["passes"],
                               "null_threshold": v["null"]["max_auroc_threshold"][val]}
    out[key] = per_value
  summary = {}
  for fam in fams:
    best = [d[fam] for vals in out.values() for d in vals.values() if fam in d]
    summary[fam] = {"values": len(best), "passing": int(sum(b["passes"] for b in best)),
                    "passing_fraction": float(np.mean([b["passes"] for b in best])) if best else 0.0,
                    "mean_best_auroc": float(np.mean([b["auroc"] for b in best])) if best else float("nan")}
  per_label = {key: {fam: {"passing": int(sum(d[fam]["passes"] for d in vals.values() if fam in d)),
                           "values": int(sum(fam in d for d in vals.values())),
                           "mean_best_auroc": float(np.mean([d[fam]["auroc"] for d in vals.values()
                                                             if fam in d] or [np.nan]))}
                     for fam in fams}
               for key, vals in out.items()}
  return {"labels": out, "per_label": per_label, "summary": summary, "skipped": skipped,
          "settings": {k: a[k] for k in ("heldout_fraction", "seed", "alpha", "null_permutations")}}


def score_store(config, workdir: str, *, run: str | None = None, label_keys=(),
                log=print) -> dict:
  """Open config.dataset's store and runs/<run>'s SAE and score every label (or label_keys)."""
  from musicsae_jax import store as store_lib
  from musicsae_jax.analysis import layers, pipeline, stats
  a = pipeline.resolve(config)
  ds_path = os.path.join(workdir, "activations", a["dataset"])
  if not store_lib.exists(ds_path):
    raise AnalysisError(f"{ds_path}: no activation dataset {a['dataset']!r} (run launch.extract)")
  ds = store_lib.open_dataset(ds_path)
  run = a["run"] if run is None else run
  if not os.path.exists(os.path.join(workdir, "runs", run, "config.json")):
    raise AnalysisError(f"{os.path.join(workdir, 'runs', run)}: no trained run (run launch.train)")
  run_cfg, norm, params, step = pipeline.load_run(workdir, run, a["step"])
  site = a["site"] or run_cfg.get("train", {}).get("site")
  if site not in ds.sites:
    raise AnalysisError(f"run {run!r} was trained on {site!r}, not in {ds_path} "
                        f"(sites: {sorted(ds.sites)})")
  P = len(ds.prompts)
  enc = stats.Encoder(stats.sae_from_params(params, run_cfg.get("sae")),
                      float(norm.get("scale", 1.0)), int(a["batch_rows"]))
  st = stats.feature_stats(ds.site(site), enc, P, top_n=1)
  x_site, cnt = stats.prompt_means(ds.site(site), P)
  keys = list(label_keys) or list(a["label_keys"]) or layers.label_keys_of(ds.prompts)
  log(f"ground truth: {P} prompts, site {site}, SAE {run} step {step} "
      f"({st.prompt_mean.shape[1]} latents), labels {', '.join(keys)}")
  fams = families(x_site, st.prompt_mean, seed=int(a["seed"]))
  res = score(fams, ds.prompts, keys, a, has_rows=cnt > 0)
  res.update(site=site, run=run, step=int(step), prompts=P, dataset=a["dataset"],
             units={f: int(x.shape[1]) for f, x in fams.items()})
  return res
