"""The library's defaults for every stage: experiment config files start here.

    c = base.get_config()      # every field of model, extract, sae, train, analysis, steer, localize
    c.sae.k = 16               # ... then set only what the experiment changes

Because every field exists, any of them can be overridden on the command line, e.g.
`--config.train.decay=constant --config.sae.l1_coeff=3`. Print a resolved config with
`python -m launch.config --config=configs/tiny.py [overrides]`. Loads neither JAX nor torch.
"""
import ml_collections

from bridge import config_defaults as bridge_defaults
from musicsae_jax import config_defaults as jax_defaults


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.dataset = "default"                # activations/<dataset>/ in the workdir
  c.run = "default"                    # runs/<run>/, exports/<run>/, reports/<run>/
  c.model = bridge_defaults.model()
  c.extract = bridge_defaults.extract()
  c.sae = jax_defaults.sae()
  c.train = jax_defaults.train()
  c.train.dataset = c.get_ref("dataset")     # follows --config.dataset
  c.analysis = jax_defaults.analysis()
  c.steer = bridge_defaults.steer()
  c.localize = bridge_defaults.localize()
  return c
