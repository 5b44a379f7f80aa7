"""Steering statistics (t intervals and their coverage, rank p, verdicts), mode margin and concept classifier against scipy/numpy references."""
import numpy as np
import pytest
from scipy import stats

from bridge.measures import concept_classifier, audio_descriptors
from bridge.steering import stats as steer_stats


def test_t_interval_matches_scipy():
  x = np.random.default_rng(1).normal(0.3, 1.0, size=12)
  lo, hi = steer_stats.t_interval(x)
  ref = stats.t.interval(0.95, x.size - 1, loc=x.mean(), scale=stats.sem(x))
  assert lo == pytest.approx(ref[0], rel=1e-12) and hi == pytest.approx(ref[1], rel=1e-12)
  assert steer_stats.t_interval([1.0]) is None


def _percentile_bootstrap_covers(x, mu, rng, resamples=1000):
  """The old interval (percentile bootstrap of the mean), vectorised over draws [R, n]."""
  R, n = x.shape
  idx = rng.integers(0, n, size=(R, resamples, n))
  means = np.take_along_axis(np.repeat(x[:, None, :], resamples, 1), idx, 2).mean(2)
  lo, hi = np.quantile(means, [0.025, 0.975], axis=1)
  return np.mean((lo <= mu) & (mu <= hi))


def test_t_interval_covers_the_mean_at_small_n():
  """2000 simulated prompt sets at n = 4, 8, 16 from a normal and a skewed (gamma, shape 4,
  skewness 1) change: the 95 % interval covers the true mean 95 ± 3 % of the time. The old
  percentile bootstrap covers ~80 % at n = 4 and fails the same tolerance."""
  rng = np.random.default_rng(0)
  draws, tol = 2000, 0.03
  dists = {"normal": (lambda size: rng.normal(0.0, 1.0, size), 0.0),
           "gamma4": (lambda size: rng.gamma(4.0, 1.0, size), 4.0)}
  for name, (draw, mu) in dists.items():
    for n in (4, 8, 16):
      x = draw((draws, n))
      cis = np.array([steer_stats.t_interval(row) for row in x])
      cov = np.mean((cis[:, 0] <= mu) & (mu <= cis[:, 1]))
      assert abs(cov - steer_stats.LEVEL) <= tol, (name, n, cov)
  old = _percentile_bootstrap_covers(rng.normal(0.0, 1.0, (draws, 4)), 0.0, rng)
  assert abs(old - steer_stats.LEVEL) > tol and old < 0.85       # the test catches the old CI


def test_rank_p_counts_controls_at_or_above():
  rng = np.random.default_rng(4)
  ctrl = rng.normal(size=40)
  for obs in (-3.0, 0.1, ctrl[7], 5.0):
    ref = (1 + sum(1 for c in ctrl if c >= obs)) / (1 + len(ctrl))   # brute force
    assert steer_stats.rank_p(obs, ctrl) == pytest.approx(ref)
  assert steer_stats.rank_p(5.0, ctrl) == pytest.approx(1 / 41)     # the floor
  assert steer_stats.rank_p(None, ctrl) is None and steer_stats.rank_p(1.0, []) is None
  v = steer_stats.vs_controls(0.5, {"decoder": [0.0, 1.0, 0.2], "gaussian": [0.0, 0.1]})
  assert v["by_kind"]["decoder"]["p_rank"] == pytest.approx(2 / 4)
  assert v["by_kind"]["gaussian"]["p_rank"] == pytest.approx(1 / 3)
  assert v["p_rank"] == pytest.approx(0.5) and v["n_controls"] == 5   # must beat every kind
  assert v["by_kind"]["decoder"]["band"] == [0.0, 1.0]


def test_verdict_lines():
  kw = dict(target="sad", measure="concept", level=0.05, n_controls=32)
  v = steer_stats.verdict([(2.0, 0.4), (4.0, 0.03), (8.0, 1 / 33)], **kw)
  assert v["text"] == "moves sad (concept) beyond controls at alpha >= 4, p = 0.03"
  assert v["alpha"] == 4.0 and v["p"] == 1 / 33                      # the largest p from 4 up
  v = steer_stats.verdict([(2.0, 0.01), (4.0, 0.2), (8.0, 0.01)], **kw)   # not from 2 up
  assert v["alpha"] == 8.0
  v = steer_stats.verdict([(2.0, 0.01), (4.0, 0.2)], **kw)
  assert v["text"].startswith("no evidence that it moves sad") and v["alpha"] is None
  assert "smallest p = 0.01" in v["text"]
  few = steer_stats.verdict([(4.0, 1 / 3)], **{**kw, "n_controls": 2})
  assert few["text"].startswith("no evidence: 2 controls") and "steer.controls >= 19" in few["text"]
  none = steer_stats.verdict([(4.0, None)], **{**kw, "measure": None}, why_none="no classifier")
  assert none["text"] == "no evidence: no independent concept score (no classifier)"


def test_paired_tests_match_scipy():
  rng = np.random.default_rng(2)
  base = rng.normal(size=9)
  steered = base + 0.5 + 0.3 * rng.normal(size=9)
  s = steer_stats.paired_summary(steered, base)
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
  maj, mnr, kmaj, _ = audio_descriptors.mode_scores(np.roll(audio_descriptors._MAJOR, 7))
  assert kmaj == 7 and maj == pytest.approx(1.0) and maj - mnr > 0.1
  maj, mnr, _, kmin = audio_descriptors.mode_scores(np.roll(audio_descriptors._MINOR, 2))
  assert kmin == 2 and maj - mnr < -0.1
  flat = audio_descriptors.mode_scores(np.ones(12))            # NaN correlations count as 0
  assert flat[0] == 0 and flat[1] == 0


def test_centroid_classifier_separates_clusters():
  rng = np.random.default_rng(3)
  x = np.concatenate([rng.normal(0, 1, (6, 5)), rng.normal(4, 1, (6, 5))])
  y = ["a"] * 6 + ["b"] * 6
  clf = concept_classifier.CentroidClassifier(x, y)
  p = clf.proba(x)
  assert np.allclose(p.sum(1), 1.0) and clf.values == ["a", "b"]
  assert (p[:6, 0] > 0.5).all() and (p[6:, 1] > 0.5).all()
  assert clf.loo_accuracy() == 1.0
  with pytest.raises(ValueError, match="2 label values"):
    concept_classifier.CentroidClassifier(x, ["a"] * 12)


def test_reference_prompts_disjoint_and_balanced():
  from bridge.sources import prompts
  evaluated = [p["text"] for p in prompts.emotion_prompts(1)]
  refs = concept_classifier.reference_prompts("emotion", 3, evaluated)
  vals = [p["labels"]["emotion"] for p in refs]
  assert len(refs) == 12 and all(vals.count(v) == 3 for v in set(vals))
  assert not {p["text"] for p in refs} & set(evaluated)
  assert concept_classifier.reference_prompts("no_such_key", 3, []) == []


def _cond(alpha, shift, control=None, kind="gaussian"):
  st = {"nll": {"mean": 2 * shift, "ci": [shift, 3 * shift]},
        "concept": {"mean": shift, "ci": None}}
  return {"alpha": alpha, "stats": st,
          **({"control": control, "kind": kind} if control is not None else {})}


@pytest.mark.parametrize("concept", [True, False])
def test_plot_steering_writes_png(tmp_path, concept):
  from bridge.steering import experiment
  res = {"controls": {"count": 2}, "concept": {"kind": "x"} if concept else {"skipped": "no"},
         "clap": {"skipped": "steer.clap is empty"},
         "features": [{"feature": 3, "label": "emotion=sad", "target": "sad",
                       "steered": [{**_cond(0.0, 0.0), "reused_baseline": True}, _cond(4.0, 0.2)],
                       "control": [_cond(4.0, 0.05, 0), _cond(4.0, -0.05, 1)]}]}
  m, why = experiment.concept_measure(res)
  assert (m, why) == (("concept", "") if concept else (
      None, "concept classifier skipped: no; CLAP skipped: steer.clap is empty"))
  path = experiment.plot_steering(res, str(tmp_path / "steer.png"))
  assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_concept_score_never_falls_back_to_the_feature():
  """Without the classifier, CLAP's label similarity (audio) is the concept score; without
  either, there is none: feature_act_replay (circular for add) is never used."""
  from bridge.steering import experiment
  clap = {"model": "m", "label_texts": {"sad": "sad music", "calm": "calm music"}}
  assert experiment.concept_measure({"concept": {"skipped": "x"}, "clap": clap})[0] == "clap_concept"
  assert experiment.concept_measure({"concept": {"skipped": "x"}, "clap": {"skipped": "y"}})[0] is None
  entry = {"target": "sad", "steered": [_cond(4.0, 0.9)], "control": [_cond(4.0, 0.0, 0)]}
  entry["steered"][0]["stats"]["feature_act_replay"] = {"mean": 5.0, "ci": None}
  v = experiment.judge(entry, identity=0.0, measure=None, why_none="no scorer", level=0.05,
                       n_per_kind=32)
  assert v["text"].startswith("no evidence: no independent concept score") and v["p"] is None
  assert "vs_controls" not in entry["steered"][0]


def test_judge_one_band_per_strength_and_every_kind():
  """32 controls per kind and strength: the rank p at each strength uses only that strength's
  controls, and the verdict needs the steered change beyond every kind."""
  from bridge.steering import experiment
  rng = np.random.default_rng(0)
  ctrl = []
  for a, spread in ((2.0, 0.01), (8.0, 1.0)):              # strong pushes move controls more
    for kind in ("decoder", "gaussian"):
      ctrl += [_cond(a, float(v), k, kind) for k, v in enumerate(spread * rng.normal(size=32))]
  entry = {"target": "sad", "control": ctrl,
           "steered": [{**_cond(0.0, 0.0), "reused_baseline": True}, _cond(2.0, 0.5), _cond(8.0, 0.5)]}
  v = experiment.judge(entry, identity=0.0, measure="concept", why_none="", level=0.05, n_per_kind=32)
  s2, s8 = entry["steered"][1]["vs_controls"], entry["steered"][2]["vs_controls"]
  assert s2["p_rank"] == pytest.approx(1 / 33) and s2["n_controls"] == 64
  for s, a in ((s8, 8.0), (s2, 2.0)):
    for kind in ("decoder", "gaussian"):
      vals = [c["stats"]["concept"]["mean"] for c in ctrl if c["alpha"] == a and c["kind"] == kind]
      assert s["by_kind"][kind]["p_rank"] == pytest.approx((1 + sum(x >= 0.5 for x in vals)) / 33)
      assert s["by_kind"][kind]["band"] == [min(vals), max(vals)]
  assert s8["p_rank"] > 0.05                                 # at 8 the controls reach 0.5
  assert v["alpha"] is None and v["text"].startswith("no evidence that it moves sad")
  entry["steered"][2] = _cond(8.0, 5.0)                      # beyond every control at 8 too
  v = experiment.judge(entry, identity=0.0, measure="concept", why_none="", level=0.05, n_per_kind=32)
  assert v["text"] == "moves sad (concept) beyond controls at alpha >= 2, p = 0.03"


def test_several_methods_get_their_own_strengths_controls_and_clip_names():
  from bridge.steering import experiment
  from configs import tiny
  c = tiny.get_config()
  c.steer.method = "add, set"
  plan = experiment.methods_of(experiment._config(c))
  assert plan == [{"method": "add", "strengths": [0.0, 4.0, 8.0], "controls": 32},
                  {"method": "set", "strengths": [8.0], "controls": 32}]  # steer.per_method.set
  names = {experiment.audio_name(p["method"], "f3", 8.0) for p in plan}
  assert names == {"add_f3_a8", "set_f3_a8"}
  for bad in ("add,add", "add,nudge", ""):
    c.steer.method = bad
    with pytest.raises(ValueError, match="--config.steer.method="):
      experiment.methods_of(experiment._config(c))


@pytest.mark.parametrize("n,shape", [(1, (1, 1)), (3, (1, 3)), (8, (3, 3))])
def test_plot_steering_lays_panels_out_in_a_readable_grid(tmp_path, n, shape):
  """At most 3 panels a row (8 features: 3 rows), so the report shows each at a legible size."""
  from bridge.steering import experiment
  from PIL import Image
  feat = lambda i: {"feature": i, "label": "emotion=sad", "target": "sad",
                    "steered": [{**_cond(0.0, 0.0), "reused_baseline": True}, _cond(4.0, 0.2)],
                    "control": [_cond(4.0, 0.05, 0), _cond(4.0, -0.05, 1)]}
  res = {"controls": {"count": 2}, "concept": {"kind": "x"}, "clap": {"skipped": "no"},
         "features": [feat(i) for i in range(n)]}
  w, h = Image.open(experiment.plot_steering(res, str(tmp_path / "steer.png"))).size
  rows, cols = shape
  assert w <= 1200 and abs(w / h - (4.4 * cols) / (3.8 * rows)) < 0.05, (w, h)
