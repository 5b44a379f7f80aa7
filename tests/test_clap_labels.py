"""bridge.measures.clap_labels: snippets cut from the extracted wavs and embedded with the tiny CLAP;
the one-line skip without weights."""
import hashlib
import json

import numpy as np
import soundfile as sf

from bridge.measures import clap_labels

SR, FR = 16000, 50.0


def _request(tmp_path, model):
  audio = tmp_path / "ds" / "audio"
  audio.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for pid in range(2):                   # 2 s clips of a 440 Hz tone; clip 1 ends in noise
    y = np.sin(2 * np.pi * 440 * np.arange(2 * SR) / SR).astype(np.float32) * 0.3
    if pid:
      y[SR:] = rng.normal(0, 0.3, SR)
    sf.write(str(audio / f"{pid:06d}.wav"), y, SR)
  req = {"frame_rate": FR, "snippets": [[0, 0, 50], [0, 50, 50], [1, 50, 50], [1, 0, 100]],
         "audio_dir": str(audio),
         "clap": {"model": model, "template": "{} music", "texts": ["guitar", "drums", "calm piano"]}}
  out = tmp_path / "report"
  out.mkdir()
  (out / "label_examples.json").write_text(json.dumps(req))
  return out


def test_tiny_clap_embeds_the_requested_snippets(tmp_path):
  out = _request(tmp_path, "tiny")
  meta = clap_labels.embed(str(out), batch=3, log=lambda m: None)
  assert meta["snippets"] == 4 and meta["texts"] == 3 and meta["sample_rate"] == SR
  assert meta["request_sha256"] == hashlib.sha256((out / "label_examples.json").read_bytes()).hexdigest()
  z = np.load(out / "clap_embeddings.npz")
  assert z["audio"].shape == (4, 16) and z["text"].shape == (3, 16)
  np.testing.assert_allclose(np.linalg.norm(z["audio"], axis=1), 1.0, atol=1e-5)
  assert not np.allclose(z["text"][0], z["text"][1])       # vocabulary words reach the tokenizer
  np.testing.assert_allclose(z["audio"][0], z["audio"][1], atol=1e-5)  # the same second of tone
  assert not np.allclose(z["audio"][0], z["audio"][2], atol=1e-3)     # tone vs the noise half


def test_without_weights_one_line_and_no_embeddings(tmp_path):
  out = _request(tmp_path, str(tmp_path / "no-such-dir"))
  lines = []
  meta = clap_labels.embed(str(out), log=lines.append)
  assert "analysis.labeling.clap=" in meta["skipped"] and "not a local directory" in meta["skipped"]
  assert len(lines) == 1 and "\n" not in lines[0]
  assert json.loads((out / "clap_embeddings.json").read_text())["skipped"] == meta["skipped"]
  assert not (out / "clap_embeddings.npz").exists()


def test_label_texts_pass_reuses_the_same_tiny_model(tmp_path):
  out = _request(tmp_path, "tiny")
  clap_labels.embed(str(out), batch=4, log=lambda m: None)
  (out / "label_texts.json").write_text(json.dumps({"texts": ["drums", "calm piano", "bright guitar"]}))
  assert clap_labels.main(["label_clap", str(out), "--label_texts"]) == 0
  meta = json.loads((out / "clap_label_texts.json").read_text())
  assert meta["texts"] == ["drums", "calm piano", "bright guitar"] and meta["model"].startswith("tiny")
  assert meta["request_sha256"] == hashlib.sha256((out / "label_examples.json").read_bytes()).hexdigest()
  first, again = np.load(out / "clap_embeddings.npz")["text"], np.load(out / "clap_label_texts.npz")["text"]
  np.testing.assert_allclose(again[:2], first[1:], atol=1e-5)   # same weights as the first pass
  assert again.shape == (3, 16) and not np.allclose(again[2], again[0], atol=1e-3)
