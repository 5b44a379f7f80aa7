"""A seconds-sized organism for tests: 96 clips of 1 s, two programs, two dynamics, a few
training steps. Not a model of music; it checks the recipe and that planted, easy
concepts (loudness, instrument) are found."""
import ml_collections

from configs import organism


def get_config() -> ml_collections.ConfigDict:
  c = organism.get_config()
  c.dataset = "organism-tiny"
  c.run = "organism-tiny"
  c.concepts.num_clips = 96
  organism.set_clip_seconds(c, 1.0)
  c.concepts.tempos = (120,)
  c.concepts.tonics = ("C", "G")
  c.concepts.programs = (0, 73)
  c.concepts.densities = (2,)
  c.concepts.dynamics = ("pp", "ff")
  o = c.organism
  o.heldout_fraction = 0.25
  o.acoustic_clips = 0
  o.torch_threads = 1
  o.model.update(dict(dim=32, num_layers=2, num_heads=2, card=64, n_q=2, t5_dim=16,
                      seanet_filters=4, seanet_dimension=16))
  o.codec.update(dict(steps=30, batch_size=4, crop_seconds=0.5, kmeans_restarts=(10, 20)))
  o.lm.update(dict(steps=60, batch_size=16, warmup_steps=10, lr=3e-3, val_every=20))
  c.extract.sites = ("lm.layer.0", "lm.layer.1")
  c.extract.torch_threads = 1
  c.train.site = "lm.layer.1"
  c.train.steps = 150
  c.train.batch_size = 256
  c.train.eval_every = 150
  c.train.checkpoint_every = 150
  c.sae.expansion = 4
  c.sae.k = 8
  return c
