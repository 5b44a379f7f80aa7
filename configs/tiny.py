"""The offline demo experiment: a tiny random MusicGen, the emotion prompt set, a small SAE.

One ConfigDict drives every stage (`launch.extract`, `launch.train`, `launch.analyze`,
`launch.export`, `launch.steer`, `launch.demo`). It starts from the library's defaults
(configs/base.py) and sets only what differs; override any field from the command line,
e.g. `--config.train.steps=50 --config.train.decay=constant`. See them all:
`python -m launch.config --config=configs/tiny.py`.
"""
import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
  c = base.get_config()                # every field with the library's default
  c.dataset = "emotions-tiny"          # activations/<dataset>/ in the workdir
  c.run = "tiny"                       # runs/<run>/, exports/<run>/, reports/<run>/

  # --- model (bridge): the defaults are the tiny random MusicGen on CPU ----------------

  # --- extract (bridge) ---------------------------------------------------------------
  c.extract.per_label = 32             # first N prompts per label value (4 x 32 prompts)
  c.extract.sites = ("lm.layer.1", "lm.layer.3", "t5.hidden", "t5.pooled", "cond.proj",
                     "audio.descriptors")
  c.extract.duration = 2.0             # seconds per prompt (100 frames)
  c.extract.top_k = 50                 # the tiny codebook has 256 entries
  c.extract.save_audio = True          # activations/<dataset>/audio/<prompt_id>.wav
  c.extract.torch_threads = 1          # tiny ops only lose from threads

  # --- sae (musicsae_jax.sae) ---------------------------------------------------------
  c.sae.architecture = "topk"          # relu | topk | batchtopk | jumprelu | matryoshka
  c.sae.expansion = 8                  # m = 8 d (d: the store site's width)
  c.sae.k = 16
  c.sae.k_aux = 32

  # --- train (musicsae_jax.train) -----------------------------------------------------
  c.train.source = "store"
  c.train.site = "lm.layer.3"
  c.train.steps = 1500
  c.train.batch_size = 512
  c.train.lr = 1e-3                    # small dictionaries train faster than the Gao rule
  c.train.warmup_steps = 50
  c.train.eval_fraction = 0.15         # of prompts (whole prompts held out)
  c.train.eval_every = 250
  c.train.checkpoint_every = 250
  c.train.dead_tokens = 50_000
  c.train.shuffle_mb = 64.0

  # --- analysis (musicsae_jax.analysis): the defaults, plus CLAP labels ---------------
  c.analysis.labeling.clap = "tiny"    # the random test CLAP (wiring only; docs/analysis.md "Feature labels")
  c.analysis.labeling.threads = 1      # tiny ops only lose from threads (10x on a busy box)

  # --- steer (bridge.steering) --------------------------------------------------------
  c.steer.strengths = (0.0, 4.0, 8.0)  # alpha; x the site's mean norm when relative
  # method=set (the demo runs "add,set" side by side): the feature's latent = 8 raw units
  # (the demo's features sit near 0 unsteered). Controls: the defaults (32 per kind and
  # strength, 16 prompts); at 1 s per clip the tiny model makes them cheap (docs/steering.md, "Did
  # steering work?").
  c.steer.per_method.set.strengths = (8.0,)
  c.steer.duration = 1.0
  return c
