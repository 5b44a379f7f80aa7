"""Seed stability in the report: launch.analyze --compare_run adds a section with the fraction
of features matched above the threshold and the histogram of match cosines."""
import base64
import json
import os
import re
from html.parser import HTMLParser

import numpy as np

from musicsae_jax import checkpoint as ckpt_lib
from musicsae_jax.analysis import pipeline, report, validity

D, M, SAME = 16, 12, 9          # the other run shares 9 of 12 decoder rows (permuted)


def _run(root, name, W_dec):
  ck = ckpt_lib.Checkpointer(os.path.join(root, "runs", name, "checkpoints"), async_save=False)
  ck.save(3, {"params": {"W_enc": W_dec.T.copy(), "b_enc": np.zeros(len(W_dec), np.float32),
                         "W_dec": W_dec, "b_dec": np.zeros(D, np.float32)}, "stats": {}}, None)
  ck.close()
  with open(os.path.join(root, "runs", name, "config.json"), "w") as f:
    json.dump({"run": name, "sae": {"m": len(W_dec)}}, f)


class _Sections(HTMLParser):
  def __init__(self):
    super().__init__()
    self.sections, self.imgs = [], []

  def handle_starttag(self, tag, attrs):
    a = dict(attrs)
    if tag == "section":
      self.sections.append(a["id"])
    if tag == "img":
      self.imgs.append((self.sections[-1], a["src"]))


def test_nearest_cosine_of_a_permuted_copy_is_one():
  A = np.random.default_rng(0).normal(size=(7, 5))
  A /= np.linalg.norm(A, axis=1, keepdims=True)
  np.testing.assert_allclose(validity.nearest_cosine(A, A[::-1], block_rows=3), 1.0)


def test_compare_run_adds_the_stability_section(tmp_path):
  root = str(tmp_path)
  rng = np.random.default_rng(0)
  W = rng.normal(size=(M, D)).astype(np.float32)
  perm = rng.permutation(M)
  W_other = np.concatenate([W[perm[:SAME]], rng.normal(size=(M - SAME, D))]).astype(np.float32)
  _run(root, "a", W)
  _run(root, "b", W_other)
  out_dir = os.path.join(root, "reports", "a")
  os.makedirs(out_dir)
  page = ("<!DOCTYPE html><html><body><section id=\"summary\"><h2>S</h2></section>"
          "<section id=\"steering\"><h2>T</h2></section></body></html>")
  open(os.path.join(out_dir, "report.html"), "w").write(page)
  r = pipeline.seed_stability(root, "a", "b")
  stab = json.load(open(r["path"]))
  random_best = validity.nearest_cosine(*(x / np.linalg.norm(x, axis=1, keepdims=True)
                                          for x in (W[perm[SAME:]], W_other)))
  assert (random_best < 0.7).all()                  # unrelated rows: no match by chance here
  assert stab["fraction_matched"] == SAME / M and stab["fraction_nearest"] == SAME / M
  assert len(stab["best_cosine"]) == M
  pipeline.seed_stability(root, "a", "b")           # a rerun replaces the section
  html = open(r["report"]).read()
  p = _Sections()
  p.feed(html)
  assert p.sections == ["summary", report.STABILITY_SECTION, "steering"]
  (sid, src), = p.imgs
  assert sid == report.STABILITY_SECTION
  assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
  assert re.search(r"fraction matched at cosine ≥ 0.7</td><td>0.750<", html)


def test_compare_only_without_a_report_writes_a_page(tmp_path):
  root = str(tmp_path)
  W = np.random.default_rng(1).normal(size=(M, D)).astype(np.float32)
  _run(root, "a", W)
  _run(root, "b", W[::-1].copy())
  r = pipeline.seed_stability(root, "a", "b")
  p = _Sections()
  p.feed(open(r["report"]).read())
  assert p.sections == [report.STABILITY_SECTION]
  assert ">1.000<" in open(r["report"]).read()
