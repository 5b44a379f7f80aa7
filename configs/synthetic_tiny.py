"""A tiny CPU run on toy superposition data with known ground truth (well under a minute).

    python -m launch.train --config=configs/synthetic_tiny.py --workdir=/tmp/run

The final metrics report how many true features the SAE recovered (cosine > 0.9).
"""
import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
  c = base.get_config()                # every field with the library's default
  c.run = "synthetic_tiny"

  c.sae.architecture = "topk"
  c.sae.m = 128                        # d is taken from the data
  c.sae.k = 4
  c.sae.k_aux = 16

  c.train.source = "synthetic"
  c.train.synthetic.update(d=32, m_true=64, n=32_768, avg_active=3.0, seed=0,
                           rows_per_prompt=64, chunk_rows=1024)
  c.train.steps = 600
  c.train.batch_size = 512
  c.train.lr = 3e-3
  c.train.warmup_steps = 20
  c.train.eval_every = 200
  c.train.log_every = 50
  c.train.checkpoint_every = 200
  c.train.dead_tokens = 20_000
  c.train.eval_batch_size = 2048
  return c
