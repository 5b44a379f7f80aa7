"""A realistic SAE on one residual-stream layer of musicgen-small (d=1024, 16x expansion).

Assumes activations extracted into <workdir>/activations/<dataset>/ (launch.extract with
model.name="facebook/musicgen-small"). Sized for one accelerator or a TPU VM; on a pod use
--config.train.mesh_model=N --config.train.sharding=latent for wider dictionaries, and
--config.train.distributed=True on every host.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.dataset = "musicgen-small"
  c.run = "sae-musicgen-small-l12"

  c.sae = ml_collections.ConfigDict()
  c.sae.architecture = "batchtopk"
  c.sae.d = 1024                         # checked against the store site's width
  c.sae.m = None
  c.sae.expansion = 16                 # m = 16384
  c.sae.k = 32
  c.sae.aux_coeff = 1 / 32
  c.sae.k_aux = 512

  # Only what differs from musicsae_jax.train.default_config().
  c.train = ml_collections.ConfigDict()
  c.train.source = "store"
  c.train.dataset = c.get_ref("dataset")
  c.train.site = "lm.layer.12"             # a middle layer
  c.train.steps = 100_000              # ~400M tokens at 4096/step
  c.train.batch_size = 4096
  c.train.lr = None                    # 2e-4 / sqrt(m / 2^14)
  c.train.warmup_steps = 1000
  c.train.decay = "linear"
  c.train.final_lr_frac = 0.0
  c.train.eval_fraction = 0.05
  c.train.eval_every = 2000
  c.train.log_every = 100
  c.train.checkpoint_every = 2000
  c.train.dead_tokens = 10_000_000
  c.train.shuffle_blocks = 32
  c.train.prefetch = 4
  return c
