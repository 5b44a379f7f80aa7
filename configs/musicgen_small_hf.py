"""Real MusicGen-small through Hugging Face transformers (`model.backend = "transformers"`).

The experiment of configs/musicgen_small.py (layers 6, 12, 18 + T5 sites, BatchTopK on
lm.layer.12) run on `MusicgenForConditionalGeneration` instead of audiocraft. Its own
dataset and run names: the two backends' activations differ on padded prompts
(transformers masks padded text in cross-attention; docs/extraction.md "Which backend?"), so their
stores must not mix. Weights: the transformers layout of facebook/musicgen-small
(config.json, model.safetensors, tokenizer files) from the hub cache, or a local
save_pretrained directory via --config.model.name=/path/to/dir.
"""
from configs import _musicgen


def get_config():
  c = _musicgen.musicgen_config("small")
  c.model.backend = "transformers"
  c.model.dtype = "float16"            # transformers loads float32 unless told (audiocraft:
                                       # fp16 LM on CUDA by itself)
  c.dataset = "emotions-musicgen-small-hf"
  c.run = "musicgen-small-hf"
  return c
