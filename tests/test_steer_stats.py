"""Steering statistics, mode margin and concept classifier against scipy/numpy references."""
import numpy as np
import pytest
from scipy import stats

from bridge import audio_features, steer_concept, steer_stats


def test_bootstrap_ci_matches_scipy_percentile():
  x = np.random.default_rng(1).normal(0.3, 1.0, size=12)
  lo, hi = steer_stats.bootstrap_ci(x, n_resamples=20000, seed=0)
  ref = stats.bootstrap((x,), np.mean, n_resamples=20000, method="percentile",
                        rng=np.random.default_rng(5)).confidence_interval
  se = x.std(ddof=1) / np.sqrt(x.size)
  # two Monte Carlo estimates of the same quantiles: agree to a few % of the standard error
  assert abs(lo - ref.low) < 0.05 * se and abs(hi - ref.high) < 0.05 * se
  assert lo < x.mean() < hi
  assert steer_stats.bootstrap_ci([1.0]) is None


def test_paired_tests_match_scipy():
  rng = np.random.default_rng(2)
  base = rng.normal(size=9)
  steered = base + 0.5 + 0.3 * rng.normal(size=9)
  s = steer_stats.paired_summary(steered, base, seed=0)
  d = steered - base
  assert s["n"] == 9 and s["mean"] == pytest.approx(d.mean(), rel=1e-12)
  assert s["p_ttest"] == pytest.approx(stats.ttest_rel(steered, base).pvalue, rel=1e-12)
  t = d.mean() / (d.std(ddof=1) / np.sqrt(d.size))           # the textbook formula
  assert s["p_ttest"] == pytest.approx(2 * stats.t.sf(abs(t), d.size - 1), rel=1e-9)
  assert s["p_wilcoxon"] == pytest.approx(stats.wilcoxon(steered, base).pvalue, rel=1e-12)
  assert s["ci"][0] < d.mean() < s["ci"][1]


def test_paired_summary_degenerate_cases():
  z = steer_stats.paired_summary([1.0, 2.0], [1.0, 2.0])
  assert z["mean"] == 0 and z["p_ttest"] is None and z["p_wilcoxon"] is None
  one = steer_stats.paired_summary([3.0], [1.0])
  assert one["mean"] == 2.0 and one["ci"] is None
  with pytest.raises(ValueError, match="equal shapes"):
    steer_stats.paired_summary([1.0, 2.0], [1.0])


def test_mode_margin_is_continuous_and_signed():
  maj, mnr, kmaj, _ = audio_features.mode_scores(np.roll(audio_features._MAJOR, 7))
  assert kmaj == 7 and maj == pytest.approx(1.0) and maj - mnr > 0.1
  maj, mnr, _, kmin = audio_features.mode_scores(np.roll(audio_features._MINOR, 2))
  assert kmin == 2 and maj - mnr < -0.1
  flat = audio_features.mode_scores(np.ones(12))            # NaN correlations count as 0
  assert flat[0] == 0 and flat[1] == 0


def test_centroid_classifier_separates_clusters():
  rng = np.random.default_rng(3)
  x = np.concatenate([rng.normal(0, 1, (6, 5)), rng.normal(4, 1, (6, 5))])
  y = ["a"] * 6 + ["b"] * 6
  clf = steer_concept.CentroidClassifier(x, y)
  p = clf.proba(x)
  assert np.allclose(p.sum(1), 1.0) and clf.values == ["a", "b"]
  assert (p[:6, 0] > 0.5).all() and (p[6:, 1] > 0.5).all()
  assert clf.loo_accuracy() == 1.0
  with pytest.raises(ValueError, match="2 label values"):
    steer_concept.CentroidClassifier(x, ["a"] * 12)


def test_reference_prompts_disjoint_and_balanced():
  from bridge import prompts
  evaluated = [p["text"] for p in prompts.emotion_prompts(1)]
  refs = steer_concept.reference_prompts("emotion", 3, evaluated)
  vals = [p["labels"]["emotion"] for p in refs]
  assert len(refs) == 12 and all(vals.count(v) == 3 for v in set(vals))
  assert not {p["text"] for p in refs} & set(evaluated)
  assert steer_concept.reference_prompts("no_such_key", 3, []) == []


def _cond(alpha, shift, control=None):
  st = {"nll": {"mean": 2 * shift, "ci": [shift, 3 * shift]},
        "concept": {"mean": shift, "ci": None}}
  return {"alpha": alpha, "stats": st, **({"control": control} if control is not None else {})}


@pytest.mark.parametrize("concept", [True, False])
def test_plot_steering_writes_png(tmp_path, concept):
  from bridge import steer_eval
  res = {"controls": {"count": 2}, "concept": {"kind": "x"} if concept else {"skipped": "no"},
         "features": [{"feature": 3, "label": "emotion=sad", "target": "sad",
                       "steered": [_cond(0.0, 0.0), _cond(4.0, 0.2)],
                       "control": [_cond(4.0, 0.05, 0), _cond(4.0, -0.05, 1)]}]}
  assert steer_eval.concept_measure(res) == ("concept" if concept else "feature_act_replay")
  path = steer_eval.plot_steering(res, str(tmp_path / "steer.png"))
  assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_several_methods_get_their_own_strengths_controls_and_clip_names():
  from bridge import steer_eval
  from configs import tiny
  c = tiny.get_config()
  c.steer.method = "add, set"
  plan = steer_eval.methods_of(steer_eval._config(c))
  assert plan == [{"method": "add", "strengths": [0.0, 4.0, 8.0], "controls": 8},
                  {"method": "set", "strengths": [8.0], "controls": 2}]   # steer.per_method.set
  names = {steer_eval.audio_name(p["method"], "f3", 8.0) for p in plan}
  assert names == {"add_f3_a8", "set_f3_a8"}
  for bad in ("add,add", "add,nudge", ""):
    c.steer.method = bad
    with pytest.raises(ValueError, match="--config.steer.method="):
      steer_eval.methods_of(steer_eval._config(c))
