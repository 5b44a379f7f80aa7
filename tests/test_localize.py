"""Where a concept lives: fidelity splice, CE/KL, layer ablation, patching, attention sites."""
import contextlib
import json

import numpy as np
import pytest
import torch

from bridge.capture import record
from bridge.localize import fidelity, interventions, layer_ablation, patching
from bridge.models import audiocraft_musicgen
from bridge.steering import hooks
from bridge.models.sae_torch import TorchSAE

T, CFG = 10, 3.0
TEXTS = ["happy upbeat pop", "sad slow piano"]


@pytest.fixture(scope="module")
def model():
  torch.set_num_threads(1)
  m = audiocraft_musicgen.build_tiny_musicgen(seed=0)
  m.set_generation_params(duration=T / 50, use_sampling=True, top_k=50, cfg_coef=CFG)
  return m


@pytest.fixture(scope="module")
def tokens(model):
  """Random codes: every measure here is teacher-forced, sampling is not needed."""
  g = torch.Generator().manual_seed(0)
  return torch.randint(0, model.lm.card, (len(TEXTS), model.lm.n_q, T), generator=g)


def random_sae(d, m=256, k=8, layer=1, seed=0):
  g = torch.Generator().manual_seed(seed)
  w = torch.randn(d, m, generator=g) / d ** 0.5
  tensors = {"W_enc": w, "W_dec": w.T.contiguous(), "b_enc": torch.zeros(m),
             "b_dec": 0.1 * torch.randn(d, generator=g)}
  return TorchSAE(tensors, {"musicsae": {"architecture": "topk", "k": k, "layer": layer,
                                         "site": f"lm.layer.{layer}"}})


def test_splice_identity_and_sae_changes_the_loss(model, tokens):
  tf = interventions.TeacherForced(model, TEXTS, tokens, CFG)
  r = fidelity.measure(tf, random_sae(model.lm.dim), "lm.layer.1", half="both")
  # x̂ + (x − x̂) is x up to float32 round-off of one subtraction and one addition.
  assert r["splice_identity_max_abs_act_diff"] < 1e-5
  assert r["sae_plus_error"]["max_abs_logprob_diff"] < 1e-4
  assert abs(r["sae_plus_error"]["kl_mean"]) < 1e-6
  assert r["clean"]["kl_mean"] == 0.0
  assert r["sae"]["kl_mean"] > 1e-3 and r["zero"]["kl_mean"] > 1e-3   # the splice is live
  lr = r["loss_recovered_mean"]
  assert lr == pytest.approx((r["zero"]["ce_mean"] - r["sae"]["ce_mean"]) /
                             (r["zero"]["ce_mean"] - r["clean"]["ce_mean"]))


def _direct_log_probs(model, texts, tokens, zero_cond_layer=None):
  """Guided log-probs from two separate forwards (cond, then uncond) via compute_predictions."""
  from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout
  lm = model.lm
  attrs, _ = model._prepare_tokens_and_attributes(list(texts), None)
  null = ClassifierFreeGuidanceDropout(p=1.0)(attrs)
  outs = []
  for conds, zero in ((attrs, zero_cond_layer is not None), (null, False)):
    ctx = (lm.transformer.layers[zero_cond_layer].register_forward_hook(
        lambda m, a, o: torch.zeros_like(o)) if zero else None)
    try:
      with torch.no_grad():
        ct = lm.condition_provider(lm.condition_provider.tokenize(conds))
        outs.append(lm.compute_predictions(tokens, [], condition_tensors=ct))
    finally:
      if ctx is not None:
        ctx.remove()
  cond, uncond = outs[0].logits, outs[1].logits
  return torch.log_softmax(uncond + CFG * (cond - uncond), -1), outs[0].mask.bool()


def test_ce_and_kl_match_a_direct_torch_computation(model, tokens):
  tf = interventions.TeacherForced(model, TEXTS, tokens, CFG)
  lp, mask = tf.log_probs()
  lp_z, _ = tf.log_probs(interventions.replace_site(
      model, "lm.layer.2", lambda x, r, p: torch.zeros_like(x), half="cond"))
  ref, ref_mask = _direct_log_probs(model, TEXTS, tokens)
  ref_z, _ = _direct_log_probs(model, TEXTS, tokens, zero_cond_layer=2)
  assert torch.equal(mask, ref_mask)
  K = tokens.shape[1]
  for k in range(K):
    m = ref_mask[:, k]
    ce = torch.nn.functional.nll_loss(ref[:, k][m], tokens[:, k][m])
    kl = torch.nn.functional.kl_div(ref_z[:, k][m], ref[:, k][m], log_target=True,
                                    reduction="batchmean")
    # one [cond; uncond] batch vs two forwards: float32 round-off only
    assert float(interventions.ce_per_codebook(lp, mask, tokens)[k]) == pytest.approx(
        float(ce), abs=1e-4)
    assert float(interventions.kl_per_codebook(lp, lp_z, mask)[k]) == pytest.approx(
        float(kl), rel=1e-3, abs=1e-5)
  assert float(interventions.kl_per_codebook(lp, lp_z, mask).mean()) > 1e-3


@contextlib.contextmanager
def planted_identity(model, i):
  """Block i adds nothing: every projection into the residual stream zeroed (restored after)."""
  layer = model.lm.transformer.layers[i]
  params = [layer.self_attn.out_proj.weight, layer.cross_attention.out_proj.weight,
            layer.linear2.weight]
  saved = [p.detach().clone() for p in params]
  with torch.no_grad():
    for p in params:
      p.zero_()
  try:
    yield
  finally:
    with torch.no_grad():
      for p, s in zip(params, saved):
        p.copy_(s)


def test_ablating_an_identity_block_changes_nothing(model, tokens):
  with planted_identity(model, 2):
    tf = interventions.TeacherForced(model, TEXTS, tokens, CFG)
    clean, _ = tf.log_probs()
    means = layer_ablation.mean_contributions(tf, [2, 1])
    assert float(means[2].abs().max()) == 0.0
    for mode in ("zero", "mean", "resample"):
      lp, _ = tf.log_probs(interventions.ablate_block(model, 2, mode, mean=means[2]))
      assert torch.equal(lp, clean), mode
    lp1, _ = tf.log_probs(interventions.ablate_block(model, 1, "zero"))
    assert not torch.equal(lp1, clean)            # a real block does matter
  res = layer_ablation.teacher_forced(model, TEXTS, tokens, [1], ["zero"], cfg_coef=CFG)
  assert res["modes"]["zero"]["ce_increase"][0] != 0.0


def test_patching_a_run_into_itself_changes_nothing(model, tokens):
  tf = interventions.TeacherForced(model, TEXTS, tokens, CFG)
  clean, _ = tf.log_probs()
  sae = random_sae(model.lm.dim)
  for site in ("lm.layer.1", "lm.layer.1.attn", "lm.layer.2.cross_attn"):
    src = tf.record([site])[site]
    for s, f in (((None, None), (sae, None), (sae, [0, 3])) if site == "lm.layer.1"
                 else ((None, None),)):
      lp, _ = tf.log_probs(patching.patch_site(model, site, src, half="both", sae=s, features=f))
      assert torch.equal(lp, clean), (site, s is not None, f)


def test_patching_the_last_layer_moves_all_the_way(model, tokens):
  other = ["sad upbeat pop", "happy slow piano"]
  r = patching.patch_moved(model, other, TEXTS, tokens,
                           ["lm.layer.0", "lm.layer.0.cross_attn", "lm.layer.3"],
                           cfg_coef=CFG, half="cond")
  assert min(r["gap_kl"]) > 0
  np.testing.assert_allclose(r["moved"]["lm.layer.3"], 1.0, atol=1e-3)
  assert max(r["moved"]["lm.layer.0"]) < 0.999
  # block 0's input and self-attention do not see the text: its cross-attention output
  # carries all of the block's difference, so patching it equals patching the block.
  np.testing.assert_allclose(r["moved"]["lm.layer.0.cross_attn"], r["moved"]["lm.layer.0"],
                             atol=1e-5)


def test_attention_sites_equal_a_manual_forward(model, tokens):
  i = 1
  layer = model.lm.transformer.layers[i]
  seen = {}
  h = layer.register_forward_pre_hook(
      lambda m, a, kw: seen.update(x=a[0], src=kw["cross_attention_src"]), with_kwargs=True)
  try:
    tf = interventions.TeacherForced(model, TEXTS, tokens, CFG)
    got = tf.record([f"lm.layer.{i}", f"lm.layer.{i}.attn", f"lm.layer.{i}.cross_attn"])
  finally:
    h.remove()
  x, src = seen["x"], seen["src"]
  with torch.no_grad():
    q = layer.norm1(x)
    sa = layer.self_attn(q, q, q, need_weights=False)[0]
    x1 = x + sa
    ca = layer.cross_attention(layer.norm_cross(x1), src, src, need_weights=False)[0]
    x2 = x1 + ca
    out = x2 + layer.linear2(layer.activation(layer.linear1(layer.norm2(x2))))
  torch.testing.assert_close(got[f"lm.layer.{i}.attn"], sa, rtol=0, atol=1e-5)
  torch.testing.assert_close(got[f"lm.layer.{i}.cross_attn"], ca, rtol=0, atol=1e-5)
  torch.testing.assert_close(got[f"lm.layer.{i}"], out, rtol=0, atol=1e-5)
  # the capture path gives the same rows (conditional half, first T positions)
  cap = record.teacher_forced_capture(model, TEXTS, tokens, [f"lm.layer.{i}.attn"])
  np.testing.assert_allclose(np.stack(cap.acts[f"lm.layer.{i}.attn"]),
                             sa[:len(TEXTS), :T].numpy(), atol=1e-5)


def test_steering_an_attention_site_adds_exactly_there(model, tokens):
  site = "lm.layer.1.cross_attn"
  tf = interventions.TeacherForced(model, TEXTS, tokens, CFG)
  v = torch.randn(model.lm.dim, generator=torch.Generator().manual_seed(1))
  before = tf.record([site, "lm.layer.1"])
  after = tf.record([site, "lm.layer.1"],
                    hooks.add_direction(model, site, v, alpha=2.0, half="cond"))
  B = len(TEXTS)
  d = after[site] - before[site]
  torch.testing.assert_close(d[:B], (2.0 * v).expand_as(d[:B]), rtol=0, atol=1e-5)
  assert float(d[B:].abs().max()) == 0.0
  assert float((after["lm.layer.1"] - before["lm.layer.1"])[:B].abs().max()) > 0.1
  with pytest.raises(ValueError, match="lm.layer"):
    hooks.add_direction(model, "lm.layer.1.mlp", v, alpha=1.0)


def test_report_sections_from_the_json_files(model, tokens, tmp_path):
  import json
  from musicsae_jax.analysis import localize_report
  sae = random_sae(model.lm.dim)
  fid = {"run": "t", "texts": TEXTS, **fidelity.run(model, sae, TEXTS, tokens, cfg_coef=CFG,
                                                    halves=("cond",))}
  ab = {"run": "t", "texts": TEXTS, "teacher_forced": layer_ablation.teacher_forced(
      model, TEXTS, tokens, [0, 3], ["zero"], cfg_coef=CFG)}
  (tmp_path / "fidelity.json").write_text(json.dumps(fid))
  (tmp_path / "ablation.json").write_text(json.dumps(ab))
  layer_ablation.plot(ab, str(tmp_path / "ablation.png"))
  page = open(localize_report.update(str(tmp_path))).read()
  assert '<section id="fidelity">' in page and '<section id="layer-ablation">' in page
  assert f"{fid['halves']['cond']['loss_recovered_mean']:.3f}" in page
  assert page.count("<img") == 1
  page2 = open(localize_report.update(str(tmp_path))).read()      # replaced, not duplicated
  assert page2.count('<section id="fidelity">') == 1


def test_layer_table_picks_the_best_site_per_label(tmp_path):
  import json
  from musicsae_jax.analysis import layer_table
  for run, site, acc, lr in (("r-l1", "lm.layer.1", 0.4, 0.9), ("r-l2", "lm.layer.2", 0.7, 0.5)):
    d = tmp_path / "reports" / run
    d.mkdir(parents=True)
    (d / "probes.json").write_text(json.dumps({"probes": {"emotion": [
        {"name": site, "accuracy": acc - 0.1}, {"name": f"sae:{site}", "accuracy": acc}]}}))
    (d / "fidelity.json").write_text(json.dumps({"halves": {"cond": {
        "fvu": 0.1, "l0": 8.0, "loss_recovered_mean": lr}}}))
  pj, pm = layer_table.write(str(tmp_path), "r-layers",
                             [("lm.layer.1", "r-l1"), ("lm.layer.2", "r-l2")])
  t = json.loads(open(pj).read())
  assert t["best"]["emotion"]["site"] == "lm.layer.2"
  assert t["rows"][0]["loss_recovered"] == 0.9 and t["rows"][1]["probe_raw"]["emotion"] == 0.6
  assert "| lm.layer.2 | 0.100 | 8.0 | 0.500 | 0.700 / 0.600 |" in open(pm).read()


def test_sweep_members_with_an_export_are_measured(tmp_path):
  import json
  from bridge.localize import stage
  (tmp_path / "runs" / "sw").mkdir(parents=True)
  (tmp_path / "runs" / "sw" / "sweep.json").write_text(json.dumps(
      {"members": [{"name": "k8"}, {"name": "k16"}]}))
  (tmp_path / "exports" / "sw" / "k16").mkdir(parents=True)
  (tmp_path / "exports" / "sw" / "k16" / "cfg.json").write_text("{}")
  assert stage.sweep_members(str(tmp_path), "sw") == ["k16"]
  assert stage.sweep_members(str(tmp_path), "other") == []


def test_patching_the_last_layer_during_generation_gives_a_s_audio(model):
  """Every step's last residual from A: B samples A's tokens (same seed), so the audio
  concept score moves all the way."""
  r = patching.generation_moved(model, "emotion:happy/sad", ["lm.layer.3"], pairs=2, seed=0,
                                references=2)
  assert r["p_a"]["A"] != r["p_a"]["B"]
  assert r["p_a"]["lm.layer.3"] == pytest.approx(r["p_a"]["A"], abs=1e-9)
  assert r["moved"]["lm.layer.3"] == pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------------------------------------
# Audio pairs: clips of a labelled folder that differ in one concept
# --------------------------------------------------------------------------------------
# (id, tempo, key, program): c0/c1 are the only tempo pair with every other label equal;
# the others differ in tempo and at least one more label.
CLIPS = [("c0", 60, "C", "piano"), ("c1", 120, "C", "piano"), ("c2", 60, "E", "flute"),
         ("c3", 120, "G#", "flute"), ("c4", 120, "E", "piano"), ("c5", 60, "G#", "piano")]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
  """metadata.jsonl + short wavs: a pitch by key, pulses by tempo, and each clip's own
  noise (so the tiny random codec gives every clip different codes)."""
  import json
  import soundfile as sf
  d = tmp_path_factory.mktemp("concept_clips")
  (d / "audio").mkdir()
  sr, t = 16000, np.arange(int(0.3 * 16000)) / 16000
  with open(d / "metadata.jsonl", "w") as f:
    for n, (cid, tempo, key, prog) in enumerate(CLIPS):
      hz = 220.0 * 2 ** ({"C": 0, "E": 4, "G#": 8}[key] / 12)
      noise = np.random.default_rng(n).standard_normal(len(t))
      pulse = np.sin(2 * np.pi * tempo / 30 * t) > 0
      y = (0.3 * np.sin(2 * np.pi * hz * t) + 0.2 * noise) * pulse
      sf.write(d / "audio" / f"{cid}.wav", y.astype(np.float32), sr)
      f.write(json.dumps({"id": cid, "path": f"audio/{cid}.wav", "caption": f"clip {n}",
                          "labels": {"tempo": tempo, "key": key, "program": prog}}) + "\n")
  return d


def test_audio_pairs_are_minimal_where_they_exist(clip_folder):
  from bridge.sources import audio_datasets
  from bridge.localize import audio_pairs
  items = audio_datasets.load_items(f"folder:{clip_folder}")
  ps = audio_pairs.find_pairs(items, "tempo", 3, seed=0)
  assert (ps[0].a.id, ps[0].b.id, ps[0].other_diffs) == ("c0", "c1", ())
  assert (ps[0].value_a, ps[0].value_b) == ("60", "120")        # numeric order, A first
  assert len(ps) == 3 and all(len(p.other_diffs) >= 1 for p in ps[1:])
  ids = [i for p in ps for i in (p.a.id, p.b.id)]
  assert len(set(ids)) == 6                                      # disjoint while possible
  for p in ps:
    assert p.a.labels["tempo"] != p.b.labels["tempo"]
    assert p.other_diffs == tuple(k for k in ("key", "program")
                                  if p.a.labels[k] != p.b.labels[k])
  r = audio_pairs.find_pairs(items, "tempo:120/60", 1)[0]
  assert (r.a.id, r.b.id) == ("c1", "c0")
  k = audio_pairs.find_pairs(items, "key:C/E", 5)
  assert (k[0].a.id, k[0].b.id, k[0].other_diffs) == ("c1", "c4", ())
  assert (k[1].a.id, k[1].b.id, k[1].other_diffs) == ("c0", "c2", ("program",))
  assert {p.value_a for p in k} == {"C"}
  assert len(k) == 4                                             # every C/E pair, reused
  with pytest.raises(audio_pairs.AudioPairError, match="'tempo' values"):
    audio_pairs.find_pairs(items, "tempo:60/90", 1)
  with pytest.raises(audio_pairs.AudioPairError, match="LABEL:A/B"):
    audio_pairs.parse_audio_concept("tempo:60")
  from bridge.localize import stage                       # the config checks before the model loads
  lc = stage._config({"localize": {"pairs_from": f"folder:{clip_folder}",
                                      "audio_concepts": ("tempo,key:C/E",)}})
  assert lc["audio_concepts"] == ("tempo", "key:C/E")
  assert len(stage._audio_items(lc)) == 6
  with pytest.raises(audio_pairs.AudioPairError, match="'bpm' values"):
    stage._audio_items(dict(lc, audio_concepts=("bpm",)))
  with pytest.raises(ValueError, match="go together"):
    stage._audio_items(dict(lc, audio_concepts=()))


def test_patching_an_audio_clip_into_itself_changes_nothing(model, clip_folder):
  from bridge.sources import audio_datasets
  from bridge.localize import audio_pairs
  items = audio_datasets.load_items(f"folder:{clip_folder}")[:2]
  codes = audio_pairs.codes(model, items, T)
  assert codes.shape == (2, model.lm.n_q, T)
  tf = interventions.TeacherForced(model, [None, None], codes, CFG)
  clean, _ = tf.log_probs()
  sae = random_sae(model.lm.dim)
  for site, s in (("lm.layer.1", None), ("lm.layer.1", sae), ("lm.layer.2.attn", None)):
    src = tf.record([site])[site]
    lp, _ = tf.log_probs(patching.patch_site(model, site, src, half="both", sae=s))
    assert torch.equal(lp, clean), (site, s is not None)


def test_audio_patching_of_the_last_layer_moves_all_the_way(model, clip_folder):
  from bridge.sources import audio_datasets
  items = audio_datasets.load_items(f"folder:{clip_folder}")
  res = patching.run_audio(model, items, ["tempo"],
                           ["lm.layer.1", "lm.layer.2.attn", "lm.layer.3"],
                           pairs=2, seed=0, frames=T)
  r = res["audio:tempo"]
  assert min(r["gap_kl"]) > 0 and r["minimal_pairs"] == 1
  assert r["pairs"][0]["id_a"] == "c0" and r["texts_a"] == [None, None]
  np.testing.assert_allclose(r["moved"]["lm.layer.3"], 1.0, atol=1e-3)
  # with no text the codes are the only difference: any full residual patch carries it all
  np.testing.assert_allclose(r["moved"]["lm.layer.1"], 1.0, atol=1e-3)
  assert max(r["moved"]["lm.layer.2.attn"]) < 0.999
  # A's first 8 steps patched, only frames 8.. scored: the last layer's past is read by
  # nothing later (moved 0); an early layer's past is read by later positions (moved != 0)
  w = patching.run_audio(model, items, ["tempo"], ["lm.layer.0", "lm.layer.3"], pairs=2,
                         seed=0, frames=T, steps=(0, 8), measure=(8, T))["audio:tempo"]
  np.testing.assert_allclose(w["moved"]["lm.layer.3"], 0.0, atol=1e-5)
  assert max(abs(x) for x in w["moved"]["lm.layer.0"]) > 1e-3
  # a pair whose clips give the same distribution has nothing to move: left out of the mean
  assert patching.set_matrix({"concepts": ["x"], "per_concept": {"x": {"moved": {
      "s": [None, 0.5, 0.25]}}}})["matrix"] == [[0.375]]
  from musicsae_jax.analysis import localize_report
  pt = patching.set_matrix({"concepts": list(res), "per_concept": res, "pairs": 2,
                            "half": "cond", "pairs_from": "folder:clips"})
  assert pt["rows"] == ["lm.layer.1", "lm.layer.2.attn", "lm.layer.3"]
  page = localize_report.patching_section(pt, "")
  assert "audio:tempo" in page and "1 of 2 (others also differ in" in page
  assert "c0 (tempo=60)" in page and "no text" in page


def test_launch_localize_headline_reads_fidelity_json(tmp_path):
  """The line launch.localize prints after the paths: each half's numbers, rounded."""
  from launch import localize as launch_localize
  path = tmp_path / "fidelity.json"
  path.write_text(json.dumps({"halves": {"cond": {"fvu": 0.0816192403, "l0": 31.94,
                                                  "loss_recovered_mean": 0.9412345}}}))
  assert launch_localize.fidelity_headline(str(path)) == (
      "fidelity: FVU 0.08162, L0 31.94, loss recovered 0.9412 (cond half)")
