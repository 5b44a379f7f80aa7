"""How long the trainer waits on data, at a real model's width, on whatever device JAX has.

On two CPU cores a training step takes seconds and the loader is never the bottleneck; on
a GPU or TPU a step takes milliseconds and the store reads, the shuffle window and the
host-to-device copy must keep up. This writes a bf16 store in prompt order (as extraction
writes it; default d=1536 like MusicGen-medium's residual stream), trains on it with
`musicsae_jax.train.train_and_evaluate` at the library defaults (only shape, budget and
logging set), and reads the run's own `data_wait_frac` (the fraction of each logged
interval the step loop spent waiting for the next batch) from metrics.jsonl.

    python bench/train_wait.py                       # d=1536, m=16d, 1.5 GB store, 300 steps
    python bench/train_wait.py --tiny                # seconds (tests)

Prints one JSON object: device, step time (min / median), data wait (mean / median / max
over the logged intervals after the first, which holds compilation), rows served per
second and this process's peak RSS.
"""
import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))


def config(args, dataset: str):
  from configs import base
  c = base.get_config()
  c.run = "train_wait"
  c.sae.architecture, c.sae.expansion = args.arch, args.expansion
  c.train.update(source="store", dataset=dataset, site="site", steps=args.steps,
                 batch_size=args.batch, log_every=args.log_every, eval_every=args.steps,
                 checkpoint_every=args.steps, plots=False)
  for o in args.override:                          # e.g. train.read_threads=14
    key, value = o.split("=", 1)
    sub, name = key.rsplit(".", 1)
    node = c
    for part in sub.split("."):
      node = node[part]
    node[name] = type(node[name])(value) if node[name] is not None else float(value)
  return c


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--d", type=int, default=1536)
  p.add_argument("--size_mb", type=int, default=1536, help="store size (bf16)")
  p.add_argument("--arch", default="topk")
  p.add_argument("--expansion", type=int, default=16)
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--batch", type=int, default=4096)
  p.add_argument("--log_every", type=int, default=20)
  p.add_argument("--workdir", default="",
                 help="default: a temporary folder, removed after; a given one keeps its "
                      "store for the next invocation")
  p.add_argument("--override", action="append", default=[],
                 help="config field=value, e.g. train.read_threads=14 (repeatable)")
  p.add_argument("--tiny", action="store_true", help="d=64, 8 MB, 12 steps of 512")
  args = p.parse_args()
  if args.tiny:
    args.d, args.size_mb, args.expansion, args.steps, args.batch, args.log_every = (
        64, 8, 4, 12, 512, 4)
  import jax
  import loader                                    # bench/loader.py: the same store layout
  from musicsae_jax import train
  ws = args.workdir or tempfile.mkdtemp(prefix="train_wait_")
  try:
    ds = os.path.join(ws, "activations", "wait")
    t0 = time.perf_counter()
    from musicsae_jax import store
    if store.exists(ds) and store.open_dataset(ds).site("site").d == args.d:
      rows = store.open_dataset(ds).site("site").num_rows
    else:
      rows = loader.write(ds, args.size_mb, args.d, "bfloat16")
    write_s = time.perf_counter() - t0
    final = train.train_and_evaluate(config(args, ds), ws, overwrite=True)
    with open(os.path.join(ws, "runs", "train_wait", "metrics.jsonl")) as f:
      logged = [json.loads(ln) for ln in f]
    tr = [r for r in logged if r.get("kind") == "train"][1:]    # the first holds compilation
    waits = [r["data_wait_frac"] for r in tr]
    step_s = [1.0 / r["steps_per_s"] for r in tr]
    dev = jax.devices()[0]
    print(json.dumps({
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}", "d": args.d,
        "m": args.expansion * args.d, "arch": args.arch, "batch": args.batch,
        "store_rows": rows, "store_write_s": round(write_s, 1), "steps": args.steps,
        "step_s_min": round(min(step_s), 5), "step_s_median": round(float(np.median(step_s)), 5),
        "rows_per_s_median": round(args.batch / float(np.median(step_s))),
        "data_wait_mean": round(float(np.mean(waits)), 4),
        "data_wait_median": round(float(np.median(waits)), 4),
        "data_wait_max": round(float(np.max(waits)), 4),
        "eval_fvu": final.get("eval_fvu"), "overrides": args.override,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "loadavg_1m": round(os.getloadavg()[0], 2)}))
  finally:
    if not args.workdir:
      shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
  main()
