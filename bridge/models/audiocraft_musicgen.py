"""MusicGen models for the bridge: real checkpoints by name/dir, or a tiny random one offline.

Everything that imports audiocraft goes through `import_audiocraft()`, which installs the
import shim first (audiocraft imports torchaudio and spacy at module level; neither is
needed on the MusicGen text-to-music path and neither loads next to CPU torch 2.13 here).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.machinery
import logging
import os
import shutil
import sys
import tempfile
import types
import warnings
from pathlib import Path

import torch

KNOWN_NAMES = ("facebook/musicgen-small", "facebook/musicgen-medium",
               "facebook/musicgen-large", "facebook/musicgen-melody")
_SHORT = {n.split("-")[-1]: n for n in KNOWN_NAMES}
_CKPT_FILES = ("state_dict.bin", "compression_state_dict.bin")


class ModelLoadError(RuntimeError):
  """A MusicGen could not be loaded; the message says what to do."""


# --------------------------------------------------------------------------------------
# Import shim
# --------------------------------------------------------------------------------------
def _placeholder(name: str, doc: str) -> types.ModuleType:
  """A module whose attributes are stubs that raise only when used (imports succeed)."""
  mod = types.ModuleType(name)
  mod.__doc__ = doc
  # transformers probes optional packages with importlib.util.find_spec: give it a spec.
  mod.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
  mod.__path__ = []

  def __getattr__(attr):
    if attr.startswith("__"):
      raise AttributeError(attr)

    class _Unavailable:
      def __init__(self, *a, **k):
        raise ImportError(f"{name}.{attr} is unavailable: musicsae-jax installs a placeholder "
                          f"for {name} so audiocraft imports (bridge/models/audiocraft_musicgen.py); MusicGen "
                          f"text-to-music never needs it.")
      __call__ = __init__
    _Unavailable.__name__ = attr
    return _Unavailable
  mod.__getattr__ = __getattr__
  return mod


_SHIMS = {"torchaudio": ("transforms", "functional"), "spacy": ("cli",)}


def _install_shim() -> None:
  for name, subs in _SHIMS.items():
    if name in sys.modules:
      continue
    try:  # a working install wins
      __import__(name)
      continue
    except Exception:  # noqa: BLE001 - torchaudio fails with OSError on a CUDA .so
      for k in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[k]
    root = sys.modules[name] = _placeholder(name, f"placeholder for {name}")
    for sub in subs:
      mod = sys.modules[f"{name}.{sub}"] = _placeholder(f"{name}.{sub}", "placeholder")
      setattr(root, sub, mod)
  # xformers warns about missing C++/CUDA extensions on CPU; audiocraft only calls it
  # with memory_efficient attention on the xformers backend (default backend: torch).
  warnings.filterwarnings("ignore", message=".*[xX][fF]ormers.*")
  warnings.filterwarnings("ignore", message=".*weight_norm.*is deprecated.*")
  logging.getLogger("xformers").setLevel(logging.ERROR)


def import_audiocraft():
  """Import audiocraft behind the shim; returns the `audiocraft` package."""
  _install_shim()
  import audiocraft  # noqa: F401
  import audiocraft.models  # noqa: F401
  return audiocraft


# --------------------------------------------------------------------------------------
# Model facts (for the manifest)
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModelInfo:
  name: str
  d_model: int
  num_layers: int
  n_q: int
  card: int
  frame_rate: float
  sample_rate: int
  t5_dim: int
  max_delay: int
  backend: str = "audiocraft"     # which implementation produced the activations

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def text_conditioner(model):
  """The T5 conditioner of a MusicGen (`lm.condition_provider.conditioners['description']`)."""
  conds = model.lm.condition_provider.conditioners
  if "description" not in conds:
    raise ValueError(f"model has no 'description' text conditioner (has {sorted(conds)})")
  return conds["description"]


# The released checkpoints' sizes (their published configs: d_model, layers; T5-base text
# encoder), so inputs can be checked against a model before it loads.
_RELEASED_SIZES = {"facebook/musicgen-small": (1024, 24), "facebook/musicgen-medium": (1536, 48),
                   "facebook/musicgen-large": (2048, 48), "facebook/musicgen-melody": (1536, 48)}
_T5_BASE_DIM = 768


def expected_sizes(mcfg) -> dict | None:
  """{d_model, num_layers, t5_dim} of the model `config.model` names, without loading it:
  the tiny model's build sizes or a released checkpoint's; None when only loading can tell
  (a local directory)."""
  if mcfg.name == "tiny":
    import inspect
    sizes = dict(mcfg.get("tiny", {}) or {})
    params = inspect.signature(build_tiny_musicgen).parameters
    get = lambda k: int(sizes.get(k, params[k].default))
    return {"d_model": get("dim"), "num_layers": get("num_layers"), "t5_dim": get("t5_dim")}
  name = _SHORT.get(mcfg.name, mcfg.name)
  if name in _RELEASED_SIZES and not os.path.isdir(mcfg.name):
    d, layers = _RELEASED_SIZES[name]
    return {"d_model": d, "num_layers": layers, "t5_dim": _T5_BASE_DIM}
  return None


# --------------------------------------------------------------------------------------
# Real models
# --------------------------------------------------------------------------------------
def load_musicgen(name_or_dir: str, device: str = "cpu", dtype: torch.dtype | None = None):
  """Load a pretrained MusicGen by hub name or from a local checkpoint directory.

  Same code for both up to the download (`MusicGen.get_pretrained`). On CUDA the LM runs in
  fp16 (audiocraft's own choice); `dtype` casts the LM afterwards if given.
  """
  if name_or_dir == "tiny":
    return build_tiny_musicgen()
  name = _SHORT.get(name_or_dir, name_or_dir)
  local = Path(name).expanduser()
  if local.is_dir():
    missing = [f for f in _CKPT_FILES if not (local / f).is_file()]
    if missing:
      raise ModelLoadError(
          f"MusicGen directory {local} lacks {', '.join(missing)}; it must hold "
          f"{' and '.join(_CKPT_FILES)} (as downloaded for {KNOWN_NAMES[0]}).")
  elif name not in KNOWN_NAMES:
    raise ModelLoadError(
        f"unknown MusicGen model {name_or_dir!r}: use 'tiny', one of {', '.join(KNOWN_NAMES)}, "
        f"or a local directory with {' and '.join(_CKPT_FILES)}.")
  import_audiocraft()
  from audiocraft.models import MusicGen
  try:
    with _local_t5_conditioners(local if local.is_dir() else None), \
         _offline_unless_hub_reachable(local.is_dir()):
      model = MusicGen.get_pretrained(str(local) if local.is_dir() else name, device=device)
  except Exception as e:  # noqa: BLE001 - hub/network errors come in many types
    if local.is_dir():
      raise
    cache = os.environ.get("AUDIOCRAFT_CACHE_DIR", "the default hub cache")
    raise ModelLoadError(
        f"could not load {name!r} ({type(e).__name__}: {str(e)[:200]}). No weights in "
        f"{cache} and no network? Download {' and '.join(_CKPT_FILES)} for {name} (and the "
        f"T5 it names) on a connected machine into a directory and pass that directory, or "
        f"set AUDIOCRAFT_CACHE_DIR / HF_HOME to a cache that has them.") from e
  if dtype is not None:
    model.lm.to(dtype)
  return model


def hub_reachable(timeout: float = 3.0) -> bool:
  """Whether the model hub's endpoint accepts a TCP connection within `timeout` seconds."""
  import socket
  import urllib.parse
  from huggingface_hub import constants
  u = urllib.parse.urlparse(constants.ENDPOINT)
  try:
    with socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)),
                                  timeout=timeout):
      return True
  except OSError:
    return False


@contextlib.contextmanager
def _offline_unless_hub_reachable(local: bool):
  """Offline, load from the cache or fail at once instead of retrying the hub for ~20 s."""
  from huggingface_hub import constants
  if local or constants.HF_HUB_OFFLINE or hub_reachable():
    yield
    return
  saved = os.environ.get("HF_HUB_OFFLINE")
  constants.HF_HUB_OFFLINE, os.environ["HF_HUB_OFFLINE"] = True, "1"   # hub + transformers
  try:
    yield
  finally:
    constants.HF_HUB_OFFLINE = False
    if saved is None:
      os.environ.pop("HF_HUB_OFFLINE", None)
    else:
      os.environ["HF_HUB_OFFLINE"] = saved


def _resolve_local_t5(name: str, base_dir: Path | None) -> str | None:
  """A local T5 directory (`save_pretrained` layout) for cfg name `name`, or None.

  Relative names are tried against the MusicGen directory first (so an exported directory
  can be moved), then as given.
  """
  p = Path(name).expanduser()
  cands = [p] if p.is_absolute() else ([base_dir / p] if base_dir is not None else []) + [p]
  for c in cands:
    if (c / "config.json").is_file():
      return str(c.resolve())
  return None


@contextlib.contextmanager
def _local_t5_conditioners(base_dir: Path | None = None):
  """While active, audiocraft's builders accept a local T5 directory as a T5 `name`.

  `builders.get_lm_model` hard-codes `T5Conditioner`, whose `__init__` asserts the name is
  one of its hub `MODELS`. Hub names go to the real class unchanged; any other name must
  be a local T5 directory, for which a subclass listing just that directory is built.
  """
  import_audiocraft()
  from audiocraft.models import builders
  real = builders.T5Conditioner

  def make(name, output_dim, **kwargs):
    if name in real.MODELS:
      return real(name=name, output_dim=output_dim, **kwargs)
    path = _resolve_local_t5(name, base_dir)
    if path is None:
      raise ModelLoadError(
          f"the MusicGen cfg names T5 {name!r}, which is neither one of audiocraft's T5 names "
          f"({', '.join(real.MODELS)}) nor a local directory saved with save_pretrained "
          f"(looked in {base_dir or '.'}).")
    from transformers import T5Config
    cls = type("LocalT5Conditioner", (real,),
               {"MODELS": [path], "MODELS_DIMS": {path: int(T5Config.from_pretrained(path).d_model)}})
    return cls(name=path, output_dim=output_dim, **kwargs)

  builders.T5Conditioner = make
  try:
    yield
  finally:
    builders.T5Conditioner = real


def save_musicgen(model, out_dir) -> Path:
  """Write `model` as a local MusicGen directory that `load_musicgen(out_dir)` loads.

  Same layout and format as the hub checkpoints `MusicGen.get_pretrained` reads
  (`state_dict.bin`, `compression_state_dict.bin`: torch-saved dicts with a yaml `xp.cfg`
  and `best_state`). The T5 of each T5 conditioner (not part of the LM state when frozen)
  is saved with its tokenizer under `out_dir/t5` (`t5_<name>` for conditioners other than
  'description') and the cfg points at it by relative path, so the directory is
  self-contained and needs no network. Needs the build cfgs on `model.lm.cfg` and
  `model.compression_model.cfg` (the tiny model has both; `get_pretrained` keeps only the LM's).
  """
  import_audiocraft()
  import audiocraft
  import omegaconf
  lm_cfg = getattr(model.lm, "cfg", None)
  comp_cfg = getattr(model.compression_model, "cfg", None)
  if lm_cfg is None or comp_cfg is None:
    raise ValueError("save_musicgen needs the build cfgs on model.lm.cfg and "
                     "model.compression_model.cfg; this model lacks "
                     f"{'model.lm.cfg' if lm_cfg is None else 'model.compression_model.cfg'}")
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  lm_cfg = omegaconf.OmegaConf.create(omegaconf.OmegaConf.to_container(lm_cfg, resolve=True))
  conds = model.lm.condition_provider.conditioners
  for cname, ccfg in (lm_cfg.get("conditioners") or {}).items():
    if ccfg.get("model") != "t5":
      continue
    sub = "t5" if cname == "description" else f"t5_{cname}"
    cond = conds[cname]
    cond.t5.save_pretrained(str(out / sub))
    cond.t5_tokenizer.save_pretrained(str(out / sub))
    ccfg.t5.name = sub
  meta = {"version": audiocraft.__version__, "exported": True}
  torch.save({"xp.cfg": omegaconf.OmegaConf.to_yaml(lm_cfg),
              "best_state": model.lm.state_dict(), **meta}, out / _CKPT_FILES[0])
  torch.save({"xp.cfg": omegaconf.OmegaConf.to_yaml(comp_cfg),
              "best_state": model.compression_model.state_dict(), **meta}, out / _CKPT_FILES[1])
  return out


# --------------------------------------------------------------------------------------
# The tiny random model
# --------------------------------------------------------------------------------------
_TINY_WORDS = """a an and the of with in on for by at to music song track piece tune beat
happy sad calm energetic joyful cheerful upbeat bright melancholic gloomy mournful somber
peaceful gentle soothing relaxed serene intense driving powerful fast slow soft loud quiet
piano guitar violin cello drums bass synth flute strings trumpet saxophone choir organ
harp ukulele marimba pads orchestra rock pop jazz classical ambient electronic folk techno
funk lofi hip hop cinematic blues reggae metal house dance acoustic electric morning night
rain sunset summer winter city forest beach party road trip festival dream memory lonely
""".split()


def _tiny_tokenizer_dir(root: Path, words=()) -> str:
  """Save a small T5 unigram tokenizer built from an in-memory vocab; return its dir.

  `words` are whole-word tokens added to the built-in ones (e.g. every word of a caption
  set, so each caption word is one token and none falls back to letters or <unk>).
  """
  from transformers import T5Tokenizer
  letters = list("abcdefghijklmnopqrstuvwxyz0123456789.,-'!?&")
  vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
  vocab += [("\u2581" + w, -5.0 - 0.01 * i)
            for i, w in enumerate(dict.fromkeys([*_TINY_WORDS, *words]))]
  vocab += [(c, -8.0) for c in letters] + [("\u2581" + c, -8.5) for c in letters]
  tok = T5Tokenizer(vocab=vocab, extra_ids=0)
  out = root / "tiny-t5"
  tok.save_pretrained(str(out))
  return str(out), len(vocab)


def build_tiny_musicgen(seed: int = 0, dim: int = 64, num_layers: int = 4, num_heads: int = 4,
                        card: int = 256, n_q: int = 4, t5_dim: int = 32, t5_layers: int = 2,
                        sample_rate: int = 16000, hop: int = 320, max_duration: float = 30.0,
                        device: str = "cpu", words=(), overrides: dict | None = None):
  """A tiny random MusicGen built from audiocraft's own classes, deterministic from `seed`.

  LM via `builders.get_lm_model` (MusicGen's LM recipe at small dims, T5 cross-attention,
  delay pattern), a T5Conditioner whose T5 is a random `T5EncoderModel(T5Config(...))`
  with an in-memory tokenizer, and a random EnCodec via `builders.get_compression_model`.
  Defaults: 16 kHz audio at 50 frames/s, 4 layers of width 64. `words`: extra whole-word
  tokens for the tokenizer; `overrides`: a nested dict merged into the build cfg (e.g.
  `{"seanet": {"n_filters": 16}, "classifier_free_guidance": {"training_dropout": 0.2}}`),
  for models that are trained afterwards (bridge/organism).
  """
  import_audiocraft()
  import omegaconf
  from audiocraft.models import MusicGen, builders
  from transformers import T5Config, T5EncoderModel
  from transformers.utils import logging as hf_logging
  hf_logging.disable_progress_bar()

  tmp = Path(tempfile.mkdtemp(prefix="musicsae-tiny-t5-"))
  tok_dir, vocab_size = _tiny_tokenizer_dir(tmp, words)
  torch.manual_seed(seed)
  t5 = T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=t5_dim, d_kv=8, d_ff=2 * t5_dim,
                               num_layers=t5_layers, num_heads=4, dropout_rate=0.0,
                               relative_attention_num_buckets=8)).eval()
  t5.save_pretrained(tok_dir)

  cfg = omegaconf.OmegaConf.create({
      "device": device, "dtype": "float32", "lm_model": "transformer_lm",
      "dataset": {"segment_duration": max_duration},
      "transformer_lm": {
          "dim": dim, "num_heads": num_heads, "num_layers": num_layers, "hidden_scale": 4,
          "n_q": n_q, "card": card, "dropout": 0.0, "emb_lr": None, "activation": "gelu",
          "norm_first": True, "bias_ff": False, "bias_attn": False, "bias_proj": False,
          "past_context": None, "causal": True, "custom": False, "memory_efficient": True,
          "attention_as_float32": False, "layer_scale": None, "positional_embedding": "sin",
          "xpos": False, "checkpointing": "none", "weight_init": "gaussian",
          "depthwise_init": "current", "zero_bias_init": True, "norm": "layer_norm",
          "cross_attention": False, "qk_layer_norm": False, "qk_layer_norm_cross": False,
          "attention_dropout": None, "kv_repeat": 1, "two_step_cfg": False},
      "codebooks_pattern": {"modeling": "delay",
                            "delay": {"delays": list(range(n_q)), "flatten_first": 0,
                                      "empty_initial": 0}},
      "attribute_dropout": {},
      "classifier_free_guidance": {"training_dropout": 0.0, "inference_coef": 3.0},
      "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1,
                "sum": [], "prepend": [], "cross": ["description"], "input_interpolate": []},
      "conditioners": {"description": {"model": "t5", "t5": {
          "name": tok_dir, "finetune": False, "word_dropout": 0.0, "normalize_text": False}}},
      "compression_model": "encodec",
      "encodec": {"autoencoder": "seanet", "quantizer": "rvq", "sample_rate": sample_rate,
                  "channels": 1, "causal": False, "renormalize": False},
      "seanet": {"dimension": 32, "channels": 1, "causal": False, "n_filters": 4,
                 "n_residual_layers": 1, "ratios": _ratios(hop), "activation": "ELU",
                 "activation_params": {"alpha": 1.0}, "norm": "weight_norm", "norm_params": {},
                 "kernel_size": 7, "last_kernel_size": 7, "residual_kernel_size": 3,
                 "dilation_base": 2, "pad_mode": "constant", "true_skip": True,
                 "compress": 2, "lstm": 0, "disable_norm_outer_blocks": 0,
                 "encoder": {}, "decoder": {"trim_right_ratio": 1.0}},
      "rvq": {"n_q": n_q, "bins": card, "decay": 0.99, "kmeans_init": False,
              "kmeans_iters": 1, "threshold_ema_dead_code": 2, "orthogonal_reg_weight": 0.0,
              "orthogonal_reg_active_codes_only": False, "q_dropout": False},
  })
  if overrides:
    cfg = omegaconf.OmegaConf.merge(cfg, omegaconf.OmegaConf.create(dict(overrides)))
  try:
    with _local_t5_conditioners():  # get_lm_model hard-codes T5Conditioner
      torch.manual_seed(seed)
      lm = builders.get_lm_model(cfg)
    torch.manual_seed(seed + 1)
    compression = builders.get_compression_model(cfg)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)  # T5 and tokenizer are loaded by now
  lm.cfg = compression.cfg = cfg  # as load_lm_model does; save_musicgen reads them
  # get_lm_model loaded T5 from tok_dir (the weights saved above): same seed, same T5.
  model = MusicGen("tiny", compression.eval(), lm.eval(), max_duration=max_duration)
  model.set_generation_params(duration=1.0, top_k=min(250, card))
  return model


def _ratios(hop: int) -> list[int]:
  """SEANet down-sampling ratios whose product is `hop` (e.g. 320 -> [8, 5, 4, 2])."""
  out, rest = [], hop
  for r in (8, 5, 4, 2, 3):
    while rest % r == 0 and len(out) < 4:
      out.append(r)
      rest //= r
  if rest != 1:
    raise ValueError(f"hop {hop} must factor into 2, 3, 4, 5, 8")
  return out
