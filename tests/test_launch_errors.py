"""Launch scripts end bad input with one or two lines naming the flag or file and what was
expected: no module docstring, no flag list, no traceback (MUSICSAE_TRACEBACK=1 keeps it)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from musicsae_jax import store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D = 64                                   # the tiny model's width (configs/tiny.py)


def run(*args, env=None, cwd=ROOT):
  env = dict(os.environ if env is None else env, PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True,
                        text=True, timeout=180, env=env)


def short_error(r, *needles):
  """The run failed with at most two stderr lines that contain every needle (the two
  progress lines of a model-loading phase, when the model loaded, are not counted)."""
  lines = [ln for ln in r.stderr.strip().splitlines() if ": loading model " not in ln]
  assert r.returncode != 0, r.stderr
  assert 1 <= len(lines) <= 2, r.stderr
  assert "Traceback" not in r.stderr and "USAGE" not in r.stderr and "flags:" not in r.stderr
  for n in needles:
    assert n in r.stderr, (n, r.stderr)
  return lines[-1]


def make_store(workdir, d=D, prompts=8, rows=50):
  """A small committed `emotions-tiny` dataset with site lm.layer.3 (configs/tiny.py)."""
  path = os.path.join(workdir, "activations", "emotions-tiny")
  ps = [{"text": f"p{i}", "labels": {"emotion": ["happy", "sad"][i % 2]}} for i in range(prompts)]
  ds = store.create(path, {"lm.layer.3": {"d": d, "dtype": "float32"}}, prompts=ps)
  rng = np.random.default_rng(0)
  with ds.writer(0, flush_seconds=0) as w:
    for p in range(prompts):
      idx = np.stack([np.full(rows, p), np.arange(rows)], 1).astype(np.int32)
      w.append("lm.layer.3", rng.normal(size=(rows, d)).astype(np.float32), idx)
      w.commit([p])
  return path


TRAIN = ("launch.train", "--config=configs/tiny.py", "--config.train.steps=2")


def test_train_before_extract_is_a_clear_usage_error(tmp_path):
  r = run("launch.train", "--config=configs/tiny.py", f"--workdir={tmp_path}")
  short_error(r, "ManifestError", "no such dataset directory", "launch.extract")
  assert not (tmp_path / "runs").exists()          # no empty run directory left behind


def test_traceback_on_request(tmp_path):
  env = dict(os.environ, MUSICSAE_TRACEBACK="1")
  r = run("launch.steer", "--config=configs/tiny.py", f"--workdir={tmp_path}", env=env)
  assert r.returncode != 0 and "Traceback" in r.stderr and "launch.export" in r.stderr


def test_missing_config_file_is_one_line(tmp_path):
  r = run("launch.train", "--config=configs/nope.py", f"--workdir={tmp_path}")
  assert short_error(r, "--config=configs/nope.py", "no such file").count("\n") == 0


@pytest.mark.parametrize("override,needles", [
    ("--config.train.deacy=constant", ["--config.train.deacy", "did you mean decay"]),
    ("--config.trian.steps=3", ["--config.trian.steps", "did you mean train"]),
    ("--config.train.steps=abc", ["--config.train.steps=abc", "int"]),
])
def test_bad_override_is_one_line(tmp_path, override, needles):
  r = run("launch.config", "--config=configs/tiny.py", override)
  short_error(r, *needles)


@pytest.mark.parametrize("override,needles", [
    ("--config.sae.architecture=topkk", ["sae.architecture='topkk' is unknown", "topk"]),
    ("--config.train.lr=-1", ["train.lr=-1.0 must be > 0"]),
    ("--config.sae.k=600", ["sae.k=600", "m=512", "d=64, model.tiny.dim"]),
])
def test_config_refuses_what_the_trainer_would_refuse(override, needles):
  """`launch.config` prints no config a stage would reject: rc 2 and the stage's message."""
  r = run("launch.config", "--config=configs/tiny.py", override)
  assert r.returncode == 2 and not r.stdout
  short_error(r, *needles)


def test_config_piped_into_a_reader_that_leaves_ends_quietly():
  """`launch.config --json | head`: the reader leaving is not an error (`true` leaves
  before the first line is written, so every write meets a closed pipe)."""
  p = subprocess.run(f"{sys.executable} -m launch.config --config=configs/tiny.py --json | true;"
                     " echo rc=${PIPESTATUS[0]}", shell=True, cwd=ROOT, capture_output=True,
                     text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT),
                     executable="/bin/bash")
  assert p.stdout == "rc=0\n" and p.stderr == "", p.stderr


def test_relative_config_works_outside_the_repo(tmp_path):
  r = run("launch.config", "--config=configs/tiny.py", cwd=tmp_path)
  assert r.returncode == 0 and "run = 'tiny'" in r.stdout, r.stderr


def test_commit_record_past_the_data_names_the_record(tmp_path):
  path = make_store(tmp_path)
  rec = os.path.join(path, "commits", "worker-0.json")
  c = json.load(open(rec))
  c["rows"]["lm.layer.3"] += 100
  json.dump(c, open(rec, "w"))
  short_error(run(*TRAIN, f"--workdir={tmp_path}"), rec, "damaged")


def test_wrong_manifest_width_names_the_manifest(tmp_path):
  path = make_store(tmp_path)
  man = os.path.join(path, "manifest.json")
  m = json.load(open(man))
  m["sites"]["lm.layer.3"]["d"] = 48
  json.dump(m, open(man, "w"))
  short_error(run(*TRAIN, f"--workdir={tmp_path}"), man, "d=48", "64 wide")


def test_read_only_workdir_names_the_path(tmp_path):
  make_store(tmp_path)
  target = "/sys/kernel"                            # read-only, even for root
  try:
    os.mkdir(os.path.join(target, "musicsae-probe"))
    pytest.skip(f"{target} is writable here")
  except OSError:
    pass
  (tmp_path / "runs").symlink_to(target)
  short_error(run(*TRAIN, f"--workdir={tmp_path}"), "cannot write", "runs/tiny", "--workdir")


def test_export_without_checkpoint_is_one_line(tmp_path):
  run_dir = tmp_path / "runs" / "tiny"
  run_dir.mkdir(parents=True)
  (run_dir / "config.json").write_text(json.dumps({"sae": {}, "train": {}}))
  r = run("launch.export", "--config=configs/tiny.py", f"--workdir={tmp_path}")
  short_error(r, "no checkpoint", str(run_dir / "checkpoints"))
  assert "RuntimeError" not in r.stderr and not (run_dir / "checkpoints").exists()


@pytest.fixture(scope="module")
def directions_48_wide(tmp_path_factory):
  """An export whose directions are 48 wide (the tiny model is 64)."""
  from musicsae_jax import export
  wd = tmp_path_factory.mktemp("steer")
  w = np.random.default_rng(0).normal(size=(96, 48)).astype(np.float32)
  export.export_directions({"W_dec": w}, [3, 5], None, "lm.layer.3", 3, 1.0,
                           str(wd / "exports" / "tiny"))
  return wd


def test_steer_with_wrong_width_directions_names_the_file(directions_48_wide):
  r = run("launch.steer", "--config=configs/tiny.py", f"--workdir={directions_48_wide}")
  short_error(r, "directions.safetensors", "48 wide", "d_model=64")


def test_steer_with_unknown_feature_names_the_flag(directions_48_wide):
  r = run("launch.steer", "--config=configs/tiny.py", f"--workdir={directions_48_wide}",
          "--config.steer.features=7")
  short_error(r, "--config.steer.features", "[7]", "[3, 5]")


def test_demo_default_config_works_outside_the_repo(tmp_path):
  r = run("launch.demo", f"--workdir={tmp_path / 'ws'}", "--stages=analyze", cwd=tmp_path)
  assert f"--config={ROOT}/configs/tiny.py" in r.stdout        # resolved against the repo
  assert r.returncode != 0 and "no trained run 'tiny'" in r.stderr and "no such file" not in r.stderr


def test_export_refuses_a_feature_that_fails_the_null(tmp_path):
  """--from_selectivity stops at the first feature that does not pass, naming its label."""
  rep = tmp_path / "reports" / "tiny"
  rep.mkdir(parents=True)
  feat = {"id": 91, "auroc": 0.67, "p_fwer": 0.9, "passes": False}
  (rep / "selectivity.json").write_text(json.dumps({"labels": {"emotion": {
      "null": {"alpha": 0.05}, "features": {"calm": [feat]}, "top_features": {"calm": [91]}}}}))
  r = run("launch.export", "--config=configs/tiny.py", f"--workdir={tmp_path}",
          "--from_selectivity=1")
  short_error(r, "emotion=calm: feature 91 does not pass", "--allow_failing=1")


def test_steer_rejects_wrong_width_directions_before_loading_the_model(directions_48_wide):
  r = run("launch.steer", "--config=configs/tiny.py", f"--workdir={directions_48_wide}")
  short_error(r, "directions.safetensors", "48 wide", "d_model=64")
  assert "loading model" not in r.stderr, r.stderr


def test_analyze_reports_a_missing_shard_before_any_work(tmp_path):
  """Before the run's checkpoint is restored (here it cannot be: the run has a config but
  no checkpoint), the damaged dataset is reported."""
  path = make_store(str(tmp_path))
  run_dir = tmp_path / "runs" / "tiny"
  run_dir.mkdir(parents=True)
  (run_dir / "config.json").write_text(json.dumps({"train": {"site": "lm.layer.3"}}))
  shard = os.path.join(path, "sites", "lm.layer.3", "acts", "c", "0", "0")
  os.remove(shard)
  r = run("launch.analyze", "--config=configs/tiny.py", f"--workdir={tmp_path}")
  short_error(r, "MissingDataError", f"{shard}: missing shard file")
  assert not (tmp_path / "reports").exists()
