"""Orbax wrapper: round trip, best-N + latest retention, restore onto another mesh."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from musicsae_jax import checkpoint as ckpt_lib
from musicsae_jax import mesh as mesh_lib


def _state(m=16, d=4):
  params = {"W_enc": jnp.arange(d * m, dtype=jnp.float32).reshape(d, m),
            "W_dec": jnp.arange(m * d, dtype=jnp.float32).reshape(m, d) / 7,
            "b_enc": jnp.linspace(0, 1, m), "b_dec": jnp.ones(d)}
  opt = optax.adam(1e-3).init(params)                  # namedtuples inside
  return {"params": params, "opt": opt, "since_fired": jnp.arange(m, dtype=jnp.int32),
          "step": jnp.array(3, jnp.int32)}


def _placed(mesh, mode):
  s = _state()
  sh = mesh_lib.state_shardings(s, mesh, mode, m=16)
  return jax.device_put(s, sh), sh


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_restore_8_devices_to_1_and_back(tmp_path):
  mesh8, mesh1 = mesh_lib.make_mesh(2, 4), mesh_lib.make_mesh(devices=jax.devices()[:1])
  state8, _ = _placed(mesh8, "latent")
  ck = ckpt_lib.Checkpointer(str(tmp_path / "a"))
  ck.save(3, state8, eval_fvu=0.5)
  ck.wait_until_finished()
  like1, sh1 = _placed(mesh1, "data")
  got1 = ck.restore(None, ckpt_lib.abstract_like(like1, sh1))
  ck.close()
  _assert_same(got1, state8)
  assert got1["params"]["W_dec"].sharding.mesh.devices.size == 1
  assert type(got1["opt"][0]).__name__ == "ScaleByAdamState"      # structure rebuilt

  ck1 = ckpt_lib.Checkpointer(str(tmp_path / "b"))           # 1 -> 8 (latent-sharded)
  ck1.save(3, got1, eval_fvu=0.5)
  ck1.wait_until_finished()
  like8, sh8 = _placed(mesh8, "latent")
  got8 = ck1.restore(3, ckpt_lib.abstract_like(like8, sh8))
  ck1.close()
  _assert_same(got8, state8)
  w = got8["params"]["W_dec"]
  assert w.sharding.spec == jax.sharding.PartitionSpec("model", None)
  assert w.addressable_shards[0].data.shape == (4, 4)


def test_keeps_best_n_by_fvu_plus_latest(tmp_path):
  state, _ = _placed(mesh_lib.make_mesh(), "data")
  ck = ckpt_lib.Checkpointer(str(tmp_path), keep_best=2)
  for step, fvu in [(1, 0.9), (2, 0.2), (3, 0.5), (4, 0.1), (5, 0.7)]:
    ck.save(step, state, eval_fvu=fvu)
    ck.wait_until_finished()
  assert sorted(ck.all_steps()) == [2, 4, 5]     # best two (0.1, 0.2) + the latest
  assert ck.best_step() == 4 and ck.latest_step() == 5
  ck.close()


def test_best_survives_reopening_and_resumes_keep_the_best(tmp_path):
  """The metric is on disk: a reopened manager knows the best step, and saves after a
  resume (worse FVU) do not delete the earlier best ones."""
  state, _ = _placed(mesh_lib.make_mesh(), "data")
  ck = ckpt_lib.Checkpointer(str(tmp_path), keep_best=2)
  for step, fvu in [(1, 0.9), (2, 0.2), (3, 0.1)]:
    ck.save(step, state, eval_fvu=fvu)
  ck.close()
  ck = ckpt_lib.Checkpointer(str(tmp_path), keep_best=2)      # as load_run / export do
  assert ck.best_step() == 3 and ck.latest_step() == 3
  for step, fvu in [(4, 0.8), (5, 0.7)]:                      # the resumed run
    ck.save(step, state, eval_fvu=fvu)
  ck.close()
  ck = ckpt_lib.Checkpointer(str(tmp_path), keep_best=2)
  assert sorted(ck.all_steps()) == [2, 3, 5] and ck.best_step() == 3
  ck.close()
