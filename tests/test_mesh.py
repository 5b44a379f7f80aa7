"""Mesh construction, partition specs by parameter name, bad shapes."""
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from musicsae_jax import mesh as mesh_lib


def test_make_mesh_shapes():
  assert len(jax.devices()) == 8
  assert dict(mesh_lib.make_mesh().shape) == {"data": 8, "model": 1}
  assert dict(mesh_lib.make_mesh(2, 4).shape) == {"data": 2, "model": 4}
  assert dict(mesh_lib.make_mesh(data=2, model=-1).shape) == {"data": 2, "model": 4}
  one = mesh_lib.make_mesh(devices=jax.devices()[:1])
  assert dict(one.shape) == {"data": 1, "model": 1}


@pytest.mark.parametrize("data,model", [(3, 1), (-1, 3), (4, 4), (-1, -1), (0, 1)])
def test_mesh_shape_must_divide_devices(data, model):
  with pytest.raises(mesh_lib.MeshError, match="device"):
    mesh_lib.make_mesh(data, model)


def _state(d=4, m=16):
  return {"params": {"W_enc": jnp.zeros((d, m)), "W_dec": jnp.zeros((m, d)),
                     "b_enc": jnp.zeros(m), "b_dec": jnp.zeros(d),
                     "log_threshold": jnp.zeros(m)},
          "opt": ({"mu": {"W_dec": jnp.zeros((m, d))}},),
          "since_fired": jnp.zeros(m, jnp.int32), "step": jnp.zeros((), jnp.int32)}


def test_latent_specs_by_name():
  mesh = mesh_lib.make_mesh(2, 4)
  sh = mesh_lib.state_shardings(_state(), mesh, "latent", m=16)
  p = sh["params"]
  assert p["W_enc"].spec == P(None, "model") and p["W_dec"].spec == P("model", None)
  assert p["b_enc"].spec == P("model") and p["b_dec"].spec == P()
  assert p["log_threshold"].spec == P("model")            # per-latent extra
  assert sh["opt"][0]["mu"]["W_dec"].spec == P("model", None)   # Adam mirrors params
  assert sh["since_fired"].spec == P("model") and sh["step"].spec == P()
  placed = mesh_lib.shard_state(_state(), mesh, "latent", m=16)
  assert placed["params"]["W_dec"].addressable_shards[0].data.shape == (4, 4)


def test_data_mode_replicates():
  sh = mesh_lib.state_shardings(_state(), mesh_lib.make_mesh(), "data", m=16)
  assert all(s.spec == P() for s in jax.tree.leaves(sh))
  assert mesh_lib.batch_spec() == P("data", None)


def test_bad_mode_and_indivisible_latents():
  with pytest.raises(ValueError, match="train.sharding"):
    mesh_lib.state_shardings(_state(), mesh_lib.make_mesh(), "model", m=16)
  with pytest.raises(mesh_lib.MeshError, match="m=12"):
    mesh_lib.state_shardings(_state(m=12), mesh_lib.make_mesh(1, 8), "latent", m=12)
