"""Render the ground-truth concept set: `python -m launch.make_concepts --out=DIR`.

MIDI clips with exact labels (tempo, key, mode, chord quality, GM program, note density,
dynamics) through TinySoundFont and a General MIDI soundfont (bridge/sources/concepts.py), written
as an audio-dataset folder: DIR/metadata.jsonl ({id, path, caption, labels} per line),
DIR/audio/<id>.flac, DIR/concepts.json. The default config is configs/concepts.py (3000
clips); `--config=configs/concepts_tiny.py` is the tiny one; override fields with
`--config.concepts.num_clips=200`.
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

from launch import common

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(common.REPO_ROOT, "configs", "concepts.py"),
    "Config file with a `concepts` block (default configs/concepts.py).", lock_config=True)
_OUT = flags.DEFINE_string("out", None, "Output folder (metadata.jsonl, audio/, concepts.json).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Render again into a folder that has a set.")
flags.mark_flags_as_required(["out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from bridge.sources import concepts
  cfg = _CONFIG.value
  if "concepts" not in cfg:
    raise common.UserError("--config: the config has no `concepts` block "
                           "(start from configs/concepts.py)")
  try:
    s = concepts.make_concept_set(cfg.concepts, _OUT.value, overwrite=_OVERWRITE.value,
                                  log=logging.info)
  except concepts.ConceptError as e:
    raise common.UserError(str(e)) from e
  print(f"{s['clips']} clips, {s['bytes'] / 1e6:.1f} MB, {s['seconds']:.1f} s: "
        f"{os.path.join(_OUT.value, 'metadata.jsonl')}")


if __name__ == "__main__":
  common.run(main)
