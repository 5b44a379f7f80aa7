"""Real MusicGen-medium (facebook/musicgen-medium: 48 layers, d=1536) on the emotion set.

Extracts layers 12, 24, 36 + T5 sites (CUDA, bf16, 10 s per prompt) and trains a BatchTopK
SAE (16x, k=32) on lm.layer.24. Shared settings: configs/_musicgen.py.
"""
from configs import _musicgen


def get_config():
  return _musicgen.musicgen_config("medium")
