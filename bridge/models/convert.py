"""Convert an audiocraft MusicGen's LM (and its T5) into a transformers MusicgenForConditionalGeneration.

The two implementations compute the same network: the same decoder block (pre-norm self-
attention, cross-attention, GELU MLP, no biases), the same sinusoidal positions (cos then
sin), the same per-codebook embeddings summed and per-codebook heads, and T5 -> linear
projection -> zeroed padding as the text condition. Only names and the fused q/k/v
projection differ. What the conversion cannot carry over is behaviour: transformers masks
padded text positions in cross-attention, audiocraft attends to them as zero vectors.

Supports the tiny models and MusicGen text-to-music LMs built with audiocraft's default
`custom` attention layout (`in_proj_weight` [3D, D]); the codec is not converted (pass a
transformers EnCodec via `audio_config`, or a random one of the right sizes is made).
"""
from __future__ import annotations

import copy
import re

import torch

_RENAMES = (  # audiocraft LM name -> transformers MusicgenForCausalLM name
    (r"^emb\.(\d+)\.", r"model.decoder.embed_tokens.\1."),
    (r"^transformer\.layers\.(\d+)\.norm1\.", r"model.decoder.layers.\1.self_attn_layer_norm."),
    (r"^transformer\.layers\.(\d+)\.norm_cross\.", r"model.decoder.layers.\1.encoder_attn_layer_norm."),
    (r"^transformer\.layers\.(\d+)\.norm2\.", r"model.decoder.layers.\1.final_layer_norm."),
    (r"^transformer\.layers\.(\d+)\.linear1\.", r"model.decoder.layers.\1.fc1."),
    (r"^transformer\.layers\.(\d+)\.linear2\.", r"model.decoder.layers.\1.fc2."),
    (r"^transformer\.layers\.(\d+)\.self_attn\.out_proj\.", r"model.decoder.layers.\1.self_attn.out_proj."),
    (r"^transformer\.layers\.(\d+)\.cross_attention\.out_proj\.",
     r"model.decoder.layers.\1.encoder_attn.out_proj."),
    (r"^out_norm\.", r"model.decoder.layer_norm."),
    (r"^linears\.(\d+)\.", r"lm_heads.\1."),
)
_IN_PROJ = re.compile(r"^transformer\.layers\.(\d+)\.(self_attn|cross_attention)\.in_proj_weight$")


def lm_state_dict_to_transformers(sd: dict[str, torch.Tensor]) -> tuple[dict, dict]:
  """(decoder state dict in MusicgenForCausalLM names, {'enc_to_dec_proj.*': ...})."""
  dec, proj = {}, {}
  for k, v in sd.items():
    if k.startswith("condition_provider.conditioners.description.output_proj."):
      proj["enc_to_dec_proj." + k.rsplit(".", 1)[1]] = v
      continue
    m = _IN_PROJ.match(k)
    if m:
      attn = "self_attn" if m.group(2) == "self_attn" else "encoder_attn"
      q, kk, vv = v.chunk(3, dim=0)
      for n, w in (("q_proj", q), ("k_proj", kk), ("v_proj", vv)):
        dec[f"model.decoder.layers.{m.group(1)}.{attn}.{n}.weight"] = w
      continue
    for pat, rep in _RENAMES:
      if re.match(pat, k):
        dec[re.sub(pat, rep, k)] = v
        break
    else:
      raise ValueError(f"audiocraft LM weight {k!r} has no transformers counterpart "
                       f"(only text-to-music LMs without biases are supported)")
  return dec, proj


def audiocraft_to_transformers(model, audio_config=None):
  """A transformers backend (bridge.models.backends.TransformersBackend) computing `model`'s LM.

  `model`: an audiocraft MusicGen (or its adapter) whose text conditioner is T5. The T5
  encoder and tokenizer are shared as they are; the LM weights are renamed and q/k/v split.
  """
  from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration
  from bridge.models import backends, audiocraft_musicgen, transformers_musicgen
  be = backends.adapt(model)
  lm = be.model.lm
  cond = audiocraft_musicgen.text_conditioner(be.model)
  info = be.info
  tr = lm.transformer
  layer0 = tr.layers[0]
  dec_cfg = MusicgenDecoderConfig(
      vocab_size=info.card, max_position_embeddings=2048, num_hidden_layers=info.num_layers,
      ffn_dim=layer0.linear1.out_features, num_attention_heads=layer0.self_attn.num_heads,
      hidden_size=info.d_model, dropout=0.0, num_codebooks=info.n_q,
      pad_token_id=lm.special_token_id, bos_token_id=lm.special_token_id,
      decoder_start_token_id=lm.special_token_id)
  audio_config_given = audio_config
  if audio_config is None:   # the codec is not part of the comparison: random, right sizes
    hop = round(info.sample_rate / info.frame_rate)
    audio_config = EncodecConfig(
        sampling_rate=info.sample_rate, audio_channels=1, num_filters=4, hidden_size=32,
        upsampling_ratios=audiocraft_musicgen._ratios(hop), codebook_size=info.card, codebook_dim=32,
        target_bandwidths=[info.n_q * info.frame_rate / 100.0], num_residual_layers=1,
        num_lstm_layers=1, use_causal_conv=False, normalize=False, compress=2)
  with transformers_musicgen._quiet():   # T5 built from its config (a module passed in keeps inner
    # config objects the composite does not update: padding masks were ignored), then loaded
    cfg = MusicgenConfig(text_encoder=copy.deepcopy(cond.t5.config), audio_encoder=audio_config,
                         decoder=dec_cfg)
    hf = MusicgenForConditionalGeneration(cfg).eval()
  if audio_config_given is None:
    transformers_musicgen.random_codebooks(hf, 0)
  hf.text_encoder.load_state_dict(cond.t5.state_dict())
  dec, proj = lm_state_dict_to_transformers(lm.state_dict())
  missing, unexpected = hf.decoder.load_state_dict(dec, strict=False)
  missing = [k for k in missing if not k.endswith("embed_positions.weights")]
  if missing or unexpected:
    raise ValueError(f"conversion mismatch: missing {missing[:4]}, unexpected {unexpected[:4]}")
  hf.enc_to_dec_proj.load_state_dict({k.split(".", 1)[1]: v for k, v in proj.items()})
  hf.generation_config.update(pad_token_id=lm.special_token_id,
                              decoder_start_token_id=lm.special_token_id,
                              bos_token_id=lm.special_token_id)
  return backends.TransformersBackend(hf, cond.t5_tokenizer, name=f"{info.name} (converted)")
