"""Coverage of the steering intervals at small numbers of prompts (not a speed benchmark).

    python bench/steer_ci_coverage.py                       # 4000 simulated prompt sets
    python bench/steer_ci_coverage.py --draws=2000 > bench/results/steer_ci_coverage.json

For each change distribution (normal; gamma(4), skewness 1; exponential, skewness 2) and
n = 4, 8, 16 prompts, draws `--draws` prompt sets and prints one JSON object: the share of
sets whose 95 % interval holds the true mean, for the Student t interval launch.steer uses
(bridge.steering.stats.t_interval) and for the percentile bootstrap it replaced (1000
resamples, n <= 8: at 16 its cost grows and it is no longer in question).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bridge.steering import stats  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--draws", type=int, default=4000)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  rng = np.random.default_rng(args.seed)
  dists = {"normal": (lambda size: rng.normal(0.0, 1.0, size), 0.0),
           "gamma4": (lambda size: rng.gamma(4.0, 1.0, size), 4.0),
           "exponential": (lambda size: rng.exponential(1.0, size), 1.0)}
  out = {"draws": args.draws, "level": stats.LEVEL, "seed": args.seed, "coverage": {}}
  for name, (draw, mu) in dists.items():
    rows = {}
    for n in (4, 8, 16):
      x = draw((args.draws, n))
      ci = np.array([stats.t_interval(r) for r in x])
      row = {"student_t": float(np.mean((ci[:, 0] <= mu) & (mu <= ci[:, 1])))}
      if n <= 8:
        idx = rng.integers(0, n, size=(args.draws, 1000, n))
        means = np.take_along_axis(np.repeat(x[:, None, :], 1000, 1), idx, 2).mean(2)
        lo, hi = np.quantile(means, [0.025, 0.975], axis=1)
        row["percentile_bootstrap"] = float(np.mean((lo <= mu) & (mu <= hi)))
      rows[str(n)] = row
    out["coverage"][name] = rows
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
