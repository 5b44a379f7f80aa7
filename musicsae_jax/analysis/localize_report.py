"""Report sections of `launch.localize`: downstream fidelity, layer ablation, patching.

`update(report_dir)` reads whichever of fidelity.json, ablation.json (+ .png) and
patching.json (+ .png) exist in `report_dir` and puts one section per file into
report.html (replacing older ones; a page of these sections only if launch.analyze has
not run). No torch here: the JSON files are the contract.
"""
from __future__ import annotations

import html
import json
import os

from musicsae_jax.analysis import report

FIDELITY_SECTION, ABLATION_SECTION, PATCHING_SECTION = "fidelity", "layer-ablation", "patching"
SECTIONS = (FIDELITY_SECTION, ABLATION_SECTION, PATCHING_SECTION)
_f = report._f


def _load(report_dir: str, name: str):
  p = os.path.join(report_dir, name)
  if not os.path.exists(p):
    return None
  with open(p) as f:
    return json.load(f)


def _img(report_dir: str, name: str, alt: str) -> str:
  p = os.path.join(report_dir, name)
  return report.img(report.png_file(p), alt) if os.path.exists(p) else ""


def fidelity_section(fid: dict) -> str:
  conds = ("clean", "sae", "sae_plus_error", "zero", "mean")
  body = []
  for half, r in fid["halves"].items():
    K = len(r["clean"]["ce"])
    rows = [[c] + [_f(r[c]["ce"][k]) for k in range(K)] + [_f(r[c]["ce_mean"]),
                                                            _f(r[c]["kl_mean"], 4)]
            for c in conds]
    rows.append(["loss recovered"] + [_f(x) for x in r["loss_recovered"]] +
                [_f(r["loss_recovered_mean"]), ""])
    where = "both halves" if half == "both" else f"the {html.escape(half)} half"
    body.append(f"<h3>SAE output spliced into {where} of the CFG batch</h3>")
    body.append(report._table(["condition"] + [f"CE cb{k}" for k in range(K)] +
                              ["CE mean", "KL to clean"], rows))
    body.append(f"<p class='note'>FVU {_f(r['fvu'], 4)}, L0 {_f(r['l0'], 1)} on the spliced "
                f"rows. Splice identity (x̂ + (x − x̂) in place of x): max |Δ activation| "
                f"{r['splice_identity_max_abs_act_diff']:.2e}, max |Δ log p| "
                f"{r['sae_plus_error']['max_abs_logprob_diff']:.2e} (float32 round-off).</p>")
  note = (f"SAE of <b>{html.escape(str(fid.get('sae_site')))}</b> ({html.escape(str(fid.get('architecture')))}) "
          f"spliced into the model, teacher-forced over {fid['num_prompts']} generated clips of "
          f"{fid['frames']} frames. Next-token cross-entropy per codebook (nats) of the guided "
          f"distribution (cfg_coef {fid['cfg_coef']}), KL(clean ‖ condition), and loss "
          "recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean): 1 is as good as the clean "
          "model, 0 no better than zeroing the site. mean = the site's mean activation.")
  return report._section(FIDELITY_SECTION, "Downstream fidelity", note, "".join(body))


def ablation_section(ab: dict, plot: str) -> str:
  tf = ab["teacher_forced"]
  modes = list(tf["modes"])
  rows = [[str(L)] + [_f(tf["modes"][m]["ce_increase"][j]) for m in modes] +
          [_f(tf["modes"][m]["kl_mean"][j], 4) for m in modes] for j, L in enumerate(tf["layers"])]
  body = plot + report._table(["layer"] + [f"ΔCE {m}" for m in modes] +
                              [f"KL {m}" for m in modes], rows)
  gen = ab.get("generation")
  if gen:
    gm = list(gen["modes"])
    hdr = ["layer"] + [f"distance {m}" for m in gm] + [
        f"Δ{d} {m}" for m in gm for d in gen["descriptors"]]
    if any("delta_clap" in gen["modes"][m] for m in gm):
      hdr += [f"ΔCLAP {m}" for m in gm]
    grows = []
    for j, L in enumerate(gen["layers"]):
      r = [str(L)] + [_f(gen["modes"][m]["distance"][j]) for m in gm]
      r += [_f(gen["modes"][m]["delta"][d][j], 2) for m in gm for d in gen["descriptors"]]
      if len(hdr) > len(r):
        r += [_f(gen["modes"][m].get("delta_clap", [None] * len(gen["layers"]))[j]) for m in gm]
      grows.append(r)
    body += ("<h3>Generation with the block ablated (same seed)</h3>" + report._table(hdr, grows)
             + f"<p class='note'>Null: clean clips of another seed are at distance "
             f"{_f(gen.get('null_distance'))} from the clean clips.</p>")
  note = (f"Each block's contribution to the residual stream (out − in) replaced by zero, its "
          f"mean over the clean run, or another prompt's (resample), on both CFG halves; "
          f"{len(ab['texts'])} prompts. ΔCE: increase of the mean next-token cross-entropy "
          f"over the clean {_f(tf['ce_clean_mean'])} nats (teacher-forced). Distance: mean "
          "standardised change of the clip's audio descriptors against the clean sample of the "
          "same seed. Large values mark the layers the output depends on.")
  return report._section(ABLATION_SECTION, "Layer ablation", note, body)


def patching_section(pt: dict, plot: str) -> str:
  rows = [[html.escape(r)] + [_f(v) for v in vals] for r, vals in zip(pt["rows"], pt["matrix"])]
  gaps = [[html.escape(c), _f(sum(p["gap_kl"]) / len(p["gap_kl"]), 4)] + _pair_cells(c, p)
          for c, p in pt["per_concept"].items()]
  if pt.get("matrix_generation") and pt.get("generation"):
    gcols = list(pt["generation"])
    grows = [[html.escape(r)] + [_f(v) for v in vals]
             for r, vals in zip(pt["sites"], pt["matrix_generation"])]
    grows.append(["p_A: clean A / clean B"] + [
        f"{_f(pt['generation'][c]['p_a']['A'])} / {_f(pt['generation'][c]['p_a']['B'])}"
        for c in gcols])
    grows.append(["classifier LOO accuracy"] + [_f(pt["generation"][c]["loo_accuracy"])
                                                for c in gcols])
    gen_table = ("<h3>During generation, scored on the audio</h3><p class='note'>A's "
                 "activation at each decoding step replaces B's while B is sampled with the "
                 "same seed; a nearest-centroid classifier of the concept's two values on "
                 "audio descriptors (reference clips of other contexts) gives p_A; cell = "
                 "(p_A(patched) − p_A(B)) / (p_A(A) − p_A(B)). Trust it only where the "
                 "classifier's leave-one-out accuracy is well above 0.5.</p>" +
                 report._table(["site"] + [html.escape(c) for c in gcols], grows))
  else:
    gen_table = ""
  body = (plot + report._table(["site"] + [html.escape(c) for c in pt["concepts"]], rows) +
          gen_table +
          "<h3>Pairs</h3>" + report._table(["concept", "KL(A ‖ B) unpatched",
                                            "minimal pairs", "A (first)", "B (first)"], gaps))
  note = (f"For {pt['pairs']} prompt pairs per concept that differ only in that word (A vs B), "
          "run A's activation at one site replaces run B's (teacher-forced over B's tokens, "
          f"{html.escape(pt['half'])} half{', steps ' + str(pt['steps']) if pt.get('steps') else ''}"
          f"{'; scored on frames ' + str(pt['measure']) + ' only' if pt.get('measure') else ''}"
          "). Cell = mean fraction of the way B's next-token distribution moves toward A's: "
          "1 − KL(A ‖ patched) / KL(A ‖ B). High at a site: the concept's difference is "
          "carried there; '(SAE)' rows move only the SAE's reconstruction.")
  audio = [c for c, p in pt["per_concept"].items() if "pairs" in p]
  if audio:
    cond = pt["per_concept"][audio[0]].get("conditioning", "none")
    note += (f" Columns <code>audio:&lt;label&gt;</code>: pairs of clips of "
             f"{html.escape(str(pt.get('pairs_from', '')))} whose label differs (minimal pairs: "
             "every other label equal; otherwise the nearest pairs, their extra differences "
             "listed), each teacher-forced over its own EnCodec codes with "
             f"{'no text' if cond == 'none' else html.escape(cond) + ' text'}; A replaces B on "
             "both CFG halves. With no text the codes are the only difference, so every "
             "residual row is 1 by construction; the attention and SAE rows are the ones to "
             "read.")
  return report._section(PATCHING_SECTION, "Activation patching", note, body)


def _pair_cells(concept: str, p: dict) -> list[str]:
  """[minimal pairs, A (first), B (first)] of a text or audio concept's pairs."""
  if "pairs" not in p:                              # text: one word apart by construction
    return ["all (one word)", html.escape(str(p["texts_a"][0])),
            html.escape(str(p["texts_b"][0]))]
  pairs, label = p["pairs"], concept.split(":")[1]
  extra = sorted({d for q in pairs for d in q["other_diffs"]})
  same = sum(g <= 1e-9 for g in p["gap_kl"])
  q = pairs[0]
  return [f"{p['minimal_pairs']} of {len(pairs)}" +
          (f" (others also differ in {html.escape(', '.join(extra))})" if extra else "") +
          (f"; {same} with no difference to move (left out)" if same else ""),
          html.escape(f"{q['id_a']} ({label}={q['value_a']})"),
          html.escape(f"{q['id_b']} ({label}={q['value_b']})")]


def update(report_dir: str) -> str:
  """Put the sections of the results present in `report_dir` into its report.html."""
  sections = []
  fid = _load(report_dir, "fidelity.json")
  if fid is not None:
    sections.append((FIDELITY_SECTION, fidelity_section(fid)))
  ab = _load(report_dir, "ablation.json")
  if ab is not None:
    sections.append((ABLATION_SECTION,
                     ablation_section(ab, _img(report_dir, "ablation.png", "layer ablation"))))
  pt = _load(report_dir, "patching.json")
  if pt is not None:
    sections.append((PATCHING_SECTION,
                     patching_section(pt, _img(report_dir, "patching.png", "patching heatmap"))))
  run = (fid or ab or pt or {}).get("run", "")
  path = os.path.join(report_dir, "report.html")
  for sid, sec in sections:
    path = report.splice_section(report_dir, sid, sec, f"musicsae report: {run}")
  return path
