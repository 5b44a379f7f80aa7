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

Every link is relative, so the folder works when moved or zipped. This module collects what
the pages show; `browser_html` writes them. The top examples come from
the one streaming pass of `stats.feature_stats(peak_n=...)`; the activation lines need the
feature's values around those frames, which one more read of just the example prompts'
rows gives (`clip_traces`: rows located through the per-prompt row spans of the pass).
"""
from __future__ import annotations

import os
import shutil
import time
from collections import Counter

import numpy as np

from musicsae_jax import files
from musicsae_jax.analysis import labels as lab, validity
from musicsae_jax.analysis.browser_html import CSS, JS, feature_page, index_page, index_row, \
    labels_html, steering_html
from musicsae_jax.analysis.stats import AnalysisError, FeatureStats

DIR = "browser"
FLAGS = ("dead", "dense", "position", "onset", "silence")
SNIPPET_GRID_S = 0.25      # snippet starts snap to this grid, so nearby examples share a file


def defaults() -> dict:
  """The `analysis.browser` fields and their defaults (musicsae_jax.config_defaults.browser)."""
  from musicsae_jax import config_defaults as d
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


# --- the build -------------------------------------------------------------------------------


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
      page = feature_page(f, st, examples[f], snips.files, flags[f], position.get(f), ac, top,
                           words[f], prompts, keys, base, corr, descriptor_names, nb_ids[f],
                           nb_cos[f], fire_set,
                           steering_html(steered.get(f), (steer or {}).get("prompts", []), convert))
      with open(os.path.join(root, "features", f"{f}.html"), "w") as fh:
        fh.write(page)
    rows.append(index_row(f, st, flags[f], top, words.get(f, ""), f in examples))
  with open(os.path.join(root, "browser.css"), "w") as fh:
    fh.write(CSS)
  with open(os.path.join(root, "browser.js"), "w") as fh:
    fh.write(JS)
  index = os.path.join(root, "index.html")
  with open(index, "w") as fh:
    fh.write(index_page(rows, info or {}, flags, FLAGS, top_n, label_scores))
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


# --- steering (reports/<run>/steer.json) -------------------------------------------------------


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


def update_labels(report_dir: str, labels: dict) -> list[str]:
  """Put labels.json's labels into the pages of the labelled features (if the browser
  exists), replacing older ones; returns the pages written."""
  import re
  fdir = os.path.join(report_dir, DIR, "features")
  done = []
  for entry in labels.get("features", []):
    path = os.path.join(fdir, f"{int(entry['id'])}.html")
    if not os.path.exists(path):
      continue
    with open(path) as fh:
      page = fh.read()
    section = f"<section id='labels'>{labels_html(entry)}</section>"
    if "<section id='labels'>" in page:
      page = re.sub(r"<section id='labels'>.*?</section>", lambda _: section, page, flags=re.S)
    else:                                   # a page written before the labels slot existed
      page = page.replace("<section id='steering'>", section + "<section id='steering'>", 1)
    files.write_text(path, page)          # rewritten in place: atomically
    done.append(path)
  return done


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
    files.write_text(path, page)
    done.append(path)
  return done
