"""CLAP embeddings for feature labels: `python -m bridge.label_clap REPORT_DIR`.

Reads `REPORT_DIR/label_examples.json` (written by launch.analyze: snippets as
`[prompt_id, start_frame, num_frames]`, the frame rate, the dataset's audio directory,
the CLAP model and the texts), cuts each snippet from `<dataset>/audio/<prompt_id:06d>.wav`,
embeds snippets and texts with `steer_clap.ClapScorer` and writes
`REPORT_DIR/clap_embeddings.npz` (`audio [snippets, e]`, `text [texts, e]`, L2-normalised)
and `clap_embeddings.json` (model, counts, the request's SHA-256). Without weights (an
empty model field, a missing directory) it writes `{"skipped": reason}`, prints that one
line and exits 0: the labels then carry the reason, never imitated scores.
The ranking and scoring are numpy on the JAX side (musicsae_jax.analysis.labelers).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import numpy as np

from bridge import steer_clap

REQUEST, OUT = "label_examples.json", "clap_embeddings"
# The random test model, shrunk: 16 kHz input, 2 s windows, a small spectrogram image.
TINY = {"sampling_rate": 16000, "spec_size": 128, "max_length_s": 2}


def _write(report_dir: str, meta: dict, audio=None, text=None) -> None:
  if audio is not None:
    tmp = os.path.join(report_dir, f"{OUT}.tmp-{os.getpid()}.npz")
    np.savez(tmp, audio=audio.astype(np.float32), text=text.astype(np.float32))
    os.replace(tmp, os.path.join(report_dir, OUT + ".npz"))
  with open(os.path.join(report_dir, OUT + ".json"), "w") as f:
    json.dump(meta, f, indent=2)


def embed(report_dir: str, batch: int = 32, log=print) -> dict:
  """Embed the request's snippets and texts; returns the metadata written."""
  path = os.path.join(report_dir, REQUEST)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: run launch.analyze with 'clap' in analysis.labelers")
  with open(path, "rb") as f:
    raw = f.read()
  req = json.loads(raw)
  digest = hashlib.sha256(raw).hexdigest()
  words = [w for t in req["clap"]["texts"] for w in t.split()]
  scorer, what = steer_clap.ClapScorer.load(req["clap"]["model"], field="analysis.labeling.clap",
                                            tiny={**TINY, "extra_words": words})
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


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print("usage: python -m bridge.label_clap REPORT_DIR (holding label_examples.json)",
          file=sys.stderr)
    return 2
  try:
    embed(argv[1])
  except (FileNotFoundError, ValueError) as e:
    print(f"bridge.label_clap: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
