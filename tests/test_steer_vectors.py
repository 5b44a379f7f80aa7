"""Difference-of-means (CAA) steering vectors from the store, against a numpy reference."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from musicsae_jax import export, steer_vectors, store

VALUES = ["calm", "sad", "happy"]


def _store(root, P=12, F=5, D=6):
  rng = np.random.default_rng(0)
  prompts = [{"text": f"p{i}", "labels": {"emotion": VALUES[i % 3]}} for i in range(P)]
  ds = store.create(os.path.join(root, "ds"), prompts=prompts,
                    sites={"lm.layer.2": store.SiteSpec(d=D, chunk_rows=16)})
  pid = np.repeat(np.arange(P), F)
  x = rng.normal(size=(P * F, D)).astype(np.float32)
  x[pid % 3 == 1, 0] += 3.0                                 # "sad" prompts: +3 on axis 0
  index = np.stack([pid, np.tile(np.arange(F), P)], 1).astype(np.int32)
  with ds.writer() as w:
    w.append("lm.layer.2", x, index)
    w.commit(range(P))
  return os.path.join(root, "ds"), x, pid


def test_mean_difference_matches_numpy(tmp_path):
  path, x, pid = _store(tmp_path)
  vecs, values, n, mean_norm = steer_vectors.mean_difference(path, "lm.layer.2", "emotion")
  assert values == sorted(VALUES) and n == [4, 4, 4]
  means = np.stack([x[pid == p].mean(0) for p in range(12)]).astype(np.float64)
  lab = np.array([VALUES[p % 3] for p in range(12)])
  for v, row in zip(values, vecs):
    np.testing.assert_allclose(row, means[lab == v].mean(0) - means[lab != v].mean(0), atol=1e-6)
  assert mean_norm == pytest.approx(np.sqrt((x.astype(np.float64) ** 2).sum(1).mean()), rel=1e-6)
  sad = vecs[values.index("sad")]
  assert np.argmax(np.abs(sad)) == 0 and sad[0] > 2.0        # the planted difference


def test_export_mean_difference_directions_format(tmp_path):
  path, _, _ = _store(tmp_path)
  out = steer_vectors.export_mean_difference(path, "lm.layer.2", "emotion", str(tmp_path / "e"))
  d, man = export.load_directions(out)
  assert man["kind"] == "mean_difference" and man["layer"] == 2
  assert man["labels"] == [f"emotion={v}" for v in sorted(VALUES)]
  np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-6)
  with pytest.raises(export.ExportError, match="2 or more"):
    steer_vectors.mean_difference(path, "lm.layer.2", "no_such_label")


def test_probe_directions_point_at_the_planted_axis(tmp_path):
  path, _, _ = _store(tmp_path)
  vecs, values, n, _ = steer_vectors.probe_directions(path, "lm.layer.2", "emotion", steps=50)
  assert values == sorted(VALUES) and n == [4, 4, 4] and vecs.shape == (3, 6)
  sad = vecs[values.index("sad")]
  assert np.argmax(np.abs(sad)) == 0 and sad[0] > 0           # raises "sad" along axis 0
  np.testing.assert_allclose(vecs.sum(0), 0.0, atol=1e-5)      # centred over classes
  out = steer_vectors.export_mean_difference(path, "lm.layer.2", "emotion",
                                             str(tmp_path / "p"), kind="probe")
  assert export.load_directions(out)[1]["kind"] == "probe"
