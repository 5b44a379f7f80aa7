#!/usr/bin/env bash
# Create .venv (if missing) and install everything the project needs. Idempotent:
# a second run only checks that the install is complete.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.musicsae-installed
HASH=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
echo "[setup] installing musicsae-jax and its dependencies into .venv (about a minute)" >&2
pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
pip install -q -e ".[audiocraft-runtime,test,concepts]" 2>&1 | grep -vE '^WARNING: Location|^ +\*|^ *!!|^ *$|SetuptoolsDeprecationWarning|wheel_obj|License|license|Please consider|See https|By 20' || true
# audiocraft pins torch==2.1 / numpy<2: install it alone, without its pins.
pip install -q --no-deps audiocraft==1.3.0 2>&1 | grep -v '^WARNING: Location' || true
# The concept set's synthesizer, without pyaudio (live playback only; needs portaudio headers).
pip install -q --no-deps tinysoundfont==0.3.7 2>&1 | grep -v '^WARNING: Location' || true
# audiocraft is only found here, not imported: importing it needs bridge/models/audiocraft_musicgen.py's shim.
python -c "import importlib.util as u, musicsae_jax, jax, flax, optax, orbax.checkpoint, tensorstore, torch, pretty_midi, tinysoundfont; assert u.find_spec('audiocraft'), 'audiocraft missing'" \
  || { echo "[setup] install incomplete: the import above failed" >&2; exit 1; }
echo "$HASH" > "$STAMP"
echo "[setup] done" >&2
