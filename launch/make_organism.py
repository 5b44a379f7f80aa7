"""Train the model organism: `python -m launch.make_organism --workdir=W`.

A small MusicGen (audiocraft's EnCodec + LM, T5 text conditioning) trained on the
synthesized concept set (rendered into W/concepts if absent); writes W/organism/, a
directory that `--config.model.name=W/organism` loads like real weights, with the codec's
and the LM's held-out metrics in W/organism/organism.json. Default config:
configs/organism.py (about 30 min on 2 CPU cores); configs/organism_tiny.py trains in
seconds. Logic: bridge/organism/.
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

from launch import common

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(common.REPO_ROOT, "configs", "organism.py"),
    "Config file with `concepts` and `organism` blocks (default configs/organism.py).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Workspace root (concepts/, organism/).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg = _CONFIG.value
  if "organism" not in cfg or "concepts" not in cfg:
    raise common.UserError("--config: the config needs `concepts` and `organism` blocks "
                           "(start from configs/organism.py)")
  from bridge.sources import concepts
  from bridge.organism import build, data
  try:
    m = build.make_organism(cfg, _WORKDIR.value, log=logging.info)
  except (data.OrganismError, concepts.ConceptError) as e:
    raise common.UserError(str(e)) from e
  lm, cd = m["lm"]["heldout"], m["codec"]["heldout"]
  print(f"organism: {m['dir']} ({m['seconds']:.0f} s). Codec held out: SI-SNR "
        f"{cd['sisnr_db']:.2f} dB, msspec {cd['msspec']:.3f} (silence {cd['msspec_silence']:.3f}). "
        f"LM held out: token accuracy {lm['true']['token_accuracy']:.3f}, perplexity "
        f"{lm['true']['perplexity']:.1f} (shuffled captions {lm['shuffled']['perplexity']:.1f}, "
        f"uniform {lm['uniform_perplexity']})")


if __name__ == "__main__":
  common.run(main)
