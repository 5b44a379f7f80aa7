"""The experiment bench/quality.py trains with `launch.train`: library defaults throughout.

Only what a user must say is set here (where the data is); bench/quality.py adds the shape
(architecture, expansion), the budget (steps, batch size) and the seed on the command line.
"""
import ml_collections
import ml_collections.config_dict


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.run = "quality"
  c.sae = ml_collections.ConfigDict()
  c.sae.architecture = "topk"
  c.sae.expansion = 8
  c.train = ml_collections.ConfigDict()
  c.train.source = "store"
  c.train.dataset = "minilm-metadata-dev"        # train + validation documents
  c.train.site = "minilm.layer.3"
  c.train.steps = 100
  c.train.batch_size = 4096
  c.train.seed = 0
  # None = the library default; typed so sweeps can set them (--override train.lr=1e-3).
  ph = ml_collections.config_dict.placeholder
  c.train.lr, c.train.dead_tokens, c.train.warmup_steps = ph(float), ph(int), ph(int)
  c.train.decay_frac, c.train.shuffle_mb = ph(float), ph(float)
  return c
