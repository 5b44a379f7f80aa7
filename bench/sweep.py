"""A sweep of N SAEs vs N sequential single runs, on the same store, in one process.

    python bench/sweep.py                # 8 members, d=384 m=6144 k=32 batch 4096, bf16 store
    python bench/sweep.py --tiny         # seconds (tests)

Writes a bf16 activation store (random rows; compression is irrelevant to both sides),
then, in this order:
  1. member 0 as an ordinary single run (`musicsae_jax.train.train_and_evaluate`); being
     first, it also pays the process's lazy imports, which rchar sees;
  2. the sweep (`musicsae_jax.sweep.train_sweep`, members differ in train.lr: one vmapped
     group), reading from the same store;
  3. members 1.. as single runs, one after another;
  4. each member's jitted single-run step alone on a fixed device batch, round-robin
     (one call per member per round), plus the sweep's own jitted step on the same batch.
Bytes read are counted twice: what the store readers returned (decoded rows + index,
counted by wrapping `SiteReader.read_block/read_rows/read_index`) and what the process
read from files (`rchar` in /proc/self/io, page-cache hits included). Step wall times
come from the runs' own metrics.jsonl (log_every=1: each row's steps_per_s is that step's
wall time, data waits included); the first step (compilation) is left out. The claim
checked: sweep step wall <= 1.05 x the members' summed single-step compute. Prints one
JSON object; min and median are given for every time; loadavg_1m is sampled around each
phase (the machine may be shared).
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FULL = dict(members=8, d=384, m=6144, k=32, batch=4096, steps=4, rounds=3)
TINY = dict(members=3, d=32, m=256, k=8, batch=256, steps=2, rounds=2)


class ReadCounter:
  """Counts the bytes the store's site readers hand back (monkeypatched methods)."""

  def __init__(self):
    from musicsae_jax import store
    self.bytes = 0
    cls = store.SiteReader
    for name in ("read_block", "read_rows", "read_index"):
      orig = getattr(cls, name)
      setattr(cls, name, self._wrap(orig))

  def _wrap(self, fn):
    def counted(*a, **kw):
      out = fn(*a, **kw)
      for arr in (out if isinstance(out, tuple) else (out,)):
        self.bytes += int(np.asarray(arr).nbytes)
      return out
    return counted


def rchar() -> int:
  with open("/proc/self/io") as f:
    return int(next(line for line in f if line.startswith("rchar")).split()[1])


def make_store(path, d, rows, rows_per_prompt=256):
  from musicsae_jax import store
  prompts = rows // rows_per_prompt
  ds = store.create(path, sites={"lm.layer.0": store.SiteSpec(d=d, dtype="bfloat16")},
                    prompts=[{"text": f"p{i}", "labels": {}} for i in range(prompts)],
                    model={"name": "bench"}, generation={})
  rng = np.random.default_rng(0)
  with ds.writer(0, flush_seconds=1e9) as w:
    for p in range(prompts):
      x = rng.standard_normal((rows_per_prompt, d), dtype=np.float32)
      idx = np.stack([np.full(rows_per_prompt, p), np.arange(rows_per_prompt)], 1)
      w.append("lm.layer.0", x, idx.astype(np.int32))
      w.commit(prompt_ids=[p])
  return prompts * rows_per_prompt


def config(p, dataset):
  from configs import synthetic_tiny
  c = synthetic_tiny.get_config()
  c.run = "bench_sweep"
  c.sae.d, c.sae.m, c.sae.k, c.sae.k_aux = None, p["m"], p["k"], p["d"] // 2
  n = p["steps"] + 1                          # +1: the first step compiles
  c.train.update(source="store", dataset=dataset, site="lm.layer.0", steps=n,
                 batch_size=p["batch"], warmup_steps=1, eval_fraction=0.05,
                 eval_max_rows=p["batch"], eval_batch_size=p["batch"], eval_every=n,
                 checkpoint_every=n, log_every=1, plots=False, norm_samples=p["batch"],
                 dead_tokens=10**9, num_devices=1)
  return c


def step_times(workdir, run):
  """Wall seconds of steps 2.. from the run's metrics.jsonl (log_every=1)."""
  with open(os.path.join(workdir, "runs", run, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [1.0 / r["steps_per_s"] for r in rows if r["kind"] == "train" and r["step"] >= 2]


def stats(xs):
  return {"min": round(min(xs), 4), "median": round(float(np.median(xs)), 4)}


def measure(fn, counter):
  b0, r0, t0 = counter.bytes, rchar(), time.perf_counter()
  out = fn()
  return out, {"store_bytes": counter.bytes - b0, "rchar_bytes": rchar() - r0,
               "wall_s": round(time.perf_counter() - t0, 2)}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--tiny", action="store_true", help="tiny sizes (seconds; for tests)")
  ap.add_argument("--members", type=int, help="members (default 8)")
  ap.add_argument("--m", type=int, help="latents per SAE (default 6144)")
  ap.add_argument("--steps", type=int, help="timed steps per run (default 4)")
  ap.add_argument("--member_step", default="auto", choices=["auto", "vmap", "map"],
                  help="how the sweep steps a group (musicsae_jax.sweep.choose_member_step)")
  ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
  args = ap.parse_args()
  p = dict(TINY if args.tiny else FULL)
  for k in ("members", "m", "steps"):
    if getattr(args, k):
      p[k] = getattr(args, k)

  import jax
  import jax.numpy as jnp
  from musicsae_jax import sweep, train
  counter = ReadCounter()
  root = args.dir or tempfile.mkdtemp(prefix="bench_sweep_")
  ds_path = os.path.join(root, "activations", "bench")
  rows = make_store(ds_path, p["d"], int(p["batch"] * (p["steps"] + 4) / 0.95))
  cfg = config(p, ds_path)
  lrs = [float(f"{v:.3g}") for v in np.geomspace(1e-4, 1e-3, p["members"])]
  axis = "train.lr=" + ",".join(map(str, lrs))
  load = [os.getloadavg()[0]]

  def single(i):
    c = config(p, ds_path)
    c.run, c.train.lr = f"bench_single/{i}", lrs[i]
    _, one = measure(lambda: train.train_and_evaluate(c, root), counter)
    return one, step_times(root, c.run)

  # 1. member 0 as a single run (it also pays the process's lazy imports, seen in rchar),
  # 2. the sweep, 3. the other members as single runs, one after another.
  singles, single_steps = zip(*[single(0)])
  singles, single_steps = list(singles), list(single_steps)
  record, sw = measure(lambda: sweep.train_sweep(cfg, root, [axis], args.member_step), counter)
  names = [r["name"] for r in record["members"]]
  sweep_steps = step_times(root, f"bench_sweep/{names[0]}")
  load.append(os.getloadavg()[0])
  for i in range(1, len(lrs)):
    one, st = single(i)
    singles.append(one)
    single_steps.append(st)
  load.append(os.getloadavg()[0])

  # 3. step compute alone: each member's single-run step, and the sweep's vmapped step
  members = sweep.expand(cfg, sweep.sweep_axes(cfg, [axis]))
  sweep.resolve_members(members, p["d"])
  x = jnp.asarray(np.random.default_rng(1).standard_normal((p["batch"], p["d"]),
                                                           dtype=np.float32))
  fns, states = {}, {}
  sample = np.asarray(x[:256])
  made = []
  for i, mb in enumerate(members):
    graphdef, state = sweep._member_state(mb, p["d"], sample, 1.0)
    tx, _ = sweep.member_optimizer(mb.t, mb.t.lr)
    step = jax.jit(train.make_train_step(graphdef, tx, int(mb.t.dead_tokens)),
                   donate_argnums=(0,))
    states[i] = state
    made.append((graphdef, state))
    fns[i] = (lambda i=i, step=step: states.__setitem__(i, _run(step, states[i], x)))
  how = sweep.choose_member_step(args.member_step, None)
  vstep = jax.jit(sweep.make_group_step(made[0][0], members[0].t, lrs, how),
                  donate_argnums=(0,))
  states["sweep"] = sweep.stack([s for _, s in made])
  fns["sweep"] = lambda: states.__setitem__("sweep", _run(vstep, states["sweep"], x))
  times = {n: [] for n in fns}
  for _ in range(1):                          # compile + warm up
    for f in fns.values():
      f()
  for _ in range(p["rounds"]):
    for n, f in fns.items():
      t0 = time.perf_counter()
      f()
      times[n].append(time.perf_counter() - t0)
  load.append(os.getloadavg()[0])
  member_min = sum(min(times[i]) for i in range(len(members)))
  member_med = sum(float(np.median(times[i])) for i in range(len(members)))

  seq_bytes = sum(s["store_bytes"] for s in singles)
  out = {
      "members": p["members"], "d": p["d"], "m": p["m"], "k": p["k"], "batch": p["batch"],
      "timed_steps": p["steps"], "store_rows": rows, "store_dtype": "bfloat16",
      "device": jax.devices()[0].platform, "member_step": record.get("member_step"),
      "lrs": lrs,
      "bytes": {"sweep_store": sw["store_bytes"], "sweep_rchar": sw["rchar_bytes"],
                "single_run_store": [s["store_bytes"] for s in singles],
                "single_run_rchar": [s["rchar_bytes"] for s in singles],
                "sequential_store_total": seq_bytes,
                "sweep_over_one_run": round(sw["store_bytes"] / singles[-1]["store_bytes"], 4),
                "sequential_over_sweep": round(seq_bytes / sw["store_bytes"], 2)},
      "wall_s": {"sweep_total": sw["wall_s"],
                 "sequential_total": round(sum(s["wall_s"] for s in singles), 2)},
      "step_s": {"sweep_loop": stats(sweep_steps),
                 "single_loop_summed": stats([sum(v) for v in zip(*single_steps)]),
                 "member_compute_summed": {"min": round(member_min, 4),
                                           "median": round(member_med, 4)},
                 "sweep_compute": stats(times["sweep"]),
                 "member_compute": [stats(times[i]) for i in range(len(members))]},
      "ratio_sweep_loop_over_member_compute": {
          "min": round(min(sweep_steps) / member_min, 3),
          "median": round(float(np.median(sweep_steps)) / member_med, 3)},
      "speedup_vs_sequential": {
          "total_wall": round(sum(s["wall_s"] for s in singles) / sw["wall_s"], 2),
          "step_loop_median": round(float(np.median([sum(v) for v in zip(*single_steps)]))
                                    / float(np.median(sweep_steps)), 2)},
      "pareto": record.get("pareto"),
      "loadavg_1m": [round(v, 2) for v in load],
  }
  print(json.dumps(out), flush=True)


def _run(step, state, x):
  state, met = step(state, x)
  jax_block(met)
  return state


def jax_block(tree):
  import jax
  jax.block_until_ready(tree)


if __name__ == "__main__":
  main()
