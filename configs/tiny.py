"""The offline demo experiment: a tiny random MusicGen, the emotion prompt set, a small SAE.

One ConfigDict drives every stage (`launch.extract`, `launch.train`, `launch.analyze`,
`launch.export`, `launch.steer`, `launch.demo`). Override any field from the command line,
e.g. `--config.train.steps=50`.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.dataset = "emotions-tiny"          # activations/<dataset>/ in the workdir
  c.run = "tiny"                       # runs/<run>/, exports/<run>/, reports/<run>/

  # --- model (bridge) -----------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.name = "tiny"                # "tiny" | "facebook/musicgen-small" | a local dir
  c.model.device = "cpu"
  c.model.seed = 0

  # --- extract (bridge) ---------------------------------------------------------------
  c.extract = ml_collections.ConfigDict()

  # --- sae (musicsae_jax.sae) ---------------------------------------------------------
  c.sae = ml_collections.ConfigDict()

  # --- train (musicsae_jax.train) -----------------------------------------------------
  c.train = ml_collections.ConfigDict()

  # --- analysis (musicsae_jax.analysis) -----------------------------------------------
  c.analysis = ml_collections.ConfigDict()

  # --- steer (bridge.steering) --------------------------------------------------------
  c.steer = ml_collections.ConfigDict()
  return c
