"""The benchmarks still run and print their JSON (tiny sizes; numbers are not checked here)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json(*args) -> list[dict]:
  r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  text = r.stdout.strip()
  try:
    return [json.loads(text)]
  except json.JSONDecodeError:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_store_bench(tmp_path):
  (out,) = run_json("bench/store.py", "--size_mb=4", "--d=256", f"--dir={tmp_path}")
  assert out["rows"] > 0 and out["store_write_mb_s"] > 0 and out["read_ratio"] > 0


def test_train_step_bench():
  rows = run_json("bench/train_step.py", "--archs=topk", "--iters=1")
  assert rows and all(r["jax_step_ms"] > 0 and r["torch_step_ms"] > 0 for r in rows if "arch" in r)


def test_train_step_compare():
  rows = run_json("bench/train_step.py", "--compare=topk,batchtopk", "--iters=1")
  assert [r["arch"] for r in rows] == ["topk", "batchtopk"]
  assert rows[0]["speed_vs_topk"] == 1.0 and rows[1]["speed_vs_topk"] > 0


def test_capture_bench():
  (out,) = run_json("bench/capture.py", "--duration=0.5", "--batch=2", "--repeats=1")
  assert out["teacher_forced_frames_per_s"] > 0 and out["hooked_frames_per_s"] > 0


def test_help_describes_each_bench_and_a_missing_dir_is_one_line(tmp_path):
  for script, flag_help in (("bench/store.py", "row width"),
                            ("bench/train_step.py", "comma-separated architectures"),
                            ("bench/capture.py", "seconds generated per prompt")):
    r = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "prints" in r.stdout.lower(), (script, r.stdout)
    assert flag_help in r.stdout, (script, r.stdout)
  r = subprocess.run([sys.executable, "bench/store.py", f"--dir={tmp_path}/nope"], cwd=ROOT,
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == 2 and "Traceback" not in r.stderr and "no such directory" in r.stderr


def test_sweep_bench(tmp_path):
  (out,) = run_json("bench/sweep.py", "--tiny", f"--dir={tmp_path}")
  assert out["members"] == 3 and out["step_s"]["sweep_loop"]["min"] > 0
  assert out["bytes"]["sweep_store"] > 0 and out["bytes"]["sequential_store_total"] > 0


def test_quality_bench(tmp_path):
  """The store -> launch.train -> table path on synthetic rows; peers (own venv) skipped."""
  rows = run_json("bench/quality.py", f"--workdir={tmp_path}", "--synthetic_rows=6000",
                  "--budgets=0.008", "--widths=2", "--archs=topk", "--peers=", "--batch=512",
                  "--lr_mults=1")
  (r,) = [r for r in rows if "trainer" in r]
  assert r["trainer"] == "musicsae_jax topk" and 0 < r["fvu"] < 2 and r["l0"] == 32
  assert r["lr_mult"] == 1 and 0 < r["val_fvu"] < 2
  assert abs(r["val_fvu"] - r["trainer_eval_fvu"]) < 1e-4   # its eval split is validation
  assert r["peak_rss_mb"] > 0 and r["acts_per_s"] > 0
  assert r["rows_all"] == 6000 and 0 <= r["dead_frac_all"] <= r["dead_frac"] <= 1
  assert os.path.exists(tmp_path / "quality.md") and os.path.exists(tmp_path / "quality.json")
  md = (tmp_path / "quality.md").read_text()
  assert "Defaults" in md and "Each tuned" in md and "Command: `" in md
