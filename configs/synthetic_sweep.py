"""A sweep over k and the learning rate on the toy data of `synthetic_tiny` (8 members).

    python -m launch.sweep --config=configs/synthetic_sweep.py --workdir=/tmp/sweep

The grid is `c.sweep`: each entry is one axis, 'field=v1,v2,...' (the syntax of the
--sweep flag, which replaces the axis over the same field). Members land in
runs/synthetic_sweep/<member>/ (e.g. k4_lr0.003), compared in runs/synthetic_sweep/sweep.json
and sweep.png.
"""
from configs import synthetic_tiny


def get_config():
  c = synthetic_tiny.get_config()
  c.run = "synthetic_sweep"
  c.sweep = ("sae.k=2,4,8,16", "train.lr=1e-3,3e-3")
  return c
