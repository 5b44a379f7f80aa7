"""Shared experiment for the real MusicGen models (configs/musicgen_{small,medium,large}.py).

Needs the weights: cached by a previous download, or a local directory holding
state_dict.bin + compression_state_dict.bin (set --config.model.name=/path/to/dir).
Every stage reads one file: launch.extract, train, analyze, export, steer, demo.
"""
import ml_collections

from configs import base

SIZES = {"small": (24, 1024), "medium": (48, 1536), "large": (48, 2048)}   # layers, d_model


def musicgen_config(size: str) -> ml_collections.ConfigDict:
  """The experiment for facebook/musicgen-<size>: three layers extracted, an SAE on the middle one."""
  if size not in SIZES:
    raise ValueError(f"MusicGen size must be one of {sorted(SIZES)}, got {size!r}")
  num_layers, d = SIZES[size]
  mid = num_layers // 2
  c = base.get_config()                # every field with the library's default
  c.dataset = f"emotions-musicgen-{size}"
  c.run = f"musicgen-{size}"

  # --- model (bridge) -----------------------------------------------------------------
  c.model.name = f"facebook/musicgen-{size}"   # or a local checkpoint directory
  c.model.device = "cuda"

  # --- extract (bridge): every prompt (4 x 120), 10 s each (500 frames) ---------------
  c.extract.sites = tuple(f"lm.layer.{i}" for i in (num_layers // 4, mid, 3 * num_layers // 4)) + (
      "t5.hidden", "t5.pooled", "cond.proj", "audio.descriptors")
  c.extract.batch_size = 16
  c.extract.dtype = "bfloat16"
  c.extract.save_audio = True
  c.extract.flush_seconds = 60.0
  # "teacher_forced" capture re-forwards once: faster for many layers.

  # --- sae: one middle layer, 16x expansion (m = 16 d), k = 32 --------------------------
  c.sae.architecture = "batchtopk"
  c.sae.d = d                          # checked against the store site's width

  # --- train: lr None = 2e-4 / sqrt(m / 2^14) ----------------------------------------
  c.train.source = "store"
  c.train.site = f"lm.layer.{mid}"
  c.train.steps = 30_000
  c.train.batch_size = 4096
  c.train.warmup_steps = 1000
  c.train.decay = "linear"
  c.train.final_lr_frac = 0.0
  c.train.eval_fraction = 0.05
  c.train.eval_every = 2000
  c.train.log_every = 100
  c.train.checkpoint_every = 2000
  c.train.dead_tokens = 10_000_000
  c.train.shuffle_mb = 1536.0
  c.train.prefetch = 4
  # Wide dictionaries on a pod: --config.train.mesh_model=N --config.train.sharding=latent;
  # multi-host: --config.train.distributed=True on every host.

  # --- analysis -----------------------------------------------------------------------
  c.analysis.max_features = 200
  c.analysis.top_prompts = 8
  c.analysis.top_frames = 8
  c.analysis.top_per_label = 10

  # --- steer --------------------------------------------------------------------------
  c.steer.duration = 10.0
  return c
