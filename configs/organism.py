"""The model organism: a small MusicGen trained on the concept set, whose labels
are exact, and the chain (extract -> SAE -> ground-truth scores) validated against it.

    python -m launch.make_organism --config=configs/organism.py --workdir=W   # ~30 min, 2 cores
    make organism                                                             # the whole chain

c.concepts: the clips (16 kHz, 2 s: the organism's rate and length); c.organism: sizes and
training (bridge/organism/config_defaults.py); the extract/train/analysis blocks run the existing
stages on the organism (`model.name` and `extract.audio.dataset` are set from the workdir
by `launch.organism` / `make organism`).
"""
import ml_collections

from bridge.organism import config_defaults as organism_defaults
from configs import concepts


def set_clip_seconds(c: ml_collections.ConfigDict, seconds: float) -> None:
  """The rendered clips' length and the capture window: one number, so they cannot disagree."""
  c.concepts.duration = seconds
  c.extract.duration = seconds


def get_config() -> ml_collections.ConfigDict:
  c = concepts.get_config()
  c.dataset = "organism"
  c.run = "organism"
  c.concepts.num_clips = 2400           # 2040 for codec + LM (204 of them LM validation)
  set_clip_seconds(c, 2.0)
  c.concepts.sample_rate = 16000
  c.concepts.tempos = (60, 90, 120, 150)
  c.concepts.tonics = ("C", "D", "E", "F#", "G#", "A#")
  c.concepts.programs = (0, 19, 40, 73)     # piano, church organ, violin, flute
  c.concepts.densities = (1, 2, 4)
  c.concepts.dynamics = ("pp", "mf", "ff")
  c.organism = organism_defaults.organism()
  c.organism_steer = organism_defaults.organism_steer()

  # --- the chain on the organism: capture the concept clips (no text), train an SAE -------
  c.model.name = ""                         # set to <workdir>/organism by launch.organism
  c.extract.source = "audio"
  c.extract.audio.conditioning = "none"     # labels reach the LM only through the audio
  c.extract.sites = ("lm.layer.0", "lm.layer.1", "lm.layer.2", "lm.layer.3")
  c.extract.torch_threads = 0
  c.sae.architecture = "topk"
  c.sae.expansion = 8
  c.sae.k = 16
  c.sae.k_aux = 32
  c.train.source = "store"
  c.train.site = "lm.layer.2"
  c.train.steps = 2000
  c.train.batch_size = 512
  c.train.lr = 1e-3
  c.train.warmup_steps = 50
  c.train.eval_fraction = 0.15
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.train.dead_tokens = 100_000
  # --- localization (launch.localize --what=patching): clip pairs one label apart, no text;
  # the self-attention rows say which block writes the difference (pairs_from: the workdir)
  c.localize.concepts = ()
  c.localize.audio_concepts = c.analysis.label_keys
  c.analysis.layer_sae_seeds = 3       # the SAE layer scores' standard error across init seeds
  c.localize.patch_sites = ("attn",)
  c.localize.patch_sae = False
  c.localize.pairs = 8
  return c
