"""The planner against numbers worked out by hand."""
import json
import os
import subprocess
import sys

import pytest

from configs import synthetic_tiny
from musicsae_jax import plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_latent_mesh_by_hand():
  p = plan.make_plan(d=16, m=64, k=4, k_aux=8, architecture="topk", batch=64, devices=8,
                     mesh_data=2, mesh_model=4, hosts=2, step_time_s=1e-3)
  r = p.report()
  assert r["sharding"] == "latent" and r["mesh"] == {"data": 2, "model": 4}
  assert r["params"] == 2 * 16 * 64 + 64 + 16 == 2128
  # per device: m/4 = 16 latents; W_enc + W_dec 2*16*16, b_enc 16, b_dec 16 -> 544 f32
  assert r["param_bytes_per_device"] == 4 * 544 == 2176
  assert r["optimizer_bytes_per_device"] == 2 * 2176 + 4 * 16 == 4416
  assert r["activation_bytes_per_device"] == 4 * 32 * (3 * 16 + 3 * 16) == 12288
  assert r["flops_dense"] == 10 * 64 * 16 * 64 == 655_360
  assert r["flops_per_step"] == 2 * 64 * 16 * 64 + 8 * 64 * 4 * 16 == 163_840
  assert r["flops_auxk_max"] == 8 * 64 * 8 * 16
  assert r["batch_read_bytes"] == 64 * 16 * 2 == 2048
  assert r["read_bytes_per_s"] == pytest.approx(2.048e6)
  assert r["read_bytes_per_s_per_host"] == pytest.approx(1.024e6)    # 2 hosts share 'data'


def test_scale_on_paper_v5e_8_and_8xh100():
  kw = dict(d=1536, m=65536, k=64, architecture="batchtopk", batch=8192, devices=8)
  v5e = plan.make_plan(device="v5e", **kw).report()
  assert v5e["params"] == 201_393_664
  flops = 2 * 8192 * 1536 * 65536 + 8 * 8192 * 64 * 1536
  assert v5e["flops_per_step"] == flops == 1_655_709_892_608
  assert v5e["flops_dense"] == 10 * 8192 * 1536 * 65536
  assert v5e["step_time_s"] == pytest.approx(flops / (8 * 197e12))    # 1.051 ms
  assert v5e["read_bytes_per_s"] == pytest.approx(8192 * 1536 * 2 / (flops / (8 * 197e12)))
  assert v5e["fits"] and v5e["total_bytes_per_device"] < 4 * 2**30
  h100 = plan.make_plan(device="h100", mfu=0.5, **kw).report()
  assert h100["step_time_s"] == pytest.approx(flops / (8 * 989e12 * 0.5))
  # ReLU has no sparse path: the dense formula
  relu = plan.make_plan(**{**kw, "architecture": "relu"}, device="v5e").report()
  assert relu["flops_per_step"] == relu["flops_dense"] and relu["flops_sparse"] is None


def test_from_config_and_errors():
  c = synthetic_tiny.get_config()          # sae.d is None: taken from the data
  with pytest.raises(plan.PlanError, match="--d"):
    plan.plan_from_config(c)
  p = plan.plan_from_config(c, d=32, devices=8)
  assert (p.m, p.k, p.batch, p.mesh_data, p.sharding) == (128, 4, 512, 8, "data")
  with pytest.raises(plan.PlanError, match="does not match"):
    plan.make_plan(d=8, m=16, batch=8, devices=8, mesh_data=3, mesh_model=1)
  with pytest.raises(plan.PlanError, match="not divisible"):
    plan.make_plan(d=8, m=18, batch=8, devices=8, mesh_data=2, mesh_model=4)


def test_cli():
  out = subprocess.run(
      [sys.executable, "-m", "launch.plan", "--config=configs/musicgen_medium.py",
       "--m=65536", "--k=64", "--batch=8192", "--devices=8", "--device=v5e", "--json"],
      cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr[-2000:]
  r = json.loads(out.stdout)
  assert r["d"] == 1536 and r["flops_per_step"] == 1_655_709_892_608
  assert abs(r["step_time_s"] - 1.0506e-3) < 1e-6
