"""Every option of the torch-side stages (`c.model`, `c.extract`, `c.steer`) with its default.

torch-free on purpose: config files start from these (through `configs/base.py`) so every
field can be overridden from the command line (`--config.steer.features=3,7`) even when
the file does not name it, and the JAX stages load the same files without torch.
"""
import ml_collections
from ml_collections import config_dict


def model() -> ml_collections.ConfigDict:
  """`c.model`: which MusicGen (bridge.extract.build_model)."""
  m = ml_collections.ConfigDict()
  m.name = "tiny"                      # "tiny" | "facebook/musicgen-small" | a local dir
  m.backend = "audiocraft"             # "audiocraft" | "transformers" (README: Which backend?)
  m.device = "cpu"
  m.dtype = ""                         # "" = audiocraft's choice (fp16 LM on CUDA)
  m.seed = 0                           # the tiny model's weights come from this seed
  m.tiny = ml_collections.ConfigDict(dict(   # sizes of the tiny random MusicGen
      dim=64, num_layers=4, num_heads=4, card=256, n_q=4, t5_dim=32, t5_layers=2,
      sample_rate=16000, hop=320))     # 50 frames/s
  return m


def extract() -> ml_collections.ConfigDict:
  """`c.extract`: prompts -> generation with capture -> store (bridge.extract)."""
  e = ml_collections.ConfigDict()
  e.prompts = "emotions"               # "emotions" | path to .txt / .jsonl / .csv
  e.per_label = 0                      # first N prompts per label value (0 = all)
  e.label_key = "emotion"
  e.max_prompts = 0                    # 0 = no cap
  e.sites = ("lm.layer.1", "t5.pooled")
  e.duration = 10.0                    # seconds per prompt (50 frames/s)
  e.batch_size = 8                     # part of the data's identity (see bridge/extract.py)
  e.seed = 0
  e.use_sampling = True
  e.top_k = 250                        # must not exceed the codebook size
  e.top_p = 0.0
  e.temperature = 1.0
  e.cfg_coef = 3.0
  e.two_step_cfg = False
  e.keep = "cond"                      # "cond" | "both" (adds lm.layer.<i>.uncond sites)
  e.capture = "hooks"                  # "hooks" | "teacher_forced" (faster for many layers)
  e.dtype = "float32"                  # stored dtype of model sites: float32 | bfloat16
  e.codec = "zstd"                     # zstd | blosc | none (none: faster reads, more disk)
  e.save_audio = False                 # activations/<dataset>/audio/<prompt_id>.wav
  e.flush_seconds = 0.0                # 0: publish every batch (resume loses nothing)
  e.torch_threads = 0                  # 0 = torch default
  return e


def steer() -> ml_collections.ConfigDict:
  """`c.steer`: steering with exported directions (bridge.steering.run_steering)."""
  s = ml_collections.ConfigDict()
  s.prompts = ()                       # explicit prompt texts; () = built-in emotion prompts
  s.num_prompts = 4                    # first N built-in prompts
  s.strengths = (0.0, 2.0, 4.0, 8.0)   # alpha: x the site's mean norm when relative,
                                       # else raw units of the site (see README, Units)
  s.relative = True
  s.features = config_dict.placeholder(tuple)   # None: every exported direction
  s.half = "cond"                      # cond | uncond | both halves of the CFG batch
  s.steps = config_dict.placeholder(tuple)      # (start, stop) decoding passes; None: all
  s.duration = 2.0
  s.seed = 0
  s.method = "add"                     # add: alpha x direction; scale: feature x alpha through
                                       # the SAE (1 = identity, 0 = ablate, <0 flips); set:
                                       # feature = alpha (raw latent units); both keep the
                                       # SAE's error term (clamp_features)
  s.transplant_from = ""               # method=transplant: the source prompt whose feature
                                       # pattern over time (x alpha) is imposed
  s.schedule = ""                      # "" every step | "every:N" | "ramp:N" (inside steps)
  s.controls = 8                       # random directions of matched norm (the null band)
  s.concept_per_value = 3              # unsteered reference clips per label value for the
                                       # concept classifier on audio descriptors (0: skip)
  s.clap = ""                          # local ClapModel dir (save_pretrained) | "tiny" (random,
                                       # wiring only) | "" skip the CLAP measures
  s.save_audio = True
  return s
