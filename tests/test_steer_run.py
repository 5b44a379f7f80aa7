"""launch.steer's experiment at the smallest size: text-conditioning directions (cond.proj)
go through add_text_direction; one baseline per prompt, per-prompt measures, controls."""
import json
import os

import numpy as np
import torch
from safetensors.torch import save_file

from bridge.steering import experiment
from configs import tiny


def test_cond_proj_directions_steer_the_text_conditioning(tmp_path):
  exp = tmp_path / "exports" / "tiny"
  os.makedirs(exp)
  d = torch.nn.functional.normalize(torch.randn(2, 64, generator=torch.Generator().manual_seed(0)), dim=1)
  save_file({"directions": d.contiguous()}, str(exp / "directions.safetensors"))
  json.dump({"format_version": 2, "run": "tiny", "site": "cond.proj", "layer": None,
             "feature_ids": [5, 9], "labels": ["emotion=calm", "emotion=sad"], "mean_norm": 1.0,
             "d": 64}, open(exp / "directions.json", "w"))
  c = tiny.get_config()
  c.steer.num_prompts, c.steer.controls, c.steer.concept_per_value = 2, 2, 0
  c.steer.strengths, c.steer.duration, c.steer.save_audio = (0.0, 8.0), 0.4, True
  res = experiment.run_steering(c, str(tmp_path))
  saved = json.load(open(res["path"]))
  assert saved["site"] == "cond.proj" and saved["layer"] is None
  assert saved["concept"] == {"skipped": "steer.concept_per_value=0"}
  assert saved["concept_measure"]["name"] is None            # no fallback to the feature
  assert saved["warnings"] and saved["warnings"][0].startswith("WARNING steer: only 2 prompts")
  # no SAE export: 'decoder' controls become covariance directions of the recorded site
  assert saved["controls"]["kinds"] == ["covariance", "gaussian"]
  wavs = sorted(os.listdir(tmp_path / "reports" / "tiny" / "audio"))
  assert [w for w in wavs if w.startswith("baseline")] == ["baseline_p0.wav", "baseline_p1.wav"]
  assert len(wavs) == 2 + 2 * 2 + 2 * 2          # baseline, 2 feats, first control of each kind
  for f in saved["features"]:
    zero, strong = f["steered"]
    assert zero["reused_baseline"] and all(v["mean"] == 0 for v in zero["stats"].values())
    assert "feature_act" not in strong["per_prompt"]          # no SAE probe on a text site
    assert len(strong["per_prompt"]["nll"]) == 2 and len(f["control"]) == 4
    assert sorted(c["kind"] for c in f["control"]) == ["covariance"] * 2 + ["gaussian"] * 2
    assert all(len(c["per_prompt"]["nll"]) == 2 for c in f["control"])   # measured, unsaved too
    assert np.isfinite(strong["stats"]["nll"]["mean"])
    assert strong["stats"]["nll"]["ci_method"] == "student_t"
    assert f["verdict"]["text"].startswith("no evidence: no independent concept score")
  a = open(tmp_path / "reports" / "tiny" / "audio" / "baseline_p0.wav", "rb").read()
  b = open(tmp_path / "reports" / "tiny" / "audio" / "add_f5_a8_p0.wav", "rb").read()
  assert a != b                                              # the text push changed the music
  assert os.path.exists(res["plot"])
