"""Shared experiment for the real MusicGen models (configs/musicgen_{small,medium,large}.py).

Needs the weights: cached by a previous download, or a local directory holding
state_dict.bin + compression_state_dict.bin (set --config.model.name=/path/to/dir).
Every stage reads one file: launch.extract, train, analyze, export, steer, demo.
"""
import ml_collections

SIZES = {"small": (24, 1024), "medium": (48, 1536), "large": (48, 2048)}   # layers, d_model


def musicgen_config(size: str) -> ml_collections.ConfigDict:
  """The experiment for facebook/musicgen-<size>: three layers extracted, an SAE on the middle one."""
  if size not in SIZES:
    raise ValueError(f"MusicGen size must be one of {sorted(SIZES)}, got {size!r}")
  num_layers, d = SIZES[size]
  mid = num_layers // 2
  c = ml_collections.ConfigDict()
  c.dataset = f"emotions-musicgen-{size}"
  c.run = f"musicgen-{size}"

  # --- model (bridge) -----------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.name = f"facebook/musicgen-{size}"   # or a local checkpoint directory
  c.model.device = "cuda"
  c.model.dtype = ""                   # "" = audiocraft's choice (fp16 LM on CUDA)
  c.model.seed = 0

  # --- extract (bridge) ---------------------------------------------------------------
  c.extract = ml_collections.ConfigDict()
  c.extract.prompts = "emotions"       # "emotions" | path to .txt / .jsonl / .csv
  c.extract.per_label = 0              # 0 = every prompt (4 x 120)
  c.extract.label_key = "emotion"
  c.extract.max_prompts = 0
  c.extract.sites = tuple(f"lm.layer.{i}" for i in (num_layers // 4, mid, 3 * num_layers // 4)) + (
      "t5.hidden", "t5.pooled", "cond.proj", "audio.descriptors")
  c.extract.duration = 10.0            # 500 frames per prompt
  c.extract.batch_size = 16
  c.extract.seed = 0
  c.extract.use_sampling = True
  c.extract.top_k = 250
  c.extract.top_p = 0.0
  c.extract.temperature = 1.0
  c.extract.cfg_coef = 3.0
  c.extract.two_step_cfg = False
  c.extract.keep = "cond"
  c.extract.capture = "hooks"          # "teacher_forced" re-forwards once; faster for many layers
  c.extract.dtype = "bfloat16"
  c.extract.codec = "zstd"             # zstd | blosc | none (none: ~5x faster reads, ~25% more disk)
  c.extract.save_audio = True
  c.extract.flush_seconds = 60.0
  c.extract.torch_threads = 0

  c.sae = ml_collections.ConfigDict()     # one middle layer, 16x expansion
  c.sae.architecture = "batchtopk"
  c.sae.d = d                          # checked against the store site's width
  c.sae.m = None
  c.sae.expansion = 16                 # m = 16 d
  c.sae.k = 32
  c.sae.aux_coeff = 1 / 32
  c.sae.k_aux = d // 2

  # Only what differs from musicsae_jax.train.default_config() (not imported: no JAX here).
  c.train = ml_collections.ConfigDict()
  c.train.source = "store"
  c.train.dataset = c.get_ref("dataset")
  c.train.site = f"lm.layer.{mid}"
  c.train.steps = 30_000
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
  c.train.shuffle_mb = 1536.0
  c.train.prefetch = 4
  # Wide dictionaries on a pod: --config.train.mesh_model=N --config.train.sharding=latent;
  # multi-host: --config.train.distributed=True on every host.
  c.analysis = ml_collections.ConfigDict()
  c.analysis.site = None               # None: the run's train.site
  c.analysis.label_keys = ("emotion",) # prompt label keys for selectivity / probes / cosine
  c.analysis.probe_sites = ()          # () = every store site except audio.descriptors
  c.analysis.rate_band = (1e-4, 0.25)  # firing-rate band for feature discovery
  c.analysis.rank_by = "max"           # max | mean | rate | mean_active
  c.analysis.max_features = 200
  c.analysis.top_prompts = 8
  c.analysis.top_frames = 8
  c.analysis.top_per_label = 10        # selectivity.json: feature ids per label value
  c.analysis.probe_folds = 5
  c.analysis.probe_l2 = 1e-3
  c.analysis.probe_steps = 100         # L-BFGS iterations
  c.analysis.probe_shuffles = 3        # shuffled-label controls
  c.analysis.cosine_permutations = 1000
  c.analysis.cosine_max_prompts = 2000 # the cosine matrix is prompts x prompts
  c.analysis.batch_rows = 4096         # rows per jitted encode call
  c.steer = ml_collections.ConfigDict()
  c.steer.num_prompts = 8
  c.steer.prompts = ()
  c.steer.strengths = (0.0, 2.0, 4.0, 8.0)   # x the site's mean norm
  c.steer.relative = True
  c.steer.half = "cond"
  c.steer.duration = 10.0
  c.steer.seed = 0
  c.steer.control = True
  c.steer.save_audio = True
  return c
