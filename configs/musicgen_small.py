"""Real MusicGen-small (facebook/musicgen-small: 24 layers, d=1024) on the emotion set.

Extracts layers 6, 12, 18 + T5 sites (CUDA, bf16, 10 s per prompt) and trains a BatchTopK
SAE (16x, k=32) on lm.layer.12. Shared settings: configs/_musicgen.py.
"""
from configs import _musicgen


def get_config():
  return _musicgen.musicgen_config("small")
