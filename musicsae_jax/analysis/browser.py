"""The feature browser: a static folder of HTML pages, one per feature, and a sortable index.

    reports/<run>/browser/
      index.html            every feature: firing rate, max, top label (held-out AUROC,
                            family-wise p), word label, flags; sortable and filterable
      features/<f>.html     one page per feature that fires: histogram, top examples with
                            audio snippets and activation lines, contrast examples, label
                            distribution, acoustic correlations, nearest decoder rows, steering
      audio/*.ogg           ~2 s snippets (OGG/Vorbis, mono) cut around the example frames,
                            shared by every page that shows the same window
      browser.css, browser.js

Every link is relative, so the folder works when moved or zipped. The top examples come from
the one streaming pass of `stats.feature_stats(peak_n=...)`; the activation lines need the
feature's values around those frames, which one more read of just the example prompts'
rows gives (`clip_traces`: rows located through the per-prompt row spans of the pass).
"""
from __future__ import annotations

import html
import os
import shutil
import time
from collections import Counter

import numpy as np

from musicsae_jax.analysis import labels as lab, validity
from musicsae_jax.analysis.stats import AnalysisError, FeatureStats, hist_edges

DIR = "browser"
FLAGS = ("dead", "dense", "position", "onset", "silence")
SNIPPET_GRID_S = 0.25      # snippet starts snap to this grid, so nearby examples share a file


def defaults() -> dict:
  """The `analysis.browser` fields and their defaults (musicsae_jax.defaults.browser)."""
  from musicsae_jax import defaults as d
  return d.browser().to_dict()


def check_config(cfg: dict) -> dict:
  """The `analysis.browser` fields, checked before the long work starts."""
  rules = {"top_n": (lambda v: v >= 1, ">= 1"), "contrast_n": (lambda v: v >= 0, ">= 0"),
           "snippet_s": (lambda v: v > 0, "> 0 seconds"),
           "audio_quality": (lambda v: 0 <= v <= 1, "in [0, 1]"),
           "neighbours": (lambda v: v >= 0, ">= 0"),
           "flag_min_r": (lambda v: 0 < v <= 1, "in (0, 1]"),
           "null_shifts": (lambda v: v >= 1, ">= 1")}
  for k, (ok, expect) in rules.items():
    if not ok(cfg[k]):
      raise AnalysisError(f"analysis.browser.{k}={cfg[k]!r}; expected {expect}")
  return cfg


def _fmt(x, nd=3) -> str:
  if x is None or (isinstance(x, float) and not np.isfinite(x)):
    return "–"
  return f"{x:.{nd}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{nd}f}"


def _esc(s) -> str:
  return html.escape(str(s))


# --- flags ---------------------------------------------------------------------------------


def acoustic_flags(st: FeatureStats, names: list[str] | None, *, min_r: float) -> dict:
  """{"onset": bool [m], "silence": bool [m], "r": {...}, "null_max": {...}}.

  onset: r(feature, onset_strength) >= min_r and above every shift-null copy; silence:
  r(feature, rms_db) <= -min_r and below every shift-null copy (fires when it is quiet).
  The shift null (`feature_stats(null_shifts=S)`) gives the p-value <= 1 / (S + 1) part;
  `min_r` asks that the descriptor explain a real share of the variance, not just some.
  """
  corr, null = st.correlations(), st.shift_correlations()
  m = len(st.fired)
  out = {"onset": np.zeros(m, bool), "silence": np.zeros(m, bool), "r": {}, "null_max": {}}
  if corr is None or names is None or null is None:
    return out
  cols = st.grounding["null_columns"]
  for flag, name, sign in (("onset", "onset_strength", 1.0), ("silence", "rms_db", -1.0)):
    if name not in names or names.index(name) not in cols:
      continue
    r = sign * np.nan_to_num(corr[:, names.index(name)], nan=0.0)
    rn = sign * np.nan_to_num(null[:, :, cols.index(names.index(name))], nan=0.0)
    out[flag] = (r >= min_r) & (r > rn.max(0))
    out["r"][flag], out["null_max"][flag] = sign * r, sign * rn.max(0)
  return out


# --- activation around the examples: one targeted read of the example prompts ----------------


def clip_traces(source, encoder, st: FeatureStats, requests: dict[int, list[tuple]],
                batch_rows: int = 4096) -> dict[tuple, np.ndarray]:
  """{(prompt, feature, lo): activations over frames lo..hi-1} for requests {prompt: [(feature,
  lo, hi)]}. Each requested prompt's rows are found in its row span (from the streaming pass),
  read once, encoded in batches of about `batch_rows`; missing frames read as 0."""
  out = {}
  pending, n_pending = [], 0

  def flush():
    nonlocal pending, n_pending
    if not pending:
      return
    rows = np.concatenate([r for _, r, _ in pending])
    z = np.asarray(encoder(source.read_rows(rows)), np.float32) if len(rows) else None
    at = 0
    for p, r, frames in pending:
      zp = z[at:at + len(r)] if z is not None else np.zeros((0, 0), np.float32)
      at += len(r)
      for f, lo, hi in requests[p]:
        t = np.zeros(hi - lo, np.float32)
        sel = (frames >= lo) & (frames < hi)
        t[frames[sel] - lo] = zp[sel, f]
        out[(p, f, lo)] = t
    pending, n_pending = [], 0

  for p in sorted(requests, key=lambda q: int(st.row_span[q, 0])):
    a, b = (int(v) for v in st.row_span[p])
    if a < 0:
      pending.append((p, np.zeros(0, np.int64), np.zeros(0, np.int64)))
      continue
    span = np.arange(a, b + 1)
    idx = np.asarray(source.read_index(span))
    lo = min(r[1] for r in requests[p])
    hi = max(r[2] for r in requests[p])
    keep = (idx[:, 0] == p) & (idx[:, 1] >= lo) & (idx[:, 1] < hi)
    pending.append((p, span[keep], idx[keep, 1].astype(np.int64)))
    n_pending += int(keep.sum())
    if n_pending >= batch_rows:
      flush()
  flush()
  return out


# --- audio snippets --------------------------------------------------------------------------


class Snippets:
  """Cuts OGG/Vorbis snippets of the extracted clips (activations/<ds>/audio/<id>.wav) into
  browser/audio/, one file per (prompt, first frame, frames), shared by every page."""

  def __init__(self, audio_src: str, out_dir: str, frame_rate: float, quality: float):
    self.src, self.dir, self.fr, self.q = audio_src, out_dir, float(frame_rate), float(quality)
    self.files, self.bytes = {}, 0

  def _prompt(self, p: int, windows: list[tuple[int, int]]) -> dict:
    import soundfile as sf
    path = os.path.join(self.src, f"{p:06d}.wav") if self.src else ""
    if not path or not os.path.exists(path):
      return {(p, lo, n): None for lo, n in windows}
    y, sr = sf.read(path, dtype="float32", always_2d=True)
    y = np.clip(y.mean(1), -1, 1)
    out = {}
    for lo, n in windows:
      a, b = int(round(lo / self.fr * sr)), int(round((lo + n) / self.fr * sr))
      seg = y[a:b] if b > a and a < len(y) else y
      name = f"audio/p{p:06d}_{lo:05d}_{n}.ogg"
      sf.write(os.path.join(os.path.dirname(self.dir), name), seg, sr, format="OGG",
               subtype="VORBIS", compression_level=self.q)
      out[(p, lo, n)] = name
    return out

  def write(self, keys, threads: int = 2) -> None:
    """Write the snippets {(prompt, first frame, frames)} not written yet, each clip read once
    (prompts in parallel threads: libsndfile encodes outside the GIL)."""
    from concurrent.futures import ThreadPoolExecutor
    by = {}
    for p, lo, n in sorted(set(keys) - set(self.files)):
      by.setdefault(p, []).append((lo, n))
    os.makedirs(self.dir, exist_ok=True)
    with ThreadPoolExecutor(max(1, threads)) as pool:
      for res in pool.map(lambda kv: self._prompt(*kv), by.items()):
        self.files.update(res)
    self.bytes = sum(os.path.getsize(os.path.join(os.path.dirname(self.dir), v))
                     for v in self.files.values() if v)


def snippet_window(peak: int, frames: int, length: int, grid: int) -> tuple[int, int]:
  """(first frame, frames) of a `length`-frame window holding `peak`, its start snapped to
  `grid` frames and kept inside the clip's `frames` frames."""
  n = min(length, max(frames, 1))
  g = max(1, min(grid, length // 4))
  lo = int(round((peak - length / 2) / g) * g)
  return int(np.clip(lo, 0, max(frames - n, 0))), n


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


# --- the build -------------------------------------------------------------------------------


_CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:1.2em auto;color:#222;
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

_JS = """// Sort the feature table by a column (click its header) and filter its rows.
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


def _top_label(label_scores: dict, f: int) -> dict | None:
  """The label value whose training AUROC is highest for feature f (over every label key),
  with its held-out AUROC and family-wise p (selected on training prompts, as selectivity)."""
  best = None
  for key, s in label_scores.items():
    tr = np.nan_to_num(s["auroc_train"][:, f], nan=0.0)
    k = int(np.argmax(tr))
    if best is None or tr[k] > best["auroc_train"]:
      best = {"key": key, "value": s["values"][k], "auroc_train": float(tr[k]),
              "auroc": float(s["auroc"][k, f]), "p_fwer": float(s["p_fwer"][k, f])}
  return best


def nearest_decoders(W_dec: np.ndarray, n: int = 8, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
  """(ids [m, n], cosines [m, n]) of each decoder row's nearest other rows, in row blocks."""
  W = np.asarray(W_dec, np.float32)
  W = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)
  m = len(W)
  n = min(n, m - 1)
  ids, cos = np.zeros((m, n), np.int64), np.zeros((m, n), np.float32)
  for s in range(0, m, block):
    C = W[s:s + block] @ W.T
    C[np.arange(len(C)), s + np.arange(len(C))] = -np.inf
    top = np.argpartition(-C, n - 1, axis=1)[:, :n] if n < m - 1 else np.tile(np.arange(m), (len(C), 1))[:, :n]
    v = np.take_along_axis(C, top, 1)
    o = np.argsort(-v, axis=1)
    ids[s:s + len(C)] = np.take_along_axis(top, o, 1)
    cos[s:s + len(C)] = np.take_along_axis(v, o, 1)
  return ids, cos


def build(out_dir: str, *, st: FeatureStats, source, encoder, prompts: list[dict],
          audio_src: str | None, frame_rate: float, W_dec: np.ndarray, cfg: dict,
          label_scores: dict | None = None, descriptor_names: list[str] | None = None,
          position: dict | None = None, position_kw: dict | None = None,
          dense_threshold: float = 0.1, info: dict | None = None,
          steer: dict | None = None, log=print) -> dict:
  """Write the browser into out_dir/browser/ (replacing an old one); returns its index path
  and sizes. audio_src: the extracted clips' folder, None when the site's rows are not audio
  frames (t5.*: tokens; no snippets then). cfg: the `analysis.browser` fields (top_n, contrast_n, snippet_s,
  audio_quality, neighbours, flag_min_r); position: `validity.position_flags` per feature
  (when None, computed here for every feature that fires, with `position_kw`)."""
  t0 = time.time()
  root = os.path.join(out_dir, DIR)
  if os.path.isdir(root):
    shutil.rmtree(root)
  os.makedirs(os.path.join(root, "features"))
  m = len(st.fired)
  label_scores = label_scores or {}
  fires = np.nonzero(st.fired > 0)[0]
  if position is None:
    position = validity.position_flags(st, [int(f) for f in fires], **(position_kw or {}))
  ac = acoustic_flags(st, descriptor_names, min_r=float(cfg["flag_min_r"]))
  flags = {}
  for f in range(m):
    fl = []
    if st.fired[f] == 0:
      fl.append("dead")
    if st.rate[f] > dense_threshold:
      fl.append("dense")
    if position.get(int(f), {}).get("position"):
      fl.append("position")
    fl += [k for k in ("onset", "silence") if ac[k][f]]
    flags[f] = fl

  # --- the examples of every page: top prompts, low and zero contrast ----------------------
  top_n, n_con = int(cfg["top_n"]), int(cfg["contrast_n"])
  length = max(1, int(round(float(cfg["snippet_s"]) * frame_rate)))
  grid = max(1, int(round(SNIPPET_GRID_S * frame_rate)))
  has_rows = st.prompt_count > 0
  examples, requests = {}, {}
  rng = np.random.default_rng(int(cfg.get("seed", 0)))

  def want(p, f, lo, hi):
    requests.setdefault(int(p), []).append((int(f), int(lo), int(hi)))

  for f in fires:
    f = int(f)
    ex = []
    for act, p, fr in st.top_prompts(f)[:top_n]:
      lo, n = snippet_window(fr, int(st.prompt_count[p]), length, grid)
      ex.append({"kind": "top", "prompt": p, "frame": fr, "act": act, "lo": lo, "n": n})
      want(p, f, lo, lo + n)
    tops = {e["prompt"] for e in ex}
    pmx = st.prompt_max[:, f]
    firing = [int(p) for p in np.argsort(pmx, kind="stable") if pmx[p] > 0 and int(p) not in tops]
    if firing and n_con:
      qs = np.linspace(0.1, 0.25, n_con) if n_con > 1 else [0.1]
      for p in sorted({firing[int(q * (len(firing) - 1))] for q in qs}):
        ex.append({"kind": "low", "prompt": p, "frame": None, "act": float(pmx[p])})
        want(p, f, 0, int(st.prompt_count[p]))
    silent = np.nonzero(has_rows & (pmx <= 0))[0]
    if len(silent) and n_con:
      for p in np.sort(rng.choice(silent, min(n_con, len(silent)), replace=False)):
        p = int(p)
        lo, n = snippet_window(int(st.prompt_count[p]) // 2, int(st.prompt_count[p]), length, grid)
        ex.append({"kind": "zero", "prompt": p, "frame": None, "act": 0.0, "lo": lo, "n": n})
        want(p, f, lo, lo + n)
    examples[f] = ex
  t1 = time.time()
  traces = clip_traces(source, encoder, st, requests)
  t2 = time.time()
  snips = Snippets(audio_src, os.path.join(root, "audio"), frame_rate, float(cfg["audio_quality"]))
  for f, ex in examples.items():
    for e in ex:
      p = e["prompt"]
      if e["kind"] == "low":                       # its peak is found in the whole-clip trace
        t = traces[(p, f, 0)]
        e["frame"] = int(np.argmax(t)) if len(t) else 0
        e["lo"], e["n"] = snippet_window(e["frame"], len(t), length, grid)
        e["trace"] = t[e["lo"]:e["lo"] + e["n"]]
      else:
        e["trace"] = traces[(p, f, e["lo"])]
  snips.write([(e["prompt"], e["lo"], e["n"]) for ex in examples.values() for e in ex],
              threads=min(4, os.cpu_count() or 1))
  t3 = time.time()

  # --- pages ---------------------------------------------------------------------------------
  corr = st.correlations()
  nb_ids, nb_cos = nearest_decoders(W_dec, int(cfg["neighbours"]))
  corpus = Counter(w for p in prompts for w in lab.words(p.get("text", "")))
  P = len(prompts)
  keys = sorted({k for p in prompts for k in (p.get("labels") or {})})
  base = {k: Counter(str((prompts[p].get("labels") or {}).get(k)) for p in np.nonzero(has_rows)[0]
                     if (prompts[p].get("labels") or {}).get(k) is not None) for k in keys}
  steered = _steered_features(steer)
  convert = _steer_audio(out_dir)
  fire_set = set(fires.tolist())
  rows, words = [], {}
  for f in range(m):
    f = int(f)
    top = _top_label(label_scores, f) if label_scores else None
    if f in examples:
      texts = [prompts[e["prompt"]].get("text", "") for e in examples[f] if e["kind"] == "top"]
      words[f] = lab.word_label(texts, corpus, P)[0]
      page = _feature_page(f, st, examples[f], snips, flags[f], position.get(f), ac, top,
                           words[f], prompts, keys, base, corr, descriptor_names, nb_ids[f],
                           nb_cos[f], fire_set,
                           steering_html(steered.get(f), (steer or {}).get("prompts", []), convert))
      with open(os.path.join(root, "features", f"{f}.html"), "w") as fh:
        fh.write(page)
    rows.append(_index_row(f, st, flags[f], top, words.get(f, ""), f in examples))
  with open(os.path.join(root, "browser.css"), "w") as fh:
    fh.write(_CSS)
  with open(os.path.join(root, "browser.js"), "w") as fh:
    fh.write(_JS)
  index = os.path.join(root, "index.html")
  with open(index, "w") as fh:
    fh.write(_index_page(rows, info or {}, flags, top_n, label_scores))
  t4 = time.time()
  size = sum(os.path.getsize(os.path.join(d, x)) for d, _, xs in os.walk(root) for x in xs)
  audio = [v for v in snips.files.values() if v]
  res = {"index": index, "pages": len(examples), "snippets": len(audio),
         "audio_bytes": snips.bytes, "bytes": size,
         "seconds": {"examples": t1 - t0, "traces": t2 - t1, "audio": t3 - t2, "pages": t4 - t3},
         "flags": {k: int(sum(k in fl for fl in flags.values())) for k in FLAGS}}
  log(f"browser: {res['pages']} feature pages, {res['snippets']} audio snippets "
      f"({snips.bytes / 1e6:.1f} MB), {size / 1e6:.1f} MB in all, in {t4 - t0:.1f}s "
      f"(traces {t2 - t1:.1f}s, audio {t3 - t2:.1f}s, pages {t4 - t3:.1f}s): {index}")
  return res


def _flag_html(fl: list[str]) -> str:
  return "".join(f"<span class='flag'>{_esc(x)}</span>" for x in fl)


def _index_row(f, st, fl, top, words, has_page) -> str:
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


def _index_page(rows, info, flags, top_n, label_scores) -> str:
  counts = Counter(x for fl in flags.values() for x in fl)
  summary = " · ".join(f"{_esc(k)}: {_esc(v)}" for k, v in info.items())
  opts = "".join(f"<option value='{k}'>{k} ({counts.get(k, 0)})</option>" for k in FLAGS)
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


def _example_html(e: dict, prompts: list[dict], snips: Snippets, top: float, rank: str) -> str:
  p = prompts[e["prompt"]]
  src = snips.files.get((e["prompt"], e["lo"], e["n"]))
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


def _feature_page(f, st, ex, snips, fl, pos, ac, top, words, prompts, keys, base, corr,
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
  parts.append(f"<section id='steering'>{steer_html}</section>")
  return _page(f"feature {f}", "".join(parts), 1)


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
    out += (f"<h3>{_esc(e.get('label') or '')}</h3><table><tr><th>strength</th>"
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


def _steer_audio(report_dir: str):
  """A function: steer.json's wav (relative to reports/<run>/) -> an OGG copy in
  browser/audio/steer/, as a path relative to a feature page (None when the wav is missing)."""
  def convert(rel: str) -> str | None:
    import soundfile as sf
    src = os.path.join(report_dir, rel)
    name = os.path.splitext(os.path.basename(rel))[0] + ".ogg"
    dst = os.path.join(report_dir, DIR, "audio", "steer", name)
    if not os.path.exists(dst):
      if not os.path.exists(src):
        return None
      y, sr = sf.read(src, dtype="float32", always_2d=True)
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      sf.write(dst, np.clip(y.mean(1), -1, 1), sr, format="OGG", subtype="VORBIS")
    return f"../audio/steer/{name}"
  return convert


def _steered_features(steer: dict | None) -> dict[int, list[dict]]:
  """{SAE feature: its steer.json entries}; directions that are not SAE decoder rows (mean
  differences, probes) belong to no feature page."""
  by = {}
  if steer and steer.get("directions_kind", "sae_decoder") == "sae_decoder":
    for e in steer.get("features", []):
      by.setdefault(int(e["feature"]), []).append(e)
  return by


def update_steering(report_dir: str, steer: dict) -> list[str]:
  """Put steer.json's results into the pages of the steered features (if the browser exists)."""
  fdir = os.path.join(report_dir, DIR, "features")
  import re
  done = []
  by = _steered_features(steer)
  for f, entries in by.items():
    path = os.path.join(fdir, f"{f}.html")
    if not os.path.exists(path):
      continue
    with open(path) as fh:
      page = fh.read()
    html_ = steering_html(entries, steer.get("prompts", []), _steer_audio(report_dir))
    page = re.sub(r"<section id='steering'>.*?</section>",
                  lambda _: f"<section id='steering'>{html_}</section>", page,
                  flags=re.S)
    with open(path, "w") as fh:
      fh.write(page)
    done.append(path)
  return done
