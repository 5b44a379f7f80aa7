"""Launch scripts end bad input with the error's message, not a traceback, and leave nothing."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, env=None):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, env=env)


def test_train_before_extract_is_a_clear_usage_error(tmp_path):
  r = run("launch.train", "--config=configs/tiny.py", f"--workdir={tmp_path}")
  assert r.returncode != 0
  err = r.stderr
  assert "ManifestError" in err and "no such dataset directory" in err and "launch.extract" in err
  assert "Traceback" not in err
  assert not (tmp_path / "runs").exists()          # no empty run directory left behind


def test_traceback_on_request(tmp_path):
  env = dict(os.environ, MUSICSAE_TRACEBACK="1")
  r = run("launch.steer", "--config=configs/tiny.py", f"--workdir={tmp_path}", env=env)
  assert r.returncode != 0 and "Traceback" in r.stderr and "launch.export" in r.stderr
