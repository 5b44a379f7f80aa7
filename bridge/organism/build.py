"""The organism recipe: concept set -> codec -> tokens -> LM -> a MusicGen directory.

`make_organism(config, workdir)` renders the concept set if needed (c.concepts), builds a
MusicGen from audiocraft's classes at the sizes of c.organism.model (bridge.models.audiocraft_musicgen'
tiny builder, with a tokenizer holding every caption word), trains the codec and then the
LM on held-in clips, measures both on held-out clips, and saves `<out>/` in the layout of
the hub checkpoints (state_dict.bin, compression_state_dict.bin, t5/), so `model.name=<out>`
loads it through `MusicGen.get_pretrained` like real weights. `<out>/organism.json` holds
the metrics, the sizes, the timings and the held-out clip ids.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable

import numpy as np
import torch

from bridge.sources import concepts as concepts_lib
from bridge.models import audiocraft_musicgen
from bridge.organism import codec as codec_lib
from bridge.organism import data
from bridge.organism import lm as lm_lib

FORMAT_VERSION = 1
METRICS_FILE = "organism.json"


def paths(config, workdir: str) -> tuple[str, str]:
  o = config.organism
  return (o.concepts_dir or os.path.join(workdir, "concepts"),
          o.out or os.path.join(workdir, "organism"))


def build_model(o, words):
  m = o.model
  overrides = {
      "classifier_free_guidance": {"training_dropout": float(m.cfg_dropout)},
      "transformer_lm": {"dropout": float(m.get("lm_dropout", 0.0))},
      # audiocraft's recipe: RVQ codebooks start from k-means on the first training batch
      # (the random-init path of the untrained tiny model collapses to one code here).
      "rvq": {"kmeans_init": True, "kmeans_iters": 50, "decay": float(o.codec.ema_decay)},
      "seanet": {"n_filters": int(m.seanet_filters), "dimension": int(m.seanet_dimension),
                 "n_residual_layers": int(m.seanet_residual_layers)}}
  return audiocraft_musicgen.build_tiny_musicgen(
      seed=int(o.seed), dim=int(m.dim), num_layers=int(m.num_layers), num_heads=int(m.num_heads),
      card=int(m.card), n_q=int(m.n_q), t5_dim=int(m.t5_dim), t5_layers=int(m.t5_layers),
      sample_rate=int(m.sample_rate), hop=int(m.hop), words=words, overrides=overrides)


def _count(module) -> int:
  return int(sum(p.numel() for p in module.parameters()))


def make_organism(config, workdir: str, *, log: Callable[[str], None] = print) -> dict:
  """Train and save the organism; returns the metrics written to <out>/organism.json."""
  o = config.organism
  concepts_dir, out = paths(config, workdir)
  if os.path.exists(os.path.join(out, METRICS_FILE)) and not o.overwrite:
    raise data.OrganismError(f"{out} already holds an organism ({METRICS_FILE}); pass "
                             f"--config.organism.overwrite=True to train it again")
  if int(o.torch_threads):
    torch.set_num_threads(int(o.torch_threads))
  sr = int(o.model.sample_rate)
  t_all = time.time()
  if not os.path.exists(os.path.join(concepts_dir, "metadata.jsonl")):
    if int(config.concepts.sample_rate) != sr:
      raise data.OrganismError(
          f"concepts.sample_rate={config.concepts.sample_rate} but organism.model.sample_rate="
          f"{sr}: render the concept set at the organism's rate")
    log(f"organism: rendering the concept set into {concepts_dir}")
    concepts_lib.make_concept_set(config.concepts, concepts_dir, log=log)
  clips = data.load_clips(concepts_dir, sr, float(config.concepts.duration))
  n = len(clips["ids"])
  train, held = data.split(n, float(o.heldout_fraction), int(o.seed))
  log(f"organism: {n} clips of {config.concepts.duration:g} s ({len(train)} train, "
      f"{len(held)} held out) from {concepts_dir}")
  model = build_model(o, data.words(clips["captions"]))
  sizes = {"lm_params": _count(model.lm), "codec_params": _count(model.compression_model),
           "t5_params": _count(audiocraft_musicgen.text_conditioner(model).t5)}
  log(f"organism: LM {sizes['lm_params'] / 1e6:.2f} M params, codec "
      f"{sizes['codec_params'] / 1e6:.2f} M, frozen T5 {sizes['t5_params'] / 1e6:.2f} M")

  wav = clips["wav"]
  torch.manual_seed(int(o.codec.seed))
  codec_train = codec_lib.train(model.compression_model, wav[train], o.codec, log=log)
  codec_eval = codec_lib.evaluate(model.compression_model, wav[held])
  log(f"organism codec (held out): msspec {codec_eval['msspec']:.3f} (silence "
      f"{codec_eval['msspec_silence']:.3f}), mel {codec_eval['mel']:.3f}, SI-SNR "
      f"{codec_eval['sisnr_db']:.2f} dB")

  codes = codec_lib.encode_all(model.compression_model, wav)
  used = [int(len(np.unique(codes[:, k]))) for k in range(codes.shape[1])]
  torch.manual_seed(int(o.lm.seed))
  caps = clips["captions"]
  fit, val = data.validation_split(train, float(o.lm.get("val_fraction", 0.0)), int(o.lm.seed))
  lm_train = lm_lib.train(model.lm, codes[fit], [caps[i] for i in fit], o.lm,
                          val=(codes[val], [caps[i] for i in val]) if len(val) else None, log=log)
  lm_eval = lm_lib.evaluate(model.lm, codes[held], [caps[i] for i in held], seed=int(o.seed))
  # The same teacher-forced measure on as many clips the LM trained on: the generalisation gap.
  seen = fit[:len(held)]
  lm_train["train_ce"] = lm_lib.mean_cross_entropy(model.lm, codes[seen], [caps[i] for i in seen])
  lm_train["heldout_ce"] = lm_lib.mean_cross_entropy(model.lm, codes[held], [caps[i] for i in held])
  lm_train["gap_nats"] = lm_train["heldout_ce"] - lm_train["train_ce"]
  log(f"organism LM cross entropy: {lm_train['train_ce']:.3f} nats on {len(seen)} training "
      f"clips, {lm_train['heldout_ce']:.3f} held out (gap {lm_train['gap_nats']:.3f})")
  log(f"organism LM (held out): token accuracy {lm_eval['true']['token_accuracy']:.3f}, "
      f"perplexity {lm_eval['true']['perplexity']:.1f} (shuffled captions "
      f"{lm_eval['shuffled']['perplexity']:.1f}, no text {lm_eval['none']['perplexity']:.1f}, "
      f"uniform {lm_eval['uniform_perplexity']})")

  from bridge.organism import tokens as tok_lib
  token_space = tok_lib.concept_accuracy(
      codes[train], [clips["labels"][i] for i in train], codes[held],
      [clips["labels"][i] for i in held], concepts_lib.LABEL_KEYS, int(model.lm.card))
  log("organism token space (held out): " + ", ".join(
      f"{k} {v['accuracy']:.2f} ({v['chance']:.2f})" for k, v in token_space.items()))

  acoustic = {}
  if int(o.acoustic_clips):
    from bridge.organism import acoustic as ac
    tr = train[:int(o.acoustic_clips) * 3]
    ho = held[:int(o.acoustic_clips)]
    recon = codec_lib.decode_codes(model.compression_model, codes[ho])[:, :wav.shape[1]]
    acoustic = ac.concept_survival(
        ac.clip_vectors(wav[tr], sr), [clips["labels"][i] for i in tr],
        ac.clip_vectors(wav[ho], sr), ac.clip_vectors(recon, sr),
        [clips["labels"][i] for i in ho], concepts_lib.LABEL_KEYS)
    for k, v in acoustic.items():
      log(f"organism acoustic {k}: original {v['accuracy_original']:.2f}, reconstructed "
          f"{v['accuracy_reconstructed']:.2f}, chance {v['chance']:.2f}")

  audiocraft_musicgen.save_musicgen(model, out)
  reloaded = audiocraft_musicgen.load_musicgen(out)                 # the real-weights path, as extract uses it
  check = torch.from_numpy(wav[held[:2]])[:, None]
  with torch.no_grad():
    same = bool(torch.equal(reloaded.compression_model.encode(check)[0],
                            model.compression_model.encode(check)[0]))
  if not same:
    raise RuntimeError(f"{out}: the reloaded organism encodes differently from the trained one")
  metrics = {
      "format_version": FORMAT_VERSION, "dir": os.path.abspath(out),
      "concepts_dir": os.path.abspath(concepts_dir), "clips": n,
      "train_clips": len(train), "heldout_ids": [clips["ids"][i] for i in held],
      "sizes": sizes, "config": config.organism.to_dict(),
      "codec": {"train": codec_train, "heldout": codec_eval, "codes_used_per_codebook": used,
                "card": int(model.lm.card)},
      "lm": {"train": lm_train, "heldout": lm_eval},
      "token_space": token_space, "acoustic": acoustic, "seconds": time.time() - t_all,
      "torch_threads": torch.get_num_threads()}
  with open(os.path.join(out, METRICS_FILE), "w") as f:
    json.dump(metrics, f, indent=1)
  log(f"organism: saved {out} in {metrics['seconds']:.0f} s")
  return metrics
