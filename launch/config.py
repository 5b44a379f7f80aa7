"""Print a resolved experiment config: `python -m launch.config --config=configs/tiny.py`.

Every field every stage reads, after the file and the `--config.a.b=v` overrides, one
per line as `section.field = value`: each line is also a valid override
(`--config.section.field=value`). `--json` prints the nested dict instead.

Values a stage would refuse (an unknown architecture, `train.lr=-1`, `k >= m`) are refused
here too, with the stage's own message and exit status 2. Checks that depend on the
activations' width use `sae.d`, else the LM width the model config names (`model.tiny.dim`,
or MusicGen small/medium/large's); the trainer checks again at the store's width.
Loads neither JAX nor torch.
"""
import json

from absl import app, flags

from launch import common
from musicsae_jax import runs, sae_config

_CONFIG = common.define_config()
_JSON = flags.DEFINE_bool("json", False, "Print JSON instead of one field per line.")
flags.mark_flags_as_required(["config"])

# d_model of the published MusicGen sizes, for checks that depend on the width.
MUSICGEN_D = {"small": 1024, "medium": 1536, "large": 2048}


def flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
  """[(dotted.name, value)] for every leaf of a nested dict, in the config's order."""
  out = []
  for k, v in d.items():
    if isinstance(v, dict):
      out += flat(v, f"{prefix}{k}.")
    else:
      out.append((f"{prefix}{k}", v))
  return out


def width(cfg) -> tuple[int | None, str]:
  """The activations' width the config implies, and where it came from (None: unknown)."""
  if cfg.sae.d:
    return int(cfg.sae.d), "sae.d"
  if cfg.model.name == "tiny":
    return int(cfg.model.tiny.dim), "model.tiny.dim"
  for size, d in MUSICGEN_D.items():
    if f"musicgen-{size}" in str(cfg.model.name):
      return d, f"{cfg.model.name}'s d_model"
  return None, ""


def problems(cfg) -> list[str]:
  """What the training stage would refuse in `cfg`, one message per section."""
  out = []
  d, source = width(cfg)
  try:            # an unknown width: large enough that only width-free checks can fail
    sae_config.resolve_config({k: v for k, v in cfg.sae.items() if k != "d"}, d or 1 << 20)
  except (ValueError, TypeError) as e:
    out.append(f"{e} (at d={d}, {source})" if d and "m=" in str(e) else str(e))
  try:
    runs.validate_train_config(cfg.train)
  except (ValueError, TypeError) as e:
    out.append(str(e))
  return out


def main(argv):
  if len(argv) > 1:
    raise common.UserError(f"unexpected arguments: {argv[1:]}")
  cfg = _CONFIG.value
  bad = problems(cfg)
  if bad:
    raise common.UserError("; ".join(bad))
  d = cfg.to_dict()
  if _JSON.value:
    print(json.dumps(d, indent=2))
    return
  for name, value in flat(d):
    print(f"{name} = {value!r}")


if __name__ == "__main__":
  common.run(main)
