"""The feature browser (musicsae_jax.analysis.browser) on a small store with planted features:
the streamed top prompts against brute force, a planted feature's page, the flags, and the
folder opened in headless Chromium after it has been moved."""
import os
import re
import shutil
import wave
from html.parser import HTMLParser

import numpy as np
import pytest

from musicsae_jax import store
from musicsae_jax.analysis import browser, stats
from tests import browser as chromium

EMOTIONS = ["calm", "energetic", "happy", "sad"]
P, T, D = 24, 20, 6          # prompts, frames per prompt, width (= features: identity SAE)
SR, FPS = 8000, 50           # audio sample rate, frames per second
PLANTED = {p: (3 * p) % T for p in range(1, P, 3)}     # feature 2: prompt -> its one frame


class _Relu:
  """An exact encoder (no sums, so no rounding that depends on the batch): z = max(x, 0)."""
  m = D

  def __call__(self, x):
    return np.maximum(np.asarray(x, np.float32), 0)


def _write_store(root):
  """Feature 0 fires in every frame of the sad prompts (content); feature 1 at frame 7 of
  every prompt (position); feature 2 only at PLANTED frames; feature 3 follows the onset
  descriptor. Rows of prompt pairs are interleaved, so prompts are not contiguous rows."""
  rng = np.random.default_rng(0)
  prompts = [{"text": f"a {EMOTIONS[i % 4]} tune {i}", "labels": {"emotion": EMOTIONS[i % 4]}}
             for i in range(P)]
  path = os.path.join(root, "activations", "ds")
  ds = store.create(path, prompts=prompts, sites={
      "lm.layer.0": store.SiteSpec(d=D, chunk_rows=32),
      "audio.descriptors": store.SiteSpec(d=2, chunk_rows=32)})
  pid = np.repeat(np.arange(P), T)
  fr = np.tile(np.arange(T), P)
  order = np.argsort(pid // 2 * 10 * T + fr * 2 + pid % 2, kind="stable")   # pairs interleaved
  pid, fr = pid[order], fr[order]
  x = rng.normal(size=(len(pid), D)).astype(np.float32)
  x[:, 0] = np.where(pid % 4 == 3, 2.0 + np.abs(x[:, 0]), -1.0)
  x[:, 1] = np.where(fr == 7, 3.0 + np.abs(x[:, 1]), -1.0)
  planted = np.array([PLANTED.get(p) == f for p, f in zip(pid, fr)])
  x[:, 2] = np.where(planted, 5.0 + 0.1 * pid, -1.0)
  onset = x[:, 3] + 0.3 * rng.normal(size=len(x))
  desc = np.stack([rng.normal(size=len(x)) - 20, onset], 1).astype(np.float32)
  index = np.stack([pid, fr], 1).astype(np.int32)
  with ds.writer() as w:
    w.append("lm.layer.0", x, index)
    w.append("audio.descriptors", desc, index)
    w.commit(range(P))
  os.makedirs(os.path.join(path, "audio"))
  t = np.arange(T * SR // FPS) / SR
  for p in range(P):
    with wave.open(os.path.join(path, "audio", f"{p:06d}.wav"), "wb") as f:
      f.setnchannels(1), f.setsampwidth(2), f.setframerate(SR)
      f.writeframes((8000 * np.sin(2 * np.pi * (200 + 20 * p) * t)).astype(np.int16).tobytes())
  return store.open_dataset(path), x, index


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("bw"))
  ds, x, index = _write_store(root)
  site = ds.site("lm.layer.0")
  st = stats.feature_stats(site, _Relu(), P, top_n=5, peak_n=6,
                           descriptors=ds.site("audio.descriptors"), null_columns=[0, 1],
                           null_shifts=19)
  cfg = dict(browser.defaults(), top_n=6, snippet_s=0.2)
  W = np.eye(D, dtype=np.float32) + 0.01
  out = os.path.join(root, "reports", "r")
  res = browser.build(out, st=st, source=site, encoder=_Relu(), prompts=ds.prompts,
                      audio_src=os.path.join(ds.path, "audio"), frame_rate=FPS, W_dec=W, cfg=cfg,
                      descriptor_names=["rms_db", "onset_strength"], position_kw={"window": 0},
                      log=lambda _: None)
  return root, st, x, index, res, site, ds.site("audio.descriptors")


def test_streamed_top_prompts_equal_brute_force(built):
  """One pass, blocks of 32 rows over interleaved prompts == numpy over all rows at once."""
  _, st, x, index, _, _, _ = built
  z = _Relu()(x)
  assert st.row_span is not None and st.peak_vals.shape == (6, D)
  for f in range(D):
    want = []
    for p in range(P):
      rows = np.nonzero(index[:, 0] == p)[0]           # store order: first row on ties
      r = rows[np.argmax(z[rows, f])]
      if z[r, f] > 0:
        want.append((float(z[r, f]), p, int(index[r, 1])))
    want.sort(key=lambda t: -t[0])
    assert st.top_prompts(f) == want[:6], f
  for p in range(P):                                   # row spans cover each prompt's rows
    rows = np.nonzero(index[:, 0] == p)[0]
    assert tuple(st.row_span[p]) == (rows.min(), rows.max())
  counts = st.hist.sum(0)
  np.testing.assert_array_equal(counts, (z > 0).sum(0))
  # the shift null: descriptors rotated within each block, correlated over all rows
  site, desc = built[5], built[6]
  a = desc.read_all().astype(np.float64)
  shifted = np.empty((19,) + a.shape)
  for i in range(site.num_blocks):
    lo, hi = site.block_rows(i)
    for j in range(1, 20):
      shifted[j - 1, lo:hi] = np.roll(a[lo:hi], (j * (hi - lo)) // 20, axis=0)
  want = np.array([[[np.corrcoef(z[:, f], sh[:, c])[0, 1] for c in (0, 1)] for f in range(D)]
                   for sh in shifted])
  np.testing.assert_allclose(st.shift_correlations(), want, atol=1e-9)


class _Examples(HTMLParser):
  def __init__(self):
    super().__init__()
    self.ex, self.audio = [], []

  def handle_starttag(self, tag, attrs):
    a = dict(attrs)
    if tag == "div" and a.get("class") == "ex":
      self.ex.append((a["data-kind"], int(a["data-prompt"]), a["data-frame"]))
    if tag == "audio":
      self.audio.append(a["src"])


def _page(root, f):
  p = _Examples()
  with open(os.path.join(root, "reports", "r", "browser", "features", f"{f}.html")) as fh:
    p.feed(fh.read())
  return p


def test_planted_feature_page_shows_its_planted_frames(built):
  root = built[0]
  p = _page(root, 2)
  tops = [(q, int(fr)) for kind, q, fr in p.ex if kind == "top"]
  by_act = sorted(PLANTED.items(), key=lambda kv: -kv[0])[:6]   # activation 5 + 0.1 * prompt
  assert tops == by_act
  zero = [q for kind, q, _ in p.ex if kind == "zero"]
  assert zero and not set(zero) & set(PLANTED)             # contrast: prompts where it is 0
  assert len(p.audio) == len(p.ex)
  for src in p.audio:                                      # relative, inside the folder
    assert src.startswith("../audio/") and src.endswith(".ogg")
    assert os.path.getsize(os.path.join(root, "reports", "r", "browser", "features", src)) > 0


def test_flags_position_content_and_onset(built):
  root, _, _, _, res, _, _ = built
  with open(res["index"]) as fh:
    text = fh.read()
  flags = {int(f): fl.split() for fl, f in re.findall(r"<tr data-flags='([^']*)'><td data-v='(\d+)'", text)}
  assert len(flags) == D
  assert "position" in flags[1]                      # planted at frame 7 of every prompt
  assert "position" not in flags[0]                  # content: every frame of sad prompts
  assert "position" not in flags[2]                  # one frame per prompt, but spread
  assert "onset" in flags[3] and all("onset" not in flags[f] for f in (0, 1, 2, 4, 5))
  assert not any("silence" in fl for fl in flags.values())
  assert "dense" in flags[3] and "dense" not in flags[2]
  page = lambda f: open(os.path.join(root, "reports", "r", "browser", "features", f"{f}.html")).read()
  assert "<span class='flag'>position</span>" in page(1)
  assert "<span class='flag'>position</span>" not in page(0)


_SORT_AND_FILTER = """(() => {
  const ths = document.querySelectorAll('#features th');
  sortBy(ths[2]); sortBy(ths[2]);                       // max activation, twice: descending
  const order = [...document.querySelectorAll('#features tbody tr')].map(r => r.cells[0].dataset.v);
  document.getElementById('flag').value = 'position'; filterRows();
  const shown = [...document.querySelectorAll('#features tbody tr')]
      .filter(r => r.style.display !== 'none').map(r => r.cells[0].dataset.v);
  return JSON.stringify({order, shown});
})()"""


def test_labels_go_into_the_feature_pages(built):
  """labels.json's labels appear on their features' pages, and a second write replaces them."""
  root = built[0]
  rd = os.path.join(root, "reports", "r")
  lab = {"features": [{"id": 2, "labels": [
      {"source": "words", "label": "planted words", "scores": {"clap": 0.75, "llm": None}},
      {"source": "clap", "label": "bright", "margin": 0.01, "z": 2.5, "scores": {"clap": 0.9}}],
      "clap_candidates": [{"word": "bright", "margin": 0.01}, {"word": "dark", "margin": 0.005}]}]}
  assert browser.update_labels(rd, lab) == [os.path.join(rd, "browser", "features", "2.html")]
  lab["features"][0]["labels"][1]["label"] = "warm"
  browser.update_labels(rd, lab)
  page = open(os.path.join(rd, "browser", "features", "2.html")).read()
  assert page.count("<section id='labels'>") == 1 and "<b>warm</b>" in page
  assert "<b>bright</b>" not in page and "clap 0.75" in page and "dark (+0.005)" in page
  assert page.index("<section id='labels'>") < page.index("<section id='steering'>")


def test_index_sorts_and_filters_in_chromium(built):
  chromium.require()
  _, st, _, _, res, _, _ = built
  got = chromium.evaluate(res["index"], _SORT_AND_FILTER)
  assert [int(f) for f in got["order"]] == list(np.argsort(-st.max, kind="stable"))
  assert got["shown"] == ["1"]                            # the one position feature


def test_moved_browser_plays_in_chromium(built, tmp_path):
  """Moved elsewhere, a feature page's players still load: every <audio> reports ~0.2 s."""
  chromium.require()
  root = built[0]
  moved = str(tmp_path / "moved")
  shutil.move(os.path.join(root, "reports", "r", "browser"), moved)     # no path back
  page = os.path.join(moved, "features", "2.html")
  durations = chromium.audio_durations(page)
  assert len(durations) == len(_page_at(page).audio) > 6
  assert all(isinstance(d, float) and 0.15 < d < 0.3 for d in durations), durations


def _page_at(path):
  p = _Examples()
  with open(path) as fh:
    p.feed(fh.read())
  return p



def test_steering_blocks_name_their_method():
  """Two methods on one feature give two blocks with different titles (add / set), not two
  identical ones."""
  from musicsae_jax.analysis import browser_html
  st = lambda a: {"alpha": a, "stats": {"concept": {"mean": 0.1 * a, "ci": [0.0, 0.2 * a]}}}
  entries = [{"method": m, "label": "emotion=sad", "steered": [st(0.0), st(4.0)], "control": [],
              "verdict": {"text": f"{m}: no evidence"}} for m in ("add", "set")]
  page = browser_html.steering_html(entries)
  assert page.count("<h3>add: emotion=sad</h3>") == 1 and page.count("<h3>set: emotion=sad</h3>") == 1
