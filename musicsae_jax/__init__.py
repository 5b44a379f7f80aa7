"""musicsae-jax: sparse autoencoders for music generation models, on JAX.

Imports nothing heavy: `musicsae_jax.store` is usable without loading JAX.
"""
__version__ = "0.1.0"


def load_sae(path: str, step: int | None = None):
  """A trained SAE (run or export directory) as a Flax NNX module on RAW activations.

      sae = musicsae_jax.load_sae("WORKDIR/runs/tiny")     # or WORKDIR/exports/tiny
      z = sae.encode(x)            # x: [n, d] activations as recorded; z in raw units
      x_hat = sae.decode(z)

  See musicsae_jax/load.py; the torch twin is `bridge.load_sae(export_dir)`.
  """
  from musicsae_jax.load import load_sae as _load   # JAX loads only here
  return _load(path, step)
