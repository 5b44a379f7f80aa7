"""One interface over the two MusicGen implementations: audiocraft and Hugging Face transformers.

`adapt(model)` wraps an audiocraft `MusicGen` or a transformers
`MusicgenForConditionalGeneration` (or returns an adapter unchanged). Capture, steering and
extraction only use this interface, so the same sites, store contract and directions work
on both:

- `layer_module(i)`: the module whose output is the residual stream after decoder block i
  (`lm.layer.<i>`); `text_module()` (T5, `t5.hidden`/`t5.pooled`) and `proj_module()`
  (T5 -> LM width, `cond.proj`).
- `module_path(site)`: that module's path from the model object the user holds (the
  exported `hook_name`).
- `generate_tokens(texts, seed)` with classifier-free guidance, `generate_audio(tokens)`.
- `step_offset(kwargs, S)`: the decoding position of the first row a layer call sees.
- `forward(texts, seq, cfg_batch)`: one teacher-forced pass over delay-pattern inputs.

Both backends batch guidance the same way (rows `[:B]` conditional, `[B:]` unconditional)
and share the delay pattern (decoding pass i predicts codebook 0 of frame i; T frames take
T + n_q - 1 passes). They differ in one place: transformers masks padded text positions in
cross-attention and audiocraft attends to them (as zero vectors), so in a batch with
prompts of different token lengths the shorter prompts' activations differ between the
backends (tests/test_backend_transformers.py shows both cases).
"""
from __future__ import annotations

import types

import torch

from bridge.models import audiocraft_musicgen, capture_sites

BACKENDS = ("audiocraft", "transformers")
_ATTR = "_musicsae_backend"


def adapt(model):
  """The backend adapter of `model` (cached on it, so hooks and state are shared)."""
  if isinstance(model, Backend):
    return model
  cached = getattr(model, "__dict__", {}).get(_ATTR)
  if cached is not None and cached.model is model:     # not the adapter of a copy's source
    return cached
  if hasattr(model, "lm") and hasattr(model, "compression_model"):
    be = AudiocraftBackend(model)
  elif type(model).__name__ == "MusicgenForConditionalGeneration":
    tok = cached.tokenizer if isinstance(cached, TransformersBackend) else None
    be = TransformersBackend(model, tok)
  else:
    raise TypeError(f"not a MusicGen: {type(model).__name__} (expected an audiocraft MusicGen "
                    f"or a transformers MusicgenForConditionalGeneration)")
  object.__setattr__(model, _ATTR, be)
  return be


def model_info(model) -> audiocraft_musicgen.ModelInfo:
  """Sizes and rates of a MusicGen on either backend (audiocraft MusicGen, transformers
  MusicgenForConditionalGeneration, or an adapter of either)."""
  return adapt(model).info


class Backend:
  """Common interface (see module docstring). Unknown attributes go to the wrapped model."""
  name = ""
  two_step = False

  def __init__(self, model):
    self.model = model

  def __getattr__(self, attr):
    if attr.startswith("__") or attr == "model":
      raise AttributeError(attr)
    return getattr(self.model, attr)

  @property
  def info(self) -> audiocraft_musicgen.ModelInfo:
    raise NotImplementedError

  def module_path(self, site: str) -> str:
    """The exported `hook_name` of `site`: a module path from the model object (audiocraft:
    `MusicGen.lm`; transformers: the MusicgenForConditionalGeneration)."""
    from musicsae_jax import export          # numpy only: the one table of hook names
    return export.hook_module(site, self.name)


# --------------------------------------------------------------------------------------
# audiocraft
# --------------------------------------------------------------------------------------
def streaming_offset(transformer) -> int:
  """Decoding position of the current call of an audiocraft StreamingTransformer."""
  state = transformer._streaming_state
  o = state.get("offsets") if isinstance(state, dict) else None
  return int(o.reshape(-1)[0]) if o is not None else 0


class AudiocraftBackend(Backend):
  """audiocraft `MusicGen` (hook paths are relative to `MusicGen.lm`)."""
  name = "audiocraft"

  def __init__(self, model):
    super().__init__(model)
    object.__setattr__(model, _ATTR, self)

  @property
  def info(self):
    model, lm = self.model, self.model.lm
    delays = getattr(lm.pattern_provider, "delays", [0])
    return audiocraft_musicgen.ModelInfo(
        name=str(model.name), d_model=int(lm.dim), num_layers=len(lm.transformer.layers),
        n_q=int(lm.n_q), card=int(lm.card), frame_rate=float(model.frame_rate),
        sample_rate=int(model.sample_rate),
        t5_dim=int(audiocraft_musicgen.text_conditioner(model).dim), max_delay=int(max(delays)))

  @property
  def two_step(self):
    gp = getattr(self.model, "generation_params", None) or {}
    return bool(gp.get("two_step_cfg") or getattr(self.model.lm, "two_step_cfg", False))

  def layer_module(self, i):
    """The module whose output is LM site `i`: a block index or `lm.layer.<i>[.attn|.cross_attn]`."""
    if isinstance(i, str):
      return capture_sites.lm_site_module(self.model.lm, i)
    return self.model.lm.transformer.layers[int(i)]

  def text_module(self):
    return audiocraft_musicgen.text_conditioner(self.model).t5

  def proj_module(self):
    return audiocraft_musicgen.text_conditioner(self.model).output_proj

  def step_offset(self, kwargs=None, S: int = 1) -> int:
    return streaming_offset(self.model.lm.transformer)

  def set_generation_params(self, **params):
    self.model.set_generation_params(**params)

  def generate_tokens(self, texts, seed=None):
    model = self.model
    if model.duration > model.max_duration:
      raise ValueError(f"duration {model.duration}s exceeds the model's window "
                       f"{model.max_duration}s; extended generation re-encodes context and "
                       f"cannot be captured one row per frame")
    if seed is not None:
      torch.manual_seed(seed)
    attributes, _ = model._prepare_tokens_and_attributes(list(texts), None)
    return model._generate_tokens(attributes, None, progress=False)

  def generate_audio(self, tokens):
    return self.model.generate_audio(tokens)


# --------------------------------------------------------------------------------------
# transformers
# --------------------------------------------------------------------------------------
class TransformersBackend(Backend):
  """transformers `MusicgenForConditionalGeneration` + its T5 tokenizer.

  Layers: `decoder.model.decoder.layers[i]` (output `[B', S, D]`); T5: `text_encoder`;
  projection: `enc_to_dec_proj` (absent when T5 and the LM have the same width). Under
  guidance, `generate` encodes the text once for the B prompts and appends B rows of zeros
  with an all-zero mask as the unconditional half; the projection runs on that `[2B]` batch
  at every step.
  """
  name = "transformers"
  max_duration = 30.0            # MusicGen's training window, as audiocraft's MusicGen

  def __init__(self, model, tokenizer, name: str | None = None):
    super().__init__(model)
    if tokenizer is None:
      from transformers import AutoTokenizer
      src = getattr(model, "name_or_path", "") or ""
      try:
        tokenizer = AutoTokenizer.from_pretrained(src)
      except Exception as e:  # noqa: BLE001
        raise audiocraft_musicgen.ModelLoadError(
            f"no T5 tokenizer for this transformers MusicGen ({src or 'built from a config'}); "
            f"pass one: TransformersBackend(model, tokenizer)") from e
    self.tokenizer = tokenizer
    self.model_name = name or getattr(model, "name_or_path", "") or "transformers-musicgen"
    self.generation_params = dict(use_sampling=True, top_k=250, top_p=0.0, temperature=1.0,
                                  duration=10.0, cfg_coef=3.0, two_step_cfg=False)
    object.__setattr__(model, _ATTR, self)

  # -- facts ---------------------------------------------------------------------------
  @property
  def info(self):
    c = self.model.config
    return audiocraft_musicgen.ModelInfo(
        name=self.model_name, d_model=int(c.decoder.hidden_size),
        num_layers=int(c.decoder.num_hidden_layers), n_q=int(c.decoder.num_codebooks),
        card=int(c.decoder.vocab_size), frame_rate=float(c.audio_encoder.frame_rate),
        sample_rate=int(c.audio_encoder.sampling_rate), t5_dim=int(c.text_encoder.d_model),
        max_delay=int(c.decoder.num_codebooks) - 1, backend=self.name)

  @property
  def sample_rate(self):
    return int(self.model.config.audio_encoder.sampling_rate)

  @property
  def frame_rate(self):
    return float(self.model.config.audio_encoder.frame_rate)

  @property
  def device(self):
    return self.model.device

  @property
  def duration(self):
    return float(self.generation_params["duration"])

  @property
  def special_token_id(self) -> int:
    return int(self.model.config.decoder.pad_token_id)

  # site tail -> MusicgenDecoderLayer attribute (outputs `(out, weights)`, before the residual add)
  ATTN_MODULES = {"attn": "self_attn", "cross_attn": "encoder_attn"}

  def layer_module(self, i):
    """The module whose output is LM site `i`: a block index or `lm.layer.<i>[.attn|.cross_attn]`."""
    layers = self.model.decoder.model.decoder.layers
    if isinstance(i, str):
      return capture_sites.lm_site_module(None, i, layers=layers, attn_modules=self.ATTN_MODULES)
    return layers[int(i)]

  def text_module(self):
    return self.model.text_encoder

  def proj_module(self):
    proj = getattr(self.model, "enc_to_dec_proj", None)
    if proj is None:
      raise ValueError("this transformers MusicGen has no enc_to_dec_proj (T5 and the LM have "
                       "the same width): cond.proj equals t5.hidden; use t5.hidden")
    return proj

  def step_offset(self, kwargs=None, S: int = 1) -> int:
    """Position of the call's first row: the self-attention cache already holds this call's
    keys when a layer's forward hook runs (layer 0 updated it), so subtract S."""
    cache = (kwargs or {}).get("past_key_values")
    return int(cache.get_seq_length()) - int(S) if cache is not None else 0

  # -- generation ----------------------------------------------------------------------
  def set_generation_params(self, use_sampling: bool = True, top_k: int = 250,
                            top_p: float = 0.0, temperature: float = 1.0,
                            duration: float = 10.0, cfg_coef: float = 3.0,
                            two_step_cfg: bool = False, **unknown):
    if unknown:
      raise ValueError(f"unknown generation params {sorted(unknown)}")
    if two_step_cfg:
      raise ValueError("two_step_cfg is audiocraft-only: transformers always batches "
                       "classifier-free guidance as [cond; uncond]")
    if duration > self.max_duration:
      raise ValueError(f"duration {duration}s exceeds the model's window {self.max_duration}s")
    self.generation_params = dict(use_sampling=bool(use_sampling), top_k=int(top_k),
                                  top_p=float(top_p), temperature=float(temperature),
                                  duration=float(duration), cfg_coef=float(cfg_coef),
                                  two_step_cfg=False)

  def tokenize(self, texts):
    enc = self.tokenizer(list(texts), return_tensors="pt", padding=True)
    dev = self.model.device
    return enc["input_ids"].to(dev), enc["attention_mask"].to(dev)

  def frames(self) -> int:
    return int(self.duration * self.frame_rate)

  def generate_tokens(self, texts, seed=None) -> torch.Tensor:
    """Codes [B, K, T] sampled by `model.generate` (guidance batched as [cond; uncond]).

    `generate` always decodes audio and returns only the waveform: the codes are taken at
    the codec's entry and the decode skipped (generate_audio decodes once when wanted).
    """
    gp = self.generation_params
    T, K = self.frames(), self.info.n_q
    ids, mask = self.tokenize(texts)
    if seed is not None:
      torch.manual_seed(seed)
    codec, got = self.model.audio_encoder, {}

    def keep_codes(audio_codes, *a, **k):
      got["codes"] = audio_codes
      return types.SimpleNamespace(audio_values=None)
    codec.decode = keep_codes                       # instance attribute shadows the method
    try:
      with torch.no_grad():
        self.model.generate(
            input_ids=ids, attention_mask=mask, do_sample=gp["use_sampling"],
            top_k=gp["top_k"] if gp["top_p"] <= 0 else 0,
            top_p=gp["top_p"] if gp["top_p"] > 0 else None,
            temperature=gp["temperature"], guidance_scale=gp["cfg_coef"],
            max_new_tokens=T + K - 1)
    finally:
      del codec.decode
    codes = got["codes"][0]                         # [1, B, K, T] -> [B, K, T]
    if codes.shape[-1] != T:
      raise RuntimeError(f"transformers generated {codes.shape[-1]} frames, expected {T}")
    return codes

  def generate_audio(self, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
      out = self.model.audio_encoder.decode(tokens[None].to(self.model.device),
                                            audio_scales=[None] * tokens.shape[0])
    return out.audio_values

  # -- teacher forcing -----------------------------------------------------------------
  def delay_sequence(self, tokens: torch.Tensor, steps: int) -> torch.Tensor:
    """Decoder inputs [B, K, steps] of generation for codes [B, K, T]: position p holds
    codebook k of frame p - 1 - k (special token elsewhere), as generation fed them."""
    B, K, T = tokens.shape
    seq = torch.full((B, K, T + K), self.special_token_id, dtype=torch.long,
                     device=tokens.device)
    for k in range(K):
      seq[:, k, k + 1:k + 1 + T] = tokens[:, k]
    return seq[..., :steps]

  def forward(self, texts, seq: torch.Tensor, cfg_batch: bool):
    """One pass over decoder inputs `seq` [B, K, S] with the prompts' text (+ the zero
    unconditional half when `cfg_batch`, exactly as generate builds it); returns logits
    [B', K, S, card]."""
    from transformers.modeling_outputs import BaseModelOutput
    ids, mask = self.tokenize(texts)
    B, K, S = seq.shape
    with torch.no_grad():
      h = self.model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
      if cfg_batch:
        h, mask = torch.cat([h, torch.zeros_like(h)]), torch.cat([mask, torch.zeros_like(mask)])
        seq = torch.cat([seq, seq])
      out = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=h), attention_mask=mask,
                       decoder_input_ids=seq.reshape(-1, S).to(self.model.device), use_cache=False)
    return out.logits.reshape(seq.shape[0], K, S, -1)

  def conditional_logits(self, texts, tokens: torch.Tensor):
    """(logits [B, K, T, card] aligned to `tokens` [B, K, T], valid mask [B, K, T]) of the
    conditional model over the first T decoding passes, as audiocraft's compute_predictions:
    codebook k of frame t is predicted at pass t + k, so it is valid iff t + k < T."""
    B, K, T = tokens.shape
    logits = self.forward(texts, self.delay_sequence(tokens.to(self.model.device), T),
                          cfg_batch=False)
    logits = torch.cat([logits, logits.new_zeros(B, K, K, logits.shape[-1])], 2)
    aligned = torch.stack([logits[:, k, k:k + T] for k in range(K)], 1)
    t = torch.arange(T, device=aligned.device)
    mask = torch.stack([t + k < T for k in range(K)])[None].expand(B, K, T)
    return aligned, mask
