"""bridge.models.audiocraft_musicgen: the import shim, the tiny random MusicGen, clear errors for real models."""
import shutil
import sys

import pytest
import torch

from bridge.models import audiocraft_musicgen, backends

torch.set_num_threads(1)  # tiny ops on shared cores: threads only add contention


@pytest.fixture(scope="module")
def tiny():
  return audiocraft_musicgen.build_tiny_musicgen(seed=0)


def test_shim_placeholders_have_a_spec():
  audiocraft_musicgen.import_audiocraft()
  ta = sys.modules["torchaudio"]
  assert ta.__spec__ is not None and ta.__spec__.name == "torchaudio"


def test_tiny_model_facts(tiny):
  info = backends.model_info(tiny)
  assert (info.d_model, info.num_layers, info.n_q, info.card) == (64, 4, 4, 256)
  assert (info.frame_rate, info.sample_rate, info.t5_dim, info.max_delay) == (50.0, 16000, 32, 3)


def test_tiny_model_is_deterministic_and_generates_audio(tiny):
  again = audiocraft_musicgen.build_tiny_musicgen(seed=0)
  other = audiocraft_musicgen.build_tiny_musicgen(seed=1)
  a, b, c = tiny.lm.state_dict(), again.lm.state_dict(), other.lm.state_dict()
  assert all(torch.equal(a[k], b[k]) for k in a)
  assert not all(torch.equal(a[k], c[k]) for k in a)
  t5a, t5b = audiocraft_musicgen.text_conditioner(tiny).t5, audiocraft_musicgen.text_conditioner(again).t5
  assert all(torch.equal(x, y) for x, y in zip(t5a.state_dict().values(), t5b.state_dict().values()))
  for m in (tiny, again):
    m.set_generation_params(duration=0.2, top_k=50)
  torch.manual_seed(3)
  wav, tok = tiny.generate(["happy piano"], return_tokens=True)
  torch.manual_seed(3)
  wav2, tok2 = again.generate(["happy piano"], return_tokens=True)
  assert tok.shape == (1, 4, 10) and wav.shape == (1, 1, 10 * 320)
  assert torch.equal(tok, tok2) and torch.isfinite(wav).all() and wav.abs().max() > 0


def test_unknown_model_name_is_a_clear_error():
  with pytest.raises(audiocraft_musicgen.ModelLoadError, match="unknown MusicGen model 'facebook/musicgen-huge'"):
    audiocraft_musicgen.load_musicgen("facebook/musicgen-huge")


def test_local_dir_missing_files_is_a_clear_error(tmp_path):
  (tmp_path / "state_dict.bin").write_bytes(b"")
  with pytest.raises(audiocraft_musicgen.ModelLoadError, match="lacks compression_state_dict.bin"):
    audiocraft_musicgen.load_musicgen(str(tmp_path))


def test_known_name_offline_without_cache_says_what_to_do(tmp_path, monkeypatch):
  import huggingface_hub.constants as hc
  monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("AUDIOCRAFT_CACHE_DIR", str(tmp_path))
  with pytest.raises(audiocraft_musicgen.ModelLoadError, match="pass that directory"):
    audiocraft_musicgen.load_musicgen("facebook/musicgen-small")


def test_export_hook_names_are_modules_of_the_lm(tiny):
  """cfg.json's hook_name (SAELens) is a path a torch user can hook under MusicGen.lm."""
  from musicsae_jax import export
  for site, want in (("lm.layer.3", tiny.lm.transformer.layers[3]),
                     ("lm.layer.2.attn", tiny.lm.transformer.layers[2].self_attn),
                     ("lm.layer.2.cross_attn.uncond", tiny.lm.transformer.layers[2].cross_attention),
                     ("cond.proj", audiocraft_musicgen.text_conditioner(tiny).output_proj)):
    assert tiny.lm.get_submodule(export.hook_module(site)) is want
  t5_path = export.hook_module("t5.hidden").split(".")         # an attribute, not a submodule
  owner = tiny.lm.get_submodule(".".join(t5_path[:-1]))
  assert getattr(owner, t5_path[-1]) is audiocraft_musicgen.text_conditioner(tiny).t5


def test_unreachable_hub_fails_at_once(tmp_path, monkeypatch):
  """No offline flag set, but the hub does not answer: one quick probe, then the cache only."""
  import time
  import huggingface_hub.constants as hc
  monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.setattr(hc, "ENDPOINT", "http://127.0.0.1:9")      # nothing listens there
  monkeypatch.setenv("AUDIOCRAFT_CACHE_DIR", str(tmp_path))
  t0 = time.time()
  with pytest.raises(audiocraft_musicgen.ModelLoadError, match="pass that directory"):
    audiocraft_musicgen.load_musicgen("facebook/musicgen-small")
  assert time.time() - t0 < 10 and hc.HF_HUB_OFFLINE is False   # was ~23 s of retries


def test_save_and_load_local_dir_round_trip(tiny, tmp_path):
  """save_musicgen writes what MusicGen.get_pretrained reads; load_musicgen(dir) gets it back."""
  from bridge.capture.record import generate_tokens
  out = audiocraft_musicgen.save_musicgen(tiny, tmp_path / "mg")
  assert {p.name for p in out.iterdir()} >= {"state_dict.bin", "compression_state_dict.bin", "t5"}
  pkg = torch.load(out / "state_dict.bin", weights_only=True)  # plain yaml + tensors
  assert "name: t5\n" in pkg["xp.cfg"] and set(pkg["best_state"]) == set(tiny.lm.state_dict())
  moved = tmp_path / "moved"
  out.rename(moved)  # the cfg names the T5 relative to the directory
  loaded = audiocraft_musicgen.load_musicgen(str(moved))
  assert backends.model_info(loaded).to_dict() | {"name": "tiny"} == backends.model_info(tiny).to_dict()
  for a, b in ((tiny.lm, loaded.lm), (tiny.compression_model, loaded.compression_model),
               (audiocraft_musicgen.text_conditioner(tiny).t5, audiocraft_musicgen.text_conditioner(loaded).t5)):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
  tk, lk = audiocraft_musicgen.text_conditioner(tiny).t5_tokenizer, audiocraft_musicgen.text_conditioner(loaded).t5_tokenizer
  assert tk("happy piano at night").input_ids == lk("happy piano at night").input_ids
  for m in (tiny, loaded):
    m.set_generation_params(duration=0.2, top_k=50)
  texts = ["happy piano", "sad cello in the rain"]
  assert torch.equal(generate_tokens(tiny, texts, seed=5), generate_tokens(loaded, texts, seed=5))


def test_local_dir_with_unknown_t5_is_a_clear_error(tiny, tmp_path):
  out = audiocraft_musicgen.save_musicgen(tiny, tmp_path / "mg")
  shutil.rmtree(out / "t5")
  with pytest.raises(audiocraft_musicgen.ModelLoadError, match="names T5 't5', which is neither"):
    audiocraft_musicgen.load_musicgen(str(out))
