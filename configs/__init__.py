"""Experiment configs (ml_collections), one file per experiment: `--config=configs/<file>.py`.
Every file starts from base.py (every field with the library's default), so any field can
be overridden on the command line. Files starting with `_` are shared helpers, not configs."""
