"""CLAP scoring: the tiny random model's wiring, the local save_pretrained path, and the skip."""
import numpy as np

from bridge.measures import clap


def test_tiny_clap_embeds_and_round_trips_through_a_local_dir(tmp_path):
  model, fe, tok = clap._tiny()
  scorer = clap.ClapScorer(model, fe, tok, name="tiny")
  wav = np.random.default_rng(0).normal(0, 0.1, (3, 16000)).astype(np.float32)
  a = scorer.audio(wav, 16000)                                  # resampled to 48 kHz inside
  t = scorer.text(["calm music", "sad music"])
  assert a.shape == (3, 16) and t.shape == (2, 16)
  np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
  assert not np.allclose(t[0], t[1])                            # label words are in the vocab
  model.save_pretrained(tmp_path), fe.save_pretrained(tmp_path), tok.save_pretrained(tmp_path)
  loaded, what = clap.ClapScorer.load(str(tmp_path))      # the real-checkpoint path
  assert loaded is not None and what == str(tmp_path)
  np.testing.assert_allclose(loaded.audio(wav, 16000), a, atol=1e-5)
  np.testing.assert_allclose(loaded.text(["calm music", "sad music"]), t, atol=1e-5)


def test_clap_skips_with_one_clear_reason(tmp_path):
  for spec, needle in (("", "steer.clap is empty"), (str(tmp_path / "none"), "not a local directory")):
    scorer, why = clap.ClapScorer.load(spec)
    assert scorer is None and needle in why and "\n" not in why
  scorer, why = clap.ClapScorer.load(str(tmp_path))       # a directory without a model
  assert scorer is None and "could not be loaded" in why


def test_tiny_clap_builds_without_a_mel_warning():
  """The tiny CLAP's mel bank ends at Nyquist: no 'all zero values' warning in the logs."""
  import warnings
  from bridge.measures import clap
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    clap._tiny(sampling_rate=16000)        # pylint: disable=protected-access
  assert not [w for w in caught if "mel filter" in str(w.message)], [str(w.message) for w in caught]
