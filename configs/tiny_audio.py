"""The audio-input demo: the tiny random MusicGen captures synthesized chords (no generation).

    python -m launch.demo --config=configs/tiny_audio.py --workdir=/tmp/musicsae-audio

Clips come from the dataset plugin examples/chord_plugin.py (exact labels: mode, register,
root); each is encoded by the model's own EnCodec and captured in one teacher-forced forward
without text (conditioning "none"): the captions name the labels, so caption conditioning
would let a probe read them from the text instead of the audio. Point `--config.extract.audio.dataset` at your own audio
(folder:<dir>, musiccaps:<dir>, ...; docs/extraction.md "Your own audio").
"""
import os

import ml_collections

from configs import tiny

_PLUGIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "examples", "chord_plugin.py")


def get_config() -> ml_collections.ConfigDict:
  c = tiny.get_config()
  c.dataset = "chords-tiny"
  c.run = "tiny-audio"
  c.extract.source = "audio"
  c.extract.audio.dataset = f"{_PLUGIN}:32"   # 32 clips: 2 modes x 2 registers x 6 roots
  c.extract.audio.conditioning = "none"      # caption | fixed | none
  c.extract.duration = 2.0                    # the window: 100 frames of the clip's start
  c.extract.sites = ("lm.layer.1", "lm.layer.3", "audio.descriptors")  # no text: no t5 sites
  c.train.steps = 500
  c.analysis.label_keys = ("mode", "register")
  return c
