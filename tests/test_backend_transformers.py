"""The transformers backend: capture, steering, extraction and export behind the same API,
and its parity with audiocraft (same weights: equal unpadded, different padded)."""
import numpy as np
import pytest
import torch

from bridge.models import backends, audiocraft_musicgen, transformers_musicgen
from bridge.capture import record, extract as X
from bridge.steering import hooks
from musicsae_jax import export, store

torch.set_num_threads(1)
TEXTS = ["happy piano song for a summer picnic", "sad slow cello", "calm"]
SITES = ["lm.layer.0", "lm.layer.3", "t5.hidden", "t5.pooled", "cond.proj"]
LAYER_TOL = 1e-5   # step-by-step vs one batched forward: same math, other kernels (~2e-7 seen)


@pytest.fixture(scope="module")
def hf():
  be = transformers_musicgen.build_tiny(seed=0)
  be.set_generation_params(duration=0.4, top_k=50)   # 20 frames, 23 decoding passes
  return be


@pytest.fixture(scope="module")
def gen(hf):
  return record.generate_with_capture(hf, TEXTS, SITES, keep="both", seed=3)


def test_tiny_codec_decodes_codes_to_different_audio(hf):
  tokens = torch.randint(0, 256, (2, 4, 10), generator=torch.Generator().manual_seed(0))
  wav = hf.generate_audio(tokens)
  assert wav.shape == (2, 1, 10 * 320) and (wav[0] - wav[1]).abs().max() > 1e-3


def test_every_step_is_recorded_not_overwritten(hf):
  """The overwrite regression: one row set per decoding position, and the steps differ.
  transformers runs position 0 twice (a discarded prefill): positions, not calls, count."""
  with record.LayerRecorder(hf, [2]) as rec:
    tokens = record.generate_tokens(hf, TEXTS[:2], seed=1)
  T = tokens.shape[-1]
  steps = rec.by_position(2)                               # [positions, 2B, D]
  assert T == 20 and steps.shape == (T + 3, 4, 64)         # delay pattern: T + max_delay
  assert sorted(set(rec.offsets[2])) == list(range(T + 3))
  diffs = (steps[1:] - steps[:-1]).abs().amax(dim=(1, 2))
  assert (diffs > 1e-3).all()
  assert not hf.layer_module(2)._forward_hooks             # hooks removed on exit


def test_hooked_capture_equals_teacher_forced(hf, gen):
  f = record.teacher_forced_capture(hf, TEXTS, gen.tokens, SITES, keep="both")
  assert set(gen.acts) == set(f.acts)
  for s in gen.acts:
    for a, b in zip(gen.acts[s], f.acts[s]):
      assert a.shape == b.shape
      np.testing.assert_allclose(a, b, atol=LAYER_TOL, err_msg=s)
  assert [a.shape for a in gen.acts["lm.layer.3"]] == [(20, 64)] * 3
  assert np.abs(gen.acts["lm.layer.3"][0] - gen.acts["lm.layer.3.uncond"][0]).max() > 1e-3


def test_cond_rows_equal_a_conditional_only_forward(hf, gen):
  """Rows [:B] of the guidance batch == a plain model forward with only the prompts."""
  T = gen.tokens.shape[-1]
  ids, mask = hf.tokenize(TEXTS)
  out = {}
  h = hf.model.decoder.model.decoder.layers[3].register_forward_hook(
      lambda m, a, o: out.setdefault("x", o))
  try:
    with torch.no_grad():
      hf.model(input_ids=ids, attention_mask=mask,
               decoder_input_ids=hf.delay_sequence(gen.tokens, T).reshape(-1, T))
  finally:
    h.remove()
  for b in range(3):
    np.testing.assert_allclose(gen.acts["lm.layer.3"][b], out["x"][b].numpy(), atol=LAYER_TOL)


def test_alpha_zero_is_bit_identical_and_steps_are_positions(hf):
  v = torch.randn(64, generator=torch.Generator().manual_seed(0))
  base = record.generate_with_capture(hf, TEXTS[:2], ["lm.layer.3"], seed=5)
  with hooks.add_direction(hf, 1, v, 0.0, half="both"), \
       hooks.add_text_direction(hf, v, 0.0, site="cond.proj"):
    zero = record.generate_with_capture(hf, TEXTS[:2], ["lm.layer.3"], seed=5)
  assert torch.equal(base.tokens, zero.tokens)
  for a, b in zip(base.acts["lm.layer.3"], zero.acts["lm.layer.3"]):
    np.testing.assert_array_equal(a, b)
  # a push from decoding pass 5 on: passes 0..4 untouched, pass 5 moved
  with hooks.add_direction(hf, 3, v, 10.0, steps=(5, None)):
    late = record.generate_with_capture(hf, TEXTS[:2], ["lm.layer.3"], seed=5)
  for a, b in zip(base.acts["lm.layer.3"], late.acts["lm.layer.3"]):
    np.testing.assert_array_equal(a[:5], b[:5])
    np.testing.assert_allclose(b[5] - a[5], 10.0 * v.numpy(), atol=1e-4)
  with pytest.raises(ValueError, match="uncond.*masked"):
    hooks.add_text_direction(hf, v, 1.0, half="uncond")


def test_export_hook_names_are_real_modules(hf):
  """cfg.json's hook_name on the transformers backend resolves on the model a user holds."""
  m = hf.model
  assert backends.adapt(m) is hf                        # a raw model finds its adapter
  for site, want in (("lm.layer.3", hf.layer_module(3)), ("cond.proj", m.enc_to_dec_proj),
                     ("t5.hidden", m.text_encoder), ("lm.layer.2.uncond", hf.layer_module(2))):
    name = export.hook_module(site, "transformers")
    assert m.get_submodule(name) is want and hf.module_path(site) == name
  assert export.hook_module("lm.layer.3", "transformers") == "decoder.model.decoder.layers.3"
  assert export.hook_module("lm.layer.3") == "transformer.layers.3"        # audiocraft default
  with pytest.raises(export.ExportError, match="model.backend='jax'"):
    export.hook_module("lm.layer.3", "jax")


def test_unsteered_reread_nll_is_the_conditional_model(hf, gen):
  from bridge.steering import experiment
  rr = experiment.unsteered_reread(hf, TEXTS, gen.tokens, 3, None, [])
  assert len(rr["nll"]) == 3 and all(0 < v < 10 for v in rr["nll"])


# --- extraction: manifest, resume, worker split ------------------------------------------
def small_config():
  import configs.tiny
  c = configs.tiny.get_config()
  c.model.backend = "transformers"
  c.dataset = "t"
  c.extract.per_label = 1          # 4 prompts
  c.extract.duration = 0.2         # 10 frames
  c.extract.batch_size = 2         # 2 batches
  c.extract.sites = ("lm.layer.3", "t5.pooled", "cond.proj")
  c.extract.save_audio = False
  return c


def _rows(ds, site):
  s = ds.site(site)
  acts, idx = s.read_rows(np.arange(s.num_rows)), s.read_index()
  order = np.lexsort((idx[:, 1], idx[:, 0]))
  return acts[order], idx[order]


def _same(a, b):
  assert sorted(a.completed_prompts()) == sorted(b.completed_prompts()) == [0, 1, 2, 3]
  for site in small_config().extract.sites:
    for x, y in zip(_rows(a, site), _rows(b, site)):
      np.testing.assert_array_equal(x, y, err_msg=site)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
  return X.extract(small_config(), str(tmp_path_factory.mktemp("full")), log=lambda s: None)


def test_manifest_records_backend_and_model(full):
  m = full.manifest["model"]
  assert m["backend"] == "transformers" and m["source"] == "tiny" and m["d_model"] == 64
  assert full.site("lm.layer.3").num_rows == 4 * 10


def test_resume_and_worker_split_equal_one_run(full, tmp_path):
  c = small_config()

  def boom(b):
    raise KeyboardInterrupt("killed after the first batch")
  with pytest.raises(KeyboardInterrupt):
    X.extract(c, str(tmp_path / "r"), on_batch=boom, log=lambda s: None)
  seen = []
  X.extract(c, str(tmp_path / "r"), on_batch=seen.append, log=lambda s: None)
  assert seen == [1]
  _same(store.open_dataset(X.dataset_path(c, str(tmp_path / "r"))), full)
  for w in (1, 0):
    X.extract(c, str(tmp_path / "w"), worker_index=w, num_workers=2, log=lambda s: None)
  _same(store.open_dataset(X.dataset_path(c, str(tmp_path / "w"))), full)


def test_store_of_the_other_backend_is_refused(full):
  sites = {n: store.SiteSpec(d=s.d, dtype=s.dtype, codec=s.codec) for n, s in full.sites.items()}
  meta = dict(full.manifest["model"], backend="audiocraft")
  with pytest.raises(X.ExtractError, match="model.backend: 'transformers' != 'audiocraft'"):
    X._open_or_create(full.path, sites, full.prompts, meta, full.manifest["generation"], 1, False)


# --- real weights: same clear offline error as audiocraft -----------------------------
def test_known_name_offline_without_cache_says_what_to_do(tmp_path, monkeypatch):
  from huggingface_hub import constants as hc
  monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_HOME", str(tmp_path))
  monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
  with pytest.raises(audiocraft_musicgen.ModelLoadError, match="facebook/musicgen-small.*no network.*directory"):
    transformers_musicgen.load("small")


def test_bad_names_and_dirs_are_clear_errors(tmp_path):
  with pytest.raises(audiocraft_musicgen.ModelLoadError, match="unknown MusicGen model 'gigantic'"):
    transformers_musicgen.load("gigantic")
  with pytest.raises(audiocraft_musicgen.ModelLoadError, match="lacks config.json"):
    transformers_musicgen.load(str(tmp_path))


def test_local_dir_round_trip(hf, tmp_path):
  """A save_pretrained directory (model + tokenizer) loads through the same path."""
  hf.model.save_pretrained(tmp_path)
  hf.tokenizer.save_pretrained(tmp_path)
  be = transformers_musicgen.load(str(tmp_path))
  be.set_generation_params(duration=0.2, top_k=50)
  hf.set_generation_params(duration=0.2, top_k=50)
  try:
    assert torch.equal(be.generate_tokens(TEXTS[:1], seed=2), hf.generate_tokens(TEXTS[:1], seed=2))
  finally:
    hf.set_generation_params(duration=0.4, top_k=50)


# --- parity with audiocraft on the same weights -----------------------------------------
@pytest.fixture(scope="module")
def pair():
  from bridge.models import convert
  ac = backends.adapt(audiocraft_musicgen.build_tiny_musicgen(seed=0))
  ac.set_generation_params(duration=0.2, top_k=50)
  tr = convert.audiocraft_to_transformers(ac)
  tr.set_generation_params(duration=0.2, top_k=50)
  return ac, tr


def _both(pair, texts, sites=("lm.layer.0", "lm.layer.3", "t5.hidden", "cond.proj")):
  ac, tr = pair
  tokens = record.generate_tokens(ac, texts, seed=1)
  a = record.teacher_forced_capture(ac, texts, tokens, sites, keep="both")
  b = record.teacher_forced_capture(tr, texts, tokens, sites, keep="both")
  return tokens, {s: [float(np.abs(x - y).max()) for x, y in zip(a.acts[s], b.acts[s])]
                  for s in a.acts}


def test_parity_unpadded_prompts_agree(pair):
  """Same weights, prompts of equal token length (no padding): the backends agree."""
  ac, tr = pair
  texts = ["sad slow cello", "calm piano song"]
  assert ac.model.lm.condition_provider.conditioners["description"].t5_tokenizer(
      texts, padding=True, return_tensors="pt")["attention_mask"].all()
  tokens, diff = _both(pair, texts)
  assert max(max(v) for v in diff.values()) < LAYER_TOL, diff
  from bridge.steering import experiment
  nll_a = experiment.unsteered_reread(ac, texts, tokens, None, None, [])["nll"]
  nll_t = experiment.unsteered_reread(tr, texts, tokens, None, None, [])["nll"]
  np.testing.assert_allclose(nll_a, nll_t, atol=1e-5)


def test_parity_padded_prompts_differ_by_the_masking(pair):
  """A short prompt padded to a long one: transformers masks the padded text positions in
  cross-attention, audiocraft attends to them (zero vectors), so only that prompt's LM
  activations differ; the text sites and the unconditional half still agree."""
  _, diff = _both(pair, ["happy piano song for a summer picnic", "calm"])
  assert max(diff["lm.layer.3"][0], diff["t5.hidden"][1], diff["cond.proj"][1],
             diff["lm.layer.3.uncond"][1]) < LAYER_TOL
  assert diff["lm.layer.0"][1] > 1e-2 and diff["lm.layer.3"][1] > 1e-2, diff


def test_steering_experiment_runs_on_transformers(tmp_path):
  """launch.steer's experiment with layer directions on the transformers backend."""
  import json
  import os
  from safetensors.torch import save_file
  from bridge.steering import experiment
  from configs import tiny
  exp = tmp_path / "exports" / "tiny"
  os.makedirs(exp)
  d = torch.nn.functional.normalize(torch.randn(1, 64, generator=torch.Generator().manual_seed(0)), dim=1)
  save_file({"directions": d.contiguous()}, str(exp / "directions.safetensors"))
  json.dump({"format_version": 2, "run": "tiny", "site": "lm.layer.3", "layer": 3,
             "feature_ids": [5], "labels": ["emotion=calm"], "mean_norm": 1.0, "d": 64},
            open(exp / "directions.json", "w"))
  rng = np.random.default_rng(0)                 # an SAE export: the per-step feature probe
  w = rng.normal(size=(64, 16)).astype(np.float32) / 8
  export.export_sae({"W_enc": w, "b_enc": np.zeros(16, np.float32), "W_dec": w.T.copy(),
                     "b_dec": np.zeros(64, np.float32)}, site="lm.layer.3", layer=3, d=64,
                    m=16, k=4, architecture="topk", scale=1.0, out_dir=str(exp),
                    backend="transformers")
  c = tiny.get_config()
  c.model.backend = "transformers"
  c.steer.num_prompts, c.steer.controls, c.steer.concept_per_value = 2, 1, 0
  c.steer.strengths, c.steer.duration, c.steer.save_audio = (0.0, 8.0), 0.4, True
  res = experiment.run_steering(c, str(tmp_path))
  saved = json.load(open(res["path"]))
  zero, strong = saved["features"][0]["steered"]
  assert zero["reused_baseline"] and np.isfinite(strong["stats"]["nll"]["mean"])
  assert len(strong["per_prompt"]["feature_act"]) == 2
  a = open(tmp_path / "reports" / "tiny" / "audio" / "baseline_p0.wav", "rb").read()
  b = open(tmp_path / "reports" / "tiny" / "audio" / "add_f5_a8_p0.wav", "rb").read()
  assert a != b                                              # the push changed the music
