"""The report's steering section from a steer.json: spliced once into report.html, numbers
shown, A/B players pointing at relative wav paths that exist and decode."""
import json
import os
import re

import shutil

import numpy as np
import pytest
import soundfile as sf

from musicsae_jax.analysis import report
from tests import browser

PROMPTS = ["calm piano", "fast drums"]


def _stat(m):
  return {"n": 2, "mean": m, "ci": [m - 0.1, m + 0.1], "ci_method": "student_t", "level": 0.95,
          "p_ttest": 0.04, "p_wilcoxon": 0.5}


def _cond(name, shift):
  per = {"concept": [0.2 + shift, 0.3 + shift], "nll": [3.0 + shift, 3.1 + shift]}
  return {"audio": [f"audio/{name}_p{b}.wav" for b in range(2)], "per_prompt": per,
          "stats": {k: _stat(shift) for k in per}}


def _steer_dir(root):
  os.makedirs(os.path.join(root, "audio"))
  base = _cond("baseline", 0.0)
  steer = {"run": "r", "site": "lm.layer.1", "layer": 1, "prompts": PROMPTS, "relative": True,
           "warnings": ["WARNING steer: only 2 prompts"], "significance": 0.05,
           "ci": {"method": "student_t", "level": 0.95},
           "concept_measure": {"name": "concept", "why": ""},
           "strengths": [0.0, 4.0], "controls": {"count": 1, "norm": 1.0},
           "concept": {"kind": "nearest centroid", "label_key": "emotion", "train_clips": 8,
                       "loo_accuracy": 0.5, "chance": 0.25, "values": ["calm", "sad"]},
           "features": [{"feature": 7, "label": "emotion=calm", "target": "calm",
                         "baseline": {k: base[k] for k in ("audio", "per_prompt")},
                         "steered": [{"alpha": 0.0, **base, "reused_baseline": True},
                                     {"alpha": 4.0, **_cond("f7_a4", 0.25), "vs_controls": {
                                         "measure": "concept", "p_rank": 0.5, "n_controls": 1,
                                         "by_kind": {"gaussian": {"n": 1, "p_rank": 0.5}}}}],
                         "control": [{"control": 0, "kind": "gaussian", "alpha": 4.0,
                                      **_cond("control0_a4", -0.05)}],
                         "verdict": {"text": "no evidence: 1 controls per strength cannot give "
                                             "p <= 0.05"}}]}
  for c in (base, steer["features"][0]["steered"][1], steer["features"][0]["control"][0]):
    for p in c["audio"]:
      sf.write(os.path.join(root, p), np.zeros(1600, np.float32), 16000)
  with open(os.path.join(root, "steer.json"), "w") as f:
    json.dump(steer, f)


def test_steering_section_spliced_once_with_players(tmp_path):
  _steer_dir(tmp_path)
  with open(tmp_path / "report.html", "w") as f:
    f.write('<html><body><section id="summary">x</section></body></html>')
  for _ in range(2):                                         # rerunning replaces, never stacks
    path = report.update_steering(str(tmp_path))
  page = open(path).read()
  assert page.count(f'<section id="{report.STEERING_SECTION}">') == 1
  assert '<section id="summary">' in page
  assert "+0.25 [+0.15, +0.35] p=0.04" in page               # mean [CI] p of a paired change
  assert "controls gaussian α=4 (range of 1)" in page and "loo_accuracy" not in page
  assert "rank p vs controls 0.5: gaussian 0.5" in page and "95% student t interval" in page
  assert "no evidence: 1 controls per strength" in page and "WARNING steer: only 2 prompts" in page
  players = re.findall(r'<audio controls preload="metadata" data-file="([^"]+)" src="([^"]+)"', page)
  assert len(players) == 2 * 3                               # 2 prompts x (base, steered, control)
  for name, src in players:                                  # embedded, naming the file beside
    assert not os.path.isabs(name) and src.startswith("data:audio/ogg;base64,")
    assert sf.info(os.path.join(tmp_path, name)).duration == 0.1   # the file decodes


def test_steering_page_without_analyze(tmp_path):
  _steer_dir(tmp_path)
  page = open(report.update_steering(str(tmp_path))).read()
  assert page.startswith("<!DOCTYPE html>") and 'id="steering"' in page


def test_players_load_in_headless_chromium_from_the_page_copied_alone(tmp_path):
  """report.html copied elsewhere without its audio/ folder still plays: Chromium reports
  every clip's duration from the embedded data."""
  browser.require()
  _steer_dir(tmp_path / "made")
  with open(tmp_path / "made" / "report.html", "w") as f:
    f.write('<html><body><section id="summary">x</section></body></html>')
  report.update_steering(str(tmp_path / "made"))
  os.makedirs(tmp_path / "elsewhere")
  shutil.copy(tmp_path / "made" / "report.html", tmp_path / "elsewhere" / "report.html")
  durations = browser.audio_durations(str(tmp_path / "elsewhere" / "report.html"))
  assert len(durations) == 6 and all(abs(d - 0.1) < 0.03 for d in durations), durations  # Vorbis
                                                            # rounds up to whole blocks: 0.116 s


def test_embedding_stops_at_the_budget_and_keeps_links(tmp_path):
  """Past the budget the remaining players stay linked to audio/ (a real report can hold
  hundreds of clips); a missing file stays a link too."""
  from musicsae_jax.analysis import report_audio
  os.makedirs(tmp_path / "audio")
  for i in range(3):
    sf.write(tmp_path / "audio" / f"c{i}.wav", np.zeros(1600, np.float32), 16000)
  page = "".join(f'<audio controls src="audio/c{i}.wav"></audio>' for i in (0, 1, 2, 9))
  one = len(report_audio.data_uri(str(tmp_path / "audio" / "c0.wav")))
  out = report_audio.embed(page, str(tmp_path), budget_mb=2.5 * one / 2 ** 20)
  assert out.count("data:audio/ogg") == 2 and 'src="audio/c2.wav"' in out
  assert 'src="audio/c9.wav"' in out                       # no such file: left as it was
  assert report_audio.embed(out, str(tmp_path), budget_mb=2.5 * one / 2 ** 20) == out
