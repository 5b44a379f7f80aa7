"""Print a resolved experiment config: `python -m launch.config --config=configs/tiny.py`.

Every field every stage reads, after the file and the `--config.a.b=v` overrides, one
per line as `section.field = value`: each line is also a valid override
(`--config.section.field=value`). `--json` prints the nested dict instead.
"""
import json

from absl import app, flags

from launch import common

_CONFIG = common.define_config()
_JSON = flags.DEFINE_bool("json", False, "Print JSON instead of one field per line.")
flags.mark_flags_as_required(["config"])


def flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
  """[(dotted.name, value)] for every leaf of a nested dict, in the config's order."""
  out = []
  for k, v in d.items():
    if isinstance(v, dict):
      out += flat(v, f"{prefix}{k}.")
    else:
      out.append((f"{prefix}{k}", v))
  return out


def main(argv):
  if len(argv) > 1:
    raise common.UserError(f"unexpected arguments: {argv[1:]}")
  d = _CONFIG.value.to_dict()
  if _JSON.value:
    print(json.dumps(d, indent=2))
    return
  for name, value in flat(d):
    print(f"{name} = {value!r}")


if __name__ == "__main__":
  common.run(main)
