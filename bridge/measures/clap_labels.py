"""CLAP embeddings for feature labels: `python -m bridge.measures.clap_labels REPORT_DIR`.

Reads `REPORT_DIR/label_examples.json` (written by launch.analyze: snippets as
`[prompt_id, start_frame, num_frames]`, the frame rate, the dataset's audio directory,
the CLAP model and the texts), cuts each snippet from `<dataset>/audio/<prompt_id:06d>.wav`,
embeds snippets and texts with `clap.ClapScorer` and writes
`REPORT_DIR/clap_embeddings.npz` (`audio [snippets, e]`, `text [texts, e]`, L2-normalised)
and `clap_embeddings.json` (model, counts, the request's SHA-256). Without weights (an
empty model field, a missing directory) it writes `{"skipped": reason}`, prints that one
line and exits 0: the labels then carry the reason, never imitated scores.
The ranking and scoring are numpy on the JAX side (musicsae_jax.analysis.labelers).

`python -m bridge.measures.clap_labels REPORT_DIR --label_texts` embeds the labels that came later
(LLM explanations, listed in `REPORT_DIR/label_texts.json` by the labelers) with the same
model, so CLAP can score them too: `clap_label_texts.npz` (`text [texts, e]`) and
`clap_label_texts.json` (model, texts, both requests' SHA-256).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import numpy as np

from bridge.measures import clap
from musicsae_jax import files

REQUEST, OUT = "label_examples.json", "clap_embeddings"
TEXTS_REQUEST, TEXTS_OUT = "label_texts.json", "clap_label_texts"
# The random test model, shrunk: 16 kHz input, 2 s windows, a small spectrogram image.
TINY = {"sampling_rate": 16000, "spec_size": 128, "max_length_s": 2}


def _write(report_dir: str, meta: dict, audio=None, text=None) -> None:
  if audio is not None:
    with files.atomic_path(os.path.join(report_dir, OUT + ".npz")) as tmp:
      with open(tmp, "wb") as f:
        np.savez(f, audio=audio.astype(np.float32), text=text.astype(np.float32))
  files.write_json(os.path.join(report_dir, OUT + ".json"), meta)


def _read(path: str, what: str) -> tuple[dict, str]:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {what}")
  with open(path, "rb") as f:
    raw = f.read()
  return json.loads(raw), hashlib.sha256(raw).hexdigest()


def _scorer(req: dict):
  """The request's CLAP; the tiny test model is rebuilt from the same words (same weights)."""
  words = [w for t in req["clap"]["texts"] for w in t.split()]
  return clap.ClapScorer.load(req["clap"]["model"], field="analysis.labeling.clap",
                                    tiny={**TINY, "extra_words": words})


def embed(report_dir: str, batch: int = 32, log=print) -> dict:
  """Embed the request's snippets and texts; returns the metadata written."""
  req, digest = _read(os.path.join(report_dir, REQUEST),
                      "run launch.analyze with 'clap' in analysis.labelers")
  scorer, what = _scorer(req)
  if scorer is None:
    meta = {"skipped": what, "request_sha256": digest}
    _write(report_dir, meta)
    log(f"labels: CLAP skipped: {what}")
    return meta
  import soundfile as sf
  t0 = time.time()
  fr, snippets = float(req["frame_rate"]), req["snippets"]
  audio, sr, clip = None, None, (None, None, None)
  batch_ids, batch_wavs = [], []

  done, last = 0, [time.time()]

  def flush():
    nonlocal audio, done
    emb = scorer.audio(batch_wavs, sr)
    if audio is None:
      audio = np.zeros((len(snippets), emb.shape[1]), np.float32)
    audio[batch_ids] = emb
    done += len(batch_ids)
    batch_ids.clear(), batch_wavs.clear()
    if time.time() - last[0] > 10 and done < len(snippets):
      last[0] = time.time()
      rate = done / (time.time() - t0)
      log(f"labels: CLAP {done}/{len(snippets)} snippets, {rate:.1f}/s, "
          f"ETA {(len(snippets) - done) / rate:.0f} s")

  # one clip in memory at a time: snippets in prompt order, embedded in batches
  for i in sorted(range(len(snippets)), key=lambda j: snippets[j][0]):
    pid, start, length = snippets[i]
    if clip[0] != pid:
      wav_path = os.path.join(req["audio_dir"], f"{pid:06d}.wav")
      if not os.path.exists(wav_path):
        raise FileNotFoundError(f"{wav_path} not found: CLAP labels need the extracted audio "
                                f"(extract with --config.extract.save_audio=True)")
      clip = (pid, *sf.read(wav_path, dtype="float32", always_2d=True))
    _, y, rate = clip
    if sr is None:
      sr = rate
    elif rate != sr:
      raise ValueError(f"{req['audio_dir']}: clips at {sr} and {rate} Hz; expected one rate")
    a, b = int(round(start / fr * rate)), int(round((start + length) / fr * rate))
    batch_ids.append(i), batch_wavs.append(y[a:max(b, a + 1)].mean(1))
    if len(batch_ids) == batch:
      flush()
  if batch_ids:
    flush()
  template = req["clap"].get("template", "{}")
  text = scorer.text([template.format(t) for t in req["clap"]["texts"]])
  if audio is None:
    audio = np.zeros((0, text.shape[1]), np.float32)
  meta = {"model": scorer.name, "snippets": len(snippets), "texts": len(req["clap"]["texts"]),
          "sample_rate": sr, "seconds": round(time.time() - t0, 2), "request_sha256": digest}
  _write(report_dir, meta, audio, text)
  log(f"labels: CLAP ({scorer.name}) embedded {len(snippets)} snippets and "
      f"{meta['texts']} texts in {meta['seconds']:.1f} s")
  return meta


def embed_label_texts(report_dir: str, log=print) -> dict:
  """Embed label_texts.json's texts with label_examples.json's CLAP; returns the metadata."""
  req, digest = _read(os.path.join(report_dir, REQUEST),
                      "run launch.analyze with 'clap' in analysis.labelers")
  texts_req, texts_digest = _read(os.path.join(report_dir, TEXTS_REQUEST),
                                  "the labelers write it when LLM labels need CLAP scores")
  scorer, what = _scorer(req)
  meta = {"request_sha256": digest, "texts_sha256": texts_digest}
  if scorer is None:
    meta["skipped"] = what
    log(f"labels: CLAP skipped: {what}")
  else:
    t0 = time.time()
    texts = list(texts_req["texts"])
    template = req["clap"].get("template", "{}")
    text = scorer.text([template.format(t) for t in texts]) if texts else np.zeros((0, 0))
    with files.atomic_path(os.path.join(report_dir, TEXTS_OUT + ".npz")) as tmp:
      with open(tmp, "wb") as f:
        np.savez(f, text=text.astype(np.float32))
    meta.update({"model": scorer.name, "texts": texts, "seconds": round(time.time() - t0, 2)})
    log(f"labels: CLAP ({scorer.name}) embedded {len(texts)} label texts")
  files.write_json(os.path.join(report_dir, TEXTS_OUT + ".json"), meta)
  return meta


def main(argv: list[str]) -> int:
  args = [a for a in argv[1:] if a != "--label_texts"]
  if len(args) != 1:
    print("usage: python -m bridge.measures.clap_labels REPORT_DIR [--label_texts] (REPORT_DIR holding "
          "label_examples.json)", file=sys.stderr)
    return 2
  try:
    (embed_label_texts if "--label_texts" in argv else embed)(args[0])
  except (FileNotFoundError, ValueError) as e:
    print(f"bridge.measures.clap_labels: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
