"""The model organism (bridge/organism): a seconds-sized MusicGen trained on the concept
set with audiocraft's classes, loaded back through the real-weights path, captured, an SAE
trained on it, and the planted easy concepts (instrument, dynamics) found by the
ground-truth scores while a random labelling is not."""
import json
import os

import numpy as np
import pytest

pytest.importorskip("tinysoundfont")
pytest.importorskip("pretty_midi")

from configs import organism_tiny  # noqa: E402


def _quiet(*_a, **_k):
  pass


@pytest.fixture(scope="module")
def organism(tmp_path_factory):
  from bridge.organism import build
  wd = str(tmp_path_factory.mktemp("organism"))
  c = organism_tiny.get_config()
  metrics = build.make_organism(c, wd, log=_quiet)
  c.model.name = os.path.join(wd, "organism")
  c.extract.audio.dataset = "folder:" + os.path.join(wd, "concepts")
  return c, wd, metrics


def test_metrics_are_written_and_the_codes_are_all_in_use(organism):
  c, wd, m = organism
  with open(os.path.join(wd, "organism", "organism.json")) as f:
    assert json.load(f)["lm"]["heldout"]["true"]["tokens"] == m["lm"]["heldout"]["true"]["tokens"]
  cd, lm = m["codec"]["heldout"], m["lm"]["heldout"]
  assert np.isfinite(cd["sisnr_db"]) and cd["msspec"] < cd["msspec_silence"]
  # the final codebook refit keeps (nearly) every code in use: the LM has tokens to learn
  assert min(m["codec"]["codes_used_per_codebook"]) > 0.5 * c.organism.model.card
  assert 0 < lm["true"]["token_accuracy"] <= 1
  assert lm["true"]["perplexity"] < lm["uniform_perplexity"]
  assert set(lm) >= {"true", "shuffled", "none", "conditioning_gain_nats"}
  assert {"program", "dynamics"} <= set(m["token_space"])
  assert len(m["heldout_ids"]) == round(c.organism.heldout_fraction * c.concepts.num_clips)


def test_the_lm_is_selected_on_training_clips_and_its_gap_is_recorded(organism):
  from bridge.organism import data
  c, _, m = organism
  t = m["lm"]["train"]
  train, held = data.split(c.concepts.num_clips, c.organism.heldout_fraction, c.organism.seed)
  fit, val = data.validation_split(train, c.organism.lm.val_fraction, c.organism.lm.seed)
  # validation clips come from the training split only, disjoint from what the steps see
  assert not set(val) & set(held) and not set(val) & set(fit) and set(fit) | set(val) == set(train)
  assert t["val_clips"] == len(val) > 0
  assert [p["step"] for p in t["curve"]] == list(range(20, t["steps_run"] + 1, 20))
  assert t["best_val_ce"] == min(p["val_ce"] for p in t["curve"])
  # the same measure as train_ce (mean over codebooks); evaluate() pools tokens: close to it
  assert abs(t["heldout_ce"] - m["lm"]["heldout"]["true"]["cross_entropy"]) < 0.05
  assert np.isclose(t["gap_nats"], t["heldout_ce"] - t["train_ce"])


def test_loads_through_the_real_weights_path_and_tokenizes_every_caption_word(organism):
  from bridge.models import audiocraft_musicgen, backends
  from bridge.organism import data
  c, wd, _ = organism
  model = audiocraft_musicgen.load_musicgen(os.path.join(wd, "organism"))
  info = backends.model_info(model)
  assert (info.d_model, info.num_layers, info.n_q, info.card) == (32, 2, 2, 64)
  tok = audiocraft_musicgen.text_conditioner(model).t5_tokenizer
  caption = data.caption({"family": "scale", "tempo": 120, "key": "G", "mode": "minor",
                          "program": "Flute", "density": 2, "dynamics": "ff"})
  ids = tok(caption)["input_ids"]
  assert tok.unk_token_id not in ids
  assert len(ids) <= len(data.words([caption])) + 6      # whole words, commas, </s>
  model.set_generation_params(duration=0.2, top_k=16)
  wav = model.generate([caption])
  assert wav.shape[0] == 1 and np.isfinite(wav.numpy()).all()


def test_planted_concepts_are_found_and_a_random_labelling_is_not(organism):
  from bridge.capture import extract
  from musicsae_jax import store, train
  from musicsae_jax.analysis import ground_truth, pipeline, stats
  c, wd, _ = organism
  extract.extract(c, wd, log=_quiet)
  train.train_and_evaluate(c, wd)
  res = ground_truth.score_store(c, wd, label_keys=("program", "dynamics"), log=_quiet)
  for key in ("program", "dynamics"):
    for val, d in res["labels"][key].items():
      assert d["sae"]["passes"], (key, val, d["sae"])
  # control: a coin-flip label of the same clips has no feature that passes the max-null
  ds = store.open_dataset(os.path.join(wd, "activations", c.dataset))
  x, _ = stats.prompt_means(ds.site(c.train.site), len(ds.prompts))
  coin = np.random.default_rng(3).permutation(len(ds.prompts)) % 2
  prompts = [{"labels": {"coin": ["heads", "tails"][k]}} for k in coin]
  ctl = ground_truth.score(ground_truth.families(x, None), prompts, ("coin",),
                           pipeline.resolve(c))
  assert ctl["summary"]["neurons"]["passing"] == 0
  assert ctl["summary"]["random"]["passing"] == 0
  # the scorecard: one JSON with the organism's metrics and these scores, and a report section
  from musicsae_jax.analysis import scorecard
  card = scorecard.build(c, wd, log=_quiet)
  with open(card["path"]) as f:
    saved = json.load(f)
  assert saved["organism"]["lm"]["uniform_perplexity"] == c.organism.model.card
  assert saved["features"]["per_label"]["program"]["sae"]["passing"] == 2
  with open(os.path.join(wd, "reports", c.run, "report.html")) as f:
    assert '<section id="scorecard">' in f.read()


def test_scorecard_grades_word_labels_and_localizes_each_label_on_every_layer(organism):
  import copy
  from bridge.capture import extract
  from bridge.localize import stage as localize
  from musicsae_jax import train
  from musicsae_jax.analysis import layer_probes, scorecard, scorecard_localize
  c0, wd, _ = organism
  c = copy.deepcopy(c0)
  keys = ("program", "dynamics")
  c.analysis.label_keys = keys
  c.localize.audio_concepts = keys
  c.localize.pairs_from = c.extract.audio.dataset
  c.localize.pairs = 4
  extract.extract(c, wd, log=_quiet)             # resumes: done when an earlier test ran
  train.train_and_evaluate(c, wd)
  c.analysis.layer_sae_seeds = 2
  runs = scorecard_localize.train_layer_saes(c, wd, log=_quiet)
  assert runs == {"lm.layer.0": ["organism-tiny-l0", "organism-tiny-l0-s1"],
                  "lm.layer.1": ["organism-tiny", "organism-tiny-s1"]}
  with open(os.path.join(wd, "runs", "organism-tiny-s1", "config.json")) as f:
    assert json.load(f)["train"]["seed"] == c.train.seed + 1
  layer_probes.probe_layers(c, wd, label_keys=keys, log=_quiet)
  localize.run_localize(c, wd, ("patching",), log=_quiet)
  card = scorecard.build(c, wd, log=_quiet)
  with open(card["path"]) as f:
    saved = json.load(f)
  lab = saved["labels"]
  assert set(lab["excluded"]) == {"clap", "llm"}
  assert lab["naming_sets"]["program"]["Flute"] == ["flute"]
  assert lab["naming_sets"]["dynamics"]["pp"] == ["softly"]
  # every value of the planted concepts passes (test above), and its word label names it
  # more often than the same labeller on shuffled captions does
  p = lab["passing"]
  assert p["n"] == 4 and p["rate"] > p["shuffled_mean"], p
  assert lab["all"]["rate"] > lab["all"]["shuffled_mean"], lab["all"]
  loc = saved["localization"]
  assert loc["sites"] == ["lm.layer.0", "lm.layer.1"]
  assert loc["methods"] == ["probe", "patching", "sae"]
  for key in keys:
    for m in loc["methods"]:
      row = loc["table"][key][m]
      assert len(row["scores"]) == 2 and None not in row["scores"], (key, m, row)
      assert row["best_site"] in loc["sites"] + [None]     # None: a flat row
  assert set(loc["agreement"]) == {"probe~patching", "probe~sae", "patching~sae"}
  for key in keys:                      # the SAE score: mean and se over the two init seeds
    for site, s in loc["scores"]["sae"][key].items():
      assert len(s["by_seed"]) == 2 and s["score"] == pytest.approx(np.mean(s["by_seed"]))
      assert s["se"] == pytest.approx(abs(s["by_seed"][0] - s["by_seed"][1]) / 2)
      assert s["runs"][1] == s["runs"][0] + "-s1"
    row = loc["table"][key]["sae"]
    assert row["best_site"] is None or isinstance(row["clear"], bool)   # se known: judged
  with open(os.path.join(wd, "reports", c.run, "report.html")) as f:
    page = f.read()
  assert '<section id="scorecard-labels">' in page
  assert '<section id="scorecard-localization">' in page
  same = {p: sum(v is True for v in d["same_best"].values()) for p, d in loc["agreement"].items()}
  for p, d in loc["agreement"].items():     # a count a person can read, not a fraction
    assert f"{p}: mean Spearman across layers" in page
    assert f"same best layer for {same[p]} of {d['labels']} labels" in page


def test_naming_sets_come_from_the_captions_and_labels_match_only_those_words():
  from musicsae_jax.analysis import scorecard_labels as sl
  prompts = [{"text": f"{inst} playing {q} triad, {d}", "labels": {"program": inst, "chord": q}}
             for inst in ("flute", "violin") for q in ("minor", "major")
             for d in ("very softly", "very loudly")]
  prompts += [{"text": "flute playing a minor scale, very softly",
               "labels": {"program": "flute", "mode": "minor"}}] * 4
  sets = sl.naming_sets(prompts, "program")
  assert sets == {"flute": [("flute",)], "violin": [("violin",)]}
  chord = sl.naming_sets(prompts, "chord")
  # "minor" is mostly a scale word here, so only "minor" with "triad" names the chord
  assert chord["minor"] == [("minor", "triad")] and chord["major"] == [("major",)]
  assert sl.names("triad / minor / flute", chord["minor"])
  assert not sl.names("minor / flute", chord["minor"])
  assert not sl.names("flutes", sets["flute"])
  # a word label from the top prompts' captions, as the analysis writes it
  pm = np.zeros((len(prompts), 1))
  pm[[i for i, p in enumerate(prompts) if p["labels"]["program"] == "violin"], 0] = 1.0
  assert "violin" in sl.word_labels(pm, [p["text"] for p in prompts], [0], 4)[0]


def test_localization_compares_methods_across_layers(tmp_path):
  from launch import organism as launcher
  from musicsae_jax.analysis import scorecard_localize as loc
  from musicsae_jax.analysis.stats import AnalysisError
  c = organism_tiny.get_config()
  c.extract.sites = ("t5.hidden",)
  with pytest.raises(AnalysisError, match="no lm.layer"):
    loc.train_layer_saes(c, str(tmp_path))
  assert loc.layer_run("org", "lm.layer.3", "lm.layer.2") == "org-l3"
  cmd = launcher.stage_command("localize", "cfg.py", "/w", [])
  assert "--what=patching" in cmd and "--config.localize.pairs_from=folder:/w/concepts" in cmd
  sites = [f"lm.layer.{i}" for i in range(4)]
  up = {"a": {s: {"score": float(i)} for i, s in enumerate(sites)},
        "b": {s: {"score": float(-i)} for i, s in enumerate(sites)}}
  same = {"a": {s: {"score": float(i) ** 2} for i, s in enumerate(sites)},
          "b": {s: {"score": 1.0} for s in sites}}
  r = loc.compare({"probe": up, "sae": same}, ["a", "b"], sites)
  assert r["table"]["a"]["probe"]["best_site"] == "lm.layer.3"
  assert r["table"]["b"]["probe"]["best_site"] == "lm.layer.0"
  ag = r["agreement"]["probe~sae"]
  assert ag["spearman"]["a"] == pytest.approx(1.0)
  assert ag["spearman"]["b"] is None               # a flat row has no ranking
  assert r["table"]["b"]["sae"]["best_site"] is None   # nor a best layer
  assert ag["same_best"] == {"a": True, "b": None}
  pat = {"per_concept": {"audio:tempo": {"moved": {"lm.layer.0": [0.2, None, 0.4],
                                                    "lm.layer.0.attn": [0.1, None, 0.3]}}}}
  assert loc.patching_scores(pat) == {"tempo": {"lm.layer.0": {
      "score": pytest.approx(0.2), "pairs": 2, "se": pytest.approx(0.1)}}}   # std 0.141 / sqrt 2
  noisy = {"a": {s: {"score": 0.1 * i, "se": 0.1} for i, s in enumerate(sites)}}
  row = loc.compare({"probe": noisy}, ["a"], sites)["table"]["a"]["probe"]
  assert row["margin"] == pytest.approx(0.1) and row["clear"] is False


def test_steering_stage_writes_its_table_into_the_scorecard(organism):
  """Runs after the planted-concepts test (scorecard.json and the trained SAE exist)."""
  from musicsae_jax import export
  from musicsae_jax.analysis import scorecard_steering
  from bridge.organism import steer_tokens
  c, wd, _ = organism
  if not os.path.exists(os.path.join(wd, "reports", c.run, "scorecard.json")):
    pytest.skip("needs the scorecard of test_planted_concepts_are_found_...")
  export.export_run(wd, c.run)
  c.organism_steer.update(dict(num_generations=16, strengths=(0.25, 1.0), controls=10))
  res = steer_tokens.run(c, wd, log=_quiet)
  with open(os.path.join(wd, "reports", c.run, "scorecard.json")) as f:
    passing = steer_tokens.passing_features(json.load(f), res["classifier"]["chance"])
  assert [(f["key"], f["value"]) for f in res["features"]] == [(f["key"], f["value"]) for f in passing]
  assert 0 <= res["adherence_resampled"] <= 1 and 0 <= res["same_seed_agreement_resampled"] <= 1
  assert res["format_version"] == steer_tokens.FORMAT_VERSION == scorecard_steering.FORMAT_VERSION
  assert len(res["controls"]) == 20 and {c_["kind"] for c_ in res["controls"]} == {"decoder", "gaussian"}
  for f in res["features"]:
    assert [r["strength"] for r in f["by_strength"]] == [0.25, 1.0]
    for r in f["by_strength"]:
      assert np.isclose(r["success"], r["rate"] - r["base_rate"]) and 0 <= r["adherence"] <= 1
      assert 0 <= r["same_seed_agreement"] <= 1
      assert r["p_rank"] is not None and 1 / 21 <= r["p_rank"] <= 1
    assert f["verdict"]["text"]
  # Measured on this organism: the planted loudness concept's latent for pp raises the pp
  # rate more than all 20 controls at strength 1 (x the layer's RMS norm). Not true of every
  # planted value (the instrument latents do not beat their controls; at strength 8 every
  # direction, controls included, pushes to ff), so only this one is asserted.
  pp = {(f["key"], f["value"]): f for f in res["features"]}[("dynamics", "pp")]["by_strength"][1]
  assert pp["success"] > 0 and pp["p_rank"] == pytest.approx(1 / 21)
  card = scorecard_steering.update(wd, c.run)
  assert card["steering"]["summary"]["features"] == len(res["features"])
  with open(os.path.join(wd, "reports", c.run, "report.html")) as f:
    page = f.read()
  assert '<section id="scorecard">' in page and '<section id="scorecard_steering">' in page


def test_adherence_compares_label_distributions_and_agreement_compares_seeds():
  """Hand-computed: a batch whose clips are re-drawn but keep their label distribution keeps
  adherence 1 while its same-seed agreement falls; collapsing a label lowers adherence by
  that label's total variation distance."""
  from bridge.organism import steer_tokens as st
  base = {"key": ["C", "C", "D", "D"], "mode": ["major", "minor", "major", "minor"],
          "program": ["piano", "piano", "piano", "flute"]}
  shuffled = {"key": ["D", "D", "C", "C"], "mode": ["minor", "major", "minor", "major"],
              "program": ["piano", "flute", "piano", "piano"]}
  assert st.adherence(base, shuffled) == pytest.approx(1.0)
  # same seed: key 0/4, mode 0/4, program 2/4 kept
  assert st.same_seed_agreement(base, shuffled) == pytest.approx(2 / 12)
  collapsed = dict(base, mode=["major"] * 4)                 # TV(mode) = 0.5
  assert st.adherence(base, collapsed) == pytest.approx(1 - 0.5 / 3)
  assert st.adherence(base, collapsed, exclude="mode") == pytest.approx(1.0)
  new_value = dict(base, program=["organ"] * 4)              # TV(program) = 1
  assert st.adherence(base, new_value, exclude="key") == pytest.approx(1 - 1 / 2)
  s = st.summarize(base, collapsed, "mode", "major")
  assert (s["rate"], s["base_rate"], s["success"]) == (1.0, 0.5, 0.5)
  assert s["adherence"] == pytest.approx(1.0) and s["same_seed_agreement"] == pytest.approx(1.0)


def test_an_older_steering_file_is_refused_with_the_command_to_rerun(tmp_path):
  from musicsae_jax.analysis import scorecard_steering
  (tmp_path / "steering_tokens.json").write_text(json.dumps({"format_version": 1}))
  with pytest.raises(scorecard_steering.SteeringFileError,
                     match=r"steering_tokens.json has format_version 1.*--stages=steer,steer_report"):
    scorecard_steering.load(str(tmp_path))
  said = []          # a re-scored scorecard keeps its other parts and says what it left out
  card = scorecard_steering.attach({"features": {}}, str(tmp_path), log=said.append)
  assert card == {"features": {}} and len(said) == 1 and "steering left out" in said[0]


def test_bad_input_is_a_clear_error(tmp_path):
  from bridge.organism import build, data
  c = organism_tiny.get_config()
  c.organism.concepts_dir = str(tmp_path / "nothing")
  c.concepts.sample_rate = 22050
  with pytest.raises(data.OrganismError, match="render the concept set at the organism's rate"):
    build.make_organism(c, str(tmp_path), log=_quiet)
  with pytest.raises(data.OrganismError, match="metadata.jsonl is missing"):
    data.load_clips(str(tmp_path), 16000, 1.0)
  with pytest.raises(data.OrganismError, match="heldout_fraction"):
    data.split(10, 1.0, 0)


def test_mel_transform_matches_the_htk_filterbank_and_feeds_audiocraft_losses():
  import torch
  from bridge.organism import codec, mel
  librosa = pytest.importorskip("librosa")
  fb = mel.mel_filterbank(513, 0.0, 8000.0, 64, 16000).numpy()
  ref = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmin=0, fmax=8000, htk=True,
                            norm=None).T
  np.testing.assert_allclose(fb, ref, atol=1e-5)
  crit = codec.losses(16000, 8000)
  x = torch.randn(2, 1, 8000) * 0.1
  assert float(crit["msspec"](x, x)) == 0.0
  assert float(crit["msspec"](0.5 * x, x)) > 0.0
  assert -float(crit["sisnr"](x, x)) > 40          # SI-SNR of a perfect copy, dB
  assert abs(-float(crit["sisnr"](x + 0.1 * torch.randn_like(x), x)) - 0.0) < 1.0   # noise at 0 dB


def test_token_space_classifier_reads_a_planted_code_and_not_noise():
  from bridge.organism import tokens
  rng = np.random.default_rng(0)
  n, K, T, card = 80, 2, 25, 16
  codes = rng.integers(0, card, (n, K, T))
  lab = ["a", "b"] * (n // 2)
  codes[1::2, 1, :10] = 3                          # "b" clips use code 3 of codebook 1 often
  bag = tokens.bag_of_codes(codes, card)
  np.testing.assert_allclose(bag.reshape(n, K, card).sum(-1), 1.0, rtol=1e-6)
  labels = [{"planted": v, "noise": ["x", "y"][int(rng.integers(2))]} for v in lab]
  r = tokens.concept_accuracy(codes[:60], labels[:60], codes[60:], labels[60:],
                              ("planted", "noise"), card)
  assert r["planted"]["accuracy"] == 1.0 and r["planted"]["chance"] == 0.5
  assert r["noise"]["accuracy"] < 0.8
