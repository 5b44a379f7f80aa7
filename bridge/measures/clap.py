"""CLAP scores for steering: audio-text similarity with transformers' `ClapModel`.

`steer.clap` names the model: a local directory saved with `save_pretrained` (e.g.
`laion/clap-htsat-unfused` with its processor), or `"tiny"`, a small RANDOM ClapModel
built from a config with a word-level tokenizer (tests and the demo: it exercises the
wiring, its scores mean nothing). Empty or missing: the CLAP measures are skipped with one
line, never imitated. Two measures per clip (embeddings L2-normalised, cosine):
`clap_prompt` (similarity to the clip's own prompt: prompt adherence) and, per label
value, the similarity to "<value> music", from which `clap_concept` = target minus the
mean over the other values.
"""
from __future__ import annotations

import os

import numpy as np
import torch

TINY = "tiny"


def _tiny(seed: int = 0, extra_words=(), sampling_rate: int = 48000, spec_size: int = 256,
          max_length_s: int = 10):
  """The random test CLAP. `extra_words`: more tokenizer words (a label vocabulary: words outside
  the tokenizer all read as <unk>); the other arguments shrink the audio side for speed."""
  import re
  from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
  from bridge.sources import prompts as prompts_lib
  from transformers import (ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel,
                            ClapTextConfig, PreTrainedTokenizerFast)
  corpus = " ".join(p["text"] for p in prompts_lib.emotion_prompts(8)) + " music " + " ".join(extra_words)
  words = ["<pad>", "<s>", "</s>", "<unk>"] + sorted(set(re.findall(r"\w+", corpus.lower())))
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tok.normalizer = normalizers.Lowercase()               # the built-in prompts' vocabulary
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                      bos_token="<s>", eos_token="</s>")
  text = ClapTextConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                        projection_dim=16)
  audio = ClapAudioConfig(spec_size=spec_size, patch_size=4, num_mel_bins=64, hidden_size=32,
                          patch_embeds_hidden_size=16, depths=[1, 1], num_attention_heads=[2, 2],
                          window_size=4, enable_fusion=False, projection_dim=16)
  torch.manual_seed(seed)
  model = ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(),
                               projection_dim=16)).eval()
  # The mel bank stops at Nyquist (CLAP's 14 kHz default is above it at the tiny model's
  # rates, leaving empty filters and a transformers warning in every analyze log).
  fe = ClapFeatureExtractor(feature_size=64, sampling_rate=sampling_rate, truncation="rand_trunc",
                            max_length_s=max_length_s,
                            frequency_max=min(14000, sampling_rate // 2))
  return model, fe, tokenizer


class ClapScorer:
  """Normalised CLAP audio and text embeddings."""

  def __init__(self, model, feature_extractor, tokenizer, name: str):
    self.model, self.fe, self.tokenizer, self.name = model, feature_extractor, tokenizer, name

  @classmethod
  def load(cls, spec: str, *, field: str = "steer.clap",
           tiny: dict | None = None) -> tuple["ClapScorer | None", str]:
    """(scorer, description) or (None, why it is skipped). `field` names the config field in
    the messages; `tiny`: keyword arguments of the random test model (`_tiny`)."""
    if not spec:
      return None, (f"{field} is empty (set a local ClapModel directory saved with "
                    "save_pretrained, or 'tiny' for the random test model)")
    if spec == TINY:
      return cls(*_tiny(**(tiny or {})), name="tiny random ClapModel (wiring only)"), "tiny"
    if not os.path.isdir(spec):
      return None, f"{field}={spec!r} is not a local directory (no download is attempted)"
    from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel
    try:
      model = ClapModel.from_pretrained(spec, local_files_only=True).eval()
      fe = ClapFeatureExtractor.from_pretrained(spec, local_files_only=True)
      tok = AutoTokenizer.from_pretrained(spec, local_files_only=True)
    except (OSError, ValueError) as e:
      return None, f"{field}={spec!r} could not be loaded: {str(e).splitlines()[0]}"
    return cls(model, fe, tok, name=spec), spec

  @staticmethod
  def _vec(out) -> torch.Tensor:
    v = out.pooler_output if hasattr(out, "pooler_output") else out
    return torch.nn.functional.normalize(v.float(), dim=-1)

  def audio(self, wavs, sample_rate: int) -> np.ndarray:
    """[n, e] for mono or [C, n] clips at `sample_rate` (resampled to the extractor's rate)."""
    import librosa
    target = int(self.fe.sampling_rate)
    clips = []
    for w in wavs:
      y = np.asarray(w, np.float32)
      y = y.mean(0) if y.ndim == 2 else y
      clips.append(librosa.resample(y, orig_sr=sample_rate, target_sr=target)
                   if sample_rate != target else y)
    inp = self.fe(clips, sampling_rate=target, return_tensors="pt")
    with torch.no_grad():
      return self._vec(self.model.get_audio_features(**inp)).numpy()

  def text(self, texts) -> np.ndarray:
    inp = self.tokenizer(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
      return self._vec(self.model.get_text_features(
          input_ids=inp["input_ids"], attention_mask=inp["attention_mask"])).numpy()
