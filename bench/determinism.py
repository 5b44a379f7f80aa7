"""How closely 1 device and N devices agree over a whole run (not a speed benchmark).

    JAX_NUM_CPU_DEVICES=8 python bench/determinism.py                 # synthetic_tiny, 600 steps
    JAX_NUM_CPU_DEVICES=8 python bench/determinism.py --steps=100 --sharding=latent --mesh_model=4

Trains configs/synthetic_tiny.py on 1 device and on all devices (same data order,
logging every step) and prints one JSON object: the first step whose loss differs by
more than rtol 1e-5, the largest relative loss difference, and both final eval FVUs
with their relative difference. Data-parallel reductions sum in another order than one
device does; float32 rounding compounds through Adam and TopK selection, so the runs
agree closely for the first steps and then drift apart by a small, bounded amount.
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from configs import synthetic_tiny  # noqa: E402
from musicsae_jax import train  # noqa: E402


def _run(workdir, steps, **kw):
  c = synthetic_tiny.get_config()
  c.train.update(steps=steps, log_every=1, plots=False, checkpoint_every=steps,
                 eval_every=steps, **kw)
  final = train.train_and_evaluate(c, workdir)
  with open(os.path.join(workdir, "runs", c.run, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return final, np.array([r["loss"] for r in rows if r["kind"] == "train"])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", type=int, default=600)
  ap.add_argument("--mesh_model", type=int, default=1)
  ap.add_argument("--sharding", default="data")
  args = ap.parse_args()
  import jax
  with tempfile.TemporaryDirectory() as tmp:
    f1, l1 = _run(os.path.join(tmp, "one"), args.steps, num_devices=1)
    fn, ln = _run(os.path.join(tmp, "all"), args.steps, mesh_model=args.mesh_model,
                  sharding=args.sharding)
  rel = np.abs(ln - l1) / np.abs(l1)
  over = np.flatnonzero(rel > 1e-5)
  print(json.dumps({
      "steps": args.steps, "devices": jax.device_count(), "sharding": args.sharding,
      "first_step_over_1e-5": int(over[0]) + 1 if over.size else None,
      "max_rel_loss_diff": float(rel.max()),
      "eval_fvu_1": f1["eval_fvu"], "eval_fvu_n": fn["eval_fvu"],
      "eval_fvu_rel_diff": abs(fn["eval_fvu"] - f1["eval_fvu"]) / f1["eval_fvu"]}))


if __name__ == "__main__":
  main()
