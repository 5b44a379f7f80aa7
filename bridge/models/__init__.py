"""MusicGen and the SAE as torch models: loading (audiocraft or transformers), the one
backend interface capture and steering use, capture-site names, checkpoint conversion,
and an exported SAE as a torch module.

  backends.py               one interface over both implementations (`adapt`, `model_info`)
  audiocraft_musicgen.py    audiocraft MusicGen: load, save, a tiny random one offline
  transformers_musicgen.py  transformers MusicgenForConditionalGeneration: load, tiny
  convert.py                audiocraft -> transformers weights (same network)
  capture_sites.py          capture-site names and the module behind each
  sae_torch.py              an exported SAE as a torch module (raw activations)
"""
