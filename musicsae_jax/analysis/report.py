"""The self-contained HTML report: matplotlib figures embedded as base64 PNGs.

`render(data)` takes the plain dicts the pipeline also writes as JSON (plus a few arrays)
and returns one HTML string; every section has a stable id (`SECTIONS`) so tests and
readers can find it. Audio players point at `audio/<prompt_id>.wav` next to the report.
"""
from __future__ import annotations

import base64
import html
import io
import os
import re

import numpy as np

from musicsae_jax import files, plots

SECTIONS = ("summary", "training", "density", "selectivity", "probes", "similarity",
            "top-features", "discovery", "grounding",
            "layers")   # concepts across lm.layer.* (analysis.layers, spliced in after render)
SWEEP_SECTION = "sweep"     # after "training", only when the run is a sweep member
# Sections other steps splice in after the analysis, in this order; a rerun of the analysis
# keeps them (carry_sections) and puts its own spliced sections before them.
LATER_SECTIONS = ("labels", "stability", "steering", "fidelity", "layer-ablation", "patching")


def _png(fig) -> str:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=90)
  plots.pyplot().close(fig)
  return base64.b64encode(buf.getvalue()).decode()


def img(b64: str, alt: str) -> str:
  return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def png_file(path: str) -> str:
  with open(path, "rb") as f:
    return base64.b64encode(f.read()).decode()


def density_png(rate: np.ndarray) -> str:
  return _png(plots.density_figure(rate, "log10 firing rate (all rows of the site)",
                                   "features", figsize=(6, 3.5)))


def sweep_png(record: dict, member: str) -> str:
  return _png(plots.sweep_figure(record, highlight=member))


def _sweep_section(sw: dict) -> str:
  """The sweep this run belongs to: FVU vs L0 with the Pareto front, dead % per member."""
  rec, me = sw["record"], sw["member"]
  rows = [[("<b>%s</b>" if r["name"] == me else "%s") % html.escape(r["name"]),
           html.escape(", ".join(f"{k}={v}" for k, v in r.get("overrides", {}).items())),
           _f(r.get("fvu"), 4), _f(r.get("l0"), 1),
           _f(100 * r["dead_frac"], 1) if r.get("dead_frac") is not None else "",
           "yes" if r.get("pareto") else ""] for r in rec.get("members", [])]
  return _section(SWEEP_SECTION, f"Sweep {html.escape(str(rec.get('run', '')))}",
                  f"This run is member <b>{html.escape(me)}</b> of a sweep trained on the same "
                  "batches (runs/&lt;sweep&gt;/sweep.json). Eval FVU against L0: lower-left is "
                  "better; the line joins the Pareto front.",
                  img(sweep_png(rec, me), "sweep") + _table(
                      ["member", "overrides", "FVU", "L0", "dead %", "Pareto"], rows))


def heatmap_png(matrix: np.ndarray, rows: list[str], cols: list[str], title: str) -> str:
  """Features (rows) x label values (columns), AUROC colour scale centred at 0.5."""
  return _png(heatmap_figure(matrix, rows, cols, title))


def heatmap_figure(matrix: np.ndarray, rows: list[str], cols: list[str], title: str):
  """The figure of `heatmap_png`. The title is wrapped to the figure's width, which grows
  with the columns: at two label values the whole title still shows ("mode: ...")."""
  import textwrap
  plt = plots.pyplot()
  width = max(3.6, 1.2 + 0.9 * len(cols))
  lines = textwrap.wrap(title, width=max(16, int(width * 7)))     # ~7 characters an inch at 10 pt
  fig, ax = plt.subplots(figsize=(width, 1.0 + 0.28 * len(rows) + 0.2 * len(lines)))
  im = ax.imshow(matrix, cmap="RdBu_r", vmin=0.0, vmax=1.0, aspect="auto")
  ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
  ax.set_yticks(range(len(rows)), rows, fontsize=7)
  ax.set_title("\n".join(lines), fontsize=10)
  fig.colorbar(im, ax=ax, label="AUROC")
  fig.tight_layout()
  return fig


def probe_png(results: list[dict], label_key: str) -> str:
  """Accuracy ± std per site (layers in order), shuffled control, chance line."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(results)), 3.8))
  xs = np.arange(len(results))
  acc = [r["accuracy"] for r in results]
  std = [r["accuracy_std"] for r in results]
  ax.errorbar(xs, acc, yerr=std, fmt="o-", capsize=3, label="probe (k-fold)")
  if all("shuffled_accuracy" in r for r in results):
    ax.errorbar(xs, [r["shuffled_accuracy"] for r in results],
                yerr=[r["shuffled_std"] for r in results], fmt="s--", capsize=3,
                color="gray", label="shuffled labels")
  if any("heldout_vocab" in r for r in results):
    hv = [(i, r["heldout_vocab"]["accuracy"]) for i, r in enumerate(results) if "heldout_vocab" in r]
    ax.plot([i for i, _ in hv], [v for _, v in hv], "D-", color="C3",
            label="held-out vocabulary (fit on the rest)")
  if results:
    ax.axhline(results[0]["chance"], color="k", lw=0.8, ls=":", label="chance 1/K")
  ax.set_xticks(xs, [r["name"] for r in results], rotation=30, ha="right", fontsize=8)
  ax.set_ylim(0, 1.05)
  ax.set_ylabel(f"{label_key} accuracy")
  ax.legend(fontsize=8)
  fig.tight_layout()
  return _png(fig)


def _table(header: list[str], rows: list[list], cls: str = "") -> str:
  h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
  body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
  return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


def _f(x, nd=3) -> str:
  return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px;max-width:100%}
td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top;overflow-wrap:anywhere}th{background:#f3f3f3}img{max-width:100%}
.note{color:#555;font-size:13px}audio{height:28px}
#contents{font-size:13px;line-height:1.8;padding:.4em .6em;background:#f7f7f7;
border:1px solid #ddd}"""


_SECTION_RE = r'<section id="{}">.*?</section>(?=<section|<footer|</body>)'
_TOC_RE = re.compile(r'<nav id="contents">.*?</nav>', re.S)


def _page(title: str, body: str) -> str:
  """A whole report page (title escaped here) with its table of contents."""
  title = html.escape(title)
  return with_contents(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
                       f"<style>{_CSS}</style></head><body><h1>{title}</h1>{body}</body></html>")


def with_contents(page: str) -> str:
  """`page` with a fresh table of contents under its title: a link to every section present
  (sections spliced in later by other launchers included)."""
  page = _TOC_RE.sub("", page)
  found = re.findall(r'<section id="([^"]+)"><h2>(.*?)</h2>', page, flags=re.S)
  if not found:
    return page
  links = " · ".join(f'<a href="#{sid}">{title}</a>' for sid, title in found)
  nav = f'<nav id="contents"><b>Contents</b>: {links}</nav>'
  at = page.find("</h1>")
  return page[:at + 5] + nav + page[at + 5:] if at >= 0 else page


def carry_sections(old_page: str, new_page: str) -> str:
  """`new_page` plus every section of `old_page` it lacks (steering, localisation, stability,
  labels: written by other launchers), so rerunning the analysis keeps them."""
  have = set(re.findall(r'<section id="([^"]+)">', new_page)) | set(SECTIONS)
  kept = [m.group(0) for m in re.finditer(r'<section id="([^"]+)">.*?</section>(?=<section|<footer|</body>)',
                                          old_page, flags=re.S) if m.group(1) not in have]
  if not kept:
    return new_page
  return with_contents(new_page.replace("</body>", "".join(kept) + "</body>", 1))


def splice_section(report_dir: str, sid: str, section: str, title: str = "",
                   before: tuple[str, ...] = ()) -> str:
  """Put `section` (id `sid`) into `report_dir/report.html`, replacing an older one with that
  id, before the first section named in `before` that is present (else at the end); a page
  with this section only when there is no report yet. The contents list is refreshed."""
  path = os.path.join(report_dir, "report.html")
  if os.path.exists(path):
    with open(path) as f:
      page = f.read()
    page = re.sub(_SECTION_RE.format(re.escape(sid)), "", page, flags=re.S)
    at = [page.index(f'<section id="{b}">') for b in before if f'<section id="{b}">' in page]
    cut = min(at) if at else page.rindex("</body>")
    page = with_contents(page[:cut] + section + page[cut:])
  else:
    page = _page(title, section)
  write_page(path, page)
  return path


def write_page(path: str, page: str) -> None:
  """Write report.html with its clips embedded (report_audio), atomically."""
  from musicsae_jax.analysis import report_audio
  files.write_text(path, report_audio.embed(page, os.path.dirname(path)))


def _section(sid: str, title: str, note: str, body: str) -> str:
  return (f'<section id="{sid}"><h2>{html.escape(title)}</h2><p class="note">{note}</p>'
          f"{body}</section>")


def render(d: dict) -> str:
  """One HTML page from the pipeline's results dict (see pipeline.analyze)."""
  parts = []
  s = d["summary"]
  pages = os.path.dirname(d["browser"]) if d.get("browser") else None

  def fid(f):  # a feature id, linked to its browser page when there is one
    return f'<a href="{html.escape(pages)}/features/{int(f)}.html">{int(f)}</a>' if pages else f
  link = (f' <a href="{html.escape(d["browser"])}">Feature browser</a>: a page per feature '
          "(top prompts with audio snippets, activation histogram, flags)." if d.get("browser") else "")
  parts.append(_section("summary", "Summary", "What was analysed." + link, _table(
      ["field", "value"], [[html.escape(k), html.escape(str(v))] for k, v in s.items()])))
  tr = d.get("training_png")
  parts.append(_section("training", "Training curves",
                        "Loss, MSE, L0, FVU (train batches and pooled eval), dead fraction and "
                        "learning rate vs step, from runs/&lt;run&gt;/metrics.jsonl.",
                        img(tr, "training curves") if tr else "<p>no metrics.jsonl found</p>"))
  if d.get("sweep"):
    parts.append(_sweep_section(d["sweep"]))
  parts.append(_section("density", "Feature density",
                        "log10 firing rate of every feature over all rows of the site. A healthy "
                        "dictionary is a broad hump well below 1 with few dead features; the "
                        f"firing-rate band used for discovery is {d['rate_band']}.",
                        img(d["density_png"], "feature density")))
  sel_body = "".join(img(b, f"heatmap {k}") for k, b in d["heatmaps"].items())
  parts.append(_section("selectivity", "Feature × label selectivity",
                        "Held-out AUROC of each feature's per-prompt mean activation for one label "
                        "value vs the rest (1 = fires only for that label, 0.5 = unrelated). Rows "
                        "are the union of the top features per label, selected on training "
                        "prompts.", sel_body))
  pr_body = ""
  for key, res in d["probes"].items():
    pr_body += f"<h3>{html.escape(key)}</h3>" + img(d["probe_pngs"][key], f"probes {key}")
    vocab = any("heldout_vocab" in r for r in res)
    pr_body += _table(["input", "accuracy", "± std", "shuffled", "chance", "n", "d"]
                      + (["held-out vocabulary", "its shuffled", "n held-out vocab"] if vocab else []),
                      [[html.escape(r["name"]), _f(r["accuracy"]), _f(r["accuracy_std"]),
                        _f(r.get("shuffled_accuracy")), _f(r["chance"]), r["n"], r["d"]]
                       + ([_f(r.get("heldout_vocab", {}).get("accuracy")),
                           _f(r.get("heldout_vocab", {}).get("shuffled_accuracy")),
                           r.get("heldout_vocab", {}).get("n", "–")] if vocab else [])
                       for r in res])
  parts.append(_section("probes", "Linear probes",
                        "k-fold cross-validated multinomial logistic regression on per-prompt "
                        "mean-pooled raw activations per site, and on SAE latents. The shuffled "
                        "control must sit at chance; the gap between probe and control is the "
                        "evidence. Held-out vocabulary (when the prompt table has a "
                        "<code>heldout_vocab</code> split): a probe fit on every "
                        "training-vocabulary prompt scored on prompts that describe the music "
                        "without the label words or their synonyms; a probe that reads the "
                        "words scores well in the folds and near chance here.", pr_body))
  sim_rows = [[html.escape(f"{k} / {r['site']}" + (" (centred)" if r["centered"] else "")),
               _f(r["within"]), _f(r["between"]), _f(r["difference"], 4), _f(r["p_value"], 4)]
              for k, rs in d["similarity"].items() for r in rs]
  parts.append(_section("similarity", "Within- vs between-label cosine similarity",
                        "Mean cosine similarity of prompt pairs sharing a label vs pairs with "
                        "different labels; p from a label-permutation test. Raw activations share "
                        "a large common direction; the centred rows remove it.",
                        _table(["label / input", "within", "between", "difference", "p"],
                               sim_rows)))
  tf_body = ""
  for key, per in d["top_features"].items():
    tf_body += f"<h3>{html.escape(key)}</h3>"
    for value, feats in per.items():
      rows = []
      vocab = any("heldout_vocab" in f for f in feats)
      for f in feats:
        prompts = "<br>".join(
            f"{html.escape(p['text'])} <i>({_f(p['mean'])})</i>"
            + (f' <audio controls preload="metadata" src="{html.escape(p["audio"])}"></audio>'
               if p.get("audio") else "") for p in f["top_prompts"])
        hv = f.get("heldout_vocab") or {}
        rows.append([fid(f["id"]), _f(f.get("auroc_train")), _f(f["auroc"]), _f(f.get("p_fwer"), 3),
                     _f(f.get("q_bh"), 3), "yes" if f.get("passes") else "no"]
                    + ([_f(hv.get("auroc")), _f(hv.get("p_fwer"), 3),
                        ("yes" if hv.get("passes") else "no") if hv else "–"] if vocab else [])
                    + [html.escape(", ".join(f.get("flags", []))), _f(f["selectivity"], 2),
                       _f(f["mean_in"]), html.escape(f.get("heuristic_label", "")), prompts])
      null = (d.get("nulls") or {}).get(key, {})
      thr = null.get("max_auroc_threshold", {}).get(value)
      bh = null.get("bh_features", {}).get(value)
      tf_body += (f"<h4>{html.escape(key)} = {html.escape(value)}</h4>"
                  + (f"<p>best-of-m null threshold (held-out AUROC, level {null['alpha']}): "
                     f"{_f(thr)}; features at false-discovery rate {null['alpha']} (BH): "
                     f"{', '.join(map(str, bh[:20])) if bh else 'none'}"
                     f"{f' (+{len(bh) - 20} more)' if bh and len(bh) > 20 else ''}</p>"
                     if thr is not None else "")
                  + _table(["feature", "AUROC train", "AUROC held-out", "p (family-wise)",
                            "q (BH)", "passes"]
                           + (["AUROC held-out vocab", "p (fw) held-out vocab",
                               "passes held-out vocab"] if vocab else [])
                           + ["flags", "selectivity", "mean in label", "words",
                              "top prompts (mean)"], rows))
  parts.append(_section("top-features", "Top features per label",
                        "Selected by AUROC on training prompts (ties: larger mean difference); "
                        "AUROC, selectivity (mean in label / mean elsewhere) and mean are measured "
                        "on held-out prompts. p (family-wise): share of label shuffles whose best "
                        "held-out AUROC over all features reaches this one; passes: p &le; alpha "
                        "and more active in the label. q (BH): Benjamini–Hochberg over all "
                        "features. Held-out vocab (when the prompt table has a "
                        "<code>heldout_vocab</code> split): the same scores on prompts that "
                        "describe the music without the label words or synonyms the training "
                        "prompts use; a feature that reads the words passes on held-out prompts "
                        "and sits at AUROC 0.5 here. "
                        "flags: position = top frames concentrated at one frame index. "
                        "Top prompts by the feature's per-prompt mean. "
                        "Activations are in raw units (those of the exported SAE, "
                        "load_sae, clamp_features and steering).",
                        tf_body))
  disc_rows = [[fid(f["id"]), _f(f["firing_rate"], 4), _f(f["max"]),
                html.escape(", ".join(f.get("flags", []))), html.escape(f["heuristic_label"]),
                html.escape(", ".join(f"{k}×{v}" for k, v in f["top_label_values"].items())),
                html.escape(" | ".join(p["text"] for p in f["top_prompts"][:3]))]
               for f in d["discovery"]["features"]]
  parts.append(_section("discovery", "Feature discovery",
                        f"Features with firing rate in {d['rate_band']} ranked by "
                        f"{d['discovery']['rank_by']}; words over-represented in their top prompts "
                        "vs the corpus give a heuristic label. max: the largest activation, "
                        "raw units. flags: position = the top frames share one frame index far "
                        "more often than frames drawn at random from the same prompts.",
                        _table(["feature", "rate", "max", "flags", "words", "top labels",
                                "top prompts"],
                               disc_rows)))
  g = d.get("grounding")
  if g:
    g_rows = [[fid(r["id"]), html.escape(r.get("heuristic_label", "")),
               ", ".join(f"{html.escape(c['descriptor'])} ({c['r']:+.2f})" for c in r["acoustic"])]
              for r in g]
    g_body = _table(["feature", "words", "strongest descriptor correlations (Pearson r)"], g_rows)
  else:
    g_body = "<p>no audio.descriptors site aligned with this site</p>"
  parts.append(_section("grounding", "Acoustic grounding",
                        "Pearson correlation over frames between each feature and the acoustic "
                        "descriptors measured on the generated audio (same rows).", g_body))
  return _page(f"musicsae report: {s.get('run', '')}", "".join(parts))


# --------------------------------------------------------------------------------------
# Seed stability (reports/<run>/stability.json from launch.analyze --compare_run)
# --------------------------------------------------------------------------------------
STABILITY_SECTION = "stability"


def stability_png(stab: dict) -> str:
  """Histogram of each feature's one-to-one match cosine and of its nearest-row cosine in
  the other run, with the threshold."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(6, 3.4))
  bins = np.linspace(-0.2, 1.0, 49)
  cos = np.asarray([c for c in stab["cosine"] if c is not None], np.float64)
  ax.hist(np.clip(cos, -0.2, 1.0), bins=bins, alpha=0.7, label="one-to-one match")
  if stab.get("best_cosine") is not None:
    ax.hist(np.clip(np.asarray(stab["best_cosine"], np.float64), -0.2, 1.0), bins=bins,
            histtype="step", color="C3", lw=1.5, label="nearest row (any)")
  ax.axvline(stab["threshold"], color="k", ls="--", lw=1, label=f"threshold {stab['threshold']:g}")
  ax.set_xlabel(f"decoder cosine with {stab['other']}")
  ax.set_ylabel("features")
  ax.legend(fontsize=8)
  fig.tight_layout()
  return _png(fig)


def stability_section(stab: dict) -> str:
  """The seed-stability section: fraction matched above the threshold and the histogram."""
  q = stab.get("cosine_quantiles", {})
  rows = [["compared with", html.escape(f"{stab['other']} (step {stab.get('other_step')})")],
          ["features", len(stab["cosine"])], ["matching", html.escape(str(stab["method"]))],
          [f"fraction matched at cosine ≥ {stab['threshold']:g}", _f(stab["fraction_matched"])],
          ["median match cosine", _f(stab["median_cosine"])],
          ["match cosine 10 / 50 / 90 %", " / ".join(_f(q.get(k)) for k in ("0.1", "0.5", "0.9"))]]
  if stab.get("fraction_nearest") is not None:
    rows.append([f"fraction whose nearest row has cosine ≥ {stab['threshold']:g}",
                 _f(stab["fraction_nearest"])])
  note = ("Decoder rows of this run matched one to one with another run's (e.g. another seed) "
          "by cosine (Hungarian assignment, greedy for very wide dictionaries): a feature is "
          "stable when its partner has cosine at or above the threshold. AudioSAE (2026) "
          "reports more than half of the features stable across seeds on audio models. The "
          "outline is each feature's nearest row with no one-to-one constraint. Every match: "
          "stability.json.")
  return _section(STABILITY_SECTION, "Seed stability", note,
                  _table(["", ""], rows) + img(stability_png(stab), "seed stability histogram"))


def update_stability(report_dir: str) -> str:
  """Put the seed-stability section of `report_dir/stability.json` into
  `report_dir/report.html` (before the steering section, replacing an older one)."""
  import json
  import os
  with open(os.path.join(report_dir, "stability.json")) as f:
    stab = json.load(f)
  return splice_section(report_dir, STABILITY_SECTION, stability_section(stab),
                        f"musicsae report: {stab.get('run', '')}", before=(STEERING_SECTION,))


# --------------------------------------------------------------------------------------
# Steering (reports/<run>/steer.json from launch.steer, spliced into report.html)
# --------------------------------------------------------------------------------------
STEERING_SECTION = "steering"
_STEER_COLS = ("concept", "clap_concept", "clap_prompt", "nll", "feature_act_replay", "feature_act", "tempo_bpm",
               "loudness_db", "brightness_hz", "mode_major_minus_minor")


_ALPHA = {"add": "the direction's multiple", "scale": "factor on the feature through the SAE",
          "set": "the feature's value through the SAE, raw units",
          "transplant": "multiple of the source prompt's feature pattern over time"}


def _stat_cell(st: dict | None) -> str:
  """'mean [lo, hi] p' of one paired change (interval: steer.json's `ci_method`; p: paired t)."""
  if not st or st.get("mean") is None:
    return "–"
  ci = f" [{st['ci'][0]:+.3g}, {st['ci'][1]:+.3g}]" if st.get("ci") else ""
  p = f" p={st['p_ttest']:.2g}" if st.get("p_ttest") is not None else ""
  return f"{st['mean']:+.3g}{ci}{p}"


def _player(src: str) -> str:
  return f'<audio controls preload="metadata" src="{html.escape(src)}"></audio>'


def steering_section(steer: dict, plot_b64: str | None) -> str:
  """The steering section: the standard plot, change vs baseline per feature and strength
  (with the controls' range), per-prompt values and A/B players (baseline/steered/control)."""
  measures = [m for m in _STEER_COLS if any(m in s["stats"] for f in steer["features"]
                                            for s in f["steered"])]
  concept = steer.get("concept", {})
  if "skipped" in concept:
    cnote = f"Concept score skipped: {html.escape(str(concept['skipped']))}."
  else:
    acc = concept.get("loo_accuracy")
    cnote = (f"concept = P(target label) from a {html.escape(concept['kind'])} trained in the run "
             f"on {concept['train_clips']} unsteered reference clips of {html.escape(concept['label_key'])}"
             f" (leave-one-out accuracy {_f(acc, 2)} vs chance {_f(concept['chance'], 2)}: the "
             "score means something only well above chance).")
  tag = {"mean_difference": "caa", "probe": "probe"}.get(steer.get("directions_kind"), "f")
  clap = steer.get("clap", {})
  if "skipped" in clap:
    cnote += f" CLAP measures skipped: {html.escape(str(clap['skipped']))}."
  elif clap:
    cnote += (f" CLAP ({html.escape(str(clap.get('model')))}): clap_prompt = cosine to the clip's "
              "own prompt (adherence); clap_concept = cosine to '&lt;target&gt; music' minus the "
              "mean over the other label values.")
  cm = (steer.get("concept_measure") or {})
  if "concept_measure" in steer and cm.get("name") is None:
    cnote += (f" No independent concept score ({html.escape(str(cm.get('why', '')))}): no "
              "verdict, and the plot shows drift only (the steered feature's own activation is "
              "not a concept score).")
  elif cm.get("name"):
    cnote += f" Verdicts and the plot use Δ {html.escape(cm['name'])}."
  warn = "".join(f'<p class="warn"><b>{html.escape(w)}</b></p>' for w in steer.get("warnings", []))
  body = warn + (img(plot_b64, "steering: concept vs drift") if plot_b64 else "<p>no steer.png</p>")
  verdicts = [[html.escape(f.get("method", steer.get("method", "add"))),
               html.escape(f"{tag}{f['feature']} {f.get('label') or ''}"),
               html.escape(f["verdict"]["text"])] for f in steer["features"] if f.get("verdict")]
  if verdicts:
    level = steer.get("significance", 0.05)
    body += (f"<h3>Verdicts (rank p among the controls at each strength, level {level:g})</h3>" +
             _table(["method", "feature", "verdict"], verdicts))
  methods = steer.get("methods") or [{"method": steer.get("method", "add"),
                                      "controls": steer["controls"]}]
  for f in steer["features"]:
    title = (f"{f['method']}: " if len(methods) > 1 else "") + \
        f"{tag}{f['feature']} {f.get('label') or ''}"
    rows = []
    for s in f["steered"]:
      ctrl = [c for c in f["control"] if c["alpha"] == s["alpha"]]
      row = [f"steered α={s['alpha']:g}"] + [_stat_cell(s["stats"].get(m)) for m in measures]
      rows.append(row)
      vc = s.get("vs_controls") or {}
      if vc.get("p_rank") is not None:
        row[0] += (f" (rank p vs controls {vc['p_rank']:.2g}: " + ", ".join(
            f"{html.escape(k)} {v['p_rank']:.2g}" for k, v in vc["by_kind"].items()
            if v.get("p_rank") is not None) + ")")
      for kind in dict.fromkeys(c.get("kind", "") for c in ctrl):   # one band per strength, kind
        kc = [c for c in ctrl if c.get("kind", "") == kind]
        rng = []
        for m in measures:
          v = [c["stats"][m]["mean"] for c in kc if m in c["stats"] and c["stats"][m]["mean"] is not None]
          rng.append(f"{min(v):+.3g} … {max(v):+.3g}" if v else "–")
        rows.append([f"controls{' ' + html.escape(kind) if kind else ''} α={s['alpha']:g} "
                     f"(range of {len(kc)})"] + rng)
    body += f"<h3>{html.escape(title)}</h3>" + _table(["condition"] + [f"Δ {m}" for m in measures], rows)
    # per prompt: values of each measure, baseline and every strength
    pp_rows = []
    for b, text in enumerate(steer["prompts"]):
      for name, cond in [("baseline", f["baseline"])] + [(f"α={s['alpha']:g}", s) for s in f["steered"]]:
        per = cond["per_prompt"]
        pp_rows.append([html.escape(text) if name == "baseline" else "", name] +
                       [_f(per[m][b], 3) if m in per else "–" for m in measures])
    body += ("<details><summary>per-prompt values</summary>" +
             _table(["prompt", "condition"] + measures, pp_rows) + "</details>")
    # A/B players: baseline / steered / first control, per prompt and strength
    ab = []
    for b, text in enumerate(steer["prompts"]):
      for s in f["steered"]:
        if s.get("reused_baseline"):
          continue
        ctrl = [c for c in f["control"] if c["alpha"] == s["alpha"] and c["audio"]]
        cells = [f["baseline"]["audio"], s["audio"], ctrl[0]["audio"] if ctrl else []]
        ab.append([html.escape(text), f"{s['alpha']:g}"] +
                  [_player(c[b]) if len(c) > b else "–" for c in cells])
    if ab:
      body += _table(["prompt", "α", "baseline", "steered", "control 0"], ab, cls="ab")
  per_method = "; ".join(
      f"<b>{html.escape(m['method'])}</b>: α = {_ALPHA.get(m['method'], '')}"
      f"{(' × the site mean norm' if steer.get('relative') else ', raw units') if m['method'] == 'add' else ''}"
      f", {m['controls']['count']} controls"
      f"{' per kind and strength' if len(m['controls'].get('kinds') or []) > 1 else ' per strength'} "
      f"({html.escape(str(m['controls'].get('kind', 'random directions of the same norm')))})"
      for m in methods)
  note = (f"launch.steer ({html.escape(str(steer.get('directions_kind', 'sae_decoder')))}, "
          f"schedule {html.escape(str(steer.get('schedule', 'every step')))}) on "
          f"{html.escape(str(steer['site']))}: every exported direction × method × strength "
          f"and its controls ({per_method}), one shared baseline, same prompts and seed "
          f"({len(steer['prompts'])} prompts). Cells: mean paired change vs baseline over prompts "
          f"[{100 * (steer.get('ci') or {}).get('level', 0.95):g}% "
          f"{html.escape(str((steer.get('ci') or {}).get('method', 'bootstrap')).replace('_', ' '))} "
          "interval] and paired t-test p; rank p: (1 + controls at or above the steered change) / "
          "(1 + controls), at the same strength, per kind of control (the largest counts). nll: token NLL of the generated codes under the "
          "unsteered model (drift; nats/token). feature_act_replay: the feature on an unhooked "
          "re-read of the steered music. Plot: Δ concept against Δ NLL; grey points and boxes are "
          f"the controls, one box per strength: steering worked where the point at a strength "
          f"leaves that strength's box at small drift. {cnote} "
          "Numbers and every per-prompt value: steer.json.")
  return _section(STEERING_SECTION, "Steering", note, body)


def update_steering(report_dir: str) -> str:
  """Put the steering section of `report_dir/steer.json` into `report_dir/report.html`
  (replacing an older one; a page with this section only if launch.analyze has not run)."""
  import json
  with open(os.path.join(report_dir, "steer.json")) as f:
    steer = json.load(f)
  png = os.path.join(report_dir, "steer.png")
  section = steering_section(steer, png_file(png) if os.path.exists(png) else None)
  from musicsae_jax.analysis import browser
  browser.update_steering(report_dir, steer)
  return splice_section(report_dir, STEERING_SECTION, section,
                        f"musicsae report: {steer.get('run', '')}")


# --------------------------------------------------------------------------------------
# Feature labels (reports/<run>/labels.json from analysis.labelers, spliced into report.html)
# --------------------------------------------------------------------------------------
LABELS_SECTION = "labels"


def labels_section(labels: dict) -> str:
  """Every feature's labels by source with their detection scores by each scorer; the score
  distribution per (scorer, source) next to the scorer's random-word control."""
  status = labels.get("labelers", {})
  notes = []
  for name, st in status.items():
    notes.append(f"{html.escape(name)}: " + (f"skipped ({html.escape(str(st['skipped']))})"
                                             if "skipped" in st else
                                             html.escape(str(st.get("model") or st.get("status")))))
  d_rows = []
  for scorer, by_src in labels.get("detection", {}).items():
    for src, d in by_src.items():
      d_rows.append([html.escape(scorer), html.escape(src), d.get("n", 0), _f(d.get("mean")),
                     _f(d.get("quantiles", {}).get("0.1")), _f(d.get("quantiles", {}).get("0.5")),
                     _f(d.get("quantiles", {}).get("0.9")), _f(d.get("above_0.5"), 2)])
  body = (_table(["scorer", "source", "features", "mean", "q10", "median", "q90", "share > 0.5"],
                 d_rows)
          if d_rows else "<p>no detection scores (CLAP and LLM scorers skipped)</p>")
  rows = []
  for f in labels.get("features", []):
    cells = {}
    for lab_ in f["labels"]:
      scores = ", ".join(f"{html.escape(sc)} {_f(v, 2)}" for sc, v in lab_.get("scores", {}).items())
      extra = (f"margin {lab_['margin']:+.2g}, z {lab_['z']:.1f}" if "margin" in lab_ else "")
      inner = "; ".join(x for x in (scores, extra) if x)
      cells[lab_["source"]] = html.escape(lab_["label"]) + (f" <i>({inner})</i>" if inner else "")
    cands = ", ".join(f"{html.escape(c['word'])} ({c['margin']:+.2g})"
                      for c in f.get("clap_candidates", [])[1:])
    rows.append([f["id"]] + [cells.get(s, "–") for s in ("words", "clap", "llm")] + [cands])
  body += _table(["feature", "words", "CLAP", "LLM", "next CLAP candidates (margin)"], rows)
  note = ("Labels per discovered feature from each labeller, each scored on held-out clips "
          "(prompts not used to label) by every scorer available: clap = the AUROC of CLAP "
          "text-to-audio similarity of the label separating activating from non-activating "
          "snippets; llm_blind = the balanced accuracy of the LLM telling them apart given the "
          "label and, per snippet, only its time window and CLAP's closest descriptors (no "
          "caption, no labels); llm_with_captions (when asked for) also shows each snippet's "
          "caption and labels, so a label can be matched by reading. 0.5 is chance; per scorer, the control row scores a random vocabulary word "
          "the same way. CLAP margin: similarity to the feature's snippets minus similarity to "
          "random snippets (z: in standard errors). " + "; ".join(notes) +
          ". Everything: labels.json.")
  return _section(LABELS_SECTION, "Feature labels", note, body)


def update_labels(report_dir: str) -> str:
  """Put the labels section of `report_dir/labels.json` into `report_dir/report.html`
  (replacing an older one; a page with this section only without a report)."""
  import json
  import os
  with open(os.path.join(report_dir, "labels.json")) as f:
    labels = json.load(f)
  return splice_section(report_dir, LABELS_SECTION, labels_section(labels),
                        f"musicsae report: {labels.get('run', '')}",
                        before=LATER_SECTIONS[LATER_SECTIONS.index(LABELS_SECTION) + 1:])
