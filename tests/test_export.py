"""Export: folding algebra, exact round trip, directions manifest, export from a real run."""
import json
import os

import numpy as np
import pytest

jax = pytest.importorskip("jax")
from flax import nnx  # noqa: E402

from musicsae_jax import export as ex  # noqa: E402
from musicsae_jax import sae as sae_lib  # noqa: E402

D, M, K = 16, 48, 4
ARCHS = sae_lib.ARCHITECTURES


def random_sae(arch, seed=0, scale_hint=1.0):
  """An SAE with non-trivial biases and thresholds that let some latents fire."""
  cfg = {"architecture": arch, "m": M, "k": K}
  if arch == "matryoshka":
    cfg["matryoshka_prefixes"] = [8, 24, M]
  model = sae_lib.make_sae(cfg, d=D, rngs=nnx.Rngs(seed))
  rng = np.random.default_rng(seed)
  model.b_enc[...] = jax.numpy.asarray(rng.normal(0, 0.1, M), jax.numpy.float32)
  model.b_dec[...] = jax.numpy.asarray(rng.normal(0, 0.5, D), jax.numpy.float32)
  if arch == "jumprelu":
    model.log_threshold[...] = jax.numpy.asarray(np.log(rng.uniform(0.05, 0.6, M)), jax.numpy.float32)
  if arch in ("batchtopk", "matryoshka"):
    model.threshold[...] = jax.numpy.asarray(0.3, jax.numpy.float32)
  return model, cfg


@pytest.mark.parametrize("arch", ARCHS)
def test_roundtrip_exact_and_cfg(tmp_path, arch):
  model, cfg = random_sae(arch)
  params = ex.sae_params(model)
  scale = 0.37
  out = ex.export_sae(params, cfg, site="lm.layer.2", layer=None, d=D, m=M, k=K,
                      architecture=arch, scale=scale, out_dir=str(tmp_path),
                      normalization={"scale": scale, "mean_sq_norm": 12.0, "d": D})
  tensors, c = ex.load_export(out)
  want = ex.fold_params(params, arch, scale)
  assert sorted(tensors) == sorted(want)
  for n in want:
    assert tensors[n].dtype == np.float32 and np.array_equal(tensors[n], want[n]), n
  # Folding: W_* untouched, biases and thresholds / scale.
  np.testing.assert_array_equal(tensors["W_dec"], params["W_dec"])
  np.testing.assert_allclose(tensors["b_dec"], params["b_dec"] / scale, rtol=1e-6)
  if arch == "jumprelu":
    np.testing.assert_allclose(tensors["threshold"], np.exp(params["log_threshold"]) / scale, rtol=1e-6)
  if arch in ("batchtopk", "matryoshka"):
    assert tensors["threshold"].shape == (M,)
    np.testing.assert_allclose(tensors["threshold"], 0.3 / scale, rtol=1e-6)
  assert c["d_in"] == D and c["d_sae"] == M and c["hook_name"] == "transformer.layers.2"
  assert c["musicsae"]["site"] == c["metadata"]["musicsae_site"] == "lm.layer.2"
  assert c["hook_layer"] == 2 and c["normalize_activations"] == "none"
  assert c["architecture"] == ex.SAELENS_ARCH[arch]
  assert c["musicsae"]["architecture"] == arch
  assert c["musicsae"]["normalization"]["folded"] is True
  assert c["musicsae"]["k"] == (None if arch in ("relu", "jumprelu") else K)


def test_folded_forward_matches_training_space():
  """numpy forward of the folded tensors on raw x == (model on x·s) / s."""
  model, _ = random_sae("jumprelu", seed=3)
  s = 2.5
  t = ex.fold_params(ex.sae_params(model), "jumprelu", s)
  x = np.random.default_rng(1).normal(0, 1 / s, (64, D)).astype(np.float32)
  pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
  z = pre * (pre > t["threshold"])
  z_j = np.asarray(model.encode(jax.numpy.asarray(x * s)))
  np.testing.assert_allclose(z, z_j / s, atol=1e-5, rtol=1e-5)
  assert (z > 0).any() and (z == 0).any()


def test_bad_inputs(tmp_path):
  model, _ = random_sae("topk")
  p = ex.sae_params(model)
  with pytest.raises(ex.ExportError, match="scale"):
    ex.fold_params(p, "topk", 0.0)
  with pytest.raises(ex.ExportError, match="unknown"):
    ex.fold_params(p, "gated", 1.0)
  with pytest.raises(ex.ExportError, match="not an SAE export"):
    ex.load_export(str(tmp_path))
  with pytest.raises(ex.ExportError, match="out of range"):
    ex.export_directions(p, [M], None, "lm.layer.1", 1, 1.0, str(tmp_path))


def test_directions(tmp_path):
  model, _ = random_sae("topk")
  p = ex.sae_params(model)
  p["W_dec"] = p["W_dec"] * 3.0                          # not unit: export normalises
  ex.export_directions(p, [5, 1], ["happy", "sad"], "lm.layer.1", None, 4.5, str(tmp_path))
  dirs, man = ex.load_directions(str(tmp_path))
  assert dirs.shape == (2, D)
  np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(dirs[0], p["W_dec"][5] / np.linalg.norm(p["W_dec"][5]), rtol=1e-6)
  assert man["feature_ids"] == [5, 1] and man["labels"] == ["happy", "sad"]
  assert man["layer"] == 1 and man["mean_norm"] == 4.5 and man["site"] == "lm.layer.1"


def test_export_run_from_checkpoint(tmp_path):
  """Train a few steps, then export_run restores the checkpoint and writes exports/<run>/."""
  from configs import synthetic_tiny
  from musicsae_jax import train
  c = synthetic_tiny.get_config()
  c.train.steps = 4
  c.train.eval_every = 2
  c.train.checkpoint_every = 2
  c.train.log_every = 2
  c.train.synthetic.n = 2048
  c.train.batch_size = 256
  c.train.plots = False
  c.train.async_checkpoint = False
  train.train_and_evaluate(c, str(tmp_path))
  out = ex.export_run(str(tmp_path), c.run, feature_ids=[0, 3])
  assert out == os.path.join(str(tmp_path), "exports", c.run)
  tensors, cfg = ex.load_export(out)
  norm = json.load(open(os.path.join(tmp_path, "runs", c.run, "normalization.json")))
  assert cfg["musicsae"]["normalization"]["scale"] == norm["scale"]
  assert cfg["musicsae"]["step"] in (2, 4) and cfg["d_sae"] == 128 and cfg["musicsae"]["k"] == 4
  params, _ = ex.restore_params(os.path.join(str(tmp_path), "runs", c.run), cfg["musicsae"]["step"])
  np.testing.assert_array_equal(tensors["b_enc"], (params["b_enc"] / np.float32(norm["scale"])))
  dirs, man = ex.load_directions(out)
  assert dirs.shape == (2, 32)
  np.testing.assert_allclose(man["mean_norm"], np.sqrt(norm["mean_sq_norm"]))
  assert man["step"] == cfg["musicsae"]["step"] and cfg["musicsae"]["sae_config"]["m"] == 128
  # a bad id fails before anything is written: the previous export stays whole
  before = {f: open(os.path.join(out, f), "rb").read() for f in os.listdir(out)}
  with pytest.raises(ex.ExportError, match=r"feature ids \[999\] out of range \[0, 128\)"):
    ex.export_run(str(tmp_path), c.run, feature_ids=[999])
  assert before == {f: open(os.path.join(out, f), "rb").read() for f in os.listdir(out)}
  # an export without features drops directions that belonged to the previous one
  ex.export_run(str(tmp_path), c.run)
  assert sorted(os.listdir(out)) == ["cfg.json", "sae_weights.safetensors"]
