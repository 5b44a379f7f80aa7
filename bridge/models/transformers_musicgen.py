"""MusicGen through Hugging Face transformers: real checkpoints by name/dir, or a tiny random one.

The second backend (`model.backend = "transformers"`): `MusicgenForConditionalGeneration`
with its T5 tokenizer. Loading returns a `bridge.models.backends.TransformersBackend`, the same
interface the audiocraft model gets, so capture, steering and extraction do not care which
implementation runs. No audiocraft import here.
"""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
from pathlib import Path

import torch

from bridge.models import audiocraft_musicgen

KNOWN_NAMES = ("facebook/musicgen-small", "facebook/musicgen-medium",
               "facebook/musicgen-large")
_SHORT = {n.split("-")[-1]: n for n in KNOWN_NAMES}
_FILES = ("config.json",)          # plus weights (model.safetensors / pytorch_model.bin)


@contextlib.contextmanager
def _quiet():
  """transformers warns that MusicGen's pad/start token (= card) is outside the codebook
  vocabulary; that is MusicGen's design (the embeddings have card + 1 rows)."""
  from transformers.utils import logging as hf_logging
  level = hf_logging.get_verbosity()
  hf_logging.set_verbosity_error()
  hf_logging.disable_progress_bar()
  try:
    yield
  finally:
    hf_logging.set_verbosity(level)


def tiny_config(dim: int = 64, num_layers: int = 4, num_heads: int = 4, card: int = 256,
                n_q: int = 4, t5_dim: int = 32, t5_layers: int = 2, sample_rate: int = 16000,
                hop: int = 320, vocab_size: int = 32):
  """A `MusicgenConfig` with the tiny audiocraft model's sizes (bridge.models.audiocraft_musicgen.build_tiny_musicgen)."""
  from transformers import (EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config)
  t5 = T5Config(vocab_size=vocab_size, d_model=t5_dim, d_kv=8, d_ff=2 * t5_dim,
                num_layers=t5_layers, num_heads=4, dropout_rate=0.0,
                relative_attention_num_buckets=8)
  frame_rate = sample_rate // hop
  # target bandwidth (kbps) -> quantizers: 1000 bw // (10 frame_rate) must give n_q layers
  enc = EncodecConfig(sampling_rate=sample_rate, audio_channels=1, num_filters=4, hidden_size=32,
                      upsampling_ratios=audiocraft_musicgen._ratios(hop), codebook_size=card,
                      codebook_dim=32, target_bandwidths=[n_q * frame_rate / 100.0],
                      num_residual_layers=1, num_lstm_layers=1, use_causal_conv=False,
                      normalize=False, compress=2)
  dec = MusicgenDecoderConfig(vocab_size=card, max_position_embeddings=2048,
                              num_hidden_layers=num_layers, ffn_dim=4 * dim,
                              num_attention_heads=num_heads, hidden_size=dim, dropout=0.0,
                              num_codebooks=n_q, pad_token_id=card, bos_token_id=card,
                              decoder_start_token_id=card)
  with _quiet():
    return MusicgenConfig(text_encoder=t5, audio_encoder=enc, decoder=dec)


def build_tiny(seed: int = 0, device: str = "cpu", **sizes):
  """A tiny random transformers MusicGen (deterministic from `seed`) with the in-memory T5
  tokenizer of the audiocraft tiny model; returns a `TransformersBackend`.

  The T5 is built exactly as the audiocraft tiny model builds it (same seed, same config),
  so the text sites of the two tiny models agree; the LMs are initialised differently.
  """
  from transformers import MusicgenForConditionalGeneration, T5EncoderModel, T5Tokenizer
  from bridge.models import backends
  tmp = Path(tempfile.mkdtemp(prefix="musicsae-tiny-t5-"))
  try:
    tok_dir, vocab_size = audiocraft_musicgen._tiny_tokenizer_dir(tmp)
    tokenizer = T5Tokenizer.from_pretrained(tok_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  cfg = tiny_config(vocab_size=vocab_size, **sizes)
  with _quiet():
    torch.manual_seed(seed)
    t5 = T5EncoderModel(copy.deepcopy(cfg.text_encoder))
    torch.manual_seed(seed + 2)
    # built whole from the config, T5 weights loaded after: a T5 module passed in keeps
    # inner config objects the composite does not update (its padding mask was ignored)
    model = MusicgenForConditionalGeneration(cfg).eval()
    model.text_encoder.load_state_dict(t5.state_dict())
    random_codebooks(model, seed + 3)
    model = model.to(device)
  model.generation_config.update(pad_token_id=cfg.decoder.pad_token_id,
                                 decoder_start_token_id=cfg.decoder.decoder_start_token_id,
                                 bos_token_id=cfg.decoder.bos_token_id)
  be = backends.TransformersBackend(model, tokenizer, name="tiny")
  be.set_generation_params(duration=1.0, top_k=min(250, cfg.decoder.vocab_size))
  return be


def random_codebooks(model, seed: int) -> None:
  """EnCodec codebooks start as zeros (real ones come from a checkpoint), so every code
  would decode to the same audio: give a random codec random codebooks."""
  g = torch.Generator().manual_seed(seed)
  for layer in model.audio_encoder.quantizer.layers:
    layer.codebook.embed.copy_(torch.randn(layer.codebook.embed.shape, generator=g))


def _resolve(name_or_dir: str) -> tuple[str, Path | None]:
  name = _SHORT.get(name_or_dir, name_or_dir)
  local = Path(name).expanduser()
  if local.is_dir():
    if not (local / "config.json").is_file():
      raise audiocraft_musicgen.ModelLoadError(
          f"transformers MusicGen directory {local} lacks config.json; it must be a "
          f"save_pretrained directory (config.json, weights, tokenizer files) as downloaded "
          f"for {KNOWN_NAMES[0]}.")
    return str(local), local
  if name not in KNOWN_NAMES:
    raise audiocraft_musicgen.ModelLoadError(
        f"unknown MusicGen model {name_or_dir!r} for model.backend=transformers: use 'tiny', "
        f"one of {', '.join(KNOWN_NAMES)}, or a local save_pretrained directory.")
  return name, None


def load(name_or_dir: str, device: str = "cpu", dtype: torch.dtype | None = None):
  """A pretrained transformers MusicGen by hub name or local directory -> TransformersBackend.

  Same path for both up to the download (`from_pretrained`); offline without a cached copy
  it fails at once with what to do (as bridge.models.audiocraft_musicgen.load_musicgen does for audiocraft).
  """
  from bridge.models import backends
  if name_or_dir == "tiny":
    return build_tiny(device=device)
  src, local = _resolve(name_or_dir)
  from transformers import AutoTokenizer, MusicgenForConditionalGeneration
  try:
    with audiocraft_musicgen._offline_unless_hub_reachable(local is not None), _quiet():
      model = MusicgenForConditionalGeneration.from_pretrained(
          src, **({"dtype": dtype} if dtype is not None else {}))
      tokenizer = AutoTokenizer.from_pretrained(src)
  except Exception as e:  # noqa: BLE001 - hub/network errors come in many types
    why = " ".join(str(e).split())[:200]          # one line
    if local is not None:
      raise audiocraft_musicgen.ModelLoadError(
          f"could not load the transformers MusicGen in {local} ({type(e).__name__}: "
          f"{why}); it must hold config.json, the weights and the T5 tokenizer "
          f"files (save_pretrained of the model and its processor).") from e
    cache = os.environ.get("HF_HOME", "the default hub cache")
    raise audiocraft_musicgen.ModelLoadError(
        f"could not load {src!r} with transformers ({type(e).__name__}: {why}). No "
        f"weights in {cache} and no network? Download {src} (config.json, model weights, "
        f"tokenizer files) on a connected machine into a directory and pass that directory, "
        f"or set HF_HOME to a cache that has them.") from e
  model = model.eval().to(device)
  return backends.TransformersBackend(model, tokenizer, name=src)
