"""Test set-up: 8 simulated CPU devices for every test, set before JAX starts."""
import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
