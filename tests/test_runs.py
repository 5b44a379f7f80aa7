"""Run-directory safety: validation before writing, resume guards, one trainer per run."""
import json
import os
import subprocess
import sys

import pytest

from musicsae_jax import runs
from musicsae_jax import train
from tests.test_train import ROOT, _cfg

RUN = "synthetic_tiny"


def _files(run_dir):
  return {n: open(os.path.join(run_dir, n), "rb").read()
          for n in ("config.json", "normalization.json", "metrics.jsonl")}


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
  """A 1-device run stopped (as if killed) at its step-3 checkpoint."""
  wd = str(tmp_path_factory.mktemp("stopped"))
  train.train_and_evaluate(_cfg(num_devices=1, stop_after=3), wd)
  return wd


@pytest.mark.parametrize("change,diff", [
    (dict(train=dict(lr=1e-3)), "train.lr: 0.003 -> 0.001"),
    (dict(train=dict(batch_size=32)), "train.batch_size: 64 -> 32"),
    (dict(sae=dict(k=8)), "sae.k: 4 -> 8"),
    (dict(sae=dict(architecture="batchtopk")), "sae.architecture: 'topk' -> 'batchtopk'"),
    (dict(train=dict(synthetic=dict(seed=1))), "train.synthetic.seed: 0 -> 1"),
    (dict(train=dict(data_streams=2)), "train.data_streams: 1 -> 2"),
])
def test_resume_with_another_experiment_is_refused_and_writes_nothing(stopped, change, diff):
  run_dir = os.path.join(stopped, "runs", RUN)
  before = _files(run_dir)
  c = _cfg(num_devices=1)
  for section, kv in change.items():
    for k, v in kv.items():
      c[section][k].update(v) if isinstance(v, dict) else c[section].__setitem__(k, v)
  with pytest.raises(runs.RunConfigError, match=rf"recorded -> now: .*{diff}.*--overwrite"):
    train.train_and_evaluate(c, stopped)
  assert _files(run_dir) == before          # config.json, scale and metrics untouched


def test_result_neutral_changes_resume_and_overwrite_starts_over(tmp_path):
  wd = str(tmp_path)
  train.train_and_evaluate(_cfg(num_devices=1, stop_after=3), wd)
  # extend the run, log and checkpoint at another cadence, on another mesh: allowed
  final = train.train_and_evaluate(_cfg(steps=9, log_every=3, checkpoint_every=9,
                                        eval_every=9, num_devices=2), wd)
  assert final["step"] == 9
  # another lr is refused, unless the run is started over
  final = train.train_and_evaluate(_cfg(num_devices=1, lr=1e-3), wd, overwrite=True)
  cfg = json.load(open(tmp_path / "runs" / RUN / "config.json"))
  assert final["step"] == 6 and cfg["train"]["lr"] == 1e-3
  steps = [json.loads(l)["step"] for l in open(tmp_path / "runs" / RUN / "metrics.jsonl")
           if json.loads(l)["kind"] == "train"]
  assert steps == list(range(1, 7))          # nothing of the old run left in the log


def test_extending_a_run_keeps_its_run_length_defaults(tmp_path):
  """warm-up and the AuxK window default to fractions of the run; a resume that extends
  `steps` keeps the values the run started with instead of refusing or changing them."""
  wd = str(tmp_path)
  train.train_and_evaluate(_cfg(num_devices=1, steps=40, stop_after=3, warmup_steps=None,
                                dead_tokens=None), wd)
  first = json.load(open(tmp_path / "runs" / RUN / "config.json"))["train"]
  assert (first["warmup_steps"], first["dead_tokens"]) == (2, 40 * 64 // 20)
  final = train.train_and_evaluate(_cfg(num_devices=1, steps=80, warmup_steps=None,
                                        dead_tokens=None, eval_every=40,
                                        checkpoint_every=40), wd)
  now = json.load(open(tmp_path / "runs" / RUN / "config.json"))["train"]
  assert final["step"] == 80 and now["steps"] == 80
  assert (now["warmup_steps"], now["dead_tokens"]) == (2, 40 * 64 // 20)


@pytest.mark.parametrize("kw,match", [
    (dict(lr=-0.001), r"train.lr=-0.001 must be > 0"),
    (dict(steps=-5), r"train.steps=-5 must be > 0"),
    (dict(steps=0), r"train.steps=0 must be > 0"),
    (dict(log_every=0), r"train.log_every=0 must be > 0"),
])
def test_invalid_values_are_refused_before_anything_is_written(tmp_path, kw, match):
  with pytest.raises(runs.RunConfigError, match=match):
    train.train_and_evaluate(_cfg(num_devices=1, **kw), str(tmp_path))
  assert not os.path.exists(tmp_path / "runs")


def test_a_config_rejected_later_leaves_no_run_files(tmp_path):
  c = _cfg(num_devices=1, decay="bogus")      # refused by make_schedule, after the data
  with pytest.raises(ValueError, match="train.decay"):
    train.train_and_evaluate(c, str(tmp_path))
  assert not os.path.exists(tmp_path / "runs" / RUN)


def test_a_second_trainer_fails_at_once_with_one_line(tmp_path):
  run_dir = tmp_path / "runs" / RUN
  lock = runs.RunLock(str(run_dir))          # a live trainer holds the run
  try:
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1"}
    out = subprocess.run([sys.executable, "-m", "launch.train", "--config=configs/synthetic_tiny.py",
                          f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=env)
  finally:
    lock.release()
  assert out.returncode != 0
  last = [l for l in out.stderr.splitlines() if l.strip()][-1]
  assert "RunLockedError" in last and f"pid {os.getpid()}" in last, out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  assert os.listdir(run_dir) == [runs.LOCK_FILE]   # the holder's run is untouched


def test_a_failed_async_save_stops_training_soon_with_one_line(tmp_path, monkeypatch):
  """Disk full while Orbax commits step 100 in the background: training stops before the
  next save (step 200) with one error naming the step, not at the next save."""
  import errno
  from orbax.checkpoint._src.path import atomicity
  from musicsae_jax import checkpoint as ckpt_lib

  async def disk_full(self, *a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", disk_full)
  c = _cfg(num_devices=1, steps=200, checkpoint_every=100, eval_every=100, log_every=1)
  with pytest.raises(ckpt_lib.CheckpointSaveError,
                     match=r"checkpoints: saving the checkpoint of step 100 failed: OSError: "
                           r"\[Errno 28\] No space left on device$"):
    train.train_and_evaluate(c, str(tmp_path))
  steps = [json.loads(l)["step"] for l in open(tmp_path / "runs" / RUN / "metrics.jsonl")]
  assert 100 <= max(steps) < 200


def _metric_steps(run_dir):
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  return [json.loads(l)["step"] for l in open(path) if l.strip().endswith("}")
          and json.loads(l)["kind"] == "train"]


def test_sigterm_checkpoints_and_exits_then_resumes(tmp_path):
  import signal
  import time
  env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1"}
  cmd = [sys.executable, "-m", "launch.train", "--config=configs/synthetic_tiny.py",
         f"--workdir={tmp_path}", "--config.train.steps=100000", "--config.train.log_every=1",
         "--config.train.checkpoint_every=100000", "--config.train.eval_every=100000",
         "--config.train.plots=False"]
  run_dir = str(tmp_path / "runs" / RUN)
  p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
  deadline = time.time() + 120
  while time.time() < deadline and len(_metric_steps(run_dir)) < 5:
    time.sleep(0.1)
  p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=60)
  assert p.returncode == 143, err[-2000:]
  assert "SIGTERM: saved the checkpoint of step" in err
  ckpts = sorted(int(n) for n in os.listdir(os.path.join(run_dir, "checkpoints")) if n.isdigit())
  assert len(ckpts) == 1 and ckpts[0] >= 5
  stopped = ckpts[0]
  assert max(_metric_steps(run_dir)) == stopped
  # the same command with a reachable end resumes from there
  r = subprocess.run(cmd[:5] + [f"--config.train.steps={stopped + 3}"] + cmd[6:], cwd=ROOT,
                     env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  assert _metric_steps(run_dir) == list(range(1, stopped + 4))


def test_training_on_a_store_with_a_missing_shard_fails_naming_the_file(tmp_path):
  import glob
  from musicsae_jax import store
  from tests.test_train import _store_cfg, _tiny_store
  path = _tiny_store(str(tmp_path / "activations" / "toy"))
  (shard,) = glob.glob(os.path.join(path, "sites", "lm.layer.1", "acts", "c", "*", "0"))
  os.remove(shard)
  with pytest.raises(store.MissingDataError, match=f"{shard}: missing shard file"):
    train.train_and_evaluate(_store_cfg(), str(tmp_path))
  assert not os.path.exists(tmp_path / "runs")


@pytest.mark.parametrize("nbytes", [1, 8])
def test_training_on_a_store_with_flipped_bits_fails_naming_the_file_and_rows(tmp_path, nbytes):
  import glob
  from musicsae_jax import store
  from tests.test_train import _store_cfg, _tiny_store
  path = _tiny_store(str(tmp_path / "activations" / "toy"))
  (shard,) = glob.glob(os.path.join(path, "sites", "lm.layer.1", "acts", "c", "*", "0"))
  b = bytearray(open(shard, "rb").read())
  for k in range(nbytes):
    b[64 + k] ^= 0x01 if nbytes == 1 else 0xFF
  open(shard, "wb").write(bytes(b))
  with pytest.raises(store.ChecksumError, match=f"{shard}: acts rows 0..479 of site 'lm.layer.1'"):
    train.train_and_evaluate(_store_cfg(), str(tmp_path))


@pytest.fixture
def small_disk(tmp_path):
  """A 4 MB tmpfs at tmp_path/disk (root only; the ENOSPC-injection tests run anywhere)."""
  d = tmp_path / "disk"
  d.mkdir()
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(d)],
                     capture_output=True, text=True)
  if r.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {(r.stderr.strip() or 'not permitted')[:80]}")
  yield d
  subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _fill(disk, leave: int) -> str:
  """Fill `disk` until about `leave` bytes are free; returns the filler's path."""
  path = os.path.join(disk, "filler")
  fd = os.open(path, os.O_CREAT | os.O_WRONLY)
  try:
    while True:
      os.write(fd, b"\1" * 4096)
  except OSError:
    pass
  finally:
    os.close(fd)
  if leave:
    os.truncate(path, max(0, os.path.getsize(path) - leave))
  return path


@pytest.mark.parametrize("leave", [0, 8 << 10, 24 << 10])   # fails: scale, config, checkpoint
def test_a_full_disk_anywhere_leaves_a_resumable_run_and_names_the_file(small_disk, leave):
  """Disk full at the start (no page free: normalization.json fails; one page: config.json,
  the issue's 0-byte file) or later (the first checkpoint does not fit): one line naming
  what could not be written, no empty or half-written JSON left, and after freeing space
  the same call finishes the run with every step logged once."""
  from musicsae_jax import checkpoint as ckpt_lib, files
  wd = str(small_disk / "wd")
  os.makedirs(os.path.join(wd, "runs"))
  filler = _fill(small_disk, leave)
  with pytest.raises((files.WriteError, ckpt_lib.CheckpointSaveError)) as err:
    train.train_and_evaluate(_cfg(num_devices=1, async_checkpoint=False), wd)
  msg = str(err.value)
  run_dir = os.path.join(wd, "runs", RUN)
  assert "\n" not in msg and msg.startswith(run_dir), msg
  assert "No space left on device" in msg
  for name in os.listdir(run_dir) if os.path.isdir(run_dir) else []:
    if name.endswith(".json"):
      json.load(open(os.path.join(run_dir, name)))      # complete, or not there at all
    assert ".tmp-" not in name, name
  os.remove(filler)
  final = train.train_and_evaluate(_cfg(num_devices=1, async_checkpoint=False), wd)
  assert final["step"] == 6
  assert _metric_steps(run_dir) == [1, 2, 3, 4, 5, 6]


def test_atomic_writes_keep_the_old_file_on_enospc_and_name_the_file(tmp_path, monkeypatch):
  from musicsae_jax import files
  path = str(tmp_path / "config.json")
  files.write_json(path, {"a": 1})
  def disk_full(*a, **k):
    raise OSError(28, "No space left on device")

  import builtins
  real_open = builtins.open

  def open_full(file, mode="r", *a, **k):
    f = real_open(file, mode, *a, **k)
    if "w" in mode and ".tmp-" in str(file):
      f.write = disk_full
    return f

  monkeypatch.setattr(builtins, "open", open_full)
  with pytest.raises(files.WriteError, match=rf"^{path}: cannot write \(No space left on "
                                             rf"device\).*rerun the same command$"):
    files.write_json(path, {"a": 2})
  monkeypatch.undo()
  assert json.load(open(path)) == {"a": 1} and os.listdir(tmp_path) == ["config.json"]


_DISK_FULL_AT_COMMIT = """
import errno, runpy, sys
from orbax.checkpoint._src.path import atomicity
async def disk_full(self, *a, **k):
  raise OSError(errno.ENOSPC, "No space left on device")
atomicity.AtomicRenameTemporaryPath.finalize = disk_full
sys.argv = ["launch.train", *sys.argv[1:]]
runpy.run_module("launch.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_a_failed_async_save_prints_one_line_and_the_trace_only_when_verbose(tmp_path, verbose):
  env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1"}
  env.pop("MUSICSAE_TRACEBACK", None)
  cmd = [sys.executable, "-c", _DISK_FULL_AT_COMMIT, "--config=configs/synthetic_tiny.py",
         f"--workdir={tmp_path}", "--config.train.steps=20", "--config.train.checkpoint_every=10",
         "--config.train.plots=False"] + (["--verbose"] if verbose else [])
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
  assert r.returncode != 0
  errors = [ln for ln in r.stderr.splitlines() if "Error" in ln or "Traceback" in ln]
  if verbose:
    assert r.stderr.count("Traceback") >= 2, r.stderr[-3000:]
  else:
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(errors) == 1, r.stderr[-3000:]
  assert errors[-1].endswith("saving the checkpoint of step 10 failed: OSError: [Errno 28] "
                             "No space left on device") or verbose, errors[-1]
