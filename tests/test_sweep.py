"""Sweeps: the grid, members equal to their single runs, 8 devices vs 1, resume, outputs."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from musicsae_jax import export
from musicsae_jax import sweep
from musicsae_jax import train
from tests.test_train import _cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AXES = ["sae.k=4,8", "train.lr=1e-3,3e-3"]        # two groups (k) of two members (lr)
NAMES = ["k4_lr0.001", "k4_lr0.003", "k8_lr0.001", "k8_lr0.003"]


def _rows(wd, run, kind="train"):
  with open(os.path.join(wd, "runs", run, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["kind"] == kind]


def _col(wd, run, key="loss"):
  return np.array([r[key] for r in _rows(wd, run)])


def _member(name):
  return f"synthetic_tiny/{name}"


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("sweep1"))
  return wd, sweep.train_sweep(_cfg(num_devices=1), wd, AXES)


def test_grid_names_and_groups():
  assert sweep.parse_axis("sae.k=16,32") == ("sae.k", [16, 32])
  assert sweep.parse_axis("sae.architecture=topk,batchtopk")[1] == ["topk", "batchtopk"]
  assert sweep.parse_axis("train.lr=1e-4, 3e-4")[1] == [1e-4, 3e-4]
  for bad, msg in (("train.batch_size=64,128", "shared batch stream"),
                   ("sae.k", "FIELD=V1,V2"), ("sae.k=4,4", "repeated"),
                   ("model.name=a,b", "cannot vary")):
    with pytest.raises(sweep.SweepError, match=msg):
      sweep.parse_axis(bad)
  c = _cfg()
  c.sweep = ("sae.k=4,8", "train.lr=1e-3")
  axes = sweep.sweep_axes(c, ["train.lr=1e-3,3e-3"])     # a flag replaces the config's axis
  assert axes == {"sae.k": [4, 8], "train.lr": [1e-3, 3e-3]}
  members = sweep.expand(c, axes)
  assert [m.name for m in members] == NAMES
  assert members[1].config.run == "synthetic_tiny/k4_lr0.003"
  sweep.resolve_members(members, d=16)
  # lr is a traced value inside a group; k is a Python constant, so it splits groups.
  assert sweep.group_members(members) == [[0, 1], [2, 3]]
  assert sweep.member_name({"sae.seed": 1, "train.seed": 2}) == "sae.seed1_train.seed2"
  from configs import synthetic_sweep
  assert sweep.sweep_axes(synthetic_sweep.get_config()) == {
      "sae.k": [2, 4, 8, 16], "train.lr": [1e-3, 3e-3]}
  with pytest.raises(sweep.SweepError, match="no sweep axes"):
    sweep.sweep_axes(_cfg())
  assert sweep.choose_member_step("auto", None) == "map"            # CPU: see its doc
  assert sweep.choose_member_step("auto", "model") == "vmap"         # members split
  with pytest.raises(sweep.SweepError, match="cannot split members"):
    sweep.choose_member_step("map", "model")
  bad = sweep.expand(_cfg(), {"sae.k": [4, 64]})
  with pytest.raises(sweep.SweepError, match="k64.*k=64"):
    sweep.resolve_members(bad, d=16)


def test_pareto_front():
  pts = [(4, 0.5), (8, 0.3), (8, 0.4), (16, 0.3), (2, 0.9)]
  assert sweep.pareto_front(pts) == [4, 0, 1]


def test_schedule_scales_with_peak_lr():
  """A member's lr is passed as a value into the single run's schedule; the sweep's
  step is the single step only while schedules are built from it the same way."""
  t = train.resolve_train_config(_cfg().train)
  t.lr = 3e-3
  _, schedule = train.make_optimizer(t)
  _, traced = sweep.member_optimizer(t, np.float32(3e-3))
  for step in (0, 1, 2, 3, 5):
    np.testing.assert_allclose(float(traced(step)), float(schedule(step)), rtol=1e-7)


# On CPU members run the single-run step under jax.lax.map (a loop body XLA compiles and
# fuses on its own), with the peak lr a traced value instead of a constant; under vmap
# (the other test) XLA batches the member axis into the matmuls and reductions, which may
# sum in another order. Float32 rounding (~1e-7 relative per op) compounds over 6 Adam
# steps: rtol 1e-5 on the logged losses and 1e-4 on the pooled eval FVU.
@pytest.mark.parametrize("name,k,lr", [("k4_lr0.003", 4, 3e-3), ("k8_lr0.001", 8, 1e-3)])
def test_members_equal_their_single_runs(tmp_path, one_device, name, k, lr):
  wd, record = one_device
  c = _cfg(num_devices=1, lr=lr)
  c.sae.k = k
  final = train.train_and_evaluate(c, str(tmp_path))
  for key in ("loss", "mse", "l0", "lr", "dead_frac"):
    np.testing.assert_allclose(_col(wd, _member(name), key),
                               _col(str(tmp_path), "synthetic_tiny", key), rtol=1e-5,
                               err_msg=key)
  row = next(r for r in record["members"] if r["name"] == name)
  np.testing.assert_allclose(row["fvu"], final["eval_fvu"], rtol=1e-4)
  assert row["l0"] == pytest.approx(final["eval_l0"], rel=1e-4) and row["step"] == 6


def test_members_are_ordinary_runs(one_device, tmp_path):
  wd, record = one_device
  assert [r["name"] for r in record["members"]] == NAMES
  assert record["pareto"] and set(record["pareto"]) <= set(NAMES)
  on_disk = json.load(open(os.path.join(wd, "runs", "synthetic_tiny", "sweep.json")))
  assert on_disk == json.loads(json.dumps(record))
  for name in NAMES:
    run = os.path.join(wd, "runs", "synthetic_tiny", name)
    assert {"config.json", "metrics.jsonl", "normalization.json", "final_metrics.json",
            "checkpoints"} <= set(os.listdir(run))
    cfg = json.load(open(os.path.join(run, "config.json")))
    assert cfg["run"] == _member(name) and cfg["sweep_member"]["member"] == name
    assert [r["step"] for r in _rows(wd, _member(name), "eval")] == [3, 6]
  # What analysis/export read: the single-run loaders on runs/<run>/<member>.
  model, info = train.load_run(os.path.join(wd, "runs", "synthetic_tiny", "k8_lr0.003"))
  assert info["step"] == 6 and model.k == 8
  out = export.export_run(wd, _member("k8_lr0.003"), str(tmp_path / "exp"))
  assert json.load(open(os.path.join(out, "cfg.json")))["k"] == 8
  assert sweep.read_sweep(wd, _member("k4_lr0.001"))["run"] == "synthetic_tiny"
  # The grid of a run cannot change under it.
  with pytest.raises(sweep.SweepError, match="lists members"):
    sweep.train_sweep(_cfg(num_devices=1), wd, ["sae.k=4,16"])


# Data-parallel sums the batch in a different order than one device (as in
# test_train.test_eight_devices_match_one), and vmapped members batch the member axis into
# every op: rtol 1e-5 on losses, 1e-4 on eval FVU.
@pytest.mark.parametrize("mesh_data,mesh_model,sharding", [
    (-1, 1, "data"),          # 8 x 1: batch over 8 devices, members replicated
    (4, 2, "data"),           # members of each group split over 'model' (2 devices)
    (2, 4, "latent"),         # every member's latent axis split over 'model'
])
def test_eight_devices_match_one(tmp_path, one_device, mesh_data, mesh_model, sharding):
  wd, ref = one_device
  got = sweep.train_sweep(_cfg(mesh_data=mesh_data, mesh_model=mesh_model,
                               sharding=sharding), str(tmp_path), AXES)
  # members split over 'model' are vmapped; the reference (one CPU device) is mapped
  assert got["member_step"] == ("vmap" if sharding == "data" and mesh_model > 1 else "map")
  assert ref["member_step"] == "map"
  for name in NAMES:
    np.testing.assert_allclose(_col(str(tmp_path), _member(name)), _col(wd, _member(name)),
                               rtol=1e-5)
  np.testing.assert_allclose([r["fvu"] for r in got["members"]],
                             [r["fvu"] for r in ref["members"]], rtol=1e-4)


def test_members_over_model_must_divide(tmp_path):
  with pytest.raises(ValueError, match="cannot be split over the 'model' axis"):
    sweep.train_sweep(_cfg(mesh_data=2, mesh_model=4), str(tmp_path), AXES)
  assert not (tmp_path / "runs").exists()            # nothing half-written


def test_resume_equals_uninterrupted(tmp_path, one_device):
  wd, ref = one_device
  mine = str(tmp_path)
  sweep.train_sweep(_cfg(num_devices=1, stop_after=5), mine, AXES)   # "crash" after 5
  assert all(len(_rows(mine, _member(n))) == 5 for n in NAMES)       # checkpoint at 3
  got = sweep.train_sweep(_cfg(num_devices=1), mine, AXES)
  for name in NAMES:
    assert [r["step"] for r in _rows(mine, _member(name))] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_array_equal(_col(mine, _member(name)), _col(wd, _member(name)))
  assert [r["fvu"] for r in got["members"]] == [r["fvu"] for r in ref["members"]]
  # A kill in the middle of a save round: one member finished step 6, the others did not.
  for name in NAMES[1:]:
    shutil.rmtree(os.path.join(mine, "runs", "synthetic_tiny", name, "checkpoints", "6"))
  got = sweep.train_sweep(_cfg(num_devices=1), mine, AXES)          # all resume from 3
  for name in NAMES:
    assert [r["step"] for r in _rows(mine, _member(name))] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_array_equal(_col(mine, _member(name)), _col(wd, _member(name)))
  assert [r["fvu"] for r in got["members"]] == [r["fvu"] for r in ref["members"]]


def test_a_resumed_sweep_logs_the_same_metrics_as_an_uninterrupted_one(tmp_path):
  """Logged every 2 steps, crashed after step 3 (checkpoint at 3): step 3 still counts in
  the window logged at step 4, as in an uninterrupted sweep."""
  from tests.test_train import _TIMING
  kw = dict(num_devices=1, steps=4, log_every=2, eval_every=4, checkpoint_every=3)
  axes = ["sae.k=4,8"]

  def rows(wd):
    out = []
    for name in ("k4", "k8"):
      with open(os.path.join(wd, "runs", "synthetic_tiny", name, "metrics.jsonl")) as f:
        out += [{k: v for k, v in json.loads(l).items() if k not in _TIMING} for l in f]
    return out
  ref, mine = str(tmp_path / "ref"), str(tmp_path / "mine")
  sweep.train_sweep(_cfg(**kw), ref, axes)
  sweep.train_sweep(_cfg(stop_after=3, **kw), mine, axes)
  sweep.train_sweep(_cfg(**kw), mine, axes)
  assert [r["step"] for r in rows(mine) if r["kind"] == "train"] == [2, 4, 2, 4]
  assert rows(mine) == rows(ref)


def test_launch_script_writes_the_sweep_picture(tmp_path):
  env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1"}
  cmd = [sys.executable, "-m", "launch.sweep", "--config=configs/synthetic_tiny.py",
         f"--workdir={tmp_path}", "--sweep=sae.k=4,8", "--config.train.steps=4",
         "--config.train.eval_every=4", "--config.train.checkpoint_every=4",
         "--config.train.log_every=2", "--config.train.synthetic.n=4096",
         "--config.train.batch_size=128"]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.strip().splitlines()
  assert [ln[2:].split(":")[0] for ln in lines[:-1]] == ["synthetic_tiny/k4", "synthetic_tiny/k8"]
  assert all(", L0 " in ln and ", dead " in ln for ln in lines[:-1]), lines
  assert lines[-1].endswith(f"written to {tmp_path}/runs/synthetic_tiny: sweep.json, sweep.png")
  run = tmp_path / "runs" / "synthetic_tiny"
  assert (run / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert (run / "k4" / "training_curves.png").exists()
  bad = subprocess.run(cmd[:5] + ["--sweep=train.steps=1,2"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env=env)
  assert bad.returncode != 0 and "train.steps" in bad.stderr and "Traceback" not in bad.stderr


def test_run_safety_lock_and_changed_experiment(one_device, tmp_path):
  """As launch.train: a second writer (of the sweep or of one member) fails at once, a
  changed experiment is refused before anything is written."""
  from musicsae_jax import runs
  wd, _ = one_device
  run = os.path.join(wd, "runs", "synthetic_tiny")
  before = {n: open(os.path.join(run, n, "config.json")).read() for n in NAMES}
  for held in (run, os.path.join(run, NAMES[2])):
    with runs.RunLock(held):
      with pytest.raises(runs.RunLockedError, match="another live process"):
        sweep.train_sweep(_cfg(num_devices=1), wd, AXES)
  with pytest.raises(runs.RunConfigError, match=r"train.grad_clip: 1.0 -> 0.5"):
    sweep.train_sweep(_cfg(num_devices=1, grad_clip=0.5), wd, AXES)
  assert {n: open(os.path.join(run, n, "config.json")).read() for n in NAMES} == before
  with pytest.raises(sweep.SweepError, match="train.lr=-0.001 must be > 0"):
    sweep.train_sweep(_cfg(num_devices=1), str(tmp_path), ["train.lr=-1e-3"])
  assert not (tmp_path / "runs").exists()            # nothing half-written


def test_two_processes_match_one_process(tmp_path):
  """launch.sweep as 2 JAX processes (localhost coordinator, 1 CPU device each, as in
  tests/test_multihost.py) against the same sweep on 2 devices of this process; both read
  2 data streams, so they see the same global batches. rtol 1e-5: cross-process
  all-reduces sum in another order (float32 rounding)."""
  from tests import test_multihost as mh
  over = {"steps": 4, "eval_every": 4, "checkpoint_every": 4, "data_streams": 2}
  axes = ["train.lr=1e-3,3e-3"]
  ref = sweep.train_sweep(_cfg(num_devices=2, **over), str(tmp_path / "ref"), axes)
  c = _cfg(**over)
  flat = {f"train.{k}": v for k, v in c.train.items() if k != "synthetic"}
  flat.update({f"train.synthetic.{k}": v for k, v in c.train.synthetic.items()})
  flat.update({f"sae.{k}": c.sae[k] for k in ("m", "k", "k_aux")})
  args = [sys.executable, "-m", "launch.sweep", "--config=configs/synthetic_tiny.py",
          f"--workdir={tmp_path}"] + [f"--sweep={a}" for a in axes] + [
          f"--config.{k}={v}" for k, v in flat.items() if v is not None and k not in (
              "train.num_devices", "train.stop_after", "train.checkpoint_dir")]
  port = mh._free_port()
  procs = []
  for rank in range(2):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1",
           "MASTER_ADDR": "localhost", "MASTER_PORT": "1", "JAX_COORDINATOR_PORT": str(port),
           "RANK": str(rank), "WORLD_SIZE": "2"}
    log = open(tmp_path / f"proc{rank}.log", "w")
    procs.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT))
  mh._wait(procs, str(tmp_path), timeout=150)
  assert "process 1 of 2" not in mh._log(str(tmp_path), 1)    # one voice
  got = json.load(open(tmp_path / "runs" / "synthetic_tiny" / "sweep.json"))
  assert [r["name"] for r in got["members"]] == ["lr0.001", "lr0.003"]
  for name in ("lr0.001", "lr0.003"):
    for key in ("loss", "l0"):
      np.testing.assert_allclose(_col(str(tmp_path), _member(name), key),
                                 _col(str(tmp_path / "ref"), _member(name), key), rtol=1e-5)
  np.testing.assert_allclose([r["fvu"] for r in got["members"]],
                             [r["fvu"] for r in ref["members"]], rtol=1e-5)
