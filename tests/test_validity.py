"""Held-out null, BH, position flags and seed-stability matching (musicsae_jax.analysis.validity)."""
import numpy as np
import pytest

from musicsae_jax.analysis import labels as lab
from musicsae_jax.analysis import validity
from musicsae_jax.analysis.stats import AnalysisError


def test_auroc_null_observed_matches_labels_auroc():
  rng = np.random.default_rng(0)
  x = rng.random((30, 7))
  x[:, 2] = np.round(x[:, 2], 1)                     # ties
  y = rng.integers(0, 3, 30)
  r = validity.auroc_null(x, y, 3, permutations=20)
  sel = lab.selectivity(x, y, ["a", "b", "c"])
  np.testing.assert_allclose(r["auroc"], sel["auroc"], atol=1e-12)
  assert r["null_max"].shape == (20, 3)
  assert np.all(r["p_fwer"] >= r["p_raw"])           # the max is at least each feature


def test_max_statistic_false_positive_rate_is_nominal():
  """Labels independent of features: P(any of m features has p_fwer <= 0.05) ~ 0.05.

  400 repeats: the binomial standard error at 0.05 is 0.011, so [0.02, 0.09] is about
  +-3 SE. A per-feature (uncorrected) test would fire in ~1-(0.95^20) = 64% of repeats.
  """
  rng = np.random.default_rng(1)
  hits = raw_hits = 0
  R = 400
  for r in range(R):
    x = rng.exponential(size=(24, 20)) * (rng.random((24, 20)) < 0.6)   # sparse, with ties
    y = np.repeat([0, 1], 12)
    res = validity.auroc_null(x, y, 2, permutations=99, seed=r)
    hits += bool((res["p_fwer"][1] <= 0.05).any())
    raw_hits += bool((res["p_raw"][1] <= 0.05).any())
  assert 0.02 <= hits / R <= 0.09, hits / R
  assert raw_hits / R > 0.4                           # the uncorrected p would mislead


def test_planted_label_feature_passes_the_null():
  rng = np.random.default_rng(2)
  x = rng.random((40, 50))
  y = np.repeat([0, 1], 20)
  x[:, 7] += 1.5 * (y == 1)
  res = validity.auroc_null(x, y, 2, permutations=199)
  assert res["p_fwer"][1, 7] == pytest.approx(1 / 200)
  assert np.argmax(res["auroc"][1]) == 7


def test_bh_matches_reference():
  # hand-worked: sorted p * n / rank, then running min from the top
  p = np.array([0.01, 0.04, 0.03, 0.2, 0.5])
  expect = np.array([0.05, 0.2 / 3, 0.2 / 3, 0.25, 0.5])
  np.testing.assert_allclose(validity.bh_qvalues(p), expect)
  rng = np.random.default_rng(3)
  p = rng.random((3, 40)) ** 3
  q = validity.bh_qvalues(p)
  for row, qrow in zip(p, q):                         # definition, row by row
    order = np.argsort(row)
    adj = row[order] * len(row) / np.arange(1, len(row) + 1)
    ref = np.minimum(np.minimum.accumulate(adj[::-1])[::-1], 1)
    out = np.empty_like(ref)
    out[order] = ref
    np.testing.assert_allclose(qrow, out)


def test_heldout_split_is_stratified_and_disjoint():
  y = np.array([0] * 10 + [1] * 10 + [2] * 3 + [-1] * 2)
  tr, ho = validity.heldout_split(y, 0.3, seed=0)
  assert not np.any(tr & ho) and not np.any((tr | ho)[y < 0])
  assert [int(ho[y == k].sum()) for k in range(3)] == [3, 3, 1]
  with pytest.raises(AnalysisError, match="heldout_fraction"):
    validity.heldout_split(y, 1.0)


def test_position_test_flags_fixed_frame_not_spread_frames():
  rng = np.random.default_rng(4)
  pids = np.arange(8)
  lengths = np.full(8, 100)
  c, p = validity.position_test(pids, np.full(8, 17), lengths)
  assert c == 8 and p < 0.001
  c, p = validity.position_test(pids, np.array([30, 28, 29, 31, 27, 30, 29, 28]), lengths,
                                window=2)
  assert c == 8 and p < 0.001                        # a position within a few frames
  spread = np.arange(8) * 12 + rng.integers(0, 3, 8)
  c, p = validity.position_test(pids, spread, lengths, window=2)
  assert c == 1 and p > 0.5
  # A sustained event: 6 adjacent top frames of one prompt, plus 2 elsewhere: not a position.
  c, p = validity.position_test(np.array([3] * 6 + [5, 6]), np.array([40, 41, 42, 43, 44, 45, 10, 80]),
                                lengths, window=2)
  assert c == 1 and p == 1.0


def test_match_decoders_recovers_a_permutation_exactly():
  rng = np.random.default_rng(5)
  W = rng.normal(size=(64, 16))
  perm = rng.permutation(64)
  for method in ("hungarian", "greedy"):
    r = validity.match_decoders(W, 3.0 * W[perm], method=method)
    np.testing.assert_array_equal(perm[r["b_of_a"]], np.arange(64))
    assert r["fraction_matched"] == 1.0
  other = validity.match_decoders(W, rng.normal(size=(64, 16)))
  assert other["fraction_matched"] < 0.2


def _naive_greedy(C):
  b_of_a = np.full(C.shape[0], -1)
  used = np.zeros(C.shape[1], bool)
  for flat in np.argsort(-C, axis=None, kind="stable"):
    i, j = divmod(int(flat), C.shape[1])
    if b_of_a[i] < 0 and not used[j]:
      b_of_a[i], used[j] = j, True
  return b_of_a


@pytest.mark.parametrize("ma,mb", [(40, 40), (30, 50), (50, 30)])
def test_greedy_match_equals_full_greedy(ma, mb):
  """Candidate rounds give the same pairs as greedy on the full cosine matrix."""
  rng = np.random.default_rng(ma + mb)
  A = rng.normal(size=(ma, 6))
  B = np.concatenate([A[: min(ma, mb) // 2] + 0.3 * rng.normal(size=(min(ma, mb) // 2, 6)),
                      rng.normal(size=(mb - min(ma, mb) // 2, 6))])
  A /= np.linalg.norm(A, axis=1, keepdims=True)
  B /= np.linalg.norm(B, axis=1, keepdims=True)
  got = validity.greedy_match(A, B, candidates=3, block_rows=7)
  np.testing.assert_array_equal(got, _naive_greedy(A @ B.T))


def test_random_direction_control_uses_exactly_the_features_split():
  """The random-direction control and the features (pipeline._validate_label) partition the
  prompts identically: same training and held-out prompts, held-out-vocabulary prompts in
  neither and scored apart, unlabelled prompts nowhere."""
  from musicsae_jax.analysis import layers, pipeline
  rng = np.random.default_rng(0)
  P, values = 120, ["a", "b", "c"]
  y = rng.integers(0, 3, P)
  y[rng.random(P) < 0.1] = -1                                   # unlabelled / without rows
  vocab = rng.random(P) < 0.25                                  # held-out-vocabulary prompts
  pm, x = rng.random((P, 8)), rng.normal(size=(P, 5))
  a = {"heldout_fraction": 0.3, "seed": 3, "top_per_label": 2, "null_permutations": 20,
       "alpha": 0.05}
  feats = pipeline._validate_label(pm, y, values, a, vocab)     # pylint: disable=protected-access
  rand = layers.random_direction_features(x, {"k": (values, y)}, 6, a, vocab=vocab)["k"]
  keys = ("train_prompts", "heldout_prompts", "heldout_vocab_prompts")
  assert {k: feats["split"][k] for k in keys} == rand["split"]
  tr, ho, hv = (set(rand["split"][k]) for k in keys)
  assert not (tr & ho) and not (tr & hv) and not (ho & hv)
  assert hv == set(np.nonzero(vocab & (y >= 0))[0]) and len(tr | ho | hv) == int((y >= 0).sum())
  assert all("auroc_heldout_vocab" in b for b in rand["best"].values())
  # the masks the pipeline hands over are used as they are
  given = layers.random_direction_features(x, {"k": (values, y)}, 6, a,
                                           splits={"k": feats["masks"]})["k"]
  assert given["split"] == rand["split"] and given["best"] == rand["best"]
