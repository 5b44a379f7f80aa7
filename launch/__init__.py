"""Command-line stages (`python -m launch.<stage> --config=configs/<file>.py`): absl flags
over ml_collections configs. Each stage is a thin script over bridge/ (torch: extract,
steer, localize, make_concepts, make_organism) or musicsae_jax/ (JAX: train, sweep,
analyze, export, ...); common.py holds what every script shares."""
