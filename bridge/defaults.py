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
  m.backend = "audiocraft"             # "audiocraft" | "transformers" (docs/extraction.md: Which backend?)
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
  e.source = "prompts"                 # "prompts" (generate) | "audio" (encode clips, capture)
  e.audio = audio()
  return e


def audio() -> ml_collections.ConfigDict:
  """`c.extract.audio`: clips from a dataset plugin (bridge.extract_audio), source=audio."""
  a = ml_collections.ConfigDict()
  a.dataset = ""                       # folder:<dir> | musiccaps:<dir> | song_describer:<dir>
                                       # | mtg_jamendo:<tsv> | fma:<dir> | <plugin.py>[:<arg>]
  a.audio_root = ""                    # where a built-in finds the audio ("" = its layout)
  a.max_items = 0                      # first N items (0 = all)
  a.missing = "error"                  # error | skip: items whose audio file is absent
  a.conditioning = "caption"           # caption | fixed (a.text) | none (unconditional)
  a.text = ""                          # the text when conditioning = fixed
  a.window = "crop"                    # crop: one window of extract.duration per clip at
                                       # its offset | segment: consecutive windows
  a.offset_s = 0.0                     # added to every clip's own offset
  a.max_segments = 0                   # window=segment: at most N per clip (0 = all)
  a.stems_dir = ""                     # a separator's output (<stems_dir>/<name>/<stem>.wav,
  a.stem = ""                          # Demucs layout), e.g. stem = no_vocals
  return a


def steer() -> ml_collections.ConfigDict:
  """`c.steer`: steering with exported directions (bridge.steering.run_steering)."""
  s = ml_collections.ConfigDict()
  s.prompts = ()                       # explicit prompt texts; () = built-in emotion prompts
  s.num_prompts = 16                   # first N built-in prompts (below 10: a warning; the
                                       # t interval and rank p rest on few clips)
  s.strengths = (0.0, 2.0, 4.0, 8.0)   # alpha: x the site's mean norm when relative,
                                       # else raw units of the site (see docs/steering.md, "Units")
  s.relative = True
  s.features = config_dict.placeholder(tuple)   # None: every exported direction
  s.half = "cond"                      # cond | uncond | both halves of the CFG batch
  s.steps = config_dict.placeholder(tuple)      # (start, stop) decoding passes; None: all
  s.duration = 2.0
  s.seed = 0
  s.method = "add"                     # add: alpha x direction; scale: feature x alpha through
                                       # the SAE (1 = identity, 0 = ablate, <0 flips); set:
                                       # feature = alpha (raw latent units); both keep the
                                       # SAE's error term (clamp_features); several methods,
                                       # comma-separated ("add,scale"), run side by side on
                                       # one baseline into one steer.json
  # Each method's strengths and number of controls (None: steer.strengths, steer.controls),
  # e.g. --config.steer.per_method.scale.strengths="(1.0,0.0)".
  s.per_method = ml_collections.ConfigDict({
      m: {"strengths": config_dict.placeholder(tuple), "controls": config_dict.placeholder(int)}
      for m in ("add", "scale", "set", "transplant")})
  s.transplant_from = ""               # method=transplant: the source prompt whose feature
                                       # pattern over time (x alpha) is imposed
  s.schedule = ""                      # "" every step | "every:N" | "ramp:N" (inside steps)
  s.controls = 32                      # controls per kind and strength (the null; rank p has
                                       # floor 1/(1+n): n >= 19 to reach p <= 0.05)
  s.control_kinds = ("decoder", "gaussian")   # add's controls, each `controls` strong:
                                       # decoder (other rows of the SAE; covariance without
                                       # one) | covariance (baseline activations) | gaussian
  s.significance = 0.05                # the level of the per-feature verdict
  s.concept_per_value = 3              # unsteered reference clips per label value for the
                                       # concept classifier on audio descriptors (0: skip)
  s.clap = ""                          # local ClapModel dir (save_pretrained) | "tiny" (random,
                                       # wiring only) | "" skip the CLAP measures
  s.save_audio = True
  return s


def concepts() -> ml_collections.ConfigDict:
  """`c.concepts`: the ground-truth concept set rendered from MIDI (launch.make_concepts,
  bridge.concepts). The default is the full set (3000 clips); configs/concepts_tiny.py is
  the one for tests and the demo."""
  c = ml_collections.ConfigDict()
  c.num_clips = 3000
  c.seed = 0
  c.duration = 4.0                     # seconds per clip
  c.sample_rate = 32000                # MusicGen's rate (capture resamples anyway)
  c.format = "flac"                    # flac | wav (16-bit PCM either way)
  c.families = ("chord", "scale")      # triads struck on the grid | scales up and down
  c.tempos = (60, 80, 100, 120, 140, 160)
  c.tonics = (                       # label "key": the chord root or scale tonic
      "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
  c.modes = ("major", "minor")         # scale clips (natural minor)
  c.chords = ("major", "minor", "diminished", "augmented")   # chord clips
  # GM programs: piano, vibraphone, church organ, nylon guitar, violin, strings, trumpet, flute
  c.programs = (0, 11, 19, 24, 40, 48, 56, 73)
  c.densities = (1, 2, 4)              # onsets per beat
  c.dynamics = ("pp", "mf", "ff")      # velocity 32 / 72 / 112
  c.base_pitch = 60                    # MIDI pitch of root C (C4); roots span C4..B4
  c.legato = 0.9                       # note length / onset spacing
  c.captions = True                    # "" captions when False (unconditional capture)
  c.soundfont = ""                     # "" = pretty_midi's TimGM6mb.sf2 (General MIDI)
  c.gain_db = -6.0                     # synthesizer gain (dB): the loudest default clips peak
                                       # near 0.6; no per-clip normalising (dynamics stay absolute)
  c.write_midi = False                 # also write audio/<id>.mid
  return c


def localize() -> ml_collections.ConfigDict:
  """`c.localize`: where a concept lives (launch.localize: fidelity, ablation, patching)."""
  lo = ml_collections.ConfigDict()
  lo.prompts = ()                      # texts for fidelity and ablation; () = the last
  lo.num_prompts = 4                   #   num_prompts built-in emotion prompts (held out)
  lo.duration = 2.0                    # seconds generated per prompt (the tokens scored)
  lo.seed = 0
  lo.cfg_coef = 3.0                    # guidance of the scored distribution (1 = cond only)
  lo.halves = ("cond", "both")         # fidelity: CFG halves the SAE output is spliced into
  lo.layers = ()                       # ablation / patching layers; () = every layer
  lo.ablation_modes = ("zero", "mean", "resample")
  lo.ablation_generate = ("zero", "mean")   # modes also sampled to measure audio change
  lo.concepts = ("emotion:happy/sad", "emotion:calm/energetic", "instrument:piano/drums",
                 "genre:jazz/rock")    # KEY:A/B minimal pairs for patching
  lo.pairs = 4                         # prompt pairs per concept
  lo.patch_sites = ("resid", "cross_attn")   # per layer: resid (lm.layer.<i>), attn, cross_attn
  lo.patch_half = "cond"               # cond | uncond | both
  lo.patch_steps = config_dict.placeholder(tuple)   # (start, stop) positions; None: all
  lo.patch_measure = config_dict.placeholder(tuple)  # (start, stop) frames scored; None: all
  lo.patch_sae = True                  # also patch only the exported SAE's features
  lo.patch_features = ()               #   those feature ids only; () = all (x̂(a) − x̂(x))
  lo.patch_generate = False            # also patch during sampling, scored on the audio by
  lo.patch_references = 4              #   a concept classifier on this many clips per value
  lo.pairs_from = ""                   # audio pairs too: a labelled dataset (folder:DIR, as
  lo.audio_concepts = ()               #   extract.audio.dataset) and its labels (tempo, key,
                                       #   or LABEL:A/B); `pairs` clip pairs per label
  lo.audio_conditioning = "none"       # audio pairs' text: none | fixed (audio_text) | caption
  lo.audio_text = ""
  return lo
