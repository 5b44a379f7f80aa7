"""A tiny CPU run on toy superposition data with known ground truth (well under a minute).

    python -m launch.train --config=configs/synthetic_tiny.py --workdir=/tmp/run

The final metrics report how many true features the SAE recovered (cosine > 0.9).
"""
import ml_collections

from musicsae_jax import train


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.run = "synthetic_tiny"

  c.sae = ml_collections.ConfigDict()
  c.sae.architecture = "topk"
  c.sae.d = None                  # taken from the data
  c.sae.m = 128
  c.sae.k = 4
  c.sae.aux_coeff = 1 / 32
  c.sae.k_aux = 16

  c.train = train.default_config()
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
