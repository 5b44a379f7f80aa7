"""The SAE training loop: `train_and_evaluate(config, workdir)`, read top to bottom.

Sections: mesh, input, model, optimizer, step, checkpoint, evals. The whole train state
(nnx params + statistics, optax state, steps-since-fired counters, step) is one pytree
that is sharded, jitted with donation and checkpointed as a unit. The step is a pure
function over `nnx.split` state (not `nnx.jit`), which keeps dispatch cheap.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from musicsae_jax import calibration
from musicsae_jax import checkpoint as ckpt_lib
from musicsae_jax import data as data_lib
from musicsae_jax import defaults
from musicsae_jax import files
from musicsae_jax import mesh as mesh_lib
from musicsae_jax import plots
from musicsae_jax import preemption
from musicsae_jax import runs
from musicsae_jax import progress
from musicsae_jax import sae as sae_lib

_WAIT_WARN = 0.2              # data wait (since the first interval) above which the trainer
                              # says how to fix it
_COUNTER_CAP = 2**30          # steps-since-fired saturates here (int32 safe)
_NOT_SAE_FIELDS = ("d",)      # c.sae fields consumed here, not by sae.make_sae
_RETIRED = ("shuffle_blocks",)  # train fields that older runs' config.json may still hold


def default_config() -> ml_collections.ConfigDict:
  """Every `c.train` field with its default (the one copy lives in musicsae_jax.defaults)."""
  return defaults.train()


def default_lr(m: int) -> float:
  """Gao et al.'s width rule lr ~ 1/sqrt(m) at 4x their level, the setting with no dead
  latents. bench/quality.py's fair protocol (MiniLM, m = 8d, 0.5M tokens; split by document,
  chosen on validation) gives validation FVU 0.173 here with none dead; 2x this lr gives
  0.146 with 3 % dead and 4x 0.137 with 33 % dead (docs/benchmarks.md, SAE quality): a
  higher lr buys FVU with dead latents, so the default stays."""
  return 8e-4 / float(np.sqrt(m / 2**14))


def default_dead_tokens(t) -> int:
  """A twentieth of the run's tokens, at most 10M (Gao et al.'s value for long runs):
  with a fixed 10M a short run never calls a latent dead, so AuxK never engages."""
  return int(min(10_000_000, max(int(t.steps) * int(t.batch_size) // 20, int(t.batch_size))))


def default_shuffle_mb(platform: str) -> float:
  """768 MB of shuffle windows on CPU (a laptop's memory; a step takes seconds, so the
  loader's re-reads keep up), 4096 MB on GPU/TPU: on one H200 at d=1536 the trainer
  waited on data 56 % of the time at 768 MB (each block decoded 8 times an epoch) and 6 %
  at 4096 MB (docs/benchmarks.md, On a GPU). It depends on the platform only, the same for every
  process of a job, so batches stay a function of (seed, step)."""
  return 768.0 if platform == "cpu" else 4096.0


def warmup_steps(t) -> int:
  """train.warmup_steps, or warmup_frac of the run capped at warmup_max."""
  if t.warmup_steps is not None:
    return int(t.warmup_steps)
  return int(min(int(t.warmup_max), round(float(t.warmup_frac) * int(t.steps))))


def fill_run_defaults(t, m: int, recorded: dict | None = None) -> None:
  """Resolve the defaults that depend on the run (lr on m; warm-up and dead_tokens on its
  length; shuffle_mb on the platform) in place, so config.json records the values used. A resumed run keeps the
  values it `recorded` for the fields left at None, so extending `steps` does not change
  them under it."""
  rec = recorded or {}

  def pick(name, default):
    return rec[name] if rec.get(name) is not None else default()

  t.lr = float(t.lr) if t.lr is not None else float(pick("lr", lambda: default_lr(m)))
  t.warmup_steps = (int(t.warmup_steps) if t.warmup_steps is not None
                    else int(pick("warmup_steps", lambda: warmup_steps(t))))
  t.dead_tokens = (int(t.dead_tokens) if t.dead_tokens is not None
                   else int(pick("dead_tokens", lambda: default_dead_tokens(t))))
  t.shuffle_mb = (float(t.shuffle_mb) if t.shuffle_mb is not None else float(
      pick("shuffle_mb", lambda: default_shuffle_mb(jax.default_backend()))))


def make_pipeline(t, source, eval_prompts, scale: float, mesh, d: int) -> data_lib.Pipeline:
  """The training batch stream of `train.*` settings (one run or a whole sweep)."""
  return data_lib.Pipeline(
      source, batch_size=t.batch_size, seed=t.data_seed, eval_prompts=eval_prompts,
      scale=scale, mesh=mesh, prefetch=t.prefetch, max_passes=t.shuffle_max_passes,
      shuffle_rows=data_lib.window_rows(t.shuffle_mb, d, t.data_streams),
      streams=t.data_streams,
      read_threads=t.read_threads or min(8, max(1, (os.cpu_count() or 1) // 2)))


def make_schedule(t) -> tuple[optax.Schedule, float]:
  """Warm-up, constant, then decay over the last `decay_frac` of the run ('constant':
  none). The length of each phase follows the run's length, so short and long runs
  both spend most steps at the peak lr."""
  lr, steps, warmup = t.lr, int(t.steps), warmup_steps(t)
  shapes = ("linear", "cosine", "constant")
  if t.decay not in shapes:
    raise ValueError(f"train.decay={t.decay!r}; allowed: {', '.join(shapes)}")
  if not 0.0 <= float(t.decay_frac) <= 1.0:
    raise ValueError(f"train.decay_frac={t.decay_frac} must be in [0, 1]")
  n_decay = 0 if t.decay == "constant" else int(round(float(t.decay_frac) * steps))
  n_decay = min(n_decay, max(steps - warmup, 0))
  end = lr * float(t.final_lr_frac)
  parts, bounds = [], []
  if warmup > 0:
    parts.append(optax.linear_schedule(0.0, lr, warmup))
    bounds.append(warmup)
  parts.append(optax.constant_schedule(lr))
  if n_decay > 0:
    bounds.append(steps - n_decay)
    parts.append(optax.linear_schedule(lr, end, n_decay) if t.decay == "linear" else
                 optax.cosine_decay_schedule(lr, n_decay, alpha=float(t.final_lr_frac)))
  if len(parts) == 1:
    return parts[0], lr
  return optax.join_schedules(parts, bounds), lr


def make_optimizer(t) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Global-norm clipping then Adam on the warmup/decay schedule (t.lr must be set)."""
  schedule, _ = make_schedule(t)
  tx = optax.chain(optax.clip_by_global_norm(t.grad_clip),
                   optax.adam(schedule, b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps))
  return tx, schedule


def load_run(run_dir: str, step: int | None = None, best: bool = False):
  """(model, info) from a run directory: the SAE at `step` (latest; best eval FVU if
  `best`), on the default device. info: step, scale (inputs were multiplied by it; fold
  it back at export), config (the resolved one from config.json).
  """
  with open(os.path.join(run_dir, "config.json")) as f:
    cfg = json.load(f)
  norm = data_lib.load_normalization(os.path.join(run_dir, "normalization.json"))
  t = resolve_train_config(ml_collections.ConfigDict(cfg["train"]))
  sae_cfg = {k: v for k, v in cfg["sae"].items() if k not in _NOT_SAE_FIELDS}
  model = sae_lib.make_sae(sae_cfg, d=int(norm["d"]), rngs=nnx.Rngs(0))
  graphdef, params, stats = nnx.split(model, nnx.Param, ...)
  ck = ckpt_lib.Checkpointer(os.path.join(run_dir, "checkpoints"))
  try:
    step = ck.best_step() if best and step is None else step
    state = ck.restore(step, init_state(params, stats, make_optimizer(t)[0], model.m))
  finally:
    ck.close()
  return nnx.merge(graphdef, state["params"], state["stats"]), {
      "step": int(state["step"]), "scale": float(norm["scale"]), "config": cfg}


def _source(config, t, workdir):
  """The block source plus extras (synthetic ground truth) named by train.source."""
  if t.source == "synthetic":
    from musicsae_jax import synthetic
    s = t.synthetic
    extra = {k: v for k, v in s.items()
             if k not in ("d", "m_true", "n", "rows_per_prompt", "chunk_rows")}
    x, true_dirs, _ = synthetic.make_toy(s.d, s.m_true, s.n, **extra)
    x = np.asarray(x, np.float32)
    rows = np.arange(len(x))
    index = np.stack([rows // s.rows_per_prompt, rows % s.rows_per_prompt], 1)
    return data_lib.ArraySource(x, index, s.chunk_rows), {"true_dirs": np.asarray(true_dirs)}
  if t.source == "store":
    from musicsae_jax import store
    if not t.dataset or not t.site:
      raise ValueError("train.source='store' needs train.dataset and train.site")
    path = t.dataset if os.path.isabs(t.dataset) else data_lib.dataset_path(workdir, t.dataset)
    site = store.open_dataset(path).site(t.site)    # UnknownSiteError names the sites
    if config.sae.get("d") is not None and int(config.sae.d) != site.d:
      raise ValueError(f"width mismatch: config sae.d={config.sae.d} but store site "
                       f"{t.site!r} in {path} has d={site.d} (set sae.d=None to use the store)")
    return site, {}
  raise ValueError(f"train.source={t.source!r}; allowed: 'synthetic', 'store'")


def l1_warmup_steps(t) -> int:
  """Steps over which ReLU's L1 coefficient ramps up: train.l1_warmup_frac of the run."""
  return int(round(float(t.l1_warmup_frac) * int(t.steps)))


def make_train_step(graphdef, tx: optax.GradientTransformation, dead_tokens: int,
                    dense_threshold: float = 0.1, l1_warmup: int = 0):
  """The pure train step (state, x) -> (state, scalar metrics); jit it with shardings.

  state = {'params', 'stats' (nnx split), 'opt', 'since_fired' [m] int32, 'step'}.
  `l1_warmup`: the sparsity coefficient (ReLU's L1) grows linearly from 1/l1_warmup to
  full over the first l1_warmup steps (Anthropic's April 2024 recipe: a full penalty
  from the first step kills latents before they have found a direction).
  """
  dense_thr = float(dense_threshold)
  warm = int(l1_warmup)

  def train_step(state, x):
    dead = state["since_fired"] >= dead_tokens
    scale = (jnp.minimum(1.0, (state["step"] + 1).astype(jnp.float32) / warm)
             if warm > 0 else 1.0)

    def loss_fn(p):
      loss, metrics = nnx.merge(graphdef, p, state["stats"]).loss(
          x, dead_mask=dead, train=True, sparsity_scale=scale)
      return loss, metrics

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    grads = jax.tree_util.tree_map_with_path(
        lambda path, g, w: (sae_lib.remove_parallel_grad(w, g)
                            if mesh_lib._leaf_name(path) == "W_dec" else g),
        grads, state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    model = nnx.merge(graphdef, optax.apply_updates(state["params"], updates), state["stats"])
    sae_lib.normalize_decoder(model)
    # Firing counts [m] (and the selected values for thresholds) instead of the dense
    # latents: with z unused, XLA never materialises it.
    count = metrics.pop("fired_count")
    z = metrics.pop("z")
    model.update_stats(metrics.pop("active_vals", z))
    _, params, stats = nnx.split(model, nnx.Param, ...)
    since = jnp.where(count > 0, 0,
                      jnp.minimum(state["since_fired"] + x.shape[0], _COUNTER_CAP))
    metrics = {k: v for k, v in metrics.items() if jnp.ndim(v) == 0}
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["dead_frac"] = jnp.mean(since >= dead_tokens)
    metrics["dense_frac"] = jnp.mean(count / x.shape[0] > dense_thr)
    new = {"params": params, "stats": stats, "opt": opt, "since_fired": since,
           "step": state["step"] + 1}
    return new, metrics

  return train_step


def make_eval_sums(graphdef):
  """The pure eval function (state, x, n_valid) -> pooled sums for one padded batch.

  FVU needs sums pooled over the whole held-out split (`eval_metrics` turns them into
  metrics), not a mean of per-batch ratios.
  """

  def eval_sums(state, x, n_valid):
    x_hat, z = nnx.merge(graphdef, state["params"], state["stats"])(x)
    valid = (jnp.arange(x.shape[0]) < n_valid).astype(jnp.float32)
    fired = (z != 0).astype(jnp.float32) * valid[:, None]
    return {"sse": jnp.sum(valid * jnp.sum((x - x_hat) ** 2, -1)),
            "sum_x": jnp.sum(x * valid[:, None], 0),
            "sum_x2": jnp.sum(valid * jnp.sum(x * x, -1)),
            "fired": jnp.sum(fired, 0), "active": jnp.sum(fired)}

  return eval_sums


def eval_metrics(tot: dict | None, n: int, m: int, dense_thr: float) -> tuple[dict, np.ndarray]:
  """(metrics, per-latent density) from `make_eval_sums` totals (float64) over n rows."""
  if not n:
    return {}, np.zeros((m,))
  var = tot["sum_x2"] - float(np.sum(tot["sum_x"] ** 2)) / n    # about the data mean
  fvu = float(tot["sse"] / max(var, 1e-30))
  density = tot["fired"] / n
  return {"fvu": fvu, "ev": 1.0 - fvu, "mse": float(tot["sse"] / n),
          "l0": float(tot["active"] / n), "dead_frac": float(np.mean(density == 0)),
          "dense_frac": float(np.mean(density > dense_thr)), "rows": n}, density


def init_state(params, stats, tx: optax.GradientTransformation, m: int) -> dict:
  """The train-state pytree `make_train_step` works on (fresh: no latent has fired)."""
  return {"params": params, "stats": stats, "opt": tx.init(params),
          "since_fired": jnp.zeros((m,), jnp.int32), "step": jnp.zeros((), jnp.int32)}


def _sae_cfg(config) -> dict:
  return {k: v for k, v in config.sae.to_dict().items() if k not in _NOT_SAE_FIELDS}


def _trim_metrics(path: str, step: int) -> None:
  """Drop rows logged after `step` by a run that crashed before its next checkpoint
  (and a last line cut short by a kill)."""
  if not os.path.exists(path):
    return

  def keep(line):
    try:
      return json.loads(line)["step"] <= step
    except (ValueError, KeyError):
      return False

  with open(path) as f:
    rows = [ln if ln.endswith("\n") else ln + "\n" for ln in f if ln.strip() and keep(ln)]
  files.write_text(path, "".join(rows))


PENDING_FILE = "pending_metrics.json"


def _encode(x):
  """Host metrics (dicts, lists/tuples, numpy arrays and scalars) as exact JSON."""
  if isinstance(x, dict):
    return {k: _encode(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_encode(v) for v in x]
  a = np.asarray(x)
  return {"dtype": a.dtype.name, "shape": list(a.shape), "values": a.reshape(-1).tolist()}


def _decode(x):
  if isinstance(x, list):
    return [_decode(v) for v in x]
  if set(x) == {"dtype", "shape", "values"}:
    return np.asarray(x["values"], dtype=np.dtype(x["dtype"])).reshape(x["shape"])
  return {k: _decode(v) for k, v in x.items()}


def save_pending(run_dir: str, step: int, pending: list, keep_steps) -> None:
  """Record the per-step metrics not yet logged (steps after the last logged one) with the
  checkpoint of `step`, so a run resumed there logs the same window averages as an
  uninterrupted one. Entries of checkpoints no longer kept are dropped."""
  path = os.path.join(run_dir, PENDING_FILE)
  try:
    with open(path) as f:
      have = json.load(f)
  except (OSError, ValueError):
    have = {}
  keep = {int(k) for k in keep_steps}
  have = {k: v for k, v in have.items() if k.isdigit() and int(k) in keep}
  have[str(step)] = _encode(jax.device_get(pending))
  files.write_json(path, have, indent=None)


def load_pending(run_dir: str, step: int) -> list:
  """The unlogged per-step metrics saved with the checkpoint of `step` ([] if none)."""
  try:
    with open(os.path.join(run_dir, PENDING_FILE)) as f:
      return _decode(json.load(f).get(str(step), []))
  except (OSError, ValueError, AttributeError, KeyError, TypeError):
    return []


def resolve_train_config(train_cfg) -> ml_collections.ConfigDict:
  """`default_config()` overlaid with the experiment's `c.train`; unknown fields raise,
  None keeps the default.

  Config files list only what they change, so they need not import this (JAX) module:
  the bridge loads the same config files and must not pull in JAX.
  """
  t = default_config()
  for k, v in (train_cfg or {}).items():
    if k in _RETIRED:                   # config.json of runs made before a rename
      continue
    if k not in t:
      raise ValueError(f"train.{k} is not a training option; known: {', '.join(sorted(t))}")
    if k == "synthetic":
      t.synthetic.update(dict(v))
    elif v is None and t[k] is not None:    # None: keep the default (typed placeholders)
      continue
    elif v is not None and t[k] is not None and isinstance(t[k], float) and isinstance(v, int):
      t[k] = float(v)
    else:
      t[k] = v
  return t


def _recorded_train(run_dir: str) -> dict:
  """The `train` block a run recorded in its config.json ({} when new)."""
  try:
    with open(os.path.join(run_dir, "config.json")) as f:
      return dict(json.load(f)["train"])
  except (OSError, ValueError, KeyError, TypeError):
    return {}


def _previous_streams(run_dir: str) -> int:
  """The data-stream count a run recorded at its first start (0 when new)."""
  try:
    return int(_recorded_train(run_dir).get("data_streams") or 0)
  except (TypeError, ValueError):
    return 0


def _from_process_0(scale: float, streams: int) -> tuple[float, int]:
  """Process 0's values on every process (identical inputs on one process)."""
  if jax.process_count() == 1:
    return scale, streams
  from jax.experimental import multihost_utils
  raw = np.frombuffer(np.array([scale], np.float64).tobytes(), np.uint8)   # exact f64
  out = multihost_utils.broadcast_one_to_all({"scale": raw, "streams": np.int32(streams)})
  return float(np.frombuffer(np.asarray(out["scale"], np.uint8).tobytes(), np.float64)[0]), \
      int(out["streams"])


def _resolved_config(config, t) -> dict:
  """What config.json records: the experiment config with the resolved `train`."""
  return {**json.loads(config.to_json_best_effort()), "train": json.loads(t.to_json_best_effort())}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       overwrite: bool = False) -> dict[str, Any]:
  """Train (or resume) the run `<workdir>/runs/<config.run>`; returns the final metrics.

  The config is validated before anything is written; process 0 holds the run's lock
  (`musicsae_jax.runs`) for the whole run; `overwrite` deletes an earlier run first.
  """
  t = resolve_train_config(config.get("train"))
  runs.validate_train_config(t)
  run_dir = os.path.abspath(os.path.join(workdir, "runs", config.run))
  mesh_lib.maybe_initialize_distributed(config)     # before anything touches devices
  if jax.process_index() != 0:                      # only process 0 writes run files
    return _train_and_evaluate(config, workdir, t, run_dir)
  with runs.RunLock(run_dir):                       # a failed start leaves no empty dir
    if overwrite:
      runs.clear_run(run_dir, t.checkpoint_dir)
    return _train_and_evaluate(config, workdir, t, run_dir)


def _train_and_evaluate(config, workdir: str, t, run_dir: str) -> dict[str, Any]:
  metrics_path = os.path.join(run_dir, "metrics.jsonl")

  # --- mesh ------------------------------------------------------------------------------
  is_main = jax.process_index() == 0                # only process 0 writes files
  devices = jax.devices()[: t.num_devices] if t.get("num_devices") else None
  mesh = mesh_lib.make_mesh(t.mesh_data, t.mesh_model, devices=devices)
  replicated = NamedSharding(mesh, P())
  logging.info("mesh %s, sharding=%s, process %d of %d (%d local devices)", dict(mesh.shape),
               t.sharding, jax.process_index(), jax.process_count(), jax.local_device_count())

  # --- input -----------------------------------------------------------------------------
  source, extras = _source(config, t, workdir)
  d = source.d
  fill_run_defaults(t, sae_lib.resolve_config(_sae_cfg(config), d)["m"],  # lr, warm-up, AuxK
                    _recorded_train(run_dir))
  if is_main:                                       # before any run file is written
    runs.check_resume(run_dir, _resolved_config(config, t), default_config().to_dict())
  os.makedirs(run_dir, exist_ok=True)
  eval_prompts = data_lib.split_prompts(source.read_index()[:, 0], t.eval_fraction,
                                        t.data_seed)
  norm_path = os.path.join(run_dir, "normalization.json")
  sample = data_lib.sample_rows(source, eval_prompts, t.norm_samples, t.data_seed)
  if os.path.exists(norm_path):                    # a resumed run keeps its scale
    norm = data_lib.load_normalization(norm_path)
  else:
    norm = data_lib.estimate_scale(sample) if t.normalize else {"scale": 1.0, "d": d}
  # Process 0's run files decide for everyone (hosts need not share a disk).
  t.data_streams = int(t.data_streams) or _previous_streams(run_dir) or jax.process_count()
  scale, t.data_streams = _from_process_0(float(norm["scale"]), t.data_streams)
  norm["scale"] = scale
  pipeline = make_pipeline(t, source, eval_prompts, scale, mesh, d)
  x_eval = data_lib.load_eval(source, eval_prompts, t.eval_max_rows, t.data_seed, scale)
  eval_bs = max(mesh.shape["data"], t.eval_batch_size // mesh.shape["data"] * mesh.shape["data"])
  logging.info("data: d=%d, %d train rows, %d eval rows (%d held-out prompts), scale=%.4g",
               d, pipeline.num_train_rows, len(x_eval), len(eval_prompts), scale)

  # --- model -----------------------------------------------------------------------------
  sae_cfg = _sae_cfg(config)
  m = sae_lib.resolve_config(sae_cfg, d)["m"]
  model = sae_lib.make_sae(sae_cfg, d=d, rngs=nnx.Rngs(t.seed))
  if t.b_dec_init:
    sae_lib.init_b_dec(model, sample * np.float32(scale), t.b_dec_init)
  calibration.init_thresholds(model, sample * np.float32(scale))      # JumpReLU: θ for L0
  graphdef, params, stats = nnx.split(model, nnx.Param, ...)
  del model

  # --- optimizer -------------------------------------------------------------------------
  tx, schedule = make_optimizer(t)
  state = init_state(params, stats, tx, m)
  state_sh = mesh_lib.state_shardings(state, mesh, t.sharding, m)
  state = jax.device_put(state, state_sh)
  batch_sh = mesh_lib.batch_sharding(mesh)
  if is_main:                                        # everything checked: now write
    if not os.path.exists(norm_path):
      data_lib.save_normalization(norm_path, norm)
    files.write_json(os.path.join(run_dir, "config.json"), _resolved_config(config, t))

  # --- step ------------------------------------------------------------------------------
  dense_thr = float(t.dense_threshold)
  train_step = make_train_step(graphdef, tx, int(t.dead_tokens), dense_thr,
                               l1_warmup_steps(t))

  p_train_step = jax.jit(train_step, in_shardings=(state_sh, batch_sh),
                         out_shardings=(state_sh, replicated), donate_argnums=(0,))

  p_eval_sums = jax.jit(make_eval_sums(graphdef), in_shardings=(state_sh, batch_sh, None),
                        out_shardings=replicated)     # every process can read the sums
  # BatchTopK/Matryoshka: the deployed threshold is set on training rows before every
  # eval (so every checkpoint carries it): mean L0 = k there (musicsae_jax.calibration).
  calibrate = calibration.make_threshold_calibrator(
      sae_lib.resolve_config(sae_cfg, d), graphdef, state_sh, batch_sh, replicated,
      sample * np.float32(scale), eval_bs, mesh)

  def evaluate(state) -> tuple[dict, np.ndarray]:
    tot, n = None, 0
    for xb, nb in data_lib.eval_batches(x_eval, eval_bs, mesh):
      s = jax.tree.map(lambda a: np.asarray(a, np.float64),
                       jax.device_get(p_eval_sums(state, xb, nb)))
      tot = s if tot is None else jax.tree.map(np.add, tot, s)
      n += nb
    return eval_metrics(tot, n, m, dense_thr)

  # --- checkpoint ------------------------------------------------------------------------
  ckpt = ckpt_lib.Checkpointer(t.checkpoint_dir or os.path.join(run_dir, "checkpoints"),
                               keep_best=t.keep_best, async_save=t.async_checkpoint)
  start = 0
  if ckpt.latest_step() is not None:
    state = ckpt.restore(None, ckpt_lib.abstract_like(state, state_sh))
    start = int(jax.device_get(state["step"]))
    logging.info("resumed from %s at step %d", ckpt.directory, start)
  if is_main:          # rows logged after the step resumed from (all, when none was saved)
    _trim_metrics(metrics_path, start)

  # --- train + evals ---------------------------------------------------------------------
  def log_row(row):
    if is_main:
      files.append_line(metrics_path, json.dumps(row))

  steps = int(t.steps)
  last_eval: dict = {}
  density = np.zeros((m,))
  if start >= steps:
    logging.info("run %s is already done (step %d of %d)", config.run, start, steps)
  else:
    logging.info("training %s: %s d=%d m=%d, %d steps from %d, lr=%.3g",
                 config.run, config.sae.architecture, d, m, steps, start, t.lr)
    batches = pipeline.iterate(start)
    # Steps since the last logged one, carried over a resume (the window's average is the
    # same as an uninterrupted run's).
    pending = load_pending(run_dir, start) if is_main and start else []
    t0, t_last, s_last = time.time(), time.time(), start
    wait_last, warned_wait, waited = pipeline.wait_s, False, [0.0, 0.0]  # [waited, wall] s
    # The bar's rate and ETA start after the first step (compilation); metrics go above it.
    bar = progress.Progress(steps, f"train {config.run}", "step", warmup=1, initial=start,
                            disable=not is_main or logging.get_verbosity() < logging.INFO)
    with bar, jax.set_mesh(mesh), preemption.StopOnSigterm() as sigterm:
      for step in range(start + 1, steps + 1):
        state, met = p_train_step(state, next(batches))
        ckpt.check()                                  # a failed async save stops here
        preempted = sigterm.should_stop(step)         # same step on every process
        pending.append(met)
        bar.update(1)
        # At most 2 steps in flight. Unbounded dispatch (log_every steps queued) hung
        # multi-process CPU jobs (docs/MULTIHOST.md): a device waiting for an in-flight
        # slot never joined its peers blocked in the step's gloo collective.
        if len(pending) > 1:
          jax.block_until_ready(pending[-2])
        if step % t.log_every == 0 or step == steps:
          met = jax.tree.map(lambda *v: float(np.mean(v)), *jax.device_get(pending))
          pending = []
          now, t_last_prev = time.time(), t_last
          sps = (step - s_last) / max(now - t_last, 1e-9)
          t_last, s_last = now, step
          met.update(aux=met.get("aux_loss", 0.0), fvu=met.get("fvu_batch"),
                     ev=1.0 - met["fvu_batch"] if "fvu_batch" in met else None)
          wait = (pipeline.wait_s - wait_last) / max(now - t_last_prev, 1e-9)
          wait_last = pipeline.wait_s
          row = {"kind": "train", "step": step, **met, "lr": float(schedule(step - 1)),
                 "steps_per_s": sps, "acts_per_s": sps * t.batch_size,
                 "data_wait_frac": wait}
          log_row(row)
          if step - start > t.log_every:       # the first interval holds compilation
            waited[0] += wait * (now - t_last_prev)
            waited[1] += now - t_last_prev
          if waited[1] and waited[0] / waited[1] > _WAIT_WARN and not warned_wait:
            warned_wait = True                  # sustained, not one window's read spike
            logging.warning(
                "the trainer waited on data %.0f%% of the time since step %d: each block "
                "is read %d times per epoch (train.shuffle_max_passes) to fill %d-row "
                "windows; raise train.shuffle_mb (fewer re-reads, more host memory) or "
                "train.read_threads", 100 * waited[0] / waited[1],
                start + t.log_every, pipeline.passes, pipeline.shuffle_rows)
          bar.write(f"step {step}/{steps} loss={met['loss']:.4g} mse={met['mse']:.4g} "
                    f"l0={met['l0']:.1f} auxk_dead={met['dead_frac']:.3f} | {sps:.1f} steps/s "
                    f"{sps * t.batch_size:.3g} acts/s")
        if step % t.eval_every == 0 or step == steps:
          if calibrate is not None:
            state, _ = calibrate(state)
          last_eval, density = evaluate(state)
          if last_eval:
            log_row({"kind": "eval", "step": step, **last_eval})
            bar.write(f"eval step {step}: fvu={last_eval['fvu']:.4f} ev={last_eval['ev']:.4f} "
                      f"l0={last_eval['l0']:.1f} dead={last_eval['dead_frac']:.3f} "
                      f"dense={last_eval['dense_frac']:.3f}")
        if step % t.checkpoint_every == 0 or step == steps or preempted:
          if is_main:
            save_pending(run_dir, step, pending, ckpt.all_steps())
          ckpt.save(step, state, None if preempted else last_eval.get("fvu"))
        if preempted:
          logging.warning("SIGTERM: saved the checkpoint of step %d and stopped; rerun the "
                          "same command to resume", step)
          batches.close()
          ckpt.close()
          return {"step": step, "preempted": True}
        if t.get("stop_after") and step >= t.stop_after:   # simulate a crash (tests)
          break
    batches.close()
    logging.info("trained %d steps in %.1fs", step - start, time.time() - t0)
  ckpt.close()

  # --- final metrics and plots -----------------------------------------------------------
  if not last_eval:
    last_eval, density = evaluate(state)
  final = {"step": int(jax.device_get(state["step"])), **{f"eval_{k}": v for k, v in
                                                          last_eval.items()}}
  if "true_dirs" in extras:
    from musicsae_jax import synthetic
    w_dec = np.asarray(jax.device_get(                # gathered: may span processes
        jax.jit(lambda w: w, out_shardings=replicated)(state["params"]["W_dec"][...])))
    rec = synthetic.recovery(w_dec, extras["true_dirs"])
    rec = rec if isinstance(rec, dict) else {"recovery": rec}
    final.update({f"synthetic_{k}": float(v) for k, v in rec.items()})
    logging.info("synthetic ground truth: %s", rec)
  if is_main:
    files.write_json(os.path.join(run_dir, "final_metrics.json"), final)
    if os.path.exists(metrics_path) and t.plots:
      plots.plot_training(plots.read_metrics(metrics_path),
                          os.path.join(run_dir, "training_curves.png"))
      plots.plot_density(density, os.path.join(run_dir, "feature_density.png"))
  return final
