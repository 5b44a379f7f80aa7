"""A MusicGen model organism: audiocraft's own codec and LM, trained at small size on the
synthesized concept set (bridge/sources/concepts.py), whose labels are exact.

  data.py     clips + label captions ("flute, 120 bpm, e major scale, ...") + the split
  mel.py      a torch mel spectrogram for audiocraft's spectral losses (no torchaudio here)
  codec.py    EnCodec (SEANet + RVQ) trained with audiocraft's losses and Balancer
  lm.py       the MusicGen LM trained on the codec's tokens, conditioned on T5 captions
  build.py    the whole recipe: concepts -> codec -> tokens -> LM -> a MusicGen directory
              that `load_musicgen(dir)` (MusicGen.get_pretrained) loads, + metrics.json
"""
