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
  c.model.dtype = ""                   # "" = audiocraft's choice (fp16 LM on CUDA)
  c.model.seed = 0                     # the tiny model's weights come from this seed
  c.model.tiny = ml_collections.ConfigDict(dict(   # sizes of the tiny random MusicGen
      dim=64, num_layers=4, num_heads=4, card=256, n_q=4, t5_dim=32, t5_layers=2,
      sample_rate=16000, hop=320))     # 50 frames/s

  # --- extract (bridge) ---------------------------------------------------------------
  c.extract = ml_collections.ConfigDict()
  c.extract.prompts = "emotions"       # "emotions" | path to .txt / .jsonl / .csv
  c.extract.per_label = 32             # first N prompts per label value (0 = all)
  c.extract.label_key = "emotion"
  c.extract.max_prompts = 0            # 0 = no cap
  c.extract.sites = ("lm.layer.1", "lm.layer.3", "t5.hidden", "t5.pooled", "cond.proj",
                     "audio.descriptors")
  c.extract.duration = 2.0             # seconds per prompt (100 frames)
  c.extract.batch_size = 8             # part of the data's identity (see bridge/extract.py)
  c.extract.seed = 0
  c.extract.use_sampling = True
  c.extract.top_k = 50
  c.extract.top_p = 0.0
  c.extract.temperature = 1.0
  c.extract.cfg_coef = 3.0
  c.extract.two_step_cfg = False
  c.extract.keep = "cond"              # "cond" | "both" (adds lm.layer.<i>.uncond sites)
  c.extract.capture = "hooks"          # "hooks" | "teacher_forced"
  c.extract.dtype = "float32"          # stored dtype of model sites: float32 | bfloat16
  c.extract.codec = "zstd"             # zstd | blosc | none (none: faster reads, more disk)
  c.extract.save_audio = True          # activations/<dataset>/audio/<prompt_id>.wav
  c.extract.flush_seconds = 0.0        # publish every batch (resume loses nothing)
  c.extract.torch_threads = 1          # 0 = torch default; tiny ops only lose from threads

  # --- sae (musicsae_jax.sae) ---------------------------------------------------------
  c.sae = ml_collections.ConfigDict()
  c.sae.architecture = "topk"          # relu | topk | batchtopk | jumprelu | matryoshka
  c.sae.d = None                       # None: the store site's width (d_model of the model)
  c.sae.m = None                       # None: expansion * d
  c.sae.expansion = 8
  c.sae.k = 16
  c.sae.aux_coeff = 1 / 32
  c.sae.k_aux = 32

  # --- train (musicsae_jax.train) -----------------------------------------------------
  # Only what this demo changes; every option and its default: musicsae_jax.train
  # .default_config() (not imported here: the bridge loads this file without JAX).
  c.train = ml_collections.ConfigDict()
  c.train.source = "store"
  c.train.dataset = c.get_ref("dataset")     # follows --config.dataset
  c.train.site = "lm.layer.3"
  c.train.steps = 1500
  c.train.batch_size = 512
  c.train.lr = 1e-3                    # small dictionaries train faster than the Gao rule
  c.train.warmup_steps = 50
  c.train.eval_fraction = 0.15         # of prompts (whole prompts held out)
  c.train.eval_every = 250
  c.train.log_every = 50
  c.train.checkpoint_every = 250
  c.train.dead_tokens = 50_000
  c.train.shuffle_mb = 64.0

  # --- analysis (musicsae_jax.analysis) -----------------------------------------------
  c.analysis = ml_collections.ConfigDict()
  c.analysis.site = None               # None: the run's train.site
  c.analysis.label_keys = ("emotion",) # prompt label keys for selectivity / probes / cosine
  c.analysis.probe_sites = ()          # () = every store site except audio.descriptors
  c.analysis.rate_band = (1e-4, 0.25)  # firing-rate band for feature discovery
  c.analysis.rank_by = "max"           # max | mean | rate | mean_active
  c.analysis.max_features = 50
  c.analysis.top_prompts = 5
  c.analysis.top_frames = 5
  c.analysis.top_per_label = 5         # selectivity.json: feature ids per label value
  c.analysis.probe_folds = 5           # needs >= 5 prompts per label value
  c.analysis.probe_l2 = 1e-3
  c.analysis.probe_steps = 100         # L-BFGS iterations
  c.analysis.probe_shuffles = 3        # shuffled-label controls
  c.analysis.cosine_permutations = 1000

  # --- steer (bridge.steering) --------------------------------------------------------
  c.steer = ml_collections.ConfigDict()
  c.steer.num_prompts = 4              # first N built-in emotion prompts (or c.steer.prompts)
  c.steer.prompts = ()                 # explicit prompt texts; empty = built-in
  c.steer.strengths = (0.0, 4.0, 8.0)  # alpha; x the site's mean norm when relative
  c.steer.relative = True
  c.steer.half = "cond"                # cond | uncond | both halves of the CFG batch
  c.steer.duration = 2.0
  c.steer.seed = 0
  c.steer.control = True               # a matched-norm random direction per strength
  c.steer.save_audio = True
  return c
