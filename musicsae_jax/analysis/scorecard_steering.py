"""The scorecard's steering part: does adding a passing latent's decoder direction make the
organism generate its label value, more than control directions of the same norm, and what
else moves?

Reads reports/<run>/steering_tokens.json (written by the torch stage
bridge/organism/steer_tokens.py, `launch.organism_steer`), keeps a compact table under
`scorecard.json["steering"]` and renders the `scorecard_steering` report section: success
(rate of the target value minus the unsteered rate) against adherence (1 - total variation
distance of the other labels' value distributions from the unsteered batch), one point per
strength, with the controls' means beside each feature.
"""
from __future__ import annotations

import html
import json
import os

import numpy as np

FILE = "steering_tokens.json"
SECTION = "scorecard_steering"
FORMAT_VERSION = 2      # of steering_tokens.json (bridge/organism/steer_tokens.py)


class SteeringFileError(ValueError):
  """steering_tokens.json of another format; the message names the file and the fix."""


def load(out_dir: str) -> dict | None:
  """The compact steering table from `out_dir/steering_tokens.json` (None if absent)."""
  path = os.path.join(out_dir, FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    s = json.load(f)
  if s.get("format_version") != FORMAT_VERSION:
    raise SteeringFileError(
        f"{path} has format_version {s.get('format_version')}, this version reads "
        f"{FORMAT_VERSION} (adherence became distributional in 2): rerun the steering stage, "
        f"python -m launch.organism --workdir=W --stages=steer,steer_report")
  feats = []
  for f in s["features"]:
    feats.append({"key": f["key"], "value": f["value"], "id": f["id"], "auroc": f["auroc"],
                  "verdict": f["verdict"]["text"], "verdict_alpha": f["verdict"]["alpha"],
                  "verdict_p": f["verdict"]["p"],
                  "by_strength": [{k: r[k] for k in ("strength", "rate", "base_rate", "success",
                                                     "adherence", "same_seed_agreement",
                                                     "p_rank", "controls")}
                                  | {"ci": r["paired"]["ci"]} for r in f["by_strength"]]})
  beats = [f for f in feats if f["verdict_alpha"] is not None]
  per_strength = []
  for i, a in enumerate(s["strengths"]):
    rows = [f["by_strength"][i] for f in feats]
    ctl = {k: {m: float(np.mean([r["controls"][k][m] for r in rows])) if rows else None
               for m in ("success_mean", "adherence_mean", "same_seed_agreement_mean")}
           for k in s["control_kinds"]}
    per_strength.append({
        "strength": a, "features_ranked_first": sum(
            r["p_rank"] is not None and r["p_rank"] <= s["significance"] for r in rows),
        "mean_success": float(np.mean([r["success"] for r in rows])) if rows else None,
        "mean_adherence": float(np.mean([r["adherence"] for r in rows])) if rows else None,
        "mean_same_seed_agreement": float(np.mean([r["same_seed_agreement"] for r in rows]))
                                    if rows else None,
        "controls": ctl})
  return {"file": path, "layer": s["layer"], "site": s["site"], "rms_norm": s["rms_norm"],
          "strengths": s["strengths"], "strength_units": s["strength_units"],
          "num_generations": s["num_generations"], "controls_per_kind": s["controls_per_kind"],
          "control_kinds": s["control_kinds"], "significance": s["significance"],
          "half": s.get("half"), "classifier": s["classifier"],
          "control_adherence_all_labels": s["control_adherence_all_labels"],
          "control_same_seed_agreement_all_labels": s["control_same_seed_agreement_all_labels"],
          "adherence_resampled": s["adherence_resampled"],
          "same_seed_agreement_resampled": s["same_seed_agreement_resampled"],
          "seconds": s["seconds"], "features": feats,
          "summary": {"features": len(feats), "beat_controls": len(beats),
                      "per_strength": per_strength}}


def attach(card: dict, out_dir: str, *, log=None) -> dict:
  """card["steering"] = load(out_dir) when the steering stage has run. With `log`, a
  steering file of another format is left out with one line instead of raising, so a
  re-scored scorecard is not lost to it."""
  try:
    st = load(out_dir)
  except SteeringFileError as e:
    if log is None:
      raise
    log(f"scorecard: steering left out: {e}")
    return card
  if st is not None:
    card["steering"] = st
  return card


def splice(card: dict, out_dir: str, title: str = "") -> None:
  """The steering section into out_dir/report.html (after the scorecard section)."""
  if card.get("steering"):
    from musicsae_jax.analysis import report
    report.splice_section(out_dir, SECTION, section(card["steering"]), title)


def update(workdir: str, run: str) -> dict:
  """Add steering_tokens.json to an existing scorecard.json and its report section."""
  out_dir = os.path.join(workdir, "reports", run)
  path = os.path.join(out_dir, "scorecard.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: run launch.scorecard first")
  if not os.path.exists(os.path.join(out_dir, FILE)):
    raise FileNotFoundError(f"{os.path.join(out_dir, FILE)} is missing: run "
                            f"launch.organism_steer first")
  with open(path) as f:
    card = json.load(f)
  attach(card, out_dir)
  with open(path, "w") as f:
    json.dump(card, f, indent=1, default=float)
  splice(card, out_dir, f"musicsae report: {run}")
  return card


def _f(x, nd=2) -> str:
  return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def success_adherence_png(st: dict) -> str:
  """Success vs adherence: one line per feature through its strengths (marker size grows
  with strength), and grey markers for the controls' mean at each strength (averaged over
  the features' targets: x decoder rows, + Gaussian)."""
  from musicsae_jax import plots
  from musicsae_jax.analysis import report
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.2))
  sizes = {a: 12 + 14 * i for i, a in enumerate(st["strengths"])}
  colors = plt.get_cmap("tab20").colors     # 18 features: no two share a colour
  for j, f in enumerate(st["features"]):
    rows = f["by_strength"]
    ax.plot([r["adherence"] for r in rows], [r["success"] for r in rows], "-", color=colors[j % 20],
            lw=1, alpha=0.8)
    ax.scatter([r["adherence"] for r in rows], [r["success"] for r in rows],
               s=[sizes[r["strength"]] for r in rows], color=colors[j % 20],
               edgecolors=["k" if (r["p_rank"] is not None and r["p_rank"] <= st["significance"])
                           else "none" for r in rows],
               label=f"{f['key']}={f['value']}")
  for kind, marker in (("decoder", "x"), ("gaussian", "+")):
    for i, a in enumerate(st["strengths"]):
      c = [f["by_strength"][i]["controls"][kind] for f in st["features"]]
      if c:
        ax.scatter([np.mean([x["adherence_mean"] for x in c])],
                   [np.mean([x["success_mean"] for x in c])], marker=marker, color="grey",
                   s=sizes[a] * 2, label=f"{kind} controls" if i == 0 else None)
  ax.axhline(0, color="grey", lw=0.5)
  if st.get("adherence_resampled") is not None:
    ax.axvline(st["adherence_resampled"], color="grey", ls=":", lw=1)
    ax.text(st["adherence_resampled"], ax.get_ylim()[1], "another seed, unsteered ", fontsize=7,
            va="top", ha="right", color="grey")
  ax.set_xlabel("adherence (1 − TV distance of the other labels' distributions)")
  ax.set_ylabel("success (target rate − unsteered rate)")
  ax.set_xlim(-0.02, 1.02)
  ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
  fig.tight_layout()
  return report._png(fig)   # pylint: disable=protected-access


def section(st: dict) -> str:
  from musicsae_jax.analysis import report
  head = ("<tr><th>label=value (latent)</th><th>strength</th><th>target rate</th>"
          "<th>unsteered</th><th>success [95% CI]</th><th>adherence</th>"
          "<th>same-seed agreement</th>"
          "<th>decoder controls: success / adherence</th>"
          "<th>Gaussian controls: success / adherence</th><th>rank p</th></tr>"
          ).replace("<th>", '<th style="overflow-wrap:normal">')   # break headers at spaces only
  body = []
  for f in st["features"]:
    for r in f["by_strength"]:
      ci = r["ci"]
      cd, cg = r["controls"]["decoder"], r["controls"]["gaussian"]
      body.append(
          f"<tr><td>{html.escape(f['key'])}={html.escape(f['value'])} ({f['id']})</td>"
          f"<td>{r['strength']:g}</td><td>{_f(r['rate'])}</td><td>{_f(r['base_rate'])}</td>"
          f"<td>{_f(r['success'])} [{_f(ci[0]) if ci else '–'}, {_f(ci[1]) if ci else '–'}]</td>"
          f"<td>{_f(r['adherence'])}</td><td>{_f(r['same_seed_agreement'])}</td>"
          f"<td>{_f(cd['success_mean'])} / {_f(cd['adherence_mean'])}</td>"
          f"<td>{_f(cg['success_mean'])} / {_f(cg['adherence_mean'])}</td>"
          f"<td>{_f(r['p_rank'], 3)}</td></tr>")
  verdicts = "".join(f"<li>{html.escape(f['key'])}={html.escape(f['value'])} (latent {f['id']}): "
                     f"{html.escape(f['verdict'])}</li>" for f in st["features"])
  acc = ", ".join(f"{k} {v:.2f}" for k, v in st["classifier"]["heldout_accuracy"].items())
  note = (f"Generations without text ({st['num_generations']} per condition, one seed) with a "
          f"passing latent's unit decoder direction added at {html.escape(st['site'])} "
          f"(strength × RMS norm {st['rms_norm']:.2f}, {html.escape(str(st['half']))} CFG halves), "
          f"classified in token space (held-out accuracy {acc}). Success = target-value rate "
          f"minus the unsteered rate; adherence = 1 − the mean total variation distance between "
          f"each other label's value distribution in the steered and the unsteered batch (an "
          f"unsteered batch with another seed: {_f(st['adherence_resampled'])}, dotted line: the "
          f"ceiling that sampling noise leaves); same-seed agreement = share of the other labels "
          f"whose value equals the unsteered generation with the same seed (another seed: "
          f"{_f(st['same_seed_agreement_resampled'])}; sampling re-draws a clip after its first "
          f"changed token, so this falls for any push). Controls: {st['controls_per_kind']} "
          f"random other decoder rows and {st['controls_per_kind']} Gaussian directions of the "
          f"same norm per strength; rank p = the feature's success among all controls' "
          f"success for the same target (both kinds pooled). {st['summary']['beat_controls']}/"
          f"{st['summary']['features']} features beat their controls at α = {st['significance']}.")
  return report._section(  # pylint: disable=protected-access
      SECTION, "Organism scorecard: steering with the found features", note,
      report.img(success_adherence_png(st), "success vs adherence") + f"<ul>{verdicts}</ul>"
      + f"<table>{head}{''.join(body)}</table>")
