"""The torch side of musicsae-jax: MusicGen, capture, extraction, steering. Never imports JAX.

Imports nothing heavy itself, so `bridge.defaults` loads without torch.
"""


def load_sae(export_dir: str, device: str = "cpu", dtype=None):
  """An exported SAE as a torch module on RAW activations (normalisation folded in).

      sae = bridge.load_sae("WORKDIR/exports/tiny")
      z = sae.encode(x)            # x: [..., d] activations as MusicGen produces them
      x_hat = sae.decode(z)        # z in raw units; sae.direction(i) is a unit decoder row

  The JAX twin is `musicsae_jax.load_sae(run_or_export)`.
  """
  from bridge.sae_torch import TorchSAE
  return TorchSAE.from_export(export_dir, device=device, dtype=dtype)
