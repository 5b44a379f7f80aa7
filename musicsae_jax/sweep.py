"""Sweeps: train many SAEs in one pass over the data, `train_sweep(config, workdir)`.

A sweep is a grid over config fields (`sae.k=16,32,64`, `train.lr=1e-4,3e-4`); every
point is a *member*. All members see the same batches, read once from the store:

  * Members whose SAEs have the same shapes and Python constants (architecture, m, k,
    schedule shape, dead_tokens...) form a *group*. A group's train states are stacked
    on a leading member axis and stepped through the single-run step
    (`train.make_train_step`), either `jax.vmap`ped (batched into every op) or
    `jax.lax.map`ped (once per member, inside the same jitted step); see
    `choose_member_step`. The peak learning rate and the init seed may differ inside a
    group: the lr enters the schedule as a traced per-member scalar, the seed only
    changes the initial values.
  * Groups (members that differ in a constant) each get their own vmapped step; all
    groups' steps are compiled into ONE jitted function over the same batch.
  * Batches are split over the mesh's 'data' axis as in a single run. With
    train.sharding='data' and train.mesh_model > 1, the member axis is split over
    'model' (members that do not fit on one device); with 'latent' every member's latent
    axis is split over 'model' as in a single run.

Each member is an ordinary run directory `runs/<run>/<member>/` (config.json,
metrics.jsonl, normalization.json, checkpoints/, final_metrics.json, plots) with the
single-run checkpoint layout, so analysis/export/steer take `--config.run=<run>/<member>`.
`runs/<run>/sweep.json` lists the members and their final metrics (FVU, L0, dead
fraction, the FVU-L0 Pareto front); `runs/<run>/sweep.png` pictures them.

Resume: every member checkpoints at the same steps; before a new round of saves all
members' previous saves are finished and the last two steps are kept, so after a kill
there is always a step that every member holds. The sweep restarts from the newest such
step and drops later checkpoints and log rows, exactly as a single run does.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import datetime
import itertools
import json
import os
import re
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from musicsae_jax import checkpoint as ckpt_lib
from musicsae_jax import data as data_lib
from musicsae_jax import files
from musicsae_jax import mesh as mesh_lib
from musicsae_jax import plots
from musicsae_jax import runs
from musicsae_jax import sae as sae_lib
from musicsae_jax import train as train_lib

# Train fields a member may change. The rest (data, steps, batch, mesh, cadence) is the
# shared batch stream and loop, the same for every member.
MEMBER_TRAIN_FIELDS = ("lr", "seed", "warmup_steps", "warmup_frac", "warmup_max", "decay",
                       "decay_frac", "final_lr_frac", "grad_clip",
                       "adam_b1", "adam_b2", "adam_eps", "dead_tokens", "dense_threshold",
                       "b_dec_init", "l1_warmup_frac")
# Member fields that may differ inside one vmapped group (values, not Python constants).
VMAPPED_FIELDS = ("train.lr", "train.seed")
SWEEP_FILE = "sweep.json"


class SweepError(ValueError):
  """A sweep specification that cannot be run (bad --sweep / c.sweep, changed grid)."""


# --- the grid ------------------------------------------------------------------------------


def _value(text: str):
  text = text.strip()
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text                           # bare words: architectures, decay names


def parse_axis(spec: str) -> tuple[str, list]:
  """'sae.k=16,32,64' -> ('sae.k', [16, 32, 64]); checks that the field may vary."""
  path, sep, values = spec.partition("=")
  path = path.strip()
  if not sep or not values.strip():
    raise SweepError(f"--sweep={spec!r}: expected FIELD=V1,V2,... e.g. 'sae.k=16,32,64'")
  head, _, field = path.partition(".")
  if head == "sae":
    ok = field in sae_lib.DEFAULTS
  elif head == "train":
    ok = field in MEMBER_TRAIN_FIELDS
  else:
    ok = False
  if not ok:
    raise SweepError(
        f"--sweep={spec!r}: {path!r} cannot vary between members; allowed: sae.<field> "
        f"({', '.join(sorted(sae_lib.DEFAULTS))}) and train.<field> "
        f"({', '.join(MEMBER_TRAIN_FIELDS)}); everything else is the shared batch stream")
  vals = [_value(v) for v in values.split(",")]
  if len(set(map(repr, vals))) != len(vals):
    raise SweepError(f"--sweep={spec!r}: repeated value")
  return path, vals


def sweep_axes(config, specs: Sequence[str] = ()) -> dict[str, list]:
  """The grid's axes: `config.sweep` (a tuple of 'field=v1,v2' strings), then `specs`
  (the --sweep flags), a flag replacing the config's axis over the same field."""
  listed = config.get("sweep") or ()
  if isinstance(listed, str):
    listed = (listed,)
  axes: dict[str, list] = {}
  for spec in (*listed, *specs):
    path, vals = parse_axis(spec)
    axes[path] = vals
  if not axes:
    raise SweepError("no sweep axes: pass --sweep='sae.k=16,32' (repeatable) or set "
                     "c.sweep = ('sae.k=16,32', ...) in the config file")
  return axes


def _fmt(v) -> str:
  return f"{v:g}" if isinstance(v, float) else str(v)


def member_name(overrides: dict) -> str:
  """'sae.k'=16, 'train.lr'=3e-4 -> 'k16_lr0.0003' (the full field path when two axes
  share a last component); only [A-Za-z0-9._-] so it is a plain directory name."""
  leaves = [p.rsplit(".", 1)[-1] for p in overrides]
  parts = []
  for (path, v), leaf in zip(overrides.items(), leaves):
    key = path if leaves.count(leaf) > 1 else leaf
    sep = "-" if isinstance(v, str) else ""
    parts.append(f"{key}{sep}{_fmt(v)}")
  return re.sub(r"[^A-Za-z0-9._-]", "-", "_".join(parts))


@dataclasses.dataclass
class Member:
  name: str
  overrides: dict                 # {'sae.k': 16, 'train.lr': 3e-4}
  config: ml_collections.ConfigDict   # the member's own config (run = <run>/<name>)
  t: ml_collections.ConfigDict | None = None    # its resolved train config
  sae_cfg: dict | None = None     # its sae config without d
  m: int = 0


def expand(config, axes: dict[str, list]) -> list[Member]:
  """One Member per grid point, in grid order (the first axis varies slowest)."""
  base = config.to_dict()
  base.pop("sweep", None)
  members = []
  for combo in itertools.product(*axes.values()):
    overrides = dict(zip(axes, combo))
    cfg = json.loads(json.dumps(base, default=_jsonable))     # a deep, plain copy
    for path, v in overrides.items():
      head, field = path.split(".", 1)
      cfg.setdefault(head, {})[field] = v
    name = member_name(overrides)
    cfg["run"] = f"{config.run}/{name}"
    members.append(Member(name, overrides, ml_collections.ConfigDict(cfg)))
  return members


def _jsonable(o):
  if isinstance(o, (tuple, set)):
    return list(o)
  if isinstance(o, (np.integer, np.floating)):
    return o.item()
  raise TypeError(f"not JSON serialisable: {type(o)}")


def resolve_members(members: list[Member], d: int,
                    recorded: Sequence[dict] | None = None) -> None:
  """Resolve each member's train and SAE config for inputs of width d (clear errors).

  `recorded`: each member's recorded `train` block ({} when new), so a resumed member
  keeps the warm-up, AuxK window and lr it started with, as a resumed single run does."""
  for i, mb in enumerate(members):
    try:
      mb.t = train_lib.resolve_train_config(mb.config.get("train"))
      mb.sae_cfg = train_lib._sae_cfg(mb.config)
      mb.m = sae_lib.resolve_config(mb.sae_cfg, d)["m"]
      runs.validate_train_config(mb.t)
    except ValueError as e:
      raise SweepError(f"sweep member {mb.name} ({mb.overrides}): {e}") from e
    train_lib.fill_run_defaults(mb.t, mb.m,      # lr, warm-up, dead_tokens as a run resolves them
                                recorded[i] if recorded else None)


def _group_key(mb: Member) -> str:
  """Everything a member fixes as a Python constant: members with equal keys share a step."""
  t = mb.t.to_dict()
  for path in VMAPPED_FIELDS:
    t.pop(path.split(".", 1)[1], None)
  return json.dumps({"sae": mb.sae_cfg, "train": t}, sort_keys=True, default=_jsonable)


def group_members(members: list[Member]) -> list[list[int]]:
  """Indices of members that can be stacked and vmapped together, first-seen order."""
  groups: dict[str, list[int]] = {}
  for i, mb in enumerate(members):
    groups.setdefault(_group_key(mb), []).append(i)
  return list(groups.values())


def _check_shared(members: list[Member]) -> None:
  """Fields outside MEMBER_TRAIN_FIELDS are the shared loop: equal by construction."""
  ref = {k: v for k, v in members[0].t.to_dict().items() if k not in MEMBER_TRAIN_FIELDS}
  for mb in members[1:]:
    got = {k: v for k, v in mb.t.to_dict().items() if k not in MEMBER_TRAIN_FIELDS}
    if got != ref:
      raise SweepError(f"sweep member {mb.name} differs in a shared train field")


# --- the stacked step ------------------------------------------------------------------------


def member_optimizer(t, lr):
  """`train.make_optimizer` for member config `t` with the peak lr `lr` (traced in a
  vmapped step): the same schedule and transforms as the single run, lr a value."""
  member = ml_collections.ConfigDict(t.to_dict(), type_safe=False)   # lr may be a tracer
  member.lr = lr
  return train_lib.make_optimizer(member)


MEMBER_STEPS = ("auto", "vmap", "map")


def choose_member_step(requested: str, member_axis: str | None) -> str:
  """'vmap' batches members into every op (wide batched matmuls: accelerators, and the
  only way to split the member axis over devices); 'map' runs the unchanged single-run
  step once per member in a loop inside the same jitted step (jax.lax.map). On XLA:CPU
  the TopK family's hand-tuned sparse gathers/scatter-adds lose their speed when
  batched (8 members at d=384, m=6144, k=32: 42 s per vmapped step vs 8.4 s mapped),
  so 'auto' maps there."""
  if requested not in MEMBER_STEPS:
    raise SweepError(f"member_step={requested!r}; allowed: {', '.join(MEMBER_STEPS)}")
  if requested != "auto":
    if requested == "map" and member_axis:
      raise SweepError("member_step='map' cannot split members over the 'model' axis; "
                       "use 'vmap' or train.mesh_model=1")
    return requested
  return "vmap" if member_axis or jax.default_backend() != "cpu" else "map"


def make_group_step(graphdef, t, lrs: np.ndarray, how: str = "vmap"):
  """(stacked state, x) -> (stacked state, metrics [N]): the single-run step for every
  member on the shared batch x, vmapped or mapped (`choose_member_step`) over the
  leading member axis; lrs [N] are the members' peak learning rates."""
  lrs = jnp.asarray(lrs, jnp.float32)

  def member_step(state, x, lr):
    tx, _ = member_optimizer(t, lr)
    step = train_lib.make_train_step(graphdef, tx, int(t.dead_tokens),
                                     float(t.dense_threshold), train_lib.l1_warmup_steps(t))
    return step(state, x)

  if how == "map":
    return lambda state, x: jax.lax.map(lambda a: member_step(a[0], x, a[1]), (state, lrs))
  vstep = jax.vmap(member_step, in_axes=(0, None, 0))
  return lambda state, x: vstep(state, x, lrs)


def stack(states: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *a: jnp.stack(a), *states)


def stacked_shardings(single_sh: Any, member_axis: str | None) -> Any:
  """A single run's shardings with the member axis in front (split over `member_axis`)."""
  mesh_of = lambda s: s.mesh
  return jax.tree.map(lambda s: NamedSharding(mesh_of(s), P(member_axis, *s.spec)), single_sh)


@dataclasses.dataclass
class Group:
  """Members stacked through one vmapped step."""
  members: list[int]
  graphdef: Any
  t: ml_collections.ConfigDict        # the first member's train config (constants)
  m: int
  single_sh: Any                      # one member's state shardings
  sh: Any                             # the stacked state's shardings
  template: Any                       # one member's fresh state (restore target)
  take: Any = None                    # jitted (stacked, i) -> member i's state


def _member_state(mb: Member, d: int, sample: np.ndarray, scale: float):
  model = sae_lib.make_sae(mb.sae_cfg, d=d, rngs=nnx.Rngs(mb.t.seed))
  if mb.t.b_dec_init:
    sae_lib.init_b_dec(model, sample * np.float32(scale), mb.t.b_dec_init)
  graphdef, params, stats = nnx.split(model, nnx.Param, ...)
  tx, _ = member_optimizer(mb.t, mb.t.lr)
  return graphdef, train_lib.init_state(params, stats, tx, mb.m)


# --- comparison ------------------------------------------------------------------------------


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
  """Indices of points no other point beats in both coordinates (lower is better)."""
  front = []
  for i, (a, b) in enumerate(points):
    if any(c <= a and e <= b and (c < a or e < b) for j, (c, e) in enumerate(points) if j != i):
      continue
    front.append(i)
  return sorted(front, key=lambda i: points[i])


def summarize(run: str, axes: dict, members: list[Member], groups: list[list[int]],
              finals: list[dict] | None, **extra) -> dict:
  """The sweep.json record: the grid, members (with final metrics) and the Pareto front."""
  gid = {i: g for g, idx in enumerate(groups) for i in idx}
  rows = []
  for i, mb in enumerate(members):
    row = {"name": mb.name, "run": f"{run}/{mb.name}", "overrides": mb.overrides,
           "group": gid[i], "m": mb.m, "lr": mb.t.lr if mb.t else None}
    if finals:
      row.update({k: finals[i].get(f"eval_{k}") for k in ("fvu", "l0", "dead_frac",
                                                           "dense_frac")})
      row["step"] = finals[i].get("step")
    rows.append(row)
  out = {"run": run, "axes": axes, **extra, "members": rows}
  done = [i for i, r in enumerate(rows) if r.get("fvu") is not None and r.get("l0") is not None]
  if done:
    front = pareto_front([(rows[i]["l0"], rows[i]["fvu"]) for i in done])
    out["pareto"] = [rows[done[j]]["name"] for j in front]
    for r in rows:
      r["pareto"] = r["name"] in out["pareto"]
  return out


def read_sweep(workdir: str, run: str) -> dict | None:
  """The sweep record of the sweep that run `<sweep>/<member>` belongs to (None if none)."""
  cfg_path = os.path.join(workdir, "runs", run, "config.json")
  try:
    with open(cfg_path) as f:
      parent = (json.load(f).get("sweep_member") or {}).get("sweep")
    if not parent:
      return None
    with open(os.path.join(workdir, "runs", parent, SWEEP_FILE)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


# --- the loop --------------------------------------------------------------------------------


def _check_grid(path: str, names: list[str]) -> None:
  """A resumed sweep must be the same grid (members are matched by name)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = [r["name"] for r in json.load(f).get("members", [])]
  if old != names:
    raise SweepError(f"{path} lists members {old} but this sweep has {names}; "
                     "use another config.run for a different grid")


def _member_record(mb: Member, data_streams: int, sweep_run: str) -> dict:
  """What a member's config.json records (and what a resume is checked against)."""
  mt = ml_collections.ConfigDict(mb.t.to_dict())
  mt.data_streams = data_streams
  return {**json.loads(mb.config.to_json_best_effort()),
          "train": json.loads(mt.to_json_best_effort()),
          "sweep_member": {"sweep": sweep_run, "member": mb.name, "overrides": mb.overrides}}


def train_sweep(config: ml_collections.ConfigDict, workdir: str,
                sweep: Sequence[str] = (), member_step: str = "auto",
                overwrite: bool = False) -> dict[str, Any]:
  """Train (or resume) every member of the sweep `<workdir>/runs/<config.run>`.

  `sweep`: extra axes ('sae.k=16,32') on top of `config.sweep`; `member_step`: how a
  group steps its members ('auto' | 'vmap' | 'map', see `choose_member_step`);
  `overwrite`: delete an earlier sweep of this name first. Returns the sweep.json record
  (members with their final metrics, the Pareto front).

  Run safety as in `train.train_and_evaluate` (`musicsae_jax.runs`): configs are
  validated before anything is written; process 0 holds the lock of the sweep directory
  and of every member directory for the whole sweep (a second sweep, or a single run of
  a member, fails at once); a member whose recorded experiment differs is refused.
  """
  axes = sweep_axes(config, sweep)
  members = expand(config, axes)
  run_dir = os.path.abspath(os.path.join(workdir, "runs", config.run))
  base = ml_collections.ConfigDict({k: v for k, v in config.to_dict().items() if k != "sweep"})
  t = train_lib.resolve_train_config(base.get("train"))     # the shared loop's fields
  runs.validate_train_config(t)
  mesh_lib.maybe_initialize_distributed(base)       # before anything touches devices
  if jax.process_index() != 0:                      # only process 0 writes run files
    return _train_sweep(config, workdir, axes, members, base, t, run_dir, member_step)
  with contextlib.ExitStack() as locks:             # a failed start leaves no empty dir
    locks.enter_context(runs.RunLock(run_dir))
    if overwrite:
      runs.clear_run(run_dir, t.checkpoint_dir)
    for mb in members:
      locks.enter_context(runs.RunLock(os.path.join(run_dir, mb.name)))
    return _train_sweep(config, workdir, axes, members, base, t, run_dir, member_step)


def _train_sweep(config, workdir, axes, members, base, t, run_dir, member_step):
  names = [mb.name for mb in members]
  sweep_path = os.path.join(run_dir, SWEEP_FILE)
  _check_grid(sweep_path, names)

  # --- mesh --------------------------------------------------------------------------------
  is_main = jax.process_index() == 0
  devices = jax.devices()[: t.num_devices] if t.get("num_devices") else None
  mesh = mesh_lib.make_mesh(t.mesh_data, t.mesh_model, devices=devices)
  replicated = NamedSharding(mesh, P())
  member_axis = "model" if t.sharding == "data" and mesh.shape["model"] > 1 else None
  how = choose_member_step(member_step, member_axis)

  # --- input (shared by every member: read once) --------------------------------------
  source, extras = train_lib._source(base, t, workdir)
  d = source.d
  member_dirs = [os.path.join(run_dir, n) for n in names]
  resolve_members(members, d, [train_lib._recorded_train(p) for p in member_dirs])
  _check_shared(members)
  t.shuffle_mb = members[0].t.shuffle_mb            # the shared loader's, as resolved
  if is_main:                                      # before any run file is written
    train_defaults = train_lib.default_config().to_dict()
    for mb, p in zip(members, member_dirs):
      runs.check_resume(p, _member_record(mb, int(t.data_streams), config.run),
                        train_defaults)
  groups_idx = group_members(members)
  for idx in groups_idx:
    if member_axis and len(idx) % mesh.shape["model"]:
      raise mesh_lib.MeshError(
          f"sweep: a group of {len(idx)} members ({', '.join(names[i] for i in idx)}) "
          f"cannot be split over the 'model' axis of {mesh.shape['model']} devices; set "
          f"train.mesh_model to a divisor of {len(idx)} (or 1)")
  eval_prompts = data_lib.split_prompts(source.read_index()[:, 0], t.eval_fraction,
                                        t.data_seed)
  sample = data_lib.sample_rows(source, eval_prompts, t.norm_samples, t.data_seed)
  norm_path = os.path.join(member_dirs[0], "normalization.json")
  if os.path.exists(norm_path):                    # a resumed sweep keeps its scale
    norm = data_lib.load_normalization(norm_path)
  else:
    norm = data_lib.estimate_scale(sample) if t.normalize else {"scale": 1.0, "d": d}
  t.data_streams = (int(t.data_streams) or train_lib._previous_streams(member_dirs[0])
                    or jax.process_count())
  scale, t.data_streams = train_lib._from_process_0(float(norm["scale"]), t.data_streams)
  norm["scale"] = scale
  pipeline = train_lib.make_pipeline(t, source, eval_prompts, scale, mesh, d)
  x_eval = data_lib.load_eval(source, eval_prompts, t.eval_max_rows, t.data_seed, scale)
  eval_bs = max(mesh.shape["data"], t.eval_batch_size // mesh.shape["data"] * mesh.shape["data"])
  logging.info("sweep %s: %d members in %d groups, d=%d, %d train rows, %d eval rows, "
               "mesh %s, members over %s, member step %s", config.run, len(members),
               len(groups_idx), d, pipeline.num_train_rows, len(x_eval), dict(mesh.shape),
               member_axis or "no axis", how)

  # --- model + optimizer per member, stacked per group --------------------------------
  groups: list[Group] = []
  states = []
  for idx in groups_idx:
    made = [_member_state(members[i], d, sample, scale) for i in idx]
    graphdef = made[0][0]
    if any(g != graphdef for g, _ in made[1:]):
      raise SweepError(f"members {[names[i] for i in idx]} were grouped but build "
                       "different SAE graphs")
    mb0 = members[idx[0]]
    single_sh = mesh_lib.state_shardings(made[0][1], mesh, mb0.t.sharding, mb0.m)
    sh = stacked_shardings(single_sh, member_axis)
    g = Group(idx, graphdef, mb0.t, mb0.m, single_sh, sh, made[0][1])
    g.take = jax.jit(lambda s, i: jax.tree.map(
        lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), s),
        out_shardings=single_sh)
    groups.append(g)
    states.append(jax.device_put(stack([s for _, s in made]), sh))
    del made
  states = tuple(states)
  batch_sh = mesh_lib.batch_sharding(mesh)

  if is_main:                                      # only once the data and mesh are there
    for i, mb in enumerate(members):
      os.makedirs(member_dirs[i], exist_ok=True)
      if not os.path.exists(os.path.join(member_dirs[i], "normalization.json")):
        data_lib.save_normalization(os.path.join(member_dirs[i], "normalization.json"), norm)
      files.write_json(os.path.join(member_dirs[i], "config.json"),
                       _member_record(mb, t.data_streams, config.run))
    files.write_json(sweep_path, summarize(config.run, axes, members, groups_idx, None,
                                           member_step=how))

  # --- step: every group's vmapped step in one jitted function over the batch ---------
  group_steps = [make_group_step(g.graphdef, g.t, [members[i].t.lr for i in g.members], how)
                 for g in groups]

  def sweep_step(states, x):
    outs = [step(s, x) for step, s in zip(group_steps, states)]
    return tuple(o[0] for o in outs), tuple(o[1] for o in outs)

  p_sweep_step = jax.jit(sweep_step, in_shardings=(tuple(g.sh for g in groups), batch_sh),
                         out_shardings=(tuple(g.sh for g in groups), replicated),
                         donate_argnums=(0,))
  def group_eval(graphdef):
    one = train_lib.make_eval_sums(graphdef)
    if how == "map":
      return lambda s, x, n: jax.lax.map(lambda a: one(a, x, n), s)
    return jax.vmap(one, in_axes=(0, None, None))

  p_eval = [jax.jit(group_eval(g.graphdef), in_shardings=(g.sh, batch_sh, None),
                    out_shardings=replicated) for g in groups]

  def evaluate(states) -> tuple[list[dict], list[np.ndarray]]:
    res: list = [None] * len(members)
    for g, s, p in zip(groups, states, p_eval):
      tot, n = None, 0
      for xb, nb in data_lib.eval_batches(x_eval, eval_bs, mesh):
        part = jax.tree.map(lambda a: np.asarray(a, np.float64), jax.device_get(p(s, xb, nb)))
        tot = part if tot is None else jax.tree.map(np.add, tot, part)
        n += nb
      for j, i in enumerate(g.members):
        one = None if tot is None else {k: v[j] for k, v in tot.items()}
        res[i] = train_lib.eval_metrics(one, n, g.m, float(members[i].t.dense_threshold))
    return [r[0] for r in res], [r[1] for r in res]

  # --- checkpoint: one ordinary checkpoint directory per member ------------------------
  ckpts = [ckpt_lib.Checkpointer(t.checkpoint_dir and os.path.join(t.checkpoint_dir, n)
                                 or os.path.join(p, "checkpoints"), keep_best=t.keep_best,
                                 async_save=t.async_checkpoint, keep_latest=2)
           for n, p in zip(names, member_dirs)]
  held = [set(c.all_steps()) for c in ckpts]
  start = 0
  if any(held):
    common = set.intersection(*held)
    start = max(common) if common else 0
    for c, steps_held in zip(ckpts, held):       # saves cut short by the kill
      for s in sorted(steps_held):
        if s > start:
          c.manager.delete(s)
    if start:
      restored = []
      for g in groups:
        target = ckpt_lib.abstract_like(g.template, g.single_sh)
        one = [ckpts[i].restore(start, target) for i in g.members]
        restored.append(jax.jit(lambda *ss: stack(ss), out_shardings=g.sh)(*one))
      states = tuple(restored)
      logging.info("sweep resumed at step %d", start)

  if is_main:                                     # rows logged after the resumed step
    for p in member_dirs:
      train_lib._trim_metrics(os.path.join(p, "metrics.jsonl"), start)

  # Several processes: one member's save at a time. Orbax's multi-process async save
  # syncs the processes through a coordination barrier of a fixed name, so concurrent
  # saves of several members collide ("Barrier ... is already ongoing").
  one_at_a_time = jax.process_count() > 1

  def save(step, states, evals):
    for c in ckpts:                              # every member holds the previous step
      c.wait_until_finished()
    for g, s in zip(groups, states):
      for j, i in enumerate(g.members):
        ckpts[i].save(step, g.take(s, j), (evals[i] or {}).get("fvu"))
        if one_at_a_time:
          ckpts[i].wait_until_finished()

  # --- train + evals --------------------------------------------------------------------
  def log_rows(rows):
    if is_main:
      for p, row in zip(member_dirs, rows):
        files.append_line(os.path.join(p, "metrics.jsonl"), json.dumps(row))

  schedules = [train_lib.make_schedule(mb.t)[0] for mb in members]
  steps = int(t.steps)
  evals: list[dict] = [{} for _ in members]
  density = [np.zeros((mb.m,)) for mb in members]
  step = start
  if start >= steps:
    logging.info("sweep %s is already done (step %d of %d)", config.run, start, steps)
  else:
    batches = pipeline.iterate(start)
    # Steps since the last logged one, carried over a resume (train.save_pending).
    pending = train_lib.load_pending(run_dir, start) if is_main and start else []
    t0, t_last, s_last = time.time(), time.time(), start
    with jax.set_mesh(mesh):
      for step in range(start + 1, steps + 1):
        states, met = p_sweep_step(states, next(batches))
        pending.append(met)
        if step % t.log_every == 0 or step == steps:
          got = jax.device_get(pending)
          pending = []
          now = time.time()
          sps = (step - s_last) / max(now - t_last, 1e-9)
          t_last, s_last = now, step
          rows: list = [None] * len(members)
          for gi, g in enumerate(groups):
            for j, i in enumerate(g.members):
              m = {k: float(np.mean([r[gi][k][j] for r in got])) for k in got[0][gi]}
              m.update(aux=m.get("aux_loss", 0.0), fvu=m.get("fvu_batch"),
                       ev=1.0 - m["fvu_batch"] if "fvu_batch" in m else None)
              rows[i] = {"kind": "train", "step": step, **m,
                         "lr": float(schedules[i](step - 1)), "steps_per_s": sps,
                         "acts_per_s": sps * t.batch_size}
          log_rows(rows)
          eta = datetime.timedelta(seconds=int((steps - step) / max(sps, 1e-9)))
          logging.info("step %d/%d %d members: loss %.4g..%.4g l0 %.1f..%.1f | %.2f steps/s "
                       "%.3g acts/s | ETA %s", step, steps, len(members),
                       min(r["loss"] for r in rows), max(r["loss"] for r in rows),
                       min(r["l0"] for r in rows), max(r["l0"] for r in rows), sps,
                       sps * t.batch_size, eta)
        if step % t.eval_every == 0 or step == steps:
          evals, density = evaluate(states)
          log_rows([{"kind": "eval", "step": step, **e} for e in evals])
          logging.info("eval step %d: fvu %s", step,
                       " ".join(f"{n}={e.get('fvu', float('nan')):.4f}"
                                for n, e in zip(names, evals)))
        if step % t.checkpoint_every == 0 or step == steps:
          if is_main:
            train_lib.save_pending(run_dir, step, pending,
                                   set.intersection(*(set(c.all_steps()) for c in ckpts)))
          save(step, states, evals)
        if t.get("stop_after") and step >= t.stop_after:   # simulate a crash (tests)
          break
    batches.close()
    logging.info("sweep trained %d steps in %.1fs", step - start, time.time() - t0)
  for c in ckpts:
    c.close()

  # --- final metrics, plots, comparison ------------------------------------------------
  if not all(evals):
    evals, density = evaluate(states)
  finals = []
  for gi, g in enumerate(groups):
    step_now = np.asarray(jax.device_get(jax.jit(lambda s: s["step"],
                                                 out_shardings=replicated)(states[gi])))
    for j, i in enumerate(g.members):
      finals.append((i, {"step": int(step_now[j]),
                         **{f"eval_{k}": v for k, v in evals[i].items()}}))
      if "true_dirs" in extras:
        from musicsae_jax import synthetic
        w_dec = np.asarray(jax.device_get(jax.jit(
            lambda s, j: s["params"]["W_dec"][...][j],
            out_shardings=replicated)(states[gi], j)))
        rec = synthetic.recovery(w_dec, extras["true_dirs"])
        rec = rec if isinstance(rec, dict) else {"recovery": rec}
        finals[-1][1].update({f"synthetic_{k}": float(v) for k, v in rec.items()})
  finals = [f for _, f in sorted(finals, key=lambda p: p[0])]
  record = summarize(config.run, axes, members, groups_idx, finals, member_step=how)
  if is_main:
    for i, p in enumerate(member_dirs):
      files.write_json(os.path.join(p, "final_metrics.json"), finals[i])
      mpath = os.path.join(p, "metrics.jsonl")
      if t.plots and os.path.exists(mpath):
        plots.plot_training(plots.read_metrics(mpath), os.path.join(p, "training_curves.png"))
        plots.plot_density(density[i], os.path.join(p, "feature_density.png"))
    files.write_json(sweep_path, record)
    if t.plots:
      plots.plot_sweep(record, os.path.join(run_dir, "sweep.png"))
  return record
