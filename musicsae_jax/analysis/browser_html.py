"""The HTML of the feature browser (analysis.browser): small inline SVG graphics, the index,
the feature pages and their steering tables. Pure string building from arrays and dicts."""
from __future__ import annotations

import html
from collections import Counter

import numpy as np

from musicsae_jax.analysis.stats import hist_edges


def _fmt(x, nd=3) -> str:
  if x is None or (isinstance(x, float) and not np.isfinite(x)):
    return "–"
  return f"{x:.{nd}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{nd}f}"


def _esc(s) -> str:
  return html.escape(str(s))


# --- small inline graphics ---------------------------------------------------------------------


def trace_svg(values: np.ndarray, mark: int | None, top: float, w: int = 260, h: int = 44) -> str:
  """Activation over the snippet's frames (same y scale for every example of a feature),
  the example's frame marked in red. Drawn in frame units (x: frame, y: 0..100 of `top`)
  and stretched to w x h, so each point costs a few bytes."""
  n = max(len(values), 1)
  ys = (100 - np.clip(np.asarray(values) / max(float(top), 1e-12), 0, 1) * 96 - 2).round().astype(int)
  keep = np.ones(len(ys), bool)              # flat runs need only their two ends
  keep[1:-1] = (ys[1:-1] != ys[:-2]) | (ys[1:-1] != ys[2:])
  xs = np.nonzero(keep)[0]
  pts = " ".join(map("{},{}".format, xs.tolist(), ys[xs].tolist()))
  mk = ""
  if mark is not None and 0 <= mark < len(values):
    mk = (f'<line x1="{mark}" x2="{mark}" y1="0" y2="100" class="mk"/>'
          f'<rect x="{mark - 0.5}" y="0" width="1" height="6" class="mk"/>')
  return (f'<svg class="tr" width="{w}" height="{h}" viewBox="-0.5 0 {n} 100" '
          f'preserveAspectRatio="none"><line x1="-0.5" x2="{n}" y1="98" y2="98" class="ax"/>'
          f'<polyline points="{pts}" class="ln"/>{mk}</svg>')


def hist_svg(counts: np.ndarray, zeros: int, w: int = 520, h: int = 120) -> str:
  """Histogram of the positive activations on log10 bins; the zero count in the caption."""
  nz = np.nonzero(counts)[0]
  if not len(nz):
    return "<p>never fires</p>"
  a, b = max(nz[0] - 1, 0), min(nz[-1] + 2, len(counts))
  c = counts[a:b].astype(np.float64)
  edges = np.log10(hist_edges()[a:b + 1])
  bw = w / len(c)
  bars = "".join(f'<rect x="{i * bw:.1f}" y="{h - 16 - v:.1f}" width="{max(bw - 0.5, 0.5):.1f}" '
                 f'height="{v:.1f}"><title>{10 ** edges[i]:.3g}–{10 ** edges[i + 1]:.3g}: '
                 f'{int(n)}</title></rect>'
                 for i, (n, v) in enumerate(zip(c, c / c.max() * (h - 24))))
  ticks = ""
  lo_e, hi_e = edges[0], edges[-1]
  for dec in range(int(np.floor(lo_e)), int(np.ceil(hi_e)) + 1):
    for mant in (1, 2, 5):
      t = dec + np.log10(mant)
      if lo_e <= t <= hi_e:
        x = (t - lo_e) / (hi_e - lo_e) * w
        anchor = "start" if x < 15 else "end" if x > w - 15 else "middle"
        ticks += (f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{h - 16}" y2="{h - 12}" class="ax"/>'
                  f'<text x="{x:.1f}" y="{h - 2}" text-anchor="{anchor}">{mant * 10.0 ** dec:g}</text>')
  return (f'<svg class="hist" width="{w}" height="{h}" viewBox="0 0 {w} {h}">{bars}'
          f'<line x1="0" x2="{w}" y1="{h - 16}" y2="{h - 16}" class="ax"/>{ticks}</svg>'
          f'<p class="note">{int(c.sum())} rows &gt; 0 (log scale, raw units); {zeros} rows at 0</p>')


def bars_html(items: list[tuple[str, float, str]], vmax: float = 1.0, signed: bool = False) -> str:
  """Rows of (label, value, note) as inline bars."""
  rows = []
  for name, v, note in items:
    width = 0 if not np.isfinite(v) else min(abs(v) / max(vmax, 1e-12), 1) * 120
    cls = "neg" if signed and v < 0 else "pos"
    rows.append(f"<tr><td>{_esc(name)}</td><td><span class='bar {cls}' style='width:{width:.0f}px'>"
                f"</span> {_fmt(v, 2)}</td><td class='note'>{note}</td></tr>")
  return "<table class='bars'>" + "".join(rows) + "</table>"


# --- pages -------------------------------------------------------------------------------------


CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:1.2em auto;color:#222;
font-size:14px}table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;
padding:2px 6px;vertical-align:middle}th{background:#f3f3f3;cursor:pointer;position:sticky;
top:0}.note{color:#666;font-size:12px}.flag{background:#fde2c8;border-radius:3px;
padding:0 4px;margin-right:2px;font-size:12px}audio{height:26px;width:230px}
.ex{display:grid;grid-template-columns:3em 5em 270px 240px 1fr;gap:6px;align-items:center;
border-bottom:1px solid #eee;padding:2px 0}svg text{font-size:10px;fill:#555}
.ln{fill:none;stroke:#2563eb;stroke-width:1.5}.ax{stroke:#999}.mk{stroke:#dc2626;
fill:#dc2626}.tr *{vector-effect:non-scaling-stroke}.hist rect{fill:#2563eb}.bar{display:inline-block;height:10px;
vertical-align:middle}.bar.pos{background:#2563eb}.bar.neg{background:#dc2626}
.bars td{border:none}nav a{margin-right:1em}h2{margin-top:1.4em;font-size:17px}"""

JS = """// Sort the feature table by a column (click its header) and filter its rows.
function sortBy(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),
b=t.tBodies[0],asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
const rows=[...b.rows],key=r=>{const c=r.cells[i],v=c.dataset.v;return v===undefined?c.textContent:parseFloat(v)};
rows.sort((x,y)=>{const a=key(x),c=key(y);const r=(typeof a==='number'&&typeof c==='number')?a-c:String(a).localeCompare(String(c));return asc?r:-r});
rows.forEach(r=>b.appendChild(r));}
function filterRows(){const q=document.getElementById('q').value.toLowerCase(),
f=document.getElementById('flag').value,dead=document.getElementById('dead').checked;let n=0;
for(const r of document.querySelectorAll('#features tbody tr')){const fl=r.dataset.flags.split(' ');
const ok=(!q||r.textContent.toLowerCase().includes(q))&&(!f||fl.includes(f))&&(dead||!fl.includes('dead'));
r.style.display=ok?'':'none';n+=ok}document.getElementById('shown').textContent=n;}"""


def _page(title: str, body: str, depth: int) -> str:
  up = "../" * depth
  return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_esc(title)}</title>"
          f"<link rel='stylesheet' href='{up}browser.css'><script src='{up}browser.js'></script>"
          f"</head><body>{body}</body></html>")


def _flag_html(fl: list[str]) -> str:
  return "".join(f"<span class='flag'>{_esc(x)}</span>" for x in fl)


def index_row(f, st, fl, top, words, has_page) -> str:
  link = f"<a href='features/{f}.html'>{f}</a>" if has_page else str(f)
  tl = f"{top['key']}={top['value']}" if top else ""
  au = top["auroc"] if top else float("nan")
  pv = top["p_fwer"] if top else float("nan")
  num = lambda v: f"{v:.6g}" if np.isfinite(v) else "-1"
  return (f"<tr data-flags='{' '.join(fl)}'><td data-v='{f}'>{link}</td>"
          f"<td data-v='{num(st.rate[f])}'>{_fmt(float(st.rate[f]), 4)}</td>"
          f"<td data-v='{num(st.max[f])}'>{_fmt(float(st.max[f]))}</td><td>{_esc(tl)}</td>"
          f"<td data-v='{num(au)}'>{_fmt(au)}</td><td data-v='{num(pv)}'>{_fmt(pv)}</td>"
          f"<td>{_esc(words)}</td><td>{_flag_html(fl)}</td></tr>")


def index_page(rows, info, flags, names, top_n, label_scores) -> str:
  counts = Counter(x for fl in flags.values() for x in fl)
  summary = " · ".join(f"{_esc(k)}: {_esc(v)}" for k, v in info.items())
  opts = "".join(f"<option value='{k}'>{k} ({counts.get(k, 0)})</option>" for k in names)
  head = "".join(f"<th onclick='sortBy(this)'>{h}</th>" for h in (
      "feature", "firing rate", "max", "top label", "AUROC (held-out)", "p (family-wise)",
      "words", "flags"))
  note = ("Click a header to sort, type to filter. <b>top label</b>: the label value with the "
          "highest AUROC on training prompts; AUROC and p are measured on held-out prompts "
          "(p: share of label shuffles whose best AUROC over all features reaches it). "
          "<b>words</b>: words over-represented in the top prompts. Flags: <b>dead</b> never "
          "fires; <b>dense</b> fires on more rows than the run's dense threshold; "
          "<b>position</b> top frames concentrated at one frame index (vs frames drawn at random "
          "in the same prompts); <b>onset</b> / <b>silence</b> activation correlates with onset "
          "strength / with quiet (low rms_db), beyond a circular-shift null and at |r| &ge; the "
          "configured minimum. Activations in raw units (those of the exported SAE)."
          if label_scores else "Click a header to sort, type to filter.")
  body = (f"<h1>Feature browser</h1><p>{summary}</p><nav><a href='../report.html'>report</a></nav>"
          f"<p class='note'>{note}</p><p><input id='q' placeholder='filter (text)' "
          f"oninput='filterRows()'> <select id='flag' onchange='filterRows()'><option value=''>"
          f"any flag</option>{opts}</select> <label><input type='checkbox' id='dead' checked "
          f"onchange='filterRows()'> show dead</label> · <span id='shown'>{len(rows)}</span> "
          f"shown; each page shows the top {top_n} prompts.</p>"
          f"<table id='features'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
  return _page("feature browser", body, 0)


def _example_html(e: dict, prompts: list[dict], snips: dict, top: float, rank: str) -> str:
  p = prompts[e["prompt"]]
  src = snips.get((e["prompt"], e["lo"], e["n"]))
  player = (f"<audio controls preload='metadata' src='../{_esc(src)}'></audio>" if src
            else "<span class='note'>no audio</span>")
  mark = e["frame"] - e["lo"] if e["frame"] is not None and e["kind"] != "zero" else None
  labels = ", ".join(f"{k}={v}" for k, v in (p.get("labels") or {}).items())
  where = (f"frame {e['frame']}" if e["kind"] != "zero" else "never fires")
  return (f"<div class='ex' data-kind='{e['kind']}' data-prompt='{e['prompt']}' "
          f"data-frame='{e['frame'] if e['frame'] is not None else ''}'><span>{rank}</span>"
          f"<span>{_fmt(e['act'])}</span>{trace_svg(e['trace'], mark, top)}{player}"
          f"<span>{_esc(p.get('text', ''))} <span class='note'>(prompt {e['prompt']}, {where}; "
          f"{_esc(labels)})</span></span></div>")


def feature_page(f, st, ex, snips, fl, pos, ac, top, words, prompts, keys, base, corr,
                  names, nb_ids, nb_cos, fires: set, steer_html: str) -> str:
  vmax = float(st.max[f])
  tops = [e for e in ex if e["kind"] == "top"]
  parts = [f"<nav><a href='../index.html'>index</a>"
           + (f"<a href='{f - 1}.html'>&larr; {f - 1}</a>" if f - 1 in fires else "")
           + (f"<a href='{f + 1}.html'>{f + 1} &rarr;</a>" if f + 1 in fires else "")
           + "</nav>",
           f"<h1>Feature {f} {_flag_html(fl)}</h1>"]
  facts = [("firing rate", _fmt(float(st.rate[f]), 4)), ("max activation", _fmt(vmax)),
           ("mean when active", _fmt(float(st.mean_active[f]))), ("words", _esc(words) or "–")]
  if top:
    facts.append(("top label", f"{_esc(top['key'])}={_esc(top['value'])}: AUROC train "
                  f"{_fmt(top['auroc_train'])}, held-out {_fmt(top['auroc'])}, family-wise p "
                  f"{_fmt(top['p_fwer'])}"))
  if pos:
    facts.append(("position test", f"{pos['modal_count']} of {pos['top_frames']} top frames within "
                  f"±{pos['window']} frames of one index, p = {_fmt(pos['p'])}"))
  for k in ("onset", "silence"):
    if k in ac["r"]:
      facts.append((f"{k} test", f"r with {'onset_strength' if k == 'onset' else 'rms_db'} = "
                    f"{_fmt(float(ac['r'][k][f]), 2)}; shift-null copies reach "
                    f"{_fmt(float(ac['null_max'][k][f]), 2)}"))
  parts.append("<table>" + "".join(f"<tr><th>{a}</th><td>{b}</td></tr>" for a, b in facts)
               + "</table>")
  parts.append("<h2>Activation histogram</h2>" + hist_svg(st.hist[:, f], int(st.num_rows - st.fired[f])))
  parts.append(f"<h2>Top {len(tops)} prompts</h2><p class='note'>One per prompt: its peak frame "
               "(red) in a snippet around it; the line is the feature over the snippet, on one "
               "scale for the whole page (0 to the feature's max).</p>"
               + "".join(_example_html(e, prompts, snips, vmax, str(i + 1)) for i, e in enumerate(tops)))
  con = [e for e in ex if e["kind"] != "top"]
  if con:
    parts.append("<h2>Contrast: low and zero</h2><p class='note'>low: prompts whose peak lies "
                 "at the 10–25th percentile of the prompts where it fires; zero: prompts where "
                 "it never fires (middle of the clip).</p>"
                 + "".join(_example_html(e, prompts, snips, vmax, e["kind"]) for e in con))
  if keys:
    body = ""
    for k in keys:
      cnt = Counter(str((prompts[e["prompt"]].get("labels") or {}).get(k)) for e in tops
                    if (prompts[e["prompt"]].get("labels") or {}).get(k) is not None)
      tot = sum(base[k].values())
      items = [(v, c / max(len(tops), 1), f"{c} of {len(tops)} (all prompts: "
                f"{base[k][v] / max(tot, 1):.0%})") for v, c in
               sorted(cnt.items(), key=lambda kv: -kv[1])]
      body += f"<h3>{_esc(k)}</h3>" + bars_html(items)
    parts.append("<h2>Labels of the top prompts</h2>" + body)
  if corr is not None and names:
    r = corr[f]
    order = np.argsort(-np.nan_to_num(np.abs(r), nan=-1))
    parts.append("<h2>Acoustic correlations</h2><p class='note'>Pearson r over every frame "
                 "with the descriptors measured on the generated audio.</p>"
                 + bars_html([(names[j], float(r[j]), "") for j in order], 1.0, signed=True))
  nb = "".join(f"<tr><td><a href='{j}.html'>{j}</a></td><td>{c:+.3f}</td></tr>" if j in fires
               else f"<tr><td>{j}</td><td>{c:+.3f}</td></tr>" for j, c in zip(nb_ids, nb_cos))
  parts.append("<h2>Nearest features (decoder cosine)</h2><table>" + nb + "</table>")
  parts.append("<section id='labels'></section>")          # filled by labels.json (update_labels)
  parts.append(f"<section id='steering'>{steer_html}</section>")
  return _page(f"feature {f}", "".join(parts), 1)


def labels_html(entry: dict) -> str:
  """A feature's labels from labels.json: each label with its source and detection scores
  (0.5 is chance), then the next CLAP candidates."""
  rows = []
  for lab_ in entry.get("labels", []):
    scores = ", ".join(f"{html.escape(k)} {v:.2f}" for k, v in (lab_.get("scores") or {}).items()
                       if v is not None) or "not scored"
    extra = (f"margin {lab_['margin']:+.2g}, z {lab_['z']:.1f}" if "margin" in lab_ else "")
    rows.append(f"<tr><td>{html.escape(str(lab_.get('source', '')))}</td>"
                f"<td><b>{html.escape(str(lab_.get('label', '')))}</b></td><td>{scores}</td>"
                f"<td>{extra}</td></tr>")
  cands = ", ".join(f"{html.escape(c['word'])} ({c['margin']:+.2g})"
                    for c in entry.get("clap_candidates", [])[1:])
  return ("<h2>Labels</h2><p class='note'>From labels.json: detection score of each label on "
          "held-out clips (CLAP: AUROC; LLM: balanced accuracy; 0.5 is chance).</p>"
          "<table><tr><th>source</th><th>label</th><th>detection</th><th>CLAP margin</th></tr>"
          + "".join(rows) + "</table>"
          + (f"<p class='note'>Next CLAP candidates: {cands}</p>" if cands else ""))


# --- steering (reports/<run>/steer.json) -------------------------------------------------------


def steering_html(entries: list[dict] | None, prompts: list[str] = (), audio=None) -> str:
  """Steering results of one feature from steer.json: the mean change per measure and
  strength (with the controls' range) and, when `audio` maps a report-relative wav to a
  page-relative file (or None), baseline / steered players per prompt and strength."""
  if not entries:
    return ""
  out = "<h2>Steering</h2><p class='note'>launch.steer: mean paired change vs the unsteered " \
        "baseline [95% CI] over its prompts, and the range of the controls at the same " \
        "strength; every measure and the control clips: steer.json and report.html.</p>"
  for e in entries:
    measures = sorted({k for s in e["steered"] for k in s["stats"]})
    rows = []
    for s in e["steered"]:
      cells = []
      for k in measures:
        x = s["stats"].get(k) or {}
        ci = x.get("ci")
        cells.append("–" if x.get("mean") is None else f"{x['mean']:+.3g}"
                     + (f" [{ci[0]:+.3g}, {ci[1]:+.3g}]" if ci else ""))
      ctrl = [c for c in e.get("control", []) if c["alpha"] == s["alpha"]]
      rows.append(f"<tr><td>α={s['alpha']:g}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
      if ctrl:
        rng = []
        for k in measures:
          v = [c["stats"][k]["mean"] for c in ctrl if (c["stats"].get(k) or {}).get("mean") is not None]
          rng.append(f"{min(v):+.3g} … {max(v):+.3g}" if v else "–")
        rows.append(f"<tr class='note'><td>controls</td>" + "".join(f"<td>{c}</td>" for c in rng) + "</tr>")
    verdict = (e.get("verdict") or {}).get("text")
    method = e.get("method", "add")          # one block per method: the title names it
    out += (f"<h3>{_esc(method)}: {_esc(e.get('label') or 'feature')}</h3>"
            + (f"<p><b>{_esc(verdict)}</b></p>" if verdict else "")
            + "<table><tr><th>strength</th>"
            + "".join(f"<th>Δ {_esc(k)}</th>" for k in measures) + "</tr>" + "".join(rows) + "</table>")
    if audio is None:
      continue
    players = []
    for b, text in enumerate(prompts):
      for s in e["steered"]:
        if s.get("reused_baseline") or len(s.get("audio") or []) <= b:
          continue
        base = (e["baseline"].get("audio") or [None] * (b + 1))[b]
        cells = [audio(base) if base else None, audio(s["audio"][b])]
        players.append(f"<tr><td>{_esc(text)}</td><td>α={s['alpha']:g}</td>" + "".join(
            f"<td><audio controls preload='metadata' src='{_esc(c)}'></audio></td>" if c
            else "<td>–</td>" for c in cells) + "</tr>")
    if players:
      out += ("<table><tr><th>prompt</th><th>strength</th><th>baseline</th><th>steered</th></tr>"
              + "".join(players) + "</table>")
  return out


