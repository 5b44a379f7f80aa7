"""The organism scorecard: one JSON (and a report section) saying how well the chain finds
what is known to be in the model organism.

Reads the organism's own metrics (`<model dir>/organism.json`: codec reconstruction, LM
token accuracy and perplexity, with shuffled captions as the control for "uses its text"),
scores the SAE of the run against the exact labels (`ground_truth`: best SAE feature per
label value vs raw neurons vs random directions, held-out AUROC and the max-null), and adds
the layer probes when `probes_by_layer.json` exists. Writes reports/<run>/scorecard.json
and the `scorecard` section of reports/<run>/report.html (a plot of the best held-out AUROC
per label value and family, outlined dots passing the null, and the table).
"""
from __future__ import annotations

import html
import json
import os

import numpy as np

from musicsae_jax.analysis import ground_truth, report, scorecard_steering
from musicsae_jax.analysis.stats import AnalysisError

FORMAT_VERSION = 1
FILE = "scorecard.json"
SECTION = "scorecard"


def organism_metrics(model_dir: str) -> dict | None:
  path = os.path.join(model_dir, "organism.json")
  if not model_dir or not os.path.exists(path):
    return None
  with open(path) as f:
    m = json.load(f)
  lm, cd = m["lm"]["heldout"], m["codec"]["heldout"]
  return {
      "dir": model_dir, "seconds": m.get("seconds"), "sizes": m.get("sizes"),
      "codec": {"sisnr_db": cd["sisnr_db"], "msspec": cd["msspec"],
                "msspec_silence": cd["msspec_silence"], "mel": cd["mel"],
                "mel_silence": cd["mel_silence"],
                "codes_used_per_codebook": m["codec"].get("codes_used_per_codebook"),
                "card": m["codec"].get("card")},
      "lm": {"token_accuracy": lm["true"]["token_accuracy"], "perplexity": lm["true"]["perplexity"],
             "perplexity_shuffled_captions": lm["shuffled"]["perplexity"],
             "perplexity_no_text": lm["none"]["perplexity"],
             "token_accuracy_shuffled_captions": lm["shuffled"]["token_accuracy"],
             "conditioning_gain_nats": lm["conditioning_gain_nats"],
             "uniform_perplexity": lm["uniform_perplexity"], "heldout_clips": lm["clips"]},
      "token_space": m.get("token_space", {}), "acoustic": m.get("acoustic", {})}


def build(config, workdir: str, *, log=print) -> dict:
  from musicsae_jax.analysis import pipeline
  a = pipeline.resolve(config)
  model_dir = str(config.model.name) if "model" in config else ""
  card = {"format_version": FORMAT_VERSION, "dataset": a["dataset"], "run": a["run"],
          "organism": organism_metrics(model_dir)}
  card["features"] = ground_truth.score_store(config, workdir, log=log)
  layers_path = os.path.join(workdir, "reports", a["run"], "probes_by_layer.json")
  if os.path.exists(layers_path):
    with open(layers_path) as f:
      tab = json.load(f)["table"]
    card["probes"] = {k: {"best_site": t["best_site"], "best_accuracy": t["best_accuracy"],
                          "chance": t["chance"], "best_gap": t["best_gap"]} for k, t in tab.items()}
  from musicsae_jax.analysis import scorecard_labels, scorecard_localize
  means = scorecard_localize.sae_means(config, workdir, a, log=log)
  site = card["features"]["site"]
  if site in means["sites"]:
    card["labels"] = scorecard_labels.score(means["sites"][site]["pm"], means["prompts"],
                                            card["features"]["labels"], top=int(a["top_prompts"]),
                                            seed=int(a["seed"]))
  card["localization"] = scorecard_localize.build(config, workdir, a, means, log=log)
  out_dir = os.path.join(workdir, "reports", a["run"])
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, FILE)
  scorecard_steering.attach(card, out_dir, log=log)   # when launch.organism_steer has run
  with open(path, "w") as f:
    json.dump(card, f, indent=1, default=float)
  report.splice_section(out_dir, SECTION, section(card), f"musicsae report: {a['run']}")
  if "labels" in card:
    report.splice_section(out_dir, scorecard_labels.SECTION, scorecard_labels.section(card["labels"]))
  report.splice_section(out_dir, scorecard_localize.SECTION,
                        scorecard_localize.section(card["localization"]))
  scorecard_steering.splice(card, out_dir, f"musicsae report: {a['run']}")
  s = card["features"]["summary"]
  log("scorecard: " + "; ".join(
      f"{fam} {v['passing']}/{v['values']} values pass, mean best AUROC {v['mean_best_auroc']:.3f}"
      for fam, v in s.items()))
  card["path"] = path
  return card


def _f(x, nd=3) -> str:
  return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def families_png(feats: dict) -> str:
  """Per label: the best held-out AUROC of each value (dots) and their mean (bars), one
  colour per family; the dashed line is the mean best-of-m null threshold."""
  from musicsae_jax import plots
  plt = plots.pyplot()
  keys = list(feats["labels"])
  fams = list(feats["units"])
  fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(keys) + 2), 3.6))
  w = 0.8 / max(1, len(fams))
  thr = []
  for j, fam in enumerate(fams):
    for i, key in enumerate(keys):
      vals = [d[fam] for d in feats["labels"][key].values() if fam in d]
      if not vals:
        continue
      x = i + (j - (len(fams) - 1) / 2) * w
      ax.bar(x, np.mean([v["auroc"] for v in vals]) - 0.5, w, bottom=0.5, color=f"C{j}",
             alpha=0.5, label=fam if i == 0 else None)
      ax.scatter([x] * len(vals), [v["auroc"] for v in vals], s=10, color=f"C{j}",
                 edgecolors=["k" if v["passes"] else "none" for v in vals])
      thr += [v["null_threshold"] for v in vals]
  if thr:
    ax.axhline(float(np.mean(thr)), ls="--", color="grey", lw=1)
  ax.set_xticks(range(len(keys)), keys, rotation=30)
  ax.set_ylabel("best held-out AUROC")
  ax.set_ylim(0.3, 1.0)
  ax.legend(fontsize=8, loc="upper right")
  fig.tight_layout()
  return report._png(fig)   # pylint: disable=protected-access


def section(card: dict) -> str:
  rows = []
  o = card.get("organism")
  if o:
    c, lm = o["codec"], o["lm"]
    rows.append(f"<p>Organism <code>{html.escape(o['dir'])}</code>: codec SI-SNR {_f(c['sisnr_db'], 2)} dB, "
                f"multi-scale mel distance {_f(c['msspec'])} (silence {_f(c['msspec_silence'])}); "
                f"LM held-out token accuracy {_f(lm['token_accuracy'])}, perplexity "
                f"{_f(lm['perplexity'], 2)} (shuffled captions {_f(lm['perplexity_shuffled_captions'], 2)}, "
                f"no text {_f(lm['perplexity_no_text'], 2)}, uniform {lm['uniform_perplexity']}).</p>")
  feats = card["features"]
  head = "<tr><th>label</th><th>value</th>" + "".join(
      f"<th>{f} AUROC</th><th>{f} passes</th>" for f in feats["units"]) + "</tr>"
  body = []
  for key, vals in feats["labels"].items():
    for val, d in vals.items():
      cells = "".join(f"<td>{_f(d[f]['auroc'])}</td><td>{'yes' if d[f]['passes'] else 'no'}</td>"
                      if f in d else "<td>–</td><td>–</td>" for f in feats["units"])
      body.append(f"<tr><td>{html.escape(key)}</td><td>{html.escape(str(val))}</td>{cells}</tr>")
  summ = " ".join(f"<b>{f}</b>: {v['passing']}/{v['values']} values pass, mean best held-out AUROC "
                  f"{_f(v['mean_best_auroc'])}." for f, v in feats["summary"].items())
  note = (f"Best unit per label value on {html.escape(feats['site'])}, chosen on training prompts, "
          f"scored on held-out prompts; passes = family-wise permutation p ≤ "
          f"{feats['settings']['alpha']} (max over all units of its family). Units: "
          + ", ".join(f"{f} {n}" for f, n in feats["units"].items()) + ".")
  return report._section(SECTION, "Organism scorecard: does the chain find what is there?", note,  # pylint: disable=protected-access
                         "".join(rows) + f"<p>{summ}</p>"
                         + report.img(families_png(feats), "best AUROC per label and family")
                         + f"<table>{head}{''.join(body)}</table>")
