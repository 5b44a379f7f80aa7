"""Every option of the JAX-side stages (`c.sae`, `c.train`, `c.analysis`) with its default.

JAX-free on purpose: config files start from these (through `configs/base.py`) so that
every field can be overridden on the command line (`--config.train.grad_clip=0.5`) even
when the file does not name it, and the bridge loads the same files without JAX.
This is the one copy: `musicsae_jax.sae.DEFAULTS` and `musicsae_jax.train.default_config()`
are built from it.
"""
import ml_collections
from ml_collections import config_dict



def _none(kind):
  """A field whose default is None but which a flag may set (`--config.sae.m=4096`)."""
  return config_dict.placeholder(kind)


def sae() -> ml_collections.ConfigDict:
  """`c.sae`: the dictionary (musicsae_jax.sae.make_sae reads all but `d`)."""
  s = ml_collections.ConfigDict()
  s.architecture = "topk"              # relu | topk | batchtopk | jumprelu | matryoshka
  s.d = _none(int)                     # None: the store site's width (checked when set)
  s.m = _none(int)                     # None: expansion * d
  s.expansion = 16
  s.k = 32                             # topk / batchtopk / matryoshka: active latents per row
  s.l1_coeff = 2.0                     # relu: L1 penalty on decoder-norm-weighted latents
                                       # (L0 ~40 on bench/quality.py activations, docs/benchmarks.md)
  s.target_l0 = _none(float)           # jumprelu: the L0 its thresholds steer to (None: k;
                                       # 0: off, the fixed-penalty recipe)
  s.l0_coeff = 1e-3                    # jumprelu: L0 penalty
  s.threshold_rate = 0.05              # jumprelu: log-threshold step towards target_l0
  s.jumprelu_bandwidth = 0.05          # jumprelu: straight-through rectangle width
  s.jumprelu_init_threshold = _none(float)  # None: where training rows give L0 = target
  s.encoder_init_scale = _none(float)  # W_enc = scale * W_dec.T at init (None: relu
                                       # 2d/m, so x_hat ~ x at step 0; others 1)
  s.aux_coeff = 1.0 / 32.0             # AuxK loss on dead latents
  s.k_aux = _none(int)                 # None: d // 2
  s.matryoshka_prefixes = _none(tuple) # None: a ratio-4 ladder up to m (sae.default_prefixes)
  s.threshold_momentum = 0.99          # batchtopk: EMA of the inference threshold
  return s


def train() -> ml_collections.ConfigDict:
  """`c.train`: the training loop (musicsae_jax.train reads every field)."""
  t = ml_collections.ConfigDict()
  t.source = "synthetic"          # 'synthetic' | 'store'
  t.dataset = ""                  # store: activations/<dataset> under workdir, or a path
  t.site = ""                     # store: e.g. 'lm.layer.4'
  t.synthetic = ml_collections.ConfigDict(dict(
      d=32, m_true=64, n=20_000, avg_active=3.0, seed=0, rows_per_prompt=50,
      chunk_rows=1024))
  t.steps = 1000
  t.batch_size = 1024
  t.lr = _none(float)             # None: default_lr(m) (tuned on bench/quality.py)
  t.warmup_steps = _none(int)     # None: warmup_frac of the run, at most warmup_max steps
  t.warmup_frac = 0.05
  t.warmup_max = 1000
  t.decay = "linear"              # shape of the final decay: 'linear' | 'cosine' | 'constant'
  t.decay_frac = 0.2              # the last fraction of steps decays; constant before
  t.final_lr_frac = 0.0
  t.grad_clip = 1.0
  t.l1_warmup_frac = 0.05         # relu: L1 coefficient ramps 0 -> l1_coeff over this
                                  # fraction of the steps (0: full from the first step)
  t.adam_b1, t.adam_b2, t.adam_eps = 0.9, 0.999, 1e-8
  t.seed = 0                      # model init
  t.data_seed = 0                 # block order, shuffles, eval split, normalisation sample
  t.normalize = True              # scale inputs so E||x||^2 = d
  t.norm_samples = 8192
  t.b_dec_init = "mean"           # 'mean' | 'median' | '' (zeros)
  t.shuffle_mb = _none(float)     # shuffle windows in memory (MB, float32; see data.py),
                                  # shared by the data streams (batches never depend on
                                  # the process count, so neither may the window).
                                  # None: 768 on CPU, 4096 on GPU/TPU hosts, where a
                                  # step is fast enough that re-reads starve it
                                  # (train.default_shuffle_mb); recorded at the first start
  t.shuffle_max_passes = 8        # reads of each block per epoch, at most (data.py)
  t.prefetch = 2                  # batches prepared ahead by the background thread
  t.read_threads = 0              # parallel block reads per process; 0: cpu_count // 2
                                  # (1..8; 1 on a 2-core box, 8 on a TPU/GPU host)
  t.eval_fraction = 0.1           # of prompts held out for evaluation
  t.eval_max_rows = 65_536
  t.eval_batch_size = 4096
  t.eval_every = 500
  t.log_every = 50
  t.checkpoint_every = 500
  t.keep_best = 2                 # best by eval FVU, plus the latest
  t.async_checkpoint = True
  t.dead_tokens = _none(int)      # dead = not fired for this many tokens (AuxK targets);
                                  # None: the run's tokens / 20, at most 10M (see
                                  # default_dead_tokens), so AuxK engages in short runs too
  t.dense_threshold = 0.1         # dense = fires on more than this fraction of tokens
  t.mesh_data = -1                # mesh shape over the devices; -1 = the rest
  t.mesh_model = 1
  t.sharding = "data"             # 'data' (replicated params) | 'latent' (m over 'model')
  t.num_devices = 0               # 0: all devices; n: the first n (tests, debugging)
  t.distributed = False           # join a multi-process job (see musicsae_jax.distributed)
  t.data_streams = 0              # batch = S stream slices; 0: the process count at the
                                  # run's first start (kept on resume, any process count)
  t.checkpoint_dir = ""           # '': <run>/checkpoints; or e.g. gs://bucket/run/ckpt
  t.plots = True
  t.stop_after = 0                # >0: stop early at this step (simulates a crash)
  return t


def analysis() -> ml_collections.ConfigDict:
  """`c.analysis`: feature discovery, selectivity, probes, report (analysis.pipeline)."""
  a = ml_collections.ConfigDict()
  a.run = _none(str)                   # None: the top-level config.run
  a.dataset = _none(str)               # None: the top-level config.dataset
  a.site = _none(str)                  # None: the run's train.site
  a.step = _none(int)                  # None: the best checkpoint, else the latest
  a.label_keys = ("emotion",)          # prompt label keys for selectivity / probes / cosine
  a.probe_sites = ()                   # () = every store site except audio.descriptors
  a.rate_band = (1e-4, 0.25)           # firing-rate band for feature discovery
  a.rank_by = "max"                    # max | mean | rate | mean_active
  a.max_features = 50
  a.top_prompts = 5
  a.top_frames = 5
  a.top_per_label = 5                  # selectivity.json: feature ids per label value
  a.heldout_fraction = 0.3             # prompts per label value held out: select on the rest
  a.null_permutations = 1000           # label shuffles for the max-statistic AUROC null
  a.alpha = 0.05                       # family-wise level for "passes"; BH FDR level
  a.position_alpha = 0.01              # position-feature flag: p of the frame-index null
  a.position_window = 2                # top frames within +-this many frames count as one position
  a.probe_folds = 5                    # needs >= this many prompts per label value
  a.probe_l2 = 1e-3
  a.probe_steps = 100                  # L-BFGS iterations
  a.probe_shuffles = 3                 # shuffled-label controls
  a.cosine_permutations = 1000
  a.cosine_max_prompts = 2000          # the cosine matrix is prompts x prompts
  a.grounding_top = 3
  a.batch_rows = 4096                  # rows per jitted encode call
  a.seed = 0
  a.layer_sae_seeds = 1                # organism localisation: SAEs per layer (init seeds
                                       # train.seed + 0..n-1); >= 2 gives the SAE score an se
  a.browser = browser()                # the feature browser (reports/<run>/browser/)
  a.labelers = ("words", "clap", "llm")  # feature labels in reports/<run>/labels.json; clap
                                       # needs labeling.clap, llm the MUSICSAE_LLM_URL env var
                                       # (each is skipped with one line without them)
  a.labeling = labeling()
  return a


def browser() -> ml_collections.ConfigDict:
  """`c.analysis.browser`: the static feature browser (analysis.browser)."""
  b = ml_collections.ConfigDict()
  b.enabled = True
  b.top_n = 20                         # top prompts per feature page (one per prompt, its peak)
  b.contrast_n = 2                     # low and zero examples each, per page
  b.snippet_s = 2.0                    # audio snippet around each example frame, seconds
  b.audio_quality = 0.7                # OGG/Vorbis compression level 0..1 (1: smallest)
  b.neighbours = 8                     # nearest features by decoder cosine, per page
  b.flag_min_r = 0.3                   # onset / silence flags: |r| at least this ...
  b.null_shifts = 19                   # ... and beyond all of this many circular-shift copies
  return b


def labeling() -> ml_collections.ConfigDict:
  """`c.analysis.labeling`: CLAP zero-shot and LLM labels, detection scoring (labelers/)."""
  b = ml_collections.ConfigDict()
  b.clap = ""                          # local ClapModel dir (save_pretrained) | "tiny" (random,
                                       # wiring only) | "" skip the CLAP labeler
  b.vocabulary = ""                    # a text file, one descriptor a line ('#' comments);
                                       # "": the shipped labelers/vocabulary.txt
  b.template = "{} music"              # the text CLAP embeds for a descriptor or a label
  b.max_features = 50                  # label the first N discovered features
  b.examples = 8                       # activating clips per feature to label from, and as
                                       # many held out (other prompts) for detection
  b.contrast = 8                       # non-activating clips per feature (explain and held out)
  b.random_snippets = 64               # shared random snippets: the chance reference
  b.snippet_seconds = 2.0              # audio cut around each example frame
  b.scan_frames = 256                  # top frames tracked per feature to find example frames
  b.top_words = 5                      # CLAP candidates kept per feature
  b.threads = 0                        # >0: BLAS/OpenMP/torch threads of the CLAP process
                                       # (tiny models only lose from threads); 0: defaults
  b.llm_timeout = 60.0                 # seconds per request
  b.llm_retries = 3                    # on 5xx / timeouts, with exponential backoff
  b.llm_backoff = 1.0                  # first retry delay, seconds
  b.llm_audio = False                  # True: an audio-capable endpoint; the explain request
                                       # also carries each snippet (OpenAI input_audio, WAV)
  b.llm_detection = ("blind",)         # what the LLM scorer sees of each held-out snippet:
                                       # blind (time window + CLAP's closest descriptors: no
                                       # caption, no labels; the reported score, llm_blind) |
                                       # with_captions (+ caption and labels: solvable from text)
  b.seed = 0
  return b
