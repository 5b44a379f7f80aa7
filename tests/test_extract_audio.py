"""Capture from audio: codes MusicGen generated give the rows of its own generation; a folder
of wav files runs decode -> encode -> capture into the same store layout, resumable."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

import configs.tiny
from bridge.capture import from_audio, record, extract as X, extract_audio
from bridge.measures import audio_descriptors
from bridge.models import audiocraft_musicgen, backends
from musicsae_jax import store

torch.set_num_threads(1)
TEXTS = ["happy piano song for a summer picnic", "sad slow cello", "calm"]
LAYER_TOL = 1e-5  # hooks vs one batched forward: same math, different kernels (~1e-6 seen)
SITES = ["lm.layer.0", "lm.layer.3", "t5.hidden", "t5.pooled", "cond.proj"]


@pytest.fixture(scope="module")
def tiny():
  m = audiocraft_musicgen.build_tiny_musicgen(seed=0)
  m.set_generation_params(duration=0.4, top_k=50)  # 20 frames
  return m


@pytest.fixture(scope="module")
def gen(tiny):
  return record.generate_with_capture(tiny, TEXTS, SITES, keep="both", seed=7, return_audio=True)


def _maxdiff(a, b):
  return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def test_codes_of_a_generation_give_its_hook_capture(tiny, gen):
  got = from_audio.capture_from_codes(tiny, gen.tokens, TEXTS, SITES)
  for s in SITES:
    assert [a.shape for a in got.acts[s]] == [a.shape for a in gen.acts[s]]
    assert _maxdiff(got.acts[s], gen.acts[s]) <= LAYER_TOL, s


def test_no_text_is_the_unconditional_half(tiny, gen):
  """conditioning='none' rows = the [B:] half of the CFG batch during generation."""
  got = from_audio.capture_from_codes(tiny, gen.tokens, [None, "", None], ["lm.layer.3"])
  assert _maxdiff(got.acts["lm.layer.3"], gen.acts["lm.layer.3.uncond"]) <= LAYER_TOL
  assert _maxdiff(got.acts["lm.layer.3"], gen.acts["lm.layer.3"]) > 1e-2
  with pytest.raises(from_audio.AudioInputError, match="need a non-empty text"):
    from_audio.capture_from_codes(tiny, gen.tokens, [None] * 3, ["t5.pooled"])
  with pytest.raises(from_audio.AudioInputError, match=r"codes must be \[B, 4, T\]"):
    from_audio.capture_from_codes(tiny, gen.tokens[:, :2], TEXTS, ["lm.layer.0"])


@pytest.fixture(scope="module")
def folder(tiny, gen, tmp_path_factory):
  """The generation's audio written as wav files (at 22.05 kHz: the loader resamples) in the
  folder layout, plus a stereo flac and a clip shorter than the window."""
  d = tmp_path_factory.mktemp("clips")
  (d / "wav").mkdir()
  rows = []
  for i, (text, wav) in enumerate(zip(TEXTS, gen.audio[:, 0].numpy())):
    import librosa
    y = librosa.resample(wav, orig_sr=tiny.sample_rate, target_sr=22050)
    sf.write(d / f"wav/g{i}.wav", y, 22050)
    rows.append({"id": f"g{i}", "path": f"wav/g{i}.wav", "caption": text,
                 "labels": {"mood": text.split()[0]}})
  stereo = np.stack([gen.audio[0, 0].numpy(), gen.audio[1, 0].numpy()], 1)
  sf.write(d / "wav/st.flac", stereo, tiny.sample_rate)
  rows.append({"id": "st", "path": "wav/st.flac", "caption": "stereo", "labels": {"mood": "mix"}})
  sf.write(d / "wav/short.wav", gen.audio[2, 0].numpy()[:2000], tiny.sample_rate)
  rows.append({"id": "short", "path": "wav/short.wav", "caption": "", "labels": {"mood": "x"}})
  (d / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return d


def audio_config(folder, **audio):
  c = configs.tiny.get_config()
  c.dataset = "a"
  c.extract.source = "audio"
  c.extract.audio.dataset = f"folder:{folder}"
  c.extract.audio.update(audio)
  c.extract.duration = 0.4
  c.extract.batch_size = 2
  c.extract.sites = ("lm.layer.0", "lm.layer.3", "audio.descriptors")
  c.extract.save_audio = False
  return c


def test_folder_of_wavs_end_to_end(tiny, folder, tmp_path):
  """decode -> wav -> load/resample -> encode -> capture -> store. The tiny codec is random,
  so re-encoding does not give back the generated codes (only real EnCodec roughly would);
  the rows must equal a direct capture of the same windows' codes."""
  ds = X.extract(audio_config(folder), str(tmp_path), log=lambda s: None)
  m = ds.manifest
  assert m["generation"]["source"] == "audio" and m["generation"]["conditioning"] == "caption"
  assert m["generation"]["dataset"] == f"folder:{folder}" and m["num_prompts"] == 5
  assert [p["labels"]["audio_id"] for p in ds.prompts] == ["g0", "g1", "g2", "st", "short"]
  assert ds.prompts[0]["text"] == TEXTS[0] and ds.prompts[4]["text"] == "short"
  s = ds.site("lm.layer.3")
  assert s.num_rows == 5 * 20
  acts, idx = s.read_rows(np.arange(s.num_rows)), s.read_index()
  assert idx[:20, 0].tolist() == [0] * 20 and idx[:20, 1].tolist() == list(range(20))
  # batch 0 = clips g0, g1: load, encode and capture them directly
  info = backends.model_info(tiny)
  items = extract_audio.plan(audio_config(folder).extract, print)[1][:2]
  wavs = np.stack([from_audio.load_window(w.item.audio, None, info.sample_rate, 0.0, 0.4)[0]
                   for w in items])
  direct = from_audio.capture_from_audio(tiny, wavs, TEXTS[:2], ["lm.layer.3"], 20)
  np.testing.assert_allclose(acts[:40], np.concatenate(direct.acts["lm.layer.3"]), atol=LAYER_TOL)
  # descriptors: of the input audio, row t = frame t, as in the generation path
  d = ds.site("audio.descriptors").read_rows(np.arange(20))
  np.testing.assert_allclose(d, audio_descriptors.frame_descriptors(wavs[0], 16000, 50.0, 20),
                             rtol=1e-5, atol=1e-4)
  # the short clip is zero-padded to the window
  assert ds.prompts[4]["labels"]["mood"] == "x"


def test_resume_and_workers_give_the_same_rows(folder, tmp_path):
  whole = X.extract(audio_config(folder, conditioning="none"), str(tmp_path / "one"),
                    log=lambda s: None)
  part = tmp_path / "two"

  class Stop(Exception):
    pass

  def stop(b):
    raise Stop

  with pytest.raises(Stop):   # worker 0 dies after its first batch; rerun resumes
    X.extract(audio_config(folder, conditioning="none"), str(part), worker_index=0,
              num_workers=2, on_batch=stop, log=lambda s: None)
  for w in (0, 1):
    X.extract(audio_config(folder, conditioning="none"), str(part), worker_index=w,
              num_workers=2, log=lambda s: None)
  two = store.open_dataset(str(part / "activations" / "a"))
  assert two.completed_prompts() == whole.completed_prompts() == set(range(5))
  for site in ("lm.layer.3", "audio.descriptors"):
    a, b = whole.site(site), two.site(site)
    ia, ib = a.read_index(), b.read_index()
    oa, ob = np.lexsort((ia[:, 1], ia[:, 0])), np.lexsort((ib[:, 1], ib[:, 0]))
    np.testing.assert_array_equal(ia[oa], ib[ob])
    np.testing.assert_array_equal(a.read_rows(oa), b.read_rows(ob))
  with pytest.raises(X.ExtractError, match="made by a different config"):
    X.extract(audio_config(folder, conditioning="caption"), str(part), log=lambda s: None)


def test_segments_stems_and_bad_config(folder, tmp_path):
  c = audio_config(folder, window="segment", max_segments=3)
  c.extract.duration = 0.1
  rows, windows, rec = extract_audio.plan(c.extract, print)
  starts = [(w.item.id, round(w.start_s, 3)) for w in windows]
  assert starts[:4] == [("g0", 0.0), ("g0", 0.1), ("g0", 0.2), ("g1", 0.0)]
  assert ("short", 0.0) in starts and ("short", 0.1) not in starts   # 0.125 s: one window
  assert rows[1]["labels"]["window_start_s"] == 0.1 and rec["window"] == "segment"
  # stems: every file is replaced by <stems_dir>/<name>/<stem>.wav
  assert extract_audio.stem_path("/d/wav/g0.mp3", "/sep/htdemucs", "no_vocals") == \
      "/sep/htdemucs/g0/no_vocals.wav"
  c = audio_config(folder, stems_dir=str(tmp_path), stem="no_vocals")
  with pytest.raises(extract_audio.AudioExtractError, match=r"5 of 5 audio files are missing"):
    extract_audio.plan(c.extract, print)
  with pytest.raises(extract_audio.AudioExtractError, match="conditioning='fixed' needs"):
    extract_audio.plan(audio_config(folder, conditioning="fixed").extract, print)
  c = audio_config(folder, conditioning="none")
  c.extract.sites = ("lm.layer.0", "t5.pooled")
  with pytest.raises(X.ExtractError, match="has no text: drop"):
    X.extract(c, str(tmp_path), log=lambda s: None)


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
def test_formats_resample_mono_and_offset(tmp_path, ext):
  """Each format loads mono at the model's rate; the window starts at the offset. Lossless
  files match the array path; lossy ones (ogg, mp3: encoder delay shifts the phase) match
  its loudness."""
  sr, t = 22050, np.arange(22050) / 22050
  left = 0.3 * np.sin(2 * np.pi * 440 * t) * np.linspace(0, 1, len(t))   # rising amplitude
  stereo = np.stack([left, left], 1).astype(np.float32)
  sf.write(tmp_path / f"x.{ext}", stereo, sr)
  y, real = from_audio.load_window(str(tmp_path / f"x.{ext}"), None, 16000, 0.5, 0.25)
  ref, _ = from_audio.load_window(stereo.T, sr, 16000, 0.5, 0.25)
  assert y.shape == ref.shape == (4000,) and real == pytest.approx(0.25)
  if ext in ("wav", "flac"):
    np.testing.assert_allclose(y[:-16], ref[:-16], atol=1e-3)   # resampler edge at the cut
  rms = lambda a: float(np.sqrt(np.mean(a ** 2)))
  assert rms(y) == pytest.approx(rms(ref), rel=0.05)
  head, _ = from_audio.load_window(str(tmp_path / f"x.{ext}"), None, 16000, 0.0, 0.25)
  assert rms(head) == pytest.approx(rms(from_audio.load_window(stereo.T, sr, 16000, 0.0,
                                                                  0.25)[0]), rel=0.1)
  tail, real = from_audio.load_window(str(tmp_path / f"x.{ext}"), None, 16000, 0.9, 0.25)
  assert real == pytest.approx(0.1, abs=0.06) and not tail[-1000:].any()   # zero-padded


def test_missing_audio_skip_or_error(folder, tmp_path):
  d = tmp_path / "partial"
  d.mkdir()
  (d / "metadata.jsonl").write_text(
      json.dumps({"id": "here", "path": str(folder / "wav/g0.wav"), "caption": "a"}) + "\n" +
      json.dumps({"id": "gone", "path": "nope.wav", "caption": "b"}) + "\n")
  with pytest.raises(extract_audio.AudioExtractError, match="1 of 2 audio files are missing"):
    extract_audio.plan(audio_config(d).extract, print)
  logs = []
  rows, windows, _ = extract_audio.plan(audio_config(d, missing="skip").extract, logs.append)
  assert [w.item.id for w in windows] == ["here"] and "1 of 2 items skipped" in logs[0]
