"""`c.organism`: every option of the model organism (bridge/organism) with its default.
torch-free, like bridge/config_defaults.py, so config files and the JAX stages load it cheaply.

Sized for about 30 minutes on 2 CPU cores (measured: docs/concepts.md "A model whose truth we know").
"""
import ml_collections


def organism() -> ml_collections.ConfigDict:
  o = ml_collections.ConfigDict()
  o.concepts_dir = ""                  # "" = <workdir>/concepts, rendered from c.concepts if absent
  o.out = ""                           # "" = <workdir>/organism (the MusicGen directory)
  o.seed = 0
  o.heldout_fraction = 0.15            # clips held out of codec and LM training (metrics)
  o.torch_threads = 1                  # 0 = torch default; 1 was 10x faster than 2 on the
                                       # shared 2-core machine (thread contention)
  o.overwrite = False                  # train again over an existing organism directory
  o.acoustic_clips = 120               # held-out clips for the concept-survival check (0 = skip)
  o.model = ml_collections.ConfigDict(dict(
      dim=128, num_layers=4, num_heads=4, card=256, n_q=4, t5_dim=32, t5_layers=2,
      sample_rate=16000, hop=320,      # 50 frames/s
      cfg_dropout=0.2,                 # classifier-free guidance dropout while training
      lm_dropout=0.1,                  # transformer dropout (train mode only; against memorising)
      seanet_filters=8, seanet_dimension=64, seanet_residual_layers=1))
  o.codec = ml_collections.ConfigDict(dict(
      steps=1200, batch_size=8, crop_seconds=0.5, lr=1e-3, seed=0,
      kmeans_restarts=(100, 300, 600, 900),   # codebook k-means re-inits (codec.init_codebooks)
      kmeans_clips=32,                   # crops the k-means init runs on (also at step 0)
      ema_decay=0.99,                    # RVQ codebook EMA (audiocraft: 0.99)
      weights=ml_collections.ConfigDict(dict(l1=0.1, msspec=2.0, penalty=1.0))))   # audiocraft's
  o.lm = ml_collections.ConfigDict(dict(
      steps=2500, batch_size=16, lr=2e-3, warmup_steps=100, weight_decay=0.1, max_norm=1.0,
      seed=0,
      # Model selection without the reported held-out clips: `val_fraction` of the TRAINING
      # clips are set aside, scored every `val_every` steps, and the LM with the lowest
      # validation cross entropy is kept; training stops after `patience` scores without
      # a new best (0 = never stop early).
      val_fraction=0.1, val_every=100, patience=5))
  return o


def organism_steer() -> ml_collections.ConfigDict:
  """`c.organism_steer`: steering on the organism scored in token space
  (bridge/organism/steer_tokens.py)."""
  s = ml_collections.ConfigDict()
  s.num_generations = 32               # one batch per condition, same seed for every condition
  s.seed = 0
  s.strengths = (0.1, 0.25, 0.5, 1.0)  # x RMS activation norm of the SAE's layer (unsteered);
                                       # 2 already drives every direction to one mode
  s.controls = 20                      # per kind (decoder rows, Gaussian); the verdict ranks the
                                       # feature among both kinds pooled (40: p floor 1/41)
  s.significance = 0.05
  s.top_k = 50
  s.half = "both"                      # no text: steer the model, not only CFG's conditional half
  s.max_features = 0                   # 0 = every label value with a passing SAE latent
  return s
