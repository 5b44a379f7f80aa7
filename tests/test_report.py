"""End to end: a synthetic store + a hand-built run -> reports/<run>/ (JSON files and an
HTML report checked by parsing it), export fed from selectivity.json, and clear errors."""
import base64
import json
import os
import wave
from html.parser import HTMLParser

import ml_collections
import numpy as np
import pytest

from musicsae_jax import checkpoint as ckpt_lib, export, store
from musicsae_jax.analysis import AnalysisError, analyze, selected_features
from musicsae_jax.analysis.report import SECTIONS

EMOTIONS = ["calm", "energetic", "happy", "sad"]
P, FRAMES, D, M = 48, 10, 8, 16


def _workspace(root):
  """Feature 0 of a hand-built ReLU SAE reads x[:, 0], which is > 0 only for sad prompts (any
frame); feature 1 reads x[:, 1], which is > 0 only at frame 4 of every prompt (position)."""
  rng = np.random.default_rng(0)
  prompts = [{"text": f"{'gloomy' if i % 4 == 3 else 'bright'} {EMOTIONS[i % 4]} song {i}",
              "labels": {"emotion": EMOTIONS[i % 4]}} for i in range(P)]
  ds_path = os.path.join(root, "activations", "ds")
  ds = store.create(ds_path, prompts=prompts, sites={
      "lm.layer.0": store.SiteSpec(d=D, chunk_rows=64), "t5.pooled": store.SiteSpec(d=6),
      "audio.descriptors": store.SiteSpec(d=3)})
  pid = np.repeat(np.arange(P), FRAMES)
  index = np.stack([pid, np.tile(np.arange(FRAMES), P)], 1).astype(np.int32)
  x = rng.normal(size=(len(pid), D)).astype(np.float32)
  sad = np.array([p % 4 == 3 for p in pid])
  x[:, 0] = np.where(sad, 2.0 + np.abs(x[:, 0]), -1.0)
  x[:, 1] = np.where(index[:, 1] == 4, 3.0 + np.abs(x[:, 1]), -1.0)   # a position feature
  a = np.stack([x[:, 0] + 0.1 * rng.normal(size=len(x)), rng.normal(size=len(x)),
                rng.normal(size=len(x))], 1).astype(np.float32)
  t5 = rng.normal(size=(P, 6)).astype(np.float32) + np.eye(4, 6)[np.arange(P) % 4] * 3
  with ds.writer() as w:
    w.append("lm.layer.0", x, index)
    w.append("audio.descriptors", a, index)
    w.append("t5.pooled", t5, np.stack([np.arange(P), np.zeros(P)], 1).astype(np.int32))
    w.commit(range(P))
  os.makedirs(os.path.join(ds_path, "audio"))
  for i in range(3, P, 4):                                   # the sad prompts' audio
    with wave.open(os.path.join(ds_path, "audio", f"{i:06d}.wav"), "wb") as f:
      f.setnchannels(1), f.setsampwidth(2), f.setframerate(8000)
      f.writeframes(np.zeros(800, np.int16).tobytes())
  run_dir = os.path.join(root, "runs", "r")
  W_enc = np.concatenate([np.eye(D), rng.normal(size=(D, M - D)) * 0.3], 1).astype(np.float32)
  params = {"W_enc": W_enc, "b_enc": np.zeros(M, np.float32), "W_dec": W_enc.T.copy(),
            "b_dec": np.zeros(D, np.float32)}
  ck = ckpt_lib.Checkpointer(os.path.join(run_dir, "checkpoints"), async_save=False)
  ck.save(10, {"params": params, "stats": {}}, None)
  ck.close()
  with open(os.path.join(run_dir, "config.json"), "w") as f:
    json.dump({"run": "r", "train": {"site": "lm.layer.0"}, "sae": {"architecture": "relu", "m": M}}, f)
  with open(os.path.join(run_dir, "normalization.json"), "w") as f:
    json.dump({"scale": 1.0, "d": D}, f)
  with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
    for s in (5, 10):
      f.write(json.dumps({"kind": "train", "step": s, "loss": 1.0 / s, "mse": 1.0 / s, "l0": 4,
                          "fvu": 0.5, "dead_frac": 0.0, "lr": 1e-3}) + "\n")
  return params


def _config(**analysis):
  c = ml_collections.ConfigDict({"run": "r", "dataset": "ds"})
  # position_window=0: in 10-frame clips a +-2 window spans half the clip.
  a = dict(label_keys=("emotion",), probe_folds=3, probe_steps=30, probe_shuffles=2,
           cosine_permutations=100, rate_band=(1e-3, 0.5), position_window=0)
  c.analysis = ml_collections.ConfigDict({**a, **analysis})
  return c


class _Collect(HTMLParser):
  def __init__(self):
    super().__init__()
    self.sections, self.imgs, self.audio, self.stack = [], [], [], []

  def handle_starttag(self, tag, attrs):
    a = dict(attrs)
    if tag == "section":
      self.sections.append(a["id"])
    if tag == "img":
      self.imgs.append((self.sections[-1], a["src"]))
    if tag == "audio":                  # an embedded clip names its file in data-file
      assert a.get("data-file") or not a["src"].startswith("data:")
      self.audio.append(a.get("data-file") or a["src"])


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("ws"))
  params = _workspace(root)
  logs = []
  paths = analyze(_config(), root, log=logs.append)
  return root, params, paths, logs


def test_writes_json_with_planted_feature_first(result):
  root, params, paths, logs = result
  assert set(paths) == {"features", "selectivity", "probes", "probes_by_layer", "report", "browser"}
  assert all(p.startswith(os.path.join(root, "reports", "r")) for p in paths.values())
  assert any("block" in m and "rows/s" in m for m in logs)            # progress output
  sel = json.load(open(paths["selectivity"]))
  em = sel["labels"]["emotion"]
  assert em["values"] == EMOTIONS and em["counts"] == [12, 12, 12, 12]
  assert em["split"]["heldout_counts"] == [4, 4, 4, 4]        # 0.3 of 12, selected on the rest
  assert em["top_features"]["sad"][0] == 0
  sad0 = em["features"]["sad"][0]
  assert sad0["auroc"] == 1.0 and sad0["auroc_train"] == 1.0   # held-out and training prompts
  assert sad0["passes"] and sad0["p_fwer"] <= 0.05 and sad0["q_bh"] <= 0.05
  assert em["bh_features"]["sad"][0] == 0
  assert 0.5 < em["null"]["max_auroc_threshold"]["sad"] <= 1.0
  feats = json.load(open(paths["features"]))
  f0 = next(f for f in feats["features"] if f["id"] == 0)
  assert f0["firing_rate"] == pytest.approx(0.25)
  assert all(p["labels"]["emotion"] == "sad" for p in f0["top_prompts"])
  assert f0["heuristic_label"].startswith("gloomy")
  assert f0["acoustic"][0]["descriptor"] == "descriptor_0" and f0["acoustic"][0]["r"] > 0.9
  f1 = next(f for f in feats["features"] if f["id"] == 1)
  assert f1["flags"] == ["position"] and f1["position"]["modal_count"] == 5
  assert f0["flags"] == [] and f0["position"]["p"] > 0.01        # content, spread over frames
  assert sad0["flags"] == []
  pr = json.load(open(paths["probes"]))
  names = [r["name"] for r in pr["probes"]["emotion"]]
  assert names == ["t5.pooled", "lm.layer.0", "sae:lm.layer.0"]
  t5 = pr["probes"]["emotion"][0]
  assert t5["accuracy"] > 0.8 and t5["n"] == P                        # planted one-hot offsets
  assert {s["centered"] for s in pr["similarity"]["emotion"]} == {True, False}
  # selectivity.json feeds the export of steering directions.
  # Only "sad" has a real feature: the others must not pass, and the export refuses them.
  assert [f[0]["passes"] for f in em["features"].values()] == [False, False, False, True]
  with pytest.raises(AnalysisError, match=r"emotion=calm: feature \d+ does not pass"):
    selected_features(paths["selectivity"], "emotion")
  warned = []
  ids, labels = selected_features(paths["selectivity"], "emotion", allow_failing=True,
                                  warn=warned.append)
  assert len(warned) == 3 and all("WARNING" in w for w in warned)
  assert ids[3] == 0 and labels[3] == "emotion=sad"
  assert sel["export"]["emotion"] == {"feature_ids": ids, "labels": labels,
                                      "passes": [False, False, False, True]}
  out = export.export_directions(params, ids, labels, "lm.layer.0", 0, None,
                                 os.path.join(root, "exports", "r"))
  dirs, man = export.load_directions(out)
  assert dirs.shape == (4, D) and man["labels"] == labels


def test_report_has_every_section_and_image(result):
  root, _, paths, _ = result
  p = _Collect()
  p.feed(open(paths["report"]).read())
  assert p.sections == list(SECTIONS)
  with_img = {s for s, _ in p.imgs}
  assert {"training", "density", "selectivity", "probes"} <= with_img
  for _, src in p.imgs:
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
  assert p.audio and all(os.path.exists(os.path.join(root, "reports", "r", s)) for s in p.audio)
  assert all(int(a[len("audio/"):-4]) % 4 == 3 for a in p.audio)   # sad prompts only
  text = open(paths["report"]).read()
  assert "features at false-discovery rate 0.05 (BH): 0" in text      # the planted sad feature
  assert "<td>position</td>" in text                                 # the planted position feature
  assert '<a href="browser/index.html">Feature browser</a>' in text    # relative: moves with it
  assert '<td><a href="browser/features/1.html">1</a></td>' in text   # discovery links to pages
  index = open(paths["browser"]).read()
  assert "<a href='features/1.html'>1</a>" in index and "position" in index


@pytest.mark.parametrize("override,match", [
    (dict(label_keys=("genre",)), "no prompt has label 'genre'"),
    (dict(probe_folds=13), r"too few prompts per label for 13-fold"),
    (dict(site="lm.layer.5"), r"'lm.layer.5'.*not in .*store sites"),
    (dict(site="t5.pooled"), r"width d=8 but store site 't5.pooled'.*d=6"),
    (dict(rate_band=(0.5, 0.1)), "rate_band"),
    (dict(browser=dict(top_n=0)), r"analysis.browser.top_n=0; expected >= 1"),
    (dict(browser=dict(colour="red")), r"unknown config.analysis.browser fields \['colour'\]"),
])
def test_bad_input_errors(result, override, match):
  root = result[0]
  with pytest.raises(AnalysisError, match=match):
    analyze(_config(**override), root, log=lambda m: None)


def test_missing_run_error(tmp_path):
  with pytest.raises(AnalysisError, match="no trained run 'r'"):
    analyze(_config(), str(tmp_path))


def test_sweep_member_report_shows_its_sweep(result):
  """runs/<sweep>/<member>/ is analysed like any run, and the report adds the sweep."""
  import shutil
  from musicsae_jax.analysis.report import SWEEP_SECTION
  root = result[0]
  member = os.path.join(root, "runs", "sw", "m1")
  shutil.copytree(os.path.join(root, "runs", "r"), member)
  cfg = json.load(open(os.path.join(member, "config.json")))
  cfg.update(run="sw/m1", sweep_member={"sweep": "sw", "member": "m1", "overrides": {"sae.k": 4}})
  json.dump(cfg, open(os.path.join(member, "config.json"), "w"))
  json.dump({"run": "sw", "axes": {"sae.k": [4, 8]}, "pareto": ["m1"], "members": [
      {"name": "m1", "overrides": {"sae.k": 4}, "group": 0, "fvu": 0.3, "l0": 4.0,
       "dead_frac": 0.1, "pareto": True},
      {"name": "m2", "overrides": {"sae.k": 8}, "group": 1, "fvu": 0.4, "l0": 8.0,
       "dead_frac": 0.0, "pareto": False}]}, open(os.path.join(root, "runs", "sw", "sweep.json"), "w"))
  c = _config()
  c.run = "sw/m1"
  paths = analyze(c, root, log=lambda _: None)
  assert paths["report"] == os.path.join(root, "reports", "sw", "m1", "report.html")
  p = _Collect()
  p.feed(open(paths["report"]).read())
  assert p.sections == ["summary", "training", SWEEP_SECTION, *SECTIONS[2:]]
  assert SWEEP_SECTION in {s for s, _ in p.imgs}


def test_seed_stability_recovers_a_permuted_run(result):
  """A run whose dictionary is a scaled, permuted copy matches back exactly."""
  from musicsae_jax.analysis import pipeline
  root, params, _, _ = result
  perm = np.random.default_rng(7).permutation(M)
  other = {"W_enc": params["W_enc"][:, perm], "b_enc": params["b_enc"][perm],
           "W_dec": 2.0 * params["W_dec"][perm], "b_dec": params["b_dec"]}
  ck = ckpt_lib.Checkpointer(os.path.join(root, "runs", "r_perm", "checkpoints"), async_save=False)
  ck.save(10, {"params": other, "stats": {}}, None)
  ck.close()
  with open(os.path.join(root, "runs", "r_perm", "config.json"), "w") as f:
    json.dump({"run": "r_perm", "train": {"site": "lm.layer.0"}, "sae": {"m": M}}, f)
  r = pipeline.seed_stability(root, "r", "r_perm")
  assert r["fraction_matched"] == 1.0 and r["method"] == "hungarian"
  np.testing.assert_array_equal(perm[r["match"]], np.arange(M))
  saved = json.load(open(os.path.join(root, "reports", "r", "stability.json")))
  assert saved["fraction_matched"] == 1.0 and saved["other"] == "r_perm"


def test_layers_table_from_the_analysis_probes(result):
  """analyze's own probes, reorganised: the planted sad direction on lm.layer.0, the SAE
  probe and each emotion's best feature (feature 0 for sad, as in selectivity.json)."""
  root, _, paths, _ = result
  tab = json.load(open(paths["probes_by_layer"]))
  e = tab["table"]["emotion"]
  assert tab["sites"] == ["lm.layer.0"] and e["best_site"] == "lm.layer.0"
  assert e["layers"][0]["accuracy"] > e["layers"][0]["shuffled_accuracy"]
  assert e["sae"]["site"] == "lm.layer.0" and e["sae"]["features"]["sad"]["id"] == 0
  assert set(e["sae"]["random_directions"]["best"]) == set(EMOTIONS)   # the control


def test_rerun_keeps_spliced_sections_with_contents(result):
  """Sections other launchers splice in (steering, localisation) survive a rerun of the
  analysis, and the contents list links every section present. Last in this file: it
  rewrites the shared report."""
  from musicsae_jax.analysis import report
  root, _, paths, _ = result
  rd = os.path.join(root, "reports", "r")
  report.splice_section(rd, "steering", '<section id="steering"><h2>Steering</h2>s</section>')
  report.splice_section(rd, "fidelity", '<section id="fidelity"><h2>Fidelity</h2>f</section>',
                        before=("steering",))
  page = open(paths["report"]).read()
  assert page.count('<nav id="contents">') == 1 and '<a href="#steering">Steering</a>' in page
  before = _Collect()
  before.feed(page)
  extra = [s for s in before.sections if s not in SECTIONS]   # stability too, if spliced above
  assert extra[-2:] == ["fidelity", "steering"]
  analyze(_config(), root, log=lambda m: None)
  page = open(paths["report"]).read()
  p = _Collect()
  p.feed(page)
  assert p.sections == list(SECTIONS) + extra
  assert page.count('<nav id="contents">') == 1
  assert all(f'<a href="#{s}">' in page for s in p.sections)


@pytest.mark.parametrize("cols", [["major", "minor"], ["a", "b", "c", "d", "e", "f", "g", "h"]])
def test_heatmap_title_fits_inside_the_figure(cols):
  """A two-value concept's heatmap keeps its whole title ('mode: ...' was cut to 'ode:')."""
  from musicsae_jax.analysis import report as report_lib
  fig = report_lib.heatmap_figure(np.full((5, len(cols)), 0.5), [f"f{i}" for i in range(5)], cols,
                                  "mode: held-out-vocabulary AUROC per feature")
  fig.canvas.draw()
  title = fig.axes[0].title
  box = title.get_window_extent()
  assert box.x0 >= 0 and box.x1 <= fig.bbox.width, (box, fig.bbox.width)
  assert title.get_text().replace("\n", " ") == "mode: held-out-vocabulary AUROC per feature"
  report_lib.plots.pyplot().close(fig)


def test_summary_names_the_model_and_its_backend(result):
  """The report says which model and implementation made the activations (they differ)."""
  from musicsae_jax.analysis.pipeline import model_line
  assert model_line({"source": "facebook/musicgen-small", "backend": "transformers"}) == (
      "facebook/musicgen-small (transformers backend)")
  assert model_line({"source": "tiny"}) == "tiny (audiocraft backend)"    # before the field
  assert model_line({}) == "unknown model"                                # e.g. a hand-made store
  assert "<td>model</td><td>unknown model</td>" in open(result[2]["report"]).read()


def test_a_wide_table_fits_the_page_in_chromium(tmp_path):
  """MusicGen-small's 24 layers make a wide concepts table: its cells wrap to fit the page
  instead of pushing it sideways (checked in headless Chromium, 1000 px wide)."""
  from musicsae_jax.analysis import report as report_lib
  from tests import browser
  browser.require()
  cell = "0.83<br><small>±0.02 (sh 0.25)</small>"
  head = ["concept", "K"] + [f"L{i}" for i in range(24)] + ["best SAE feature per value"]
  rows = [["mode", 2] + [cell] * 24 + ["major: f12345 0.97* (random 0.61), minor: f2345 0.95*"]]
  page = tmp_path / "wide.html"
  page.write_text(report_lib._page("wide", report_lib._table(head, rows)))   # pylint: disable=protected-access
  got = browser.evaluate(str(page), "Promise.resolve(JSON.stringify({page: "
                         "document.documentElement.clientWidth, table: Math.ceil("
                         "document.querySelector('table').getBoundingClientRect().right)}))")
  assert got["table"] <= got["page"], got
