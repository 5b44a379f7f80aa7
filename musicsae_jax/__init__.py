"""musicsae-jax: sparse autoencoders for music generation models, on JAX.

Imports nothing heavy: `musicsae_jax.store` is usable without loading JAX.
"""
__version__ = "0.1.0"
