"""The tiny ground-truth concept set (tests, demo): 48 clips of 2 s at 16 kHz.

`python -m launch.make_concepts --config=configs/concepts_tiny.py --out=DIR` renders it;
every field of `c.concepts` (bridge/config_defaults.py) can be overridden, e.g.
`--config.concepts.num_clips=96`. `c.analysis.label_keys` names its concepts, so the
analysis (probes, selectivity, the cross-layer table) runs on a store captured from it.
"""
import ml_collections

from configs import concepts


def get_config() -> ml_collections.ConfigDict:
  c = concepts.get_config()
  c.dataset = "concepts-tiny"
  c.run = "concepts-tiny"
  c.concepts.num_clips = 48
  c.concepts.duration = 2.0
  c.concepts.sample_rate = 16000       # the tiny MusicGen's rate
  c.concepts.tempos = (60, 120)
  c.concepts.tonics = ("C", "E", "G#")
  c.concepts.programs = (0, 73)        # piano, flute
  c.concepts.densities = (1, 2)
  c.concepts.dynamics = ("pp", "ff")
  return c
