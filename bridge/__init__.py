"""The torch side of musicsae-jax: MusicGen, capture, extraction, steering. Never imports JAX.

Packages by job (each lists its modules), lower layers first; a package imports only
from those before it (tests/test_layering.py checks there are no import cycles):

  config_defaults.py  every torch-side config option with its default (torch-free)
  sources/            prompt sets, audio datasets, the synthesized concept set
  models/             MusicGen on either backend, capture-site names, the SAE in torch
  measures/           acoustic descriptors, CLAP scores, the target-concept classifier
  capture/            recording activations; extraction into the store
  steering/           steering hooks and the steering experiment
  localize/           SAE fidelity, layer ablation, activation patching
  organism/           a small MusicGen trained on the concept set (exact labels)

Imports nothing heavy itself, so `bridge.config_defaults` loads without torch.
"""


def load_sae(export_dir: str, device: str = "cpu", dtype=None):
  """An exported SAE as a torch module on RAW activations (normalisation folded in).

      sae = bridge.load_sae("WORKDIR/exports/tiny")
      z = sae.encode(x)            # x: [..., d] activations as MusicGen produces them
      x_hat = sae.decode(z)        # z in raw units; sae.direction(i) is a unit decoder row

  The JAX twin is `musicsae_jax.load_sae(run_or_export)`.
  """
  from bridge.models.sae_torch import TorchSAE
  return TorchSAE.from_export(export_dir, device=device, dtype=dtype)
