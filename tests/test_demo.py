"""The README's main job, end to end at CI size: extract -> train -> analyze -> export -> steer."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = [
    "--config.extract.per_label=5", "--config.extract.duration=1.0",
    "--config.extract.sites=('lm.layer.3','t5.pooled','audio.descriptors')",
    "--config.train.steps=60", "--config.train.eval_every=30", "--config.train.log_every=30",
    "--config.train.checkpoint_every=30", "--config.train.batch_size=128",
    "--config.analysis.probe_folds=2", "--config.analysis.probe_steps=20",
    "--config.analysis.cosine_permutations=50", "--config.analysis.max_features=5",
    "--config.steer.num_prompts=1", "--config.steer.strengths=(0.0,8.0)",
    "--config.steer.duration=1.0", "--config.steer.controls=2",
    "--config.steer.concept_per_value=2",
]


def test_demo_end_to_end(tmp_path):
  env = dict(os.environ)
  env.pop("JAX_NUM_CPU_DEVICES", None)        # the demo runs as a user would: one CPU device
  r = subprocess.run([sys.executable, "-m", "launch.demo", f"--workdir={tmp_path}", *TINY],
                     cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  assert "Demo finished" in r.stdout and "report.html" in r.stdout
  ds = json.load(open(tmp_path / "activations" / "emotions-tiny" / "manifest.json"))
  assert ds["num_prompts"] == 20
  final = json.load(open(tmp_path / "runs" / "tiny" / "final_metrics.json"))
  assert final["step"] == 60 and 0 < final["eval_fvu"] < 1
  sel = json.load(open(tmp_path / "reports" / "tiny" / "selectivity.json"))
  assert set(sel["labels"]["emotion"]["top_features"]) == {"happy", "sad", "calm", "energetic"}
  exported = json.load(open(tmp_path / "exports" / "tiny" / "directions.json"))
  assert sorted(exported["labels"]) == ["emotion=calm", "emotion=energetic", "emotion=happy",
                                        "emotion=sad"]
  steer = json.load(open(tmp_path / "reports" / "tiny" / "steer.json"))
  assert steer["concept"]["train_clips"] == 8 and steer["controls"]["count"] == 2
  # two methods side by side on one baseline (launch.demo: add, and set at 8), 2 controls per
  # kind (add: decoder rows and Gaussian directions; set: other features)
  assert steer["method"] == "add,set" and [m["method"] for m in steer["methods"]] == ["add", "set"]
  assert [f["method"] for f in steer["features"]] == ["add"] * 4 + ["set"] * 4
  for f in steer["features"]:
    if f["method"] == "add":
      zero = [s for s in f["steered"] if s["alpha"] == 0.0][0]
      assert zero["reused_baseline"] and zero["audio"] == f["baseline"]["audio"]
      assert all(v["mean"] == 0 for v in zero["stats"].values())  # alpha = 0 changes nothing
    strong = [s for s in f["steered"] if s["alpha"] == 8.0][0]
    assert strong["stats"]["feature_act"]["mean"] > 0              # steering moves its feature
    assert {"feature_act_replay", "nll", "concept", "tempo_bpm"} <= set(strong["per_prompt"])
    assert len(strong["per_prompt"]["nll"]) == 1                   # one value per prompt
    kinds = ["decoder", "gaussian"] if f["method"] == "add" else ["other_feature"]
    assert sorted(c["kind"] for c in f["control"]) == sorted(kinds * 2)   # per kind x strength
    assert f["verdict"]["text"].startswith("no evidence: 2 controls")       # p floor 1/3
    assert all(a.startswith(f"audio/{f['method']}_") for c in [strong] + f["control"]
               for a in c["audio"])
  wavs = os.listdir(tmp_path / "reports" / "tiny" / "audio")
  assert sum(w.startswith("baseline_") for w in wavs) == 1         # one baseline per prompt
  # baseline + per method (4 features + the first control of each kind) x 1 nonzero strength
  assert len([w for w in wavs if not w[0].isdigit()]) == 1 + (4 + 2) + (4 + 1)
  html = open(tmp_path / "reports" / "tiny" / "report.html").read()
  assert html.count('<section id="steering">') == 1 and "<h3>set: f" in html
  assert html.count("data:image/png;base64,") >= 3
  assert (tmp_path / "reports" / "tiny" / "steer.png").exists()
  browser = tmp_path / "reports" / "tiny" / "browser"
  assert 'href="browser/index.html"' in html and (browser / "index.html").exists()
  for f in steer["features"]:                      # launch.steer adds its results to the pages
    assert "<h2>Steering</h2>" in open(browser / "features" / f"{f['feature']}.html").read()
  labels = json.load(open(tmp_path / "reports" / "tiny" / "labels.json"))   # words + tiny CLAP
  assert labels["labelers"]["clap"]["status"] == "ok" and len(labels["features"]) == 5
  assert {lab["source"] for f in labels["features"] for lab in f["labels"]} == {"words", "clap"}
  assert labels["detection"]["clap"]["clap"]["n"] == 5 and html.count('<section id="labels">') == 1
