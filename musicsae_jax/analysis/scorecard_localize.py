"""Which layer carries which concept, by three methods, and whether they agree (organism
scorecard).

Per label and per `lm.layer.<i>` site of the store:
  - probe:    linear-probe accuracy − shuffled-label control (probes_by_layer.json);
  - patching: mean fraction of the way block i's self-attention output moves clip B's
              next-token distribution toward clip A's, A and B differing in the label
              (patching.json of `launch.localize --what=patching` with audio pairs and
              `patch_sites` naming attn; the whole-residual rows are 1 by construction
              with no text and are not used);
  - sae:      the mean over the label's values of the best SAE feature's held-out AUROC
              (ground_truth: selected on training prompts, max-null), one SAE per layer
              (`<run>-l<i>`, trained by `train_layer_saes`; the run's own site uses <run>),
              averaged over `analysis.layer_sae_seeds` SAEs per layer that differ only in
              their init seed (`<...>-s<j>` for j >= 1).
The best layer per label and method, and per pair of methods the Spearman correlation of
their layer scores per label (mean over labels; nan where a method is flat) and how often
their best layers coincide. A best layer is `clear` when it beats the runner-up by more than
twice its standard error (probe: fold std / sqrt(folds); patching: over pairs; SAE: the
std across init seeds / sqrt(seeds), None with one seed).
"""
from __future__ import annotations

import copy
import html
import json
import os

import numpy as np
from scipy import stats as sstats

from musicsae_jax.analysis import ground_truth, layers, report
from musicsae_jax.analysis.stats import AnalysisError

METHODS = ("probe", "patching", "sae")
SECTION = "scorecard-localization"


def layer_run(run: str, site: str, train_site: str, seed_index: int = 0) -> str:
  """The run of site's SAE: the chain's own run on its site, `<run>-l<i>` elsewhere; the
  SAEs of further init seeds add `-s<j>`."""
  base = run if site == train_site else f"{run}-l{site.rsplit('.', 1)[1]}"
  return base if seed_index == 0 else f"{base}-s{seed_index}"


def _seeds(config) -> int:
  n = int(config.analysis.get("layer_sae_seeds", 1))
  if n < 1:
    raise AnalysisError(f"analysis.layer_sae_seeds={n}: expected >= 1 SAEs per layer")
  return n


def train_layer_saes(config, workdir: str, *, log=print) -> dict[str, list[str]]:
  """Train (or resume) `analysis.layer_sae_seeds` SAEs per `lm.layer.<i>` site of
  extract.sites, with the chain's SAE settings and init seeds train.seed + j; the chain's
  own run is seed 0 of its site. Returns {site: [run of each seed]}."""
  from musicsae_jax import train
  sites = layers.layer_sites(config.extract.sites)
  if not sites:
    raise AnalysisError(f"extract.sites={tuple(config.extract.sites)}: no lm.layer.<i> site")
  out = {}
  for site in sites:
    out[site] = []
    for j in range(_seeds(config)):
      run = layer_run(config.run, site, config.train.site, j)
      out[site].append(run)
      if run == config.run:
        continue
      c = copy.deepcopy(config)
      c.run = run
      c.train.site = site
      c.train.seed = int(config.train.seed) + j
      log(f"layer SAE: {site} seed {c.train.seed} -> runs/{run}")
      train.train_and_evaluate(c, workdir)
  return out


def sae_means(config, workdir: str, a: dict, *, log=print) -> dict:
  """{"prompts", "has_rows", "sites": {site: {"run", "pm" [P, m], "seeds": [{"run", "pm"}]}}}
  for every layer site of the store whose seed-0 SAE run exists ("seeds": every seed's run
  that exists, seed 0 first)."""
  from musicsae_jax import store as store_lib
  from musicsae_jax.analysis import pipeline, stats
  ds_path = os.path.join(workdir, "activations", a["dataset"])
  if not store_lib.exists(ds_path):
    raise AnalysisError(f"{ds_path}: no activation dataset {a['dataset']!r} (run launch.extract)")
  ds = store_lib.open_dataset(ds_path)
  P = len(ds.prompts)
  train_site = config.train.site
  out, has_rows = {}, None
  n_seeds = _seeds(config)
  for site in layers.layer_sites(ds.sites):
    seeds = []
    for j in range(n_seeds):
      run = layer_run(a["run"], site, train_site, j)
      if not os.path.exists(os.path.join(workdir, "runs", run, "config.json")):
        log(f"localization: no SAE run {run!r} for {site} (launch.layer_saes trains it); "
            + ("left out" if j == 0 else "its seed left out"))
        if j == 0:
          break
        continue
      run_cfg, norm, params, _ = pipeline.load_run(workdir, run, a["step"])
      enc = stats.Encoder(stats.sae_from_params(params, run_cfg.get("sae")),
                          float(norm.get("scale", 1.0)), int(a["batch_rows"]))
      st = stats.feature_stats(ds.site(site), enc, P, top_n=1)
      has_rows = st.prompt_count > 0
      seeds.append({"run": run, "pm": st.prompt_mean})
    if seeds:
      out[site] = {"run": seeds[0]["run"], "pm": seeds[0]["pm"], "seeds": seeds}
  return {"prompts": ds.prompts, "has_rows": has_rows, "sites": out,
          "all_sites": layers.layer_sites(ds.sites)}


def sae_scores(means: dict, label_keys, a: dict) -> dict:
  """{label: {site: {"score": mean over seeds of the mean best held-out AUROC, "se" (std
  across seeds / sqrt(seeds); None with one), "by_seed", "runs", and seed 0's "passing",
  "values"}}}."""
  out = {}
  for site, d in means["sites"].items():
    per_seed = [ground_truth.score({"sae": s["pm"]}, means["prompts"], label_keys, a,
                                   has_rows=means["has_rows"])["per_label"]
                for s in d["seeds"]]
    for key, pl in per_seed[0].items():
      by_seed = [float(p[key]["sae"]["mean_best_auroc"]) for p in per_seed]
      se = (float(np.std(by_seed, ddof=1) / np.sqrt(len(by_seed))) if len(by_seed) > 1
            else None)
      out.setdefault(key, {})[site] = {
          "score": float(np.mean(by_seed)), "se": se, "by_seed": by_seed,
          "passing": pl["sae"]["passing"], "values": pl["sae"]["values"], "run": d["run"],
          "runs": [s["run"] for s in d["seeds"]]}
  return out


def probe_scores(probes_by_layer: dict) -> dict:
  """{label: {site: {"score": accuracy − shuffled, "accuracy", "se"}}} from
  probes_by_layer.json; se: the fold standard deviation / sqrt(folds)."""
  folds = int((probes_by_layer.get("settings") or {}).get("probe_folds", 5))
  return {key: {r["site"]: {"score": r["gap"], "accuracy": r["accuracy"],
                            "se": float(r["accuracy_std"]) / np.sqrt(folds)} for r in t["layers"]}
          for key, t in probes_by_layer["table"].items()}


def patching_scores(patching: dict) -> dict:
  """{label: {lm.layer.<i>: {"score": mean moved by block i's self-attention, "pairs"}}}."""
  out = {}
  for concept, d in patching.get("per_concept", {}).items():
    if not concept.startswith("audio:"):
      continue
    key = concept.split(":", 1)[1].split(":", 1)[0]
    for site, moved in d["moved"].items():
      if not site.endswith(".attn"):
        continue
      m = np.array([np.nan if x is None else x for x in moved], float)
      ok = np.isfinite(m)
      out.setdefault(key, {})[site[: -len(".attn")]] = {
          "score": float(m[ok].mean()) if ok.any() else None, "pairs": int(ok.sum()),
          "se": float(m[ok].std(ddof=1) / np.sqrt(ok.sum())) if ok.sum() > 1 else None}
  return out


def _vector(d: dict, sites: list[str]) -> np.ndarray:
  return np.array([np.nan if (d.get(s) or {}).get("score") is None else d[s]["score"]
                   for s in sites], float)


def compare(scores: dict[str, dict], label_keys, sites: list[str]) -> dict:
  """Best layer per label and method; per method pair, Spearman across layers and best-layer
  agreement, per label and averaged over labels."""
  table, pairs = {}, {}
  for key in label_keys:
    row = {}
    for meth, sc in scores.items():
      v = _vector(sc.get(key, {}), sites)
      ok = np.isfinite(v)
      best = int(np.nanargmax(v)) if ok.any() and np.ptp(v[ok]) > 0 else None   # flat: no best
      row[meth] = {"scores": [None if not np.isfinite(x) else float(x) for x in v],
                   "best_site": None if best is None else sites[best]}
      if best is not None and ok.sum() > 1:
        margin = float(v[best] - np.sort(v[ok])[-2])
        se = (sc.get(key, {}).get(sites[best]) or {}).get("se")
        row[meth].update(margin=margin, se=se,      # clear: best beats the runner-up by > 2 se
                         clear=None if se is None else bool(margin > 2 * se))
    table[key] = row
  meths = list(scores)
  for i, m1 in enumerate(meths):
    for m2 in meths[i + 1:]:
      rho, same = {}, {}
      for key in label_keys:
        a_, b_ = _vector(scores[m1].get(key, {}), sites), _vector(scores[m2].get(key, {}), sites)
        ok = np.isfinite(a_) & np.isfinite(b_)
        r = np.nan
        if ok.sum() >= 3 and np.ptp(a_[ok]) > 0 and np.ptp(b_[ok]) > 0:
          r = float(sstats.spearmanr(a_[ok], b_[ok]).statistic)
        rho[key] = None if not np.isfinite(r) else r
        b1, b2 = table[key][m1]["best_site"], table[key][m2]["best_site"]
        same[key] = None if b1 is None or b2 is None else bool(b1 == b2)
      vals = [r for r in rho.values() if r is not None]
      sm = [s for s in same.values() if s is not None]
      pairs[f"{m1}~{m2}"] = {"spearman": rho, "mean_spearman": float(np.mean(vals)) if vals else None,
                             "same_best": same, "same_best_fraction": float(np.mean(sm)) if sm else None,
                             "labels": len(sm)}
  return {"table": table, "agreement": pairs}


def build(config, workdir: str, a: dict, means: dict, *, log=print) -> dict:
  """The localization block of scorecard.json (the methods whose inputs exist)."""
  out_dir = os.path.join(workdir, "reports", a["run"])
  sites = means["all_sites"]
  scores, notes = {}, {}
  path = os.path.join(out_dir, layers.FILE)
  if os.path.exists(path):
    with open(path) as f:
      scores["probe"] = probe_scores(json.load(f))
  else:
    notes["probe"] = f"{path} missing (launch.probe_layers writes it)"
  path = os.path.join(out_dir, "patching.json")
  pat = None
  if os.path.exists(path):
    with open(path) as f:
      pat = json.load(f)
    scores["patching"] = patching_scores(pat)
    if not scores["patching"]:
      notes["patching"] = f"{path} has no audio-pair self-attention rows (patch_sites=attn)"
      scores.pop("patching")
  else:
    notes["patching"] = f"{path} missing (launch.localize --what=patching with audio pairs)"
  keys = list(scores.get("probe", {})) or layers.label_keys_of(means["prompts"])
  scores["sae"] = sae_scores(means, keys, a) if means["sites"] else {}
  if not means["sites"]:
    notes["sae"] = "no SAE run on any layer"
  res = compare(scores, keys, sites)
  res.update(sites=sites, methods=list(scores), missing=notes, scores=scores,
             sae_runs={s: d["run"] for s, d in means["sites"].items()},
             patching_setup=({k: pat.get(k) for k in ("pairs", "steps", "measure", "half", "cfg_coef")}
                             if pat else None))
  log("localization: best layer per label: " + "; ".join(
      f"{k} " + "/".join(f"{m}={(r[m]['best_site'] or '-').replace('lm.layer.', 'L')}" for m in r)
      for k, r in res["table"].items()))
  for pair, d in res["agreement"].items():
    log(f"localization: {pair}: mean Spearman {_f(d['mean_spearman'])}, same best layer for "
        f"{_same_best(d)}")
  return res


def _same_best(d: dict) -> str:
  """'3 of 8 labels': how many labels (with a best layer for both methods) share it."""
  return f"{sum(v is True for v in d['same_best'].values())} of {d['labels']} labels"


# --- report --------------------------------------------------------------------------------

_TITLES = {"probe": "probe accuracy − shuffled", "patching": "patching: moved by block's attn",
           "sae": "SAE: mean best held-out AUROC"}


def heatmaps_png(loc: dict) -> str:
  """Label x layer heatmaps side by side, one per method, each row's best layer boxed."""
  plt = report.plots.pyplot()
  keys, sites, meths = list(loc["table"]), loc["sites"], loc["methods"]
  fig, axes = plt.subplots(1, len(meths), figsize=(2.2 + 2.6 * len(meths), 1.4 + 0.4 * len(keys)),
                           squeeze=False)
  for ax, m in zip(axes[0], meths):
    M = np.array([[np.nan if x is None else x for x in loc["table"][k][m]["scores"]] for k in keys])
    im = ax.imshow(M, cmap="viridis", aspect="auto")
    for i in range(len(keys)):
      for j in range(len(sites)):
        if np.isfinite(M[i, j]):
          ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=6, color="w")
      b = loc["table"][keys[i]][m]["best_site"]
      if b is not None:
        ax.add_patch(plt.Rectangle((sites.index(b) - 0.5, i - 0.5), 1, 1, fill=False, ec="r", lw=1.5))
    ax.set_xticks(range(len(sites)), [s.replace("lm.layer.", "L") for s in sites], fontsize=7)
    ax.set_yticks(range(len(keys)), keys if ax is axes[0][0] else [""] * len(keys), fontsize=7)
    ax.set_title(_TITLES[m], fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.05)
  fig.tight_layout()
  return report._png(fig)   # pylint: disable=protected-access


def _f(x) -> str:
  return "–" if x is None else f"{x:.2f}"


def section(loc: dict) -> str:
  meths = loc["methods"]
  head = "<tr><th>label</th>" + "".join(f"<th>best layer: {m}</th>" for m in meths) + "</tr>"
  body = "".join(
      f"<tr><td>{html.escape(k)}</td>" + "".join(
          f"<td>{html.escape((r[m]['best_site'] or '–').replace('lm.layer.', 'L'))}"
          f"{'' if r[m].get('clear') is not False else ' (within 2 se)'}</td>"
          for m in meths) + "</tr>" for k, r in loc["table"].items())
  agr = "".join(f"<li>{html.escape(p)}: mean Spearman across layers {_f(d['mean_spearman'])}, "
                f"same best layer for {_same_best(d)}</li>"
                for p, d in loc["agreement"].items())
  miss = "".join(f"<li>{html.escape(m)}: {html.escape(w)}</li>" for m, w in loc["missing"].items())
  note = ("Per label and layer: probe accuracy − shuffled control (probes_by_layer.json); "
          "patching: the fraction of the way block i's self-attention output moves clip B's "
          "next-token distribution toward clip A's, A and B one label apart (patching.json); "
          "SAE: the mean over the label's values of the best feature's held-out AUROC, "
          "averaged over SAEs per layer that differ only in their init seed (se across "
          "them). Red boxes: each row's best layer; '(within 2 se)': the best layer beats "
          "the runner-up by less than twice its standard error.")
  return report._section(SECTION, "Organism scorecard: where does each concept live?", note,  # pylint: disable=protected-access
                         report.img(heatmaps_png(loc), "label x layer per method")
                         + f"<table>{head}{body}</table><ul>{agr}</ul>"
                         + (f"<p>Left out:</p><ul>{miss}</ul>" if miss else ""))
