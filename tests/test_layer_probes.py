"""Concepts across layers (musicsae_jax/analysis/layers.py): on a store where each concept
is planted in one layer only, the cross-layer table finds it there and nowhere else, with a
multiclass label, a label that cannot be probed, the report's heatmap section, and the
best SAE feature per value when a run exists."""
import json
import os
from html.parser import HTMLParser

import ml_collections
import numpy as np
import pytest

from musicsae_jax import store
from musicsae_jax.analysis import AnalysisError, layer_probes, layers

# Probe settings and sizes as in tests/test_report.py (K=4, 3 folds, 48 prompts), so the
# suite compiles the probe once for both files.
P, FRAMES, D, LAYERS = 48, 4, 16, 4
KEYS = ["A#", "C", "E", "G#"]
DENSITIES = ["1", "2", "3", "4"]


def _store(root):
  """key (4 values) is linearly readable only at layer 2, density (4 values, independent of
  key) only at layer 0; const has one value (skipped)."""
  rng = np.random.default_rng(0)
  key = np.arange(P) % 4
  density = (np.arange(P) // 4) % 4
  prompts = [{"text": f"clip {i}", "labels": {
      "key": KEYS[key[i]], "density": DENSITIES[density[i]], "const": "x"}}
             for i in range(P)]
  path = os.path.join(root, "activations", "planted")
  ds = store.create(path, {f"lm.layer.{i}": {"d": D, "dtype": "float32"} for i in range(LAYERS)},
                    prompts=prompts)
  pid = np.repeat(np.arange(P), FRAMES)
  index = np.stack([pid, np.tile(np.arange(FRAMES), P)], 1).astype(np.int32)
  with ds.writer() as w:
    for i in range(LAYERS):
      x = rng.normal(size=(len(pid), D))
      if i == 2:
        x[:, 8:12] += 3.0 * np.eye(4)[key[pid]]           # on axes 8..11: SAE features 8..11
      if i == 0:
        x[:, :4] += 3.0 * np.eye(4)[density[pid]]
      w.append(f"lm.layer.{i}", x.astype(np.float32), index)
    w.commit(range(P))
  return path


def _run(root):
  """A hand-built ReLU SAE on lm.layer.2: the identity encoder (latent j = relu(x_j))."""
  from musicsae_jax import checkpoint as ckpt_lib
  M = D
  W_enc = np.eye(D, dtype=np.float32)
  params = {"W_enc": W_enc, "b_enc": np.zeros(M, np.float32), "W_dec": W_enc.T.copy(),
            "b_dec": np.zeros(D, np.float32)}
  run_dir = os.path.join(root, "runs", "planted")
  ck = ckpt_lib.Checkpointer(os.path.join(run_dir, "checkpoints"), async_save=False)
  ck.save(1, {"params": params, "stats": {}}, None)
  ck.close()
  with open(os.path.join(run_dir, "config.json"), "w") as f:
    json.dump({"run": "planted", "train": {"site": "lm.layer.2"},
               "sae": {"architecture": "relu", "m": M}}, f)


def _config():
  c = ml_collections.ConfigDict({"run": "planted", "dataset": "planted"})
  c.analysis = ml_collections.ConfigDict(dict(probe_folds=3, probe_steps=30, probe_shuffles=2))
  return c


class _Sections(HTMLParser):
  def __init__(self):
    super().__init__()
    self.sections, self.imgs = [], []

  def handle_starttag(self, tag, attrs):
    if tag == "section":
      self.sections.append(dict(attrs)["id"])
    if tag == "img" and self.sections:
      self.imgs.append(self.sections[-1])


def test_planted_concepts_are_found_at_their_layer_only(tmp_path):
  _store(str(tmp_path))
  paths = layer_probes.probe_layers(_config(), str(tmp_path), run="", log=lambda _: None)
  tab = json.load(open(paths["probes_by_layer"]))
  assert tab["sites"] == [f"lm.layer.{i}" for i in range(LAYERS)]
  assert tab["run"] is None and tab["skipped"] == {"const": "one value only ('x')"}
  assert tab["label_keys"] == ["key", "density"]
  for name, layer in (("key", "lm.layer.2"), ("density", "lm.layer.0")):
    e = tab["table"][name]
    assert len(e["classes"]) == 4 and e["chance"] == pytest.approx(0.25)
    acc = {r["site"]: r["accuracy"] for r in e["layers"]}
    assert e["best_site"] == layer and acc[layer] >= 0.9, (name, acc)
    assert all(a < 0.5 for s, a in acc.items() if s != layer), (name, acc)   # chance 0.25
    assert all(r["shuffled_accuracy"] < 0.5 for r in e["layers"]), name      # the control
  p = _Sections()
  p.feed(open(paths["report"]).read())
  assert p.sections == [layers.SECTION] and p.imgs == [layers.SECTION]
  # A second pass replaces the section instead of adding one.
  layers.write(tab, os.path.dirname(paths["report"]))
  p = _Sections()
  p.feed(open(paths["report"]).read())
  assert p.sections == [layers.SECTION]
  # With a trained run (found as config.run): its latents are probed too, and each key
  # value's best feature is the axis it was planted on.
  _run(str(tmp_path))
  tab = json.load(open(layer_probes.probe_layers(_config(), str(tmp_path),
                                           log=lambda _: None)["probes_by_layer"]))
  sae = tab["table"]["key"]["sae"]
  assert tab["run"] == "planted" and sae["site"] == "lm.layer.2" and sae["accuracy"] >= 0.9
  assert {v: f["id"] for v, f in sae["features"].items()} == {k: 8 + i for i, k in enumerate(KEYS)}
  assert all(f["passes"] for f in sae["features"].values())
  rand = sae["random_directions"]                    # the control: m random directions
  assert rand["m"] == D and set(rand["best"]) == set(KEYS)
  assert all(0 <= r["id"] < D and 0 <= r["auroc"] <= 1 for r in rand["best"].values())


def test_random_direction_control_is_weaker_than_the_planted_axis():
  """A label on one axis of a 256-d site: the axis reads it perfectly (held-out AUROC 1);
  the best of 16 random directions, chosen on the training prompts, does much worse."""
  rng = np.random.default_rng(1)
  y = np.arange(80) % 2
  x = rng.normal(size=(80, 256))
  x[:, 7] += 4.0 * y
  a = {"seed": 0, "heldout_fraction": 0.3}
  r = layers.random_direction_features(x, {"lab": (["no", "yes"], y)}, 16, a)["lab"]
  assert r["m"] == 16 and set(r["best"]) == {"no", "yes"}
  assert r["best"]["yes"]["auroc"] < 0.8, r
  axis = layers.lab.auroc(x[:, 7:8], y == 1)[0]
  assert axis > 0.99


def test_named_label_that_cannot_be_probed_is_an_error(tmp_path):
  _store(str(tmp_path))
  with pytest.raises(AnalysisError, match="label 'const' cannot be probed.*one value only"):
    layer_probes.probe_layers(_config(), str(tmp_path), label_keys=["const"], log=lambda _: None)
  with pytest.raises(AnalysisError, match="no lm.layer.<i> site|'lm.layer.9' is not in"):
    layer_probes.probe_layers(_config(), str(tmp_path), sites=["lm.layer.9"], log=lambda _: None)


def test_the_table_stars_the_features_that_pass_the_null():
  """* marks a value whose best feature passes the permutation null (as a reader expects of
  a star), and the note says so; a failing feature is left unmarked."""
  layer = {"accuracy": 0.9, "accuracy_std": 0.05, "shuffled_accuracy": 0.5, "gap": 0.4}
  tab = {"label_keys": ["mode"], "sites": ["lm.layer.1"], "skipped": {},
         "table": {"mode": {"layers": [layer], "classes": ["major", "minor"], "chance": 0.5,
                            "best_site": "lm.layer.1",
                            "sae": {"site": "lm.layer.1", "accuracy": 0.8,
                                    "features": {"major": {"id": 7, "auroc": 0.97, "passes": True},
                                                 "minor": {"id": 9, "auroc": 0.61, "passes": False}}}}}}
  html = layers.section(tab)
  assert "major: f7 0.97*" in html
  assert "minor: f9 0.61" in html and "minor: f9 0.61*" not in html
  assert "* = passes the best-of-m permutation null" in html
