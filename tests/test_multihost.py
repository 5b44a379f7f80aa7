"""Multi-host training proven on one machine: 2 processes x 4 CPU devices vs 1 x 8.

Each subprocess is a real JAX process (`jax.distributed.initialize` on a localhost
coordinator, gloo CPU collectives) started through `launch/train.py` with torchrun-style
environment variables, exactly as on a cluster. The reference runs in this pytest process
on the 8 simulated devices of conftest.py, with the same `train.data_streams=2`, so both
see identical global batches.

Tolerance: losses and L0 agree to rtol 1e-5 (cross-process all-reduces sum in another
order than in-process ones; observed differences are float32 rounding, ~1e-7).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import synthetic_tiny
from musicsae_jax import distributed, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = "synthetic_tiny"
TIMEOUT = 90                    # per launch; nothing here may hang CI

TINY = {"sae.m": 64, "sae.k": 4, "sae.k_aux": 8,
        "train.synthetic.d": 16, "train.synthetic.m_true": 32, "train.synthetic.n": 4096,
        "train.synthetic.rows_per_prompt": 32, "train.synthetic.chunk_rows": 512,
        "train.batch_size": 64, "train.warmup_steps": 2, "train.log_every": 1,
        "train.eval_batch_size": 256, "train.dead_tokens": 128, "train.plots": False,
        "train.data_streams": 2, "train.shuffle_mb": 0.02}   # ~100-row windows, 8 passes


def _cfg(overrides):
  c = synthetic_tiny.get_config()
  for key, v in overrides.items():
    node = c
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = v
  return c


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(workdir, overrides, n=2, devices=4):
  """`n` processes of launch/train.py joined through a localhost coordinator."""
  port = _free_port()
  args = [sys.executable, "-m", "launch.train", "--config=configs/synthetic_tiny.py",
          f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]
  procs = []
  for rank in range(n):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices),
           "MASTER_ADDR": "localhost", "MASTER_PORT": "1", "JAX_COORDINATOR_PORT": str(port),
           "RANK": str(rank),
           "WORLD_SIZE": str(n)}
    log = open(os.path.join(workdir, f"proc{rank}.log"), "w")
    procs.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT))
  return procs


def _log(workdir, rank, tail=4000):
  with open(os.path.join(workdir, f"proc{rank}.log")) as f:
    text = f.read()
  return text[-tail:] if tail else text


def _wait(procs, workdir, timeout=TIMEOUT):
  deadline = time.time() + timeout
  try:
    for rank, p in enumerate(procs):
      p.wait(timeout=max(deadline - time.time(), 1))
      assert p.returncode == 0, f"process {rank} failed:\n{_log(workdir, rank)}"
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def _rows(workdir, kind="train"):
  with open(os.path.join(workdir, "runs", RUN, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["kind"] == kind]


def _series(workdir, key):
  return np.array([r[key] for r in _rows(workdir)])


def _committed(ckpt_dir):
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())


def _reference(workdir, overrides):
  """1 process x 8 devices, in this process."""
  return train.train_and_evaluate(_cfg(overrides), str(workdir))


def test_two_processes_match_one_process_data_parallel(tmp_path):
  over = {**TINY, "train.steps": 6, "train.eval_every": 3, "train.checkpoint_every": 3,
          "train.mesh_data": -1, "train.mesh_model": 1, "train.sharding": "data"}
  ref = _reference(tmp_path / "ref", over)
  wd = tmp_path / "mh"
  wd.mkdir()
  _wait(_start(str(wd), over), str(wd))
  assert [r["step"] for r in _rows(wd)] == list(range(1, 7))     # one writer: process 0
  for key in ("loss", "mse", "l0", "aux"):
    np.testing.assert_allclose(_series(wd, key), _series(tmp_path / "ref", key), rtol=1e-5,
                               err_msg=key)
  final = json.load(open(wd / "runs" / RUN / "final_metrics.json"))
  np.testing.assert_allclose(final["eval_fvu"], ref["eval_fvu"], rtol=1e-5)
  assert "process 1 of 2" in _log(str(wd), 1) and "step 6/6" not in _log(str(wd), 1)
  assert "step 6/6" in _log(str(wd), 0)


def test_killed_process_resumes_from_last_checkpoint_latent_sharded(tmp_path):
  """Latent axis over all 8 devices of both processes; SIGKILL one mid-run, relaunch."""
  steps, every = 40, 10
  over = {**TINY, "train.steps": steps, "train.eval_every": every,
          "train.checkpoint_every": every, "train.mesh_data": 1, "train.mesh_model": 8,
          "train.sharding": "latent"}
  ref = _reference(tmp_path / "ref", over)
  wd = tmp_path / "mh"
  wd.mkdir()
  ckpt_dir = str(wd / "runs" / RUN / "checkpoints")
  procs = _start(str(wd), over)
  try:
    deadline = time.time() + TIMEOUT
    while not _committed(ckpt_dir) and time.time() < deadline:
      assert all(p.poll() is None for p in procs), _log(str(wd), 0)
      time.sleep(0.02)
    procs[1].send_signal(signal.SIGKILL)          # a host dies mid-run ...
    procs[1].wait()
    try:                                          # ... and the job is torn down
      procs[0].wait(timeout=3)
    except subprocess.TimeoutExpired:
      procs[0].kill()
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  assert procs[1].returncode == -signal.SIGKILL
  last = max(_committed(ckpt_dir))
  assert last < steps, "the run finished before the kill: nothing was tested"
  _wait(_start(str(wd), over), str(wd))           # relaunch all processes, same command
  log0 = _log(str(wd), 0, tail=None)
  assert f"at step {last}" in log0 and "resumed from" in log0, log0[-3000:]
  assert [r["step"] for r in _rows(wd)] == list(range(1, steps + 1))   # nothing lost
  for key in ("loss", "mse", "l0", "aux"):
    np.testing.assert_allclose(_series(wd, key), _series(tmp_path / "ref", key), rtol=1e-5,
                               err_msg=key)
  final = json.load(open(wd / "runs" / RUN / "final_metrics.json"))
  np.testing.assert_allclose(final["eval_fvu"], ref["eval_fvu"], rtol=1e-5)
  # The 2-process checkpoint restores in this single process (another process count).
  model, info = train.load_run(str(wd / "runs" / RUN))
  ref_model, _ = train.load_run(str(tmp_path / "ref" / "runs" / RUN))
  assert info["step"] == steps
  np.testing.assert_allclose(np.asarray(model.W_dec[...]), np.asarray(ref_model.W_dec[...]),
                             rtol=1e-4, atol=1e-6)


def test_detect_from_environment():
  d = distributed.detect
  assert d({}) is None
  assert d({"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "h"}) is None     # single
  s = d({"RANK": "3", "WORLD_SIZE": "4", "MASTER_ADDR": "h0", "MASTER_PORT": "1234",
         "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
  assert s.kwargs() == {"coordinator_address": "h0:1235", "num_processes": 4,   # port+1
                        "process_id": 3, "local_device_ids": [1]}
  s = d({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h0", "MASTER_PORT": "1234",
         "JAX_COORDINATOR_PORT": "777"})
  assert s.coordinator_address == "h0:777"
  s = d({"JAX_COORDINATOR_ADDRESS": "c:9", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1",
         "RANK": "0", "WORLD_SIZE": "8", "MASTER_ADDR": "x"})
  assert (s.source, s.coordinator_address, s.process_id) == ("jax-env", "c:9", 1)
  s = d({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_JOB_ID": "77"})
  assert s.source == "slurm" and s.kwargs() == {"num_processes": 16, "process_id": 5}
  assert d({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"}) is None
  assert d({"TPU_WORKER_HOSTNAMES": "a,b,c,d"}).source == "tpu"
  assert d({"TPU_WORKER_HOSTNAMES": "a"}) is None
  assert d({}, force=True).kwargs() == {}                     # JAX auto-detects the rest
  s = d({"RANK": "0", "WORLD_SIZE": "4", "MASTER_ADDR": "x"}, coordinator_address="f:1",
        num_processes=2, process_id=1)
  assert s.source == "flags" and s.kwargs()["coordinator_address"] == "f:1"
  with pytest.raises(distributed.DistributedError, match="--num_processes"):
    d({}, coordinator_address="f:1")
  with pytest.raises(distributed.DistributedError, match="WORLD_SIZE"):
    d({"RANK": "0", "WORLD_SIZE": "four", "MASTER_ADDR": "x"})


def test_worker_from_environment():
  w = distributed.worker_from_env
  assert w({}) is None
  assert w({"SLURM_PROCID": "2", "SLURM_NTASKS": "8"}) == (2, 8)
  assert w({"RANK": "1", "WORLD_SIZE": "4", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == (1, 4)
  assert w({"TPU_WORKER_ID": "3", "TPU_WORKER_HOSTNAMES": "a,b,c,d"}) == (3, 4)
  with pytest.raises(distributed.DistributedError, match="not in"):
    w({"RANK": "4", "WORLD_SIZE": "4"})


def test_global_batch_does_not_depend_on_process_count_or_threads():
  """With data_streams fixed, each simulated process's rows are its slice of the batch
  one process computes alone, whatever the reader thread count."""
  from musicsae_jax import data as data_lib, mesh as mesh_lib
  rng = np.random.default_rng(0)
  acts = rng.normal(size=(4000, 8)).astype(np.float32)
  acts[:, 0] = np.arange(4000)
  index = np.stack([np.arange(4000) // 37, np.arange(4000) % 37], 1)
  src = data_lib.ArraySource(acts, index, 256)
  mesh = mesh_lib.make_mesh()
  kw = dict(batch_size=64, seed=3, eval_prompts=[], scale=1.0, shuffle_rows=768, mesh=mesh,
            streams=4)
  one = data_lib.Pipeline(src, **kw)
  assert (one.row_lo, one.row_hi, one.my_streams) == (0, 64, [0, 1, 2, 3])
  two = [data_lib.Pipeline(src, process_index=p, process_count=2, read_threads=3, **kw)
         for p in range(2)]
  assert [t.my_streams for t in two] == [[0, 1], [2, 3]]
  for step in (0, 5, one.batches_in_epoch(0) + 1):
    np.testing.assert_array_equal(
        np.concatenate([t.local_batch_np(step) for t in two]), one.local_batch_np(step))
  with pytest.raises(data_lib.DataError, match="data streams"):
    data_lib.Pipeline(src, **{**kw, "streams": 3})


def test_sigterm_stops_both_processes_at_one_checkpointed_step(tmp_path):
  """A scheduler's SIGTERM to one process (JAX's preemption service tells the other):
  both save the checkpoint of one agreed step and exit with 143."""
  over = {**TINY, "train.steps": 100000, "train.eval_every": 100000,
          "train.checkpoint_every": 100000, "train.mesh_data": -1, "train.mesh_model": 1}
  wd = tmp_path / "mh"
  wd.mkdir()
  procs = _start(str(wd), over)
  try:
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
      assert all(p.poll() is None for p in procs), _log(str(wd), 0)
      if os.path.exists(wd / "runs" / RUN / "metrics.jsonl") and len(_rows(wd)) >= 3:
        break
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    for p in procs:
      p.wait(timeout=TIMEOUT)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert [p.returncode for p in procs] == [143, 143], _log(str(wd), 0) + _log(str(wd), 1)
  ckpts = _committed(str(wd / "runs" / RUN / "checkpoints"))
  assert len(ckpts) == 1 and ckpts[0] >= 3
  assert f"checkpoint of step {ckpts[0]} and stopped" in _log(str(wd), 0)


def test_the_documented_recipe_runs_to_the_end(tmp_path):
  """docs/MULTIHOST.md's by-hand recipe (synthetic_tiny as shipped, data_streams=2,
  2 processes x 4 devices), shortened from 600 to 120 steps. It used to hang before
  step 50: log_every=50 let dozens of steps queue, and a device waiting for an
  in-flight slot deadlocked against peers blocked in the step's gloo collective."""
  over = {"train.data_streams": 2, "train.steps": 120, "train.checkpoint_every": 60,
          "train.eval_every": 60, "train.plots": False}
  wd = tmp_path / "recipe"
  wd.mkdir()
  _wait(_start(str(wd), over), str(wd), timeout=150)
  assert [r["step"] for r in _rows(wd)] == [50, 100, 120]
  assert _committed(str(wd / "runs" / RUN / "checkpoints")) == [60, 120]
  final = json.load(open(wd / "runs" / RUN / "final_metrics.json"))
  assert final["step"] == 120 and final["eval_fvu"] < 0.5
