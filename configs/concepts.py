"""The ground-truth concept set (bridge/sources/concepts.py): 3000 clips of 4 s at 32 kHz, every
concept value balanced. `python -m launch.make_concepts --out=DIR` renders it (this file is
the default `--config`); override any field, e.g. `--config.concepts.num_clips=6000`.
`c.analysis.label_keys` names the concepts for the probes on a store captured from it.
"""
import ml_collections

from bridge import config_defaults as bridge_defaults
from bridge.sources.concepts import LABEL_KEYS
from configs import base


def get_config() -> ml_collections.ConfigDict:
  c = base.get_config()
  c.dataset = "concepts"
  c.run = "concepts"
  c.concepts = bridge_defaults.concepts()
  c.analysis.label_keys = LABEL_KEYS
  return c
