"""Measures of audio, independent of the activations: acoustic descriptors, CLAP
audio-text scores and embeddings, and the target-concept classifier on descriptors.
Used by extraction (descriptors), steering evaluation, localization and feature labels.

  audio_descriptors.py   per-frame and per-clip acoustic descriptors (librosa)
  clap.py                CLAP audio-text similarity (transformers' ClapModel)
  clap_labels.py         CLAP embeddings for feature labels (`python -m bridge.measures.clap_labels`)
  concept_classifier.py  does the audio sound like the target label? (descriptors only)
"""
