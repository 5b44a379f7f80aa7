"""The training loop end to end on tiny configs: devices, sharding modes, resume, store."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import synthetic_tiny
from musicsae_jax import store
from musicsae_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(**train_kw):
  c = synthetic_tiny.get_config()
  c.sae.m, c.sae.k, c.sae.k_aux = 64, 4, 8
  c.train.synthetic.update(d=16, m_true=32, n=4096, rows_per_prompt=32, chunk_rows=512)
  c.train.update(steps=6, batch_size=64, warmup_steps=2, log_every=1, eval_every=3,
                 checkpoint_every=3, eval_batch_size=256, dead_tokens=128, plots=False,
                 async_checkpoint=True, shuffle_mb=0.02)   # ~100-row windows, 8 passes
  c.train.update(**train_kw)
  return c


def _rows(workdir, run="synthetic_tiny", kind="train"):
  with open(os.path.join(workdir, "runs", run, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["kind"] == kind]


def _losses(workdir, key="loss"):
  return np.array([r[key] for r in _rows(workdir)])


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("one"))
  final = train.train_and_evaluate(_cfg(num_devices=1), wd)
  return wd, final


def test_one_device_run_writes_everything(one_device):
  wd, final = one_device
  run = os.path.join(wd, "runs", "synthetic_tiny")
  assert {"config.json", "metrics.jsonl", "normalization.json", "final_metrics.json",
          "checkpoints"} <= set(os.listdir(run))
  assert final["step"] == 6 and 0 < final["eval_fvu"] < 1.5
  assert abs(final["eval_ev"] - (1 - final["eval_fvu"])) < 1e-12
  assert len(_rows(wd)) == 6 and [r["step"] for r in _rows(wd, kind="eval")] == [3, 6]
  for key in ("loss", "mse", "l0", "aux", "fvu", "ev", "dead_frac", "dense_frac",
              "steps_per_s", "acts_per_s", "lr"):
    assert key in _rows(wd)[-1], key
  assert json.load(open(os.path.join(run, "config.json")))["train"]["lr"] == 3e-3


# Data-parallel sums the loss in a different order than one device; we allow rtol 1e-5
# (observed differences are ~1e-7, float32 rounding).
@pytest.mark.parametrize("arch,mesh_data,mesh_model,sharding", [
    ("topk", -1, 1, "data"),          # 8 x 1, params replicated
    ("topk", 2, 4, "latent"),         # latent axis over 4 devices
    ("batchtopk", 1, 8, "latent"),    # batch-wide top-k over a sharded latent axis
])
def test_eight_devices_match_one(tmp_path, one_device, arch, mesh_data, mesh_model, sharding):
  base = one_device[0]
  if arch != "topk":
    base = str(tmp_path / "ref")
    c = _cfg(num_devices=1)
    c.sae.architecture = arch
    train.train_and_evaluate(c, base)
  c = _cfg(mesh_data=mesh_data, mesh_model=mesh_model, sharding=sharding)
  c.sae.architecture = arch
  final = train.train_and_evaluate(c, str(tmp_path / "eight"))
  np.testing.assert_allclose(_losses(str(tmp_path / "eight")), _losses(base), rtol=1e-5)
  np.testing.assert_allclose(_losses(str(tmp_path / "eight"), "l0"), _losses(base, "l0"),
                             rtol=1e-5)
  ref = json.load(open(os.path.join(base, "runs", "synthetic_tiny", "final_metrics.json")))
  np.testing.assert_allclose(final["eval_fvu"], ref["eval_fvu"], rtol=1e-4)


def test_resume_equals_uninterrupted(tmp_path, one_device):
  wd = str(tmp_path)
  train.train_and_evaluate(_cfg(num_devices=1, stop_after=5), wd)   # "crash" after step 5
  assert len(_rows(wd)) == 5                                        # checkpoint is at 3
  final = train.train_and_evaluate(_cfg(num_devices=1), wd)         # resumes from 3
  assert [r["step"] for r in _rows(wd)] == [1, 2, 3, 4, 5, 6]       # rows 4-5 re-logged once
  np.testing.assert_array_equal(_losses(wd), _losses(one_device[0]))   # bit-exact
  assert final["eval_fvu"] == one_device[1]["eval_fvu"]
  again = train.train_and_evaluate(_cfg(num_devices=1), wd)         # already done
  assert again["step"] == 6 and len(_rows(wd)) == 6


def test_resume_onto_another_mesh(tmp_path, one_device):
  wd = str(tmp_path)
  train.train_and_evaluate(_cfg(mesh_data=2, mesh_model=4, sharding="latent", steps=3), wd)
  train.train_and_evaluate(_cfg(num_devices=1), wd)                 # 8 -> 1 device
  np.testing.assert_allclose(_losses(wd), _losses(one_device[0]), rtol=1e-5)


def _tiny_store(path, d=16, prompts=12, frames=40):
  rng = np.random.default_rng(0)
  ds = store.create(path, sites={"lm.layer.1": store.SiteSpec(d=d)},
                    prompts=[{"text": f"p{i}", "labels": {}} for i in range(prompts)],
                    model={"name": "test"}, generation={})
  with ds.writer(0) as w:
    for p in range(prompts):
      w.append("lm.layer.1", rng.normal(size=(frames, d)).astype(np.float32),
               np.stack([np.full(frames, p), np.arange(frames)], 1).astype(np.int32))
      w.commit(prompt_ids=[p])
  return path


def _store_cfg(**kw):
  c = _cfg(source="store", dataset="toy", site="lm.layer.1", eval_fraction=0.25,
           num_devices=1, steps=4, **kw)
  c.sae.d = None
  return c


def test_trains_on_a_store_site(tmp_path):
  _tiny_store(str(tmp_path / "activations" / "toy"))
  final = train.train_and_evaluate(_store_cfg(), str(tmp_path))
  assert final["step"] == 4 and final["eval_rows"] == 3 * 40   # 3 of 12 prompts held out
  norm = json.load(open(tmp_path / "runs" / "synthetic_tiny" / "normalization.json"))
  assert norm["d"] == 16 and norm["scale"] > 0


def test_bad_inputs_raise(tmp_path):
  wd = str(tmp_path)
  _tiny_store(str(tmp_path / "activations" / "toy"))
  c = _store_cfg(); c.train.site = "lm.layer.9"
  with pytest.raises(store.UnknownSiteError, match="lm.layer.9"):
    train.train_and_evaluate(c, wd)
  c = _store_cfg(); c.sae.d = 32
  with pytest.raises(ValueError, match="width mismatch.*d=16"):
    train.train_and_evaluate(c, wd)
  c = _cfg(); c.sae.architecture = "bogus"
  with pytest.raises(ValueError, match="architecture"):
    train.train_and_evaluate(c, wd)
  c = _cfg(); c.sae.k = 64
  with pytest.raises(ValueError, match="k=64"):
    train.train_and_evaluate(c, wd)
  c = _cfg(mesh_model=3)
  with pytest.raises(ValueError, match="does not divide 8 devices"):
    train.train_and_evaluate(c, wd)
  c = _cfg(source="s3")
  with pytest.raises(ValueError, match="train.source"):
    train.train_and_evaluate(c, wd)


def test_launch_script_trains_and_resumes(tmp_path):
  # One device here: the multi-device paths are covered above; this checks the app.
  env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1"}
  cmd = [sys.executable, "-m", "launch.train", "--config=configs/synthetic_tiny.py",
         f"--workdir={tmp_path}", "--config.train.steps=40", "--config.train.eval_every=20",
         "--config.train.checkpoint_every=20", "--config.train.log_every=10",
         "--config.train.synthetic.n=8192"]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "ETA" in out.stderr
  head, where = out.stdout.strip().splitlines()[-2:]        # numbers a person reads, and where
  assert head.startswith("run synthetic_tiny: step 40; eval fvu ") and "e-" not in head, head
  assert where.startswith(f"written to {tmp_path}/runs/synthetic_tiny: final_metrics.json"), where
  run = tmp_path / "runs" / "synthetic_tiny"
  assert (run / "training_curves.png").exists() and (run / "feature_density.png").exists()
  final = json.load(open(run / "final_metrics.json"))
  assert "synthetic_frac_recovered" in final
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
  assert out.returncode == 0 and "already done" in out.stderr


def test_eval_metrics_match_numpy_on_the_held_out_split(one_device):
  """Rebuild the eval split and final model from disk; metrics.py must agree with the log."""
  from musicsae_jax import data as data_lib, metrics
  wd, final = one_device
  c = _cfg(num_devices=1)
  t = train.resolve_train_config(c.train)
  source, _ = train._source(c, t, wd)
  run = os.path.join(wd, "runs", "synthetic_tiny")
  scale = json.load(open(os.path.join(run, "normalization.json")))["scale"]
  ev = data_lib.split_prompts(source.read_index()[:, 0], t.eval_fraction, t.data_seed)
  x = data_lib.load_eval(source, ev, t.eval_max_rows, t.data_seed, scale)
  model, info = train.load_run(run)                     # what export/analysis use
  assert info["step"] == 6 and info["scale"] == scale
  x_hat, z = model(x)
  pooled = metrics.PooledFVU()
  for lo in range(0, len(x), 100):                       # any batching, same pooled answer
    pooled.update(x[lo:lo + 100], x_hat[lo:lo + 100])
  np.testing.assert_allclose(final["eval_fvu"], pooled.fvu(), rtol=1e-5)
  np.testing.assert_allclose(final["eval_fvu"], metrics.fvu(x, x_hat), rtol=1e-5)
  np.testing.assert_allclose(final["eval_l0"], metrics.l0(z), rtol=1e-6)
  density = metrics.feature_density(metrics.firing_counts(z), len(x))
  assert final["eval_dead_frac"] == metrics.dead_fraction(metrics.firing_counts(z))
  assert final["eval_dense_frac"] == metrics.dense_fraction(density, t.dense_threshold)
  assert final["eval_rows"] == len(x) > 0


# Over a longer run the 1- and 8-device trajectories drift apart at float32 rounding level
# (reductions sum in another order; Adam and TopK selection compound it). Measured with
# bench/determinism.py on synthetic_tiny, 600 steps: 8x1 data-parallel max relative loss
# difference 5e-7, final eval FVU 2e-7 apart; 2x4 latent-sharded first exceeds 1e-5 at step
# 567, max 5e-5, final eval FVU 2.5e-6 apart. Asserted: the first 20 steps to rtol 1e-5,
# every step to 1e-3, the final eval FVU to 1e-3 (a stated band, not bit equality).
@pytest.mark.parametrize("mesh_data,mesh_model,sharding", [(-1, 1, "data"), (2, 4, "latent")])
def test_eight_devices_stay_within_a_band_of_one_over_a_longer_run(tmp_path, mesh_data,
                                                                   mesh_model, sharding):
  kw = dict(steps=60, eval_every=60, checkpoint_every=60)
  one = train.train_and_evaluate(_cfg(num_devices=1, **kw), str(tmp_path / "one"))
  eight = train.train_and_evaluate(_cfg(mesh_data=mesh_data, mesh_model=mesh_model,
                                        sharding=sharding, **kw), str(tmp_path / "eight"))
  a, b = _losses(str(tmp_path / "one")), _losses(str(tmp_path / "eight"))
  rel = np.abs(a - b) / np.abs(a)
  print(f"max rel loss diff {rel.max():.2e}, first 20 {rel[:20].max():.2e}, eval FVU "
        f"{one['eval_fvu']:.6f} vs {eight['eval_fvu']:.6f}")
  np.testing.assert_allclose(b[:20], a[:20], rtol=1e-5)
  np.testing.assert_allclose(b, a, rtol=1e-3)
  np.testing.assert_allclose(eight["eval_fvu"], one["eval_fvu"], rtol=1e-3)


def test_schedule_and_dead_window_follow_the_run_length():
  t = train.resolve_train_config({"steps": 1000, "lr": 1.0})
  sched, _ = train.make_schedule(t)
  assert train.warmup_steps(t) == 50                          # 5 % of the run
  np.testing.assert_allclose([sched(25), sched(50), sched(500), sched(799)], [0.5, 1, 1, 1])
  np.testing.assert_allclose([sched(900), sched(1000)], [0.5, 0.0], atol=1e-6)  # last 20 %
  long = train.resolve_train_config({"steps": 300_000, "lr": 1.0})
  assert train.warmup_steps(long) == 1000                     # capped
  assert train.default_dead_tokens(train.resolve_train_config(
      {"steps": 122, "batch_size": 4096})) == 122 * 4096 // 20
  assert train.default_dead_tokens(long) == 10_000_000
  const = train.resolve_train_config({"steps": 100, "lr": 1.0, "decay": "constant"})
  assert float(train.make_schedule(const)[0](99)) == 1.0


def test_relu_l1_coefficient_warms_up():
  """ReLU's L1 coefficient ramps linearly over train.l1_warmup_frac of the steps: the
  logged loss is mse + l1_coeff * min(1, step / warm-up) * sparsity, full from then on."""
  import jax
  import optax
  from flax import nnx
  from musicsae_jax import sae as sae_lib
  t = train.default_config()
  t.steps = 80
  assert train.l1_warmup_steps(t) == 4                      # 5 % of 80
  model = sae_lib.make_sae(dict(architecture="relu", m=32, l1_coeff=3.0), d=8,
                           rngs=nnx.Rngs(0))
  graphdef, params, stats = nnx.split(model, nnx.Param, ...)
  tx = optax.sgd(0.0)                                       # parameters stay put
  step = jax.jit(train.make_train_step(graphdef, tx, 10**6, l1_warmup=4))
  state = train.init_state(params, stats, tx, 32)
  x = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
  for i in range(1, 7):
    state, met = step(state, x)
    want = met["mse"] + 3.0 * min(1.0, i / 4) * met["sparsity_loss"]
    np.testing.assert_allclose(met["loss"], want, rtol=1e-6)
  t.l1_warmup_frac = 0.0
  assert train.l1_warmup_steps(t) == 0


def test_a_trainer_waiting_on_data_says_which_knobs_to_turn(tmp_path, monkeypatch):
  """A loader slower than the step (as on an accelerator host at d=1536) is logged once,
  naming the passes and the two settings that trade memory or threads for re-reads."""
  import time
  from absl import logging as absl_logging
  from musicsae_jax import data as data_lib
  slow = data_lib.Pipeline.global_batch_at
  monkeypatch.setattr(data_lib.Pipeline, "global_batch_at",
                      lambda self, step: (time.sleep(0.05), slow(self, step))[1])
  said = []
  monkeypatch.setattr(absl_logging, "warning", lambda msg, *a: said.append(msg % a))
  train.train_and_evaluate(_cfg(num_devices=1, steps=8, log_every=2, eval_every=8,
                                checkpoint_every=8), str(tmp_path))
  waits = [r["data_wait_frac"] for r in _rows(str(tmp_path))]
  assert max(waits[1:]) > 0.2
  (msg,) = [m for m in said if "waited on data" in m]
  assert "train.shuffle_mb" in msg and "train.read_threads" in msg and "read 8 times" in msg


def test_shuffle_window_default_follows_the_platform_and_is_recorded(tmp_path, monkeypatch):
  """shuffle_mb=None resolves to 768 MB on CPU and 4096 MB on an accelerator, is written
  into config.json at the first start, and a resume keeps the recorded value even where
  the platform default differs (so the batches do not change under the run)."""
  assert train.default_shuffle_mb("cpu") == 768.0
  assert train.default_shuffle_mb("gpu") == train.default_shuffle_mb("tpu") == 4096.0
  t = train.resolve_train_config({})
  assert t.shuffle_mb is None
  train.fill_run_defaults(t, 64)
  assert t.shuffle_mb == 768.0
  wd = str(tmp_path)
  train.train_and_evaluate(_cfg(num_devices=1, shuffle_mb=None, steps=2, eval_every=2,
                                checkpoint_every=2), wd)
  cfg_path = os.path.join(wd, "runs", "synthetic_tiny", "config.json")
  assert json.load(open(cfg_path))["train"]["shuffle_mb"] == 768.0
  monkeypatch.setattr(train.jax, "default_backend", lambda: "gpu")
  t2 = train.resolve_train_config({})
  train.fill_run_defaults(t2, 64, train._recorded_train(os.path.dirname(cfg_path)))
  assert t2.shuffle_mb == 768.0                        # the recorded value, not 4096
  final = train.train_and_evaluate(_cfg(num_devices=1, shuffle_mb=None, steps=4,
                                        eval_every=2, checkpoint_every=2), wd)
  assert final["step"] == 4                            # resumed: the same experiment


_TIMING = ("steps_per_s", "acts_per_s", "data_wait_frac")


def _metrics_without_timing(workdir):
  with open(os.path.join(workdir, "runs", "synthetic_tiny", "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(l).items() if k not in _TIMING} for l in f]


_LOG4 = dict(num_devices=1, steps=8, log_every=4, eval_every=8, checkpoint_every=3)


@pytest.fixture(scope="module")
def logged_every_4(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("log4"))
  train.train_and_evaluate(_cfg(**_LOG4), wd)
  return _metrics_without_timing(wd)


@pytest.mark.parametrize("how", ["sigterm", "crash"])
def test_a_resumed_run_logs_the_same_metrics_as_an_uninterrupted_one(tmp_path, monkeypatch, how,
                                                                       logged_every_4):
  """Logged every 4 steps: stopped by SIGTERM at step 6 (saved there) or crashed after step
  5 (checkpoint at 3), the resumed run's metrics.jsonl equals an uninterrupted run's: the
  steps before the stop still count in the window logged after it."""
  from musicsae_jax import preemption
  wd = str(tmp_path)
  if how == "sigterm":
    monkeypatch.setattr(preemption.StopOnSigterm, "should_stop", lambda self, step: step == 6)
    assert train.train_and_evaluate(_cfg(**_LOG4), wd) == {"step": 6, "preempted": True}
    monkeypatch.undo()
  else:
    train.train_and_evaluate(_cfg(stop_after=5, **_LOG4), wd)
  assert max(r["step"] for r in _rows(wd)) == 4
  train.train_and_evaluate(_cfg(**_LOG4), wd)
  assert [r["step"] for r in _rows(wd)] == [4, 8]
  assert _metrics_without_timing(wd) == logged_every_4
