"""Streamed feature statistics, selectivity/AUROC, cosine similarity and discovery against
independent references (numpy, scikit-learn) on small synthetic stores with known answers."""
import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from sklearn.metrics import roc_auc_score

from musicsae_jax import sae as sae_lib, store
from musicsae_jax.analysis import labels as lab, stats
from tests import numerics

EMOTIONS = ["calm", "energetic", "happy", "sad"]


def _store(tmp_path, n_prompts=16, frames=12, d=8, chunk_rows=32, seed=0):
  """Prompts with emotion labels; lm.layer.0 rows; aligned audio descriptors.

  Rows are written out of prompt order in two appends so per-prompt aggregation cannot
  rely on contiguity; blocks (32 rows) split prompts.
  """
  rng = np.random.default_rng(seed)
  prompts = [{"text": f"a {EMOTIONS[i % 4]} tune number {i}", "labels": {"emotion": EMOTIONS[i % 4]}}
             for i in range(n_prompts)]
  ds = store.create(str(tmp_path / "ds"), sites={
      "lm.layer.0": store.SiteSpec(d=d, chunk_rows=chunk_rows),
      "audio.descriptors": store.SiteSpec(d=3, chunk_rows=64)}, prompts=prompts)
  pid = np.repeat(np.arange(n_prompts), frames)
  fr = np.tile(np.arange(frames), n_prompts)
  order = np.concatenate([np.nonzero(pid % 2 == 1)[0], np.nonzero(pid % 2 == 0)[0]])
  index = np.stack([pid, fr], 1)[order].astype(np.int32)
  x = rng.normal(size=(len(order), d)).astype(np.float32)
  a = np.stack([x[:, 0] * 2 + rng.normal(size=len(x)) * 0.1, rng.normal(size=len(x)),
                np.ones(len(x))], 1).astype(np.float32)     # col 2 constant -> nan r
  with ds.writer() as w:
    h = len(x) // 2
    for s in (slice(0, h), slice(h, None)):
      w.append("lm.layer.0", x[s], index[s])
      w.append("audio.descriptors", a[s], index[s])
    w.commit(list(range(n_prompts)))
  return store.open_dataset(str(tmp_path / "ds")), x, a, index


def test_streaming_equals_in_memory(tmp_path):
  ds, x, a, index = _store(tmp_path)
  site = ds.site("lm.layer.0")
  assert site.num_blocks > 3
  model = sae_lib.make_sae({"architecture": "topk", "k": 3, "m": 24}, d=8, rngs=nnx.Rngs(1))
  scale = 0.7
  enc = stats.Encoder(model, scale=scale, batch_rows=16)     # sub-batches + padding
  st = stats.feature_stats(site, enc, len(ds.prompts), top_n=4, descriptors=ds.site("audio.descriptors"))
  xs = x * np.float32(scale)
  z = np.asarray(model.encode(jnp.asarray(xs))) / np.float32(scale)  # raw units
  pid = index[:, 0]
  # The stream encodes 16-row padded batches, the reference all rows at once: XLA may
  # tile (and so sum) the two matmuls differently. Values then agree within the f32
  # bound for two summation orders (tests/numerics.py), and the seeded data has no TopK
  # near-tie under that bound, so the supports, hence the firing counts, are equal.
  prm = {n: np.asarray(getattr(model, n)[...], np.float64) for n in ("W_enc", "b_enc", "b_dec")}
  xc = np.concatenate([xs - prm["b_dec"], np.ones((len(xs), 1))], 1)
  w = np.concatenate([prm["W_enc"], prm["b_enc"][None]], 0)
  tol = numerics.dot_error_bound(xc, w, extra_terms=1)
  assert not numerics.topk_ambiguous(xc @ w, 3, tol).any()
  atol = float(tol.max()) / scale                          # raw units
  np.testing.assert_array_equal(st.fired, (z > 0).sum(0))
  np.testing.assert_allclose(st.mean, z.mean(0), rtol=1e-5, atol=atol)
  np.testing.assert_allclose(st.max, z.max(0), rtol=0, atol=atol)
  for p in range(len(ds.prompts)):
    np.testing.assert_allclose(st.prompt_mean[p], z[pid == p].mean(0), rtol=1e-5, atol=atol)
    np.testing.assert_allclose(st.prompt_max[p], z[pid == p].max(0), rtol=0, atol=atol)
  for f in range(z.shape[1]):
    want = np.sort(z[:, f])[::-1][:4]
    got = [v for v, _, _ in st.top_frames(f)]
    np.testing.assert_allclose(got, want[want > 0], rtol=0, atol=atol)
    for v, p, fr in st.top_frames(f):                          # (prompt, frame) is right
      row = np.nonzero((index[:, 0] == p) & (index[:, 1] == fr))[0][0]
      assert z[row, f] == pytest.approx(v, rel=0, abs=atol)
  r = st.correlations()
  for f in range(z.shape[1]):
    for j in range(2):
      if z[:, f].std() > 0:
        assert r[f, j] == pytest.approx(np.corrcoef(z[:, f], a[:, j])[0, 1], abs=1e-6)
  assert np.all(np.isnan(r[:, 2]))                            # constant descriptor


def test_prompt_means_and_misaligned_descriptors(tmp_path):
  ds, x, a, index = _store(tmp_path)
  pm, cnt = stats.prompt_means(ds.site("lm.layer.0"), len(ds.prompts))
  for p in range(len(ds.prompts)):
    np.testing.assert_allclose(pm[p], x[index[:, 0] == p].mean(0), rtol=1e-5, atol=1e-6)
  assert cnt.tolist() == [12] * 16
  from musicsae_jax.data import ArraySource
  bad = ArraySource(a, index[::-1].copy(), chunk_rows=64)     # same rows, other order
  model = sae_lib.make_sae({"architecture": "relu", "m": 16}, d=8, rngs=nnx.Rngs(0))
  with pytest.raises(stats.AnalysisError, match="not aligned"):
    stats.feature_stats(ds.site("lm.layer.0"), stats.Encoder(model), 16, descriptors=bad)


def test_sae_from_params_roundtrip():
  model = sae_lib.make_sae({"architecture": "jumprelu", "m": 16}, d=8, rngs=nnx.Rngs(3))
  params = {n: np.asarray(getattr(model, n)[...]) for n in ("W_enc", "b_enc", "W_dec", "b_dec",
                                                             "log_threshold")}
  params["b_enc"] = params["b_enc"] + 0.3
  rebuilt = stats.sae_from_params(params, {"architecture": "jumprelu", "expansion": 2})
  x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
  model.b_enc[...] = jnp.asarray(params["b_enc"])
  np.testing.assert_allclose(stats.Encoder(rebuilt)(x), np.asarray(model.encode(x)), rtol=1e-6)
  with pytest.raises(stats.AnalysisError, match="shape"):
    stats.sae_from_params({**params, "b_dec": np.zeros(5)}, {"architecture": "jumprelu", "m": 16})


def _planted(seed=0, per=10, m=12):
  """Per-prompt activations; feature 5 fires only for label 2 (happy)."""
  rng = np.random.default_rng(seed)
  y = np.repeat(np.arange(4), per)
  x = np.abs(rng.normal(size=(len(y), m))) * (rng.random((len(y), m)) < 0.6)
  x[:, 5] = np.where(y == 2, 1.0 + rng.random(len(y)), 0.0)
  return x, y


def test_selectivity_and_auroc_match_references():
  x, y = _planted()
  y = y.copy()
  y[3] = -1                                                   # unlabelled prompt: dropped
  sel = lab.selectivity(x, y, EMOTIONS)
  keep = y >= 0
  for k in range(4):
    pos = y[keep] == k
    for f in range(x.shape[1]):
      assert sel["auroc"][k, f] == pytest.approx(roc_auc_score(pos, x[keep][:, f]), abs=1e-12)
      mi, mo = x[keep][pos, f].mean(), x[keep][~pos, f].mean()
      assert sel["mean_in"][k, f] == pytest.approx(mi)
      assert sel["selectivity"][k, f] == pytest.approx(mi / max(mo, 1e-8))
  assert sel["counts"] == [9, 10, 10, 10]
  tops = lab.top_features_per_label(sel, 3)
  assert tops["happy"][0] == 5                                # the planted feature first
  assert sel["auroc"][2, 5] == 1.0
  assert all(5 not in tops[v] for v in ("calm", "energetic", "sad"))


def test_label_vector_errors():
  prompts = [{"labels": {"emotion": "sad"}}, {"labels": {}}, {"labels": {"emotion": "calm"}}]
  values, y = lab.label_vector(prompts, "emotion")
  assert values == ["calm", "sad"] and y.tolist() == [1, -1, 0]
  with pytest.raises(stats.AnalysisError, match="no prompt has label 'genre'.*emotion"):
    lab.label_vector(prompts, "genre")


def test_cosine_matches_brute_force_and_permutation_p():
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(3), 8)
  centers = rng.normal(size=(3, 10)) * 2
  x = centers[y] + rng.normal(size=(len(y), 10)) + 5.0        # shared offset
  for center in (False, True):
    r = lab.label_cosine(x, y, ["a", "b", "c"], permutations=200, center=center)
    xx = x - x.mean(0) if center else x
    w, b = [], []
    for i, j in itertools.permutations(range(len(y)), 2):
      c = xx[i] @ xx[j] / np.linalg.norm(xx[i]) / np.linalg.norm(xx[j])
      (w if y[i] == y[j] else b).append(c)
    assert r["within"] == pytest.approx(np.mean(w), abs=1e-10)
    assert r["between"] == pytest.approx(np.mean(b), abs=1e-10)
    assert r["p_value"] == pytest.approx(1 / 201)            # no permutation beats it
  noise = lab.label_cosine(rng.normal(size=(24, 10)), y, ["a", "b", "c"], permutations=200)
  assert noise["p_value"] > 0.01                              # label-independent: no signal


def test_discover_band_top_prompts_and_word_label():
  rng = np.random.default_rng(0)
  P, m = 20, 6
  prompts = [{"prompt_id": i, "text": ("stormy drums " if i < 5 else "quiet piano ") + f"take {i}",
              "labels": {"emotion": "energetic" if i < 5 else "calm"}} for i in range(P)]
  pmax = np.zeros((P, m), np.float32)
  pmax[:5, 2] = [5, 4, 3, 2, 1]                               # feature 2: the drums prompts
  pmax[:, 0] = 1.0                                            # feature 0: fires everywhere
  st = stats.FeatureStats(
      num_rows=1000, fired=np.array([900, 0, 20, 5, 0, 0]), total=np.ones(m) * 10,
      max=pmax.max(0), prompt_sum=pmax, prompt_max=pmax, prompt_count=np.ones(P, np.int64),
      top_vals=np.zeros((1, m), np.float32), top_index=np.zeros((1, m, 2), np.int32))
  out = lab.discover(st, prompts, rate_band=(1e-3, 0.25), max_features=10, top_prompts=5)
  ids = [f["id"] for f in out["features"]]
  assert ids == [2, 3]                                        # 0 too dense, 1/4/5 dead
  f2 = out["features"][0]
  assert [p["prompt_id"] for p in f2["top_prompts"]] == [0, 1, 2, 3, 4]
  assert set(f2["heuristic_label"].split(" / ")) == {"stormy", "drums"}
  assert f2["top_label_values"] == {"emotion=energetic": 5}
