"""Concepts across layers (SynTheory-style): for every label key and every `lm.layer.*`
site, a k-fold linear probe on per-prompt means with its shuffled-label control, and the
best SAE features where a trained run exists; `probes_by_layer.json` plus a heatmap
section (`layers`) in report.html.

Two ways in: `table(...)` reorganises the probe results `pipeline.analyze` already computed
(no extra work), and `probe_store(...)` probes any store whose prompts.jsonl carries labels,
with or without a run (`python -m launch.probe_layers`, musicsae_jax/analysis/layer_probes.py). Labels with K > 2 values get
multinomial probes (probes.cross_validate); chance is 1/K, and the control shuffles labels
across prompts, so `gap` = accuracy − shuffled accuracy is the evidence a layer carries
the concept linearly.
"""
from __future__ import annotations

import html
import os
from typing import Callable

import numpy as np

from musicsae_jax import files
from musicsae_jax.analysis import labels as lab, probes, report, stats
from musicsae_jax.analysis.stats import AnalysisError

FORMAT_VERSION = 1
SECTION = "layers"
FILE = "probes_by_layer.json"


def is_layer(site: str) -> bool:
  return site.startswith("lm.layer.") and site.rsplit(".", 1)[1].isdigit()


def layer_sites(sites) -> list[str]:
  """The store's `lm.layer.<i>` sites (not `.uncond`) in layer order."""
  return sorted((s for s in sites if is_layer(s)), key=lambda s: int(s.rsplit(".", 1)[1]))


def label_keys_of(prompts: list[dict]) -> list[str]:
  """Every label key some prompt carries, in first-seen order."""
  seen = {}
  for p in prompts:
    for k in p.get("labels") or {}:
      seen.setdefault(k, None)
  return list(seen)


def usable(prompts: list[dict], key: str, folds: int) -> tuple[list[str], np.ndarray, str | None]:
  """(values, y, reason it cannot be probed or None): needs >= 2 values, >= folds each."""
  values, y = lab.label_vector(prompts, key)
  if len(values) < 2:
    return values, y, f"one value only ({values[0]!r})"
  counts = np.bincount(y[y >= 0], minlength=len(values))
  if counts.max() == 1:
    return values, y, f"a different value for each of its {len(values)} prompts (an identifier)"
  if counts.min() < folds:
    small = [f"{v} ({c})" for v, c in zip(values, counts) if c < folds]
    more = f", … ({len(small)} values)" if len(small) > 5 else ""
    return values, y, f"fewer than {folds} prompts for {', '.join(small[:5])}{more}"
  return values, y, None


def table(probe_results: dict, sae_features: dict | None = None, *, dataset: str = "",
          run: str | None = None, settings: dict | None = None, skipped: dict | None = None,
          random_directions: dict | None = None) -> dict:
  """probes_by_layer.json from per-key probe results (`probes.json["probes"]` layout: one
  entry per input, `name` = site or `sae:<site>`), optional best SAE features per key
  (`{key: {value: {id, auroc, passes, ...}}}`, e.g. selectivity.json's first feature per value)
  and their random-direction control (`random_direction_features`).
  """
  out = {}
  sites = []
  for key, results in probe_results.items():
    rows = [_row(r) for r in results if is_layer(r["name"])]
    if not rows:
      continue
    sites = sites or [r["site"] for r in rows]
    best = max(rows, key=lambda r: r["gap"])
    first = next(r for r in results if is_layer(r["name"]))
    entry = {"classes": first["classes"], "chance": first["chance"], "majority": first["majority"],
             "n": first["n"], "layers": rows, "best_site": best["site"],
             "best_accuracy": best["accuracy"], "best_gap": best["gap"]}
    sae = [r for r in results if r["name"].startswith("sae:")]
    if sae:
      entry["sae"] = {"site": sae[0]["name"][4:], **{k: v for k, v in _row(sae[0]).items()
                                                      if k != "site"}}
      if sae_features and key in sae_features:
        entry["sae"]["features"] = sae_features[key]
      if random_directions and key in random_directions:
        entry["sae"]["random_directions"] = random_directions[key]
    out[key] = entry
  return {"format_version": FORMAT_VERSION, "dataset": dataset, "run": run, "sites": sites,
          "label_keys": list(out), "table": out, "skipped": skipped or {},
          "settings": settings or {},
          "measure": "accuracy: mean over k stratified folds of a multinomial logistic probe on "
                     "per-prompt mean activations; shuffled: the same with labels permuted "
                     "across prompts; gap = accuracy - shuffled"}


def _row(r: dict) -> dict:
  shuffled = r.get("shuffled_accuracy", float("nan"))
  return {"site": r["name"], "accuracy": r["accuracy"], "accuracy_std": r["accuracy_std"],
          "shuffled_accuracy": shuffled, "shuffled_std": r.get("shuffled_std", float("nan")),
          "gap": r["accuracy"] - shuffled if np.isfinite(shuffled) else r["accuracy"] - r["chance"]}


def random_direction_features(x: np.ndarray, labels: dict, m: int, a: dict, *,
                              vocab: np.ndarray | None = None, splits: dict | None = None) -> dict:
  """The control for "the best SAE feature per label value": the best of m random unit
  directions of the SAE's site, chosen on the same training prompts and scored on the same
  held-out (and held-out-vocabulary) prompts as the features: `splits[key]` (the masks of
  `validity.feature_split` the features used), else that function on (y, vocab) with
  analysis.heldout_fraction and seed; ranked by training AUROC, more active in the label.

  x: [P, d] per-prompt means of the raw site (a projection of the mean is the mean of the
  projection); labels: {key: (values, y)} with y = -1 where unlabelled or without rows;
  vocab: [P] held-out-vocabulary prompts. Returns {key: {"m", "seed", "split" (prompt
  positions of each part), "best": {value: {id, auroc (held-out), auroc_train[,
  auroc_heldout_vocab]}}}}: an SAE feature whose held-out AUROC beats this reads the label
  better than a random direction.
  """
  from musicsae_jax.analysis import validity
  rng = np.random.default_rng([int(a["seed"]), 0xD1CE])
  R = rng.normal(size=(x.shape[1], int(m)))
  proj = np.asarray(x, np.float64) @ (R / np.linalg.norm(R, axis=0))
  out = {}
  for key, (values, y) in labels.items():
    masks = (splits or {}).get(key) or validity.feature_split(
        y, vocab, float(a["heldout_fraction"]), int(a["seed"]))
    train, held, hv = masks["train"], masks["heldout"], masks["heldout_vocab"]
    sel_tr = lab.selectivity(proj[train], y[train], values)
    sel_ho = lab.selectivity(proj[held], y[held], values)
    sel_v = lab.selectivity(proj[hv], y[hv], values) if len(np.unique(y[hv])) >= 2 else None
    tops = lab.top_features_per_label(sel_tr, 1)
    best = {}
    for k, val in enumerate(values):
      if tops[val]:
        f = tops[val][0]
        best[val] = {"id": f, "auroc": float(sel_ho["auroc"][k, f]),
                     "auroc_train": float(sel_tr["auroc"][k, f]),
                     **({"auroc_heldout_vocab": float(sel_v["auroc"][k, f])} if sel_v else {})}
    out[key] = {"m": int(m), "seed": int(a["seed"]), "split": validity.split_prompts(masks),
                "best": best}
  return out


def sae_best_features(selectivity_labels: dict) -> dict:
  """{key: {value: best feature}} from selectivity.json's `labels` block."""
  return {key: {v: fs[0] for v, fs in s["features"].items() if fs}
          for key, s in selectivity_labels.items()}


def probe_store(ds, *, label_keys=(), sites=(), folds: int = 5, l2: float = 1e-3,
                steps: int = 100, shuffles: int = 3, seed: int = 0,
                extra_inputs: list[tuple[str, np.ndarray, np.ndarray]] = (),
                log: Callable[[str], None] = print) -> tuple[dict, dict]:
  """Probe every label key on every layer site of an open store: ({key: [results]}, skipped).

  label_keys: () = every key the prompts carry (keys that cannot be probed are skipped with
  a reason; named keys that cannot be probed raise). sites: () = every `lm.layer.<i>`.
  extra_inputs: (name, x [P, d], has_rows [P]) probed too, e.g. ("sae:lm.layer.3", latents).
  """
  prompts = ds.prompts
  P = len(prompts)
  sites = list(sites) or layer_sites(ds.sites)
  if not sites:
    raise AnalysisError(f"{ds.path}: no lm.layer.<i> site to probe; store sites: {sorted(ds.sites)}")
  for s in sites:
    if s not in ds.sites:
      raise AnalysisError(f"site {s!r} is not in {ds.path}; store sites: {sorted(ds.sites)}")
  keys, skipped = {}, {}
  for key in list(label_keys) or label_keys_of(prompts):
    values, y, why = usable(prompts, key, folds)
    if why and label_keys:
      raise AnalysisError(f"label {key!r} cannot be probed with {folds} folds: {why}")
    if why:
      skipped[key] = why
      log(f"probe_layers: skipping label {key!r}: {why}")
      continue
    keys[key] = (values, y)
  if not keys:
    raise AnalysisError(f"{ds.path}: no label in prompts.jsonl can be probed "
                        f"(skipped: {skipped or 'no labels at all'})")
  inputs = []
  for s in sites:
    x, cnt = stats.prompt_means(ds.site(s), P)
    inputs.append((s, x, cnt > 0))
  inputs += list(extra_inputs)
  results = {}
  for key, (values, y) in keys.items():
    results[key] = []
    for name, x, ok in inputs:
      r = probes.cross_validate(x, np.where(ok, y, -1), values, folds=folds, l2=l2,
                                steps=steps, shuffles=shuffles, seed=seed)
      r["name"] = name
      results[key].append(r)
    best = max((_row(r) for r in results[key]), key=lambda r: r["gap"])
    log(f"probe_layers {key} ({len(values)} classes): best {best['site']} "
        f"{best['accuracy']:.3f} (shuffled {best['shuffled_accuracy']:.3f}, "
        f"chance {1 / len(values):.3f})")
  return results, skipped


# --- report ------------------------------------------------------------------------------


def heatmap_png(tab: dict) -> str:
  """Concepts (rows) x layers (columns): colour = accuracy − shuffled control, text = accuracy."""
  plt = report.plots.pyplot()
  keys, sites = tab["label_keys"], tab["sites"]
  gap = np.array([[r["gap"] for r in tab["table"][k]["layers"]] for k in keys])
  acc = np.array([[r["accuracy"] for r in tab["table"][k]["layers"]] for k in keys])
  fig, ax = plt.subplots(figsize=(max(5.0, 2.2 + 0.75 * len(sites)), 1.4 + 0.45 * len(keys)))
  im = ax.imshow(gap, cmap="viridis", vmin=0.0, vmax=max(1e-6, float(np.nanmax(gap)), 0.5),
                 aspect="auto")
  for i in range(len(keys)):
    for j in range(len(sites)):
      ax.text(j, i, f"{acc[i, j]:.2f}", ha="center", va="center", fontsize=7,
              color="white" if gap[i, j] < 0.6 * im.norm.vmax else "black")
  ax.set_xticks(range(len(sites)), [s.replace("lm.layer.", "L") for s in sites], fontsize=8)
  ax.set_yticks(range(len(keys)),
                [f"{k} (K={len(tab['table'][k]['classes'])})" for k in keys], fontsize=8)
  ax.set_xlabel("layer")
  ax.set_title("probe accuracy (text); colour: accuracy − shuffled", fontsize=9)
  fig.colorbar(im, ax=ax, label="accuracy − shuffled")
  fig.tight_layout()
  return report._png(fig)   # pylint: disable=protected-access


def section(tab: dict) -> str:
  """The `layers` report section: heatmap + the SynTheory-style table."""
  f = report._f   # pylint: disable=protected-access
  head = ["concept", "K", "chance"] + [s.replace("lm.layer.", "L") for s in tab["sites"]] + [
      "best layer", "SAE probe", "best SAE feature per value (held-out AUROC)"]
  rows = []
  for key in tab["label_keys"]:
    e = tab["table"][key]
    cells = [f"{f(r['accuracy'], 2)}<br><small>±{f(r['accuracy_std'], 2)} "
             f"(sh {f(r['shuffled_accuracy'], 2)})</small>" for r in e["layers"]]
    sae = e.get("sae")
    feats = ""
    if sae and sae.get("features"):
      rand = (sae.get("random_directions") or {}).get("best", {})
      feats = ", ".join(f"{html.escape(str(v))}: f{x['id']} {f(x.get('auroc'), 2)}"
                        + ("*" if x.get("passes") else "")
                        + (f" (random {f(rand[v].get('auroc'), 2)})" if v in rand else "")
                        for v, x in sae["features"].items())
    rows.append([html.escape(key), len(e["classes"]), f(e["chance"], 2), *cells,
                 html.escape(e["best_site"]),
                 f"{f(sae['accuracy'], 2)} on {html.escape(sae['site'])}" if sae else "–", feats])
  skipped = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>"
                    for k, v in tab.get("skipped", {}).items())
  body = report.img(heatmap_png(tab), "concepts by layer") + report._table(head, rows)  # pylint: disable=protected-access
  if skipped:
    body += f"<p class='note'>Not probed:</p><ul>{skipped}</ul>"
  note = ("For each concept (a prompt label) and each captured layer: k-fold multinomial "
          "logistic probe accuracy on per-prompt mean activations ± std over folds, with the "
          "shuffled-label control (sh) that must sit near chance 1/K. Colour: accuracy − "
          "control. The SAE columns probe the run's latents and name each value's best "
          "feature (selected on training prompts, AUROC on held-out ones; * = passes the "
          "best-of-m permutation null, unmarked = does not) beside its random-direction control: the best of "
          "as many random directions of the site, chosen and scored the same way. From "
          "probes_by_layer.json.")
  return report._section(SECTION, "Concepts across layers", note, body)  # pylint: disable=protected-access


def write(tab: dict, out_dir: str) -> dict:
  """probes_by_layer.json, and the `layers` section spliced into out_dir/report.html
  (replacing an older one; a page with this section only when there is no report yet)."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, FILE)
  files.write_json(path, tab, indent=1, default=float)
  html_path = report.splice_section(out_dir, SECTION, section(tab),
                                    f"musicsae report: {tab.get('run') or tab.get('dataset')}",
                                    before=report.LATER_SECTIONS)
  return {"probes_by_layer": path, "report": html_path}
