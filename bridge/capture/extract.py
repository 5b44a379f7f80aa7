"""Prompts -> MusicGen generation with capture -> the activation store (batched, resumable).

Determinism: prompts are cut into fixed batches (`prompt_id // batch_size`) and batch b is
sampled with seed `extract.seed * 1_000_003 + b` (recorded as each prompt's `seed`).
A batch, not a prompt, is the unit because audiocraft samples a batch from one RNG and
its cross-attention attends over padded T5 positions, so a prompt's rows depend on its
batch mates. Fixed batches make a resumed run, and N workers (batch b goes to worker
b % N), write exactly the rows of one uninterrupted run.

`extract.source = "audio"` reads clips from a dataset plugin instead of prompts and
captures them teacher-forced (bridge/capture/extract_audio.py); the store, batches, resume and
worker split are the same.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bridge.models import capture_sites
from bridge.measures import audio_descriptors
from bridge.models import backends, audiocraft_musicgen
from bridge.capture import record, extract_audio
from bridge.sources import prompts as prompts_lib
from musicsae_jax import progress, store

AUDIO_SITE = "audio.descriptors"


# Every extract.* field changes what is stored, so a dataset records it and a resume with
# another value is refused naming the field: through the prompt table (prompts, per_label,
# label_key, max_prompts, source, audio), the sites (sites, keep, dtype, codec) or the
# manifest's `generation` record (the rest). Only these may differ on resume:
RESUMABLE_FIELDS = frozenset({"flush_seconds", "torch_threads"})   # when rows are published;
                                                                   # CPU threads of torch
IDENTITY_FIELDS = frozenset({
    "prompts", "per_label", "label_key", "max_prompts", "source", "audio",  # prompt table
    "sites", "keep", "dtype", "codec",                                        # sites
    "duration", "batch_size", "seed", "use_sampling", "top_k", "top_p", "temperature",
    "cfg_coef", "two_step_cfg", "capture", "save_audio"})                     # generation
_GENERATION_DEFAULTS = {"save_audio": False}    # fields older datasets did not record


class ExtractError(ValueError):
  """A bad extraction config or a dataset that does not match it."""


def dataset_path(config, workdir) -> str:
  return os.path.join(workdir, "activations", config.dataset)


def build_model(mcfg):
  """The model named by `config.model` on `config.model.backend`, as a bridge.models.backends
  adapter: 'tiny' (random, offline) or a real MusicGen."""
  backend = mcfg.get("backend", "audiocraft")
  if backend not in backends.BACKENDS:
    raise ExtractError(f"--config.model.backend={backend!r}; expected one of "
                       f"{', '.join(backends.BACKENDS)}")
  sizes = dict(mcfg.get("tiny", {}) or {})
  dtype = mcfg.get("dtype", None)
  dtype = getattr(torch, dtype) if dtype else None
  if backend == "transformers":
    from bridge.models import transformers_musicgen
    if mcfg.name == "tiny":
      return transformers_musicgen.build_tiny(seed=int(mcfg.get("seed", 0)), device=mcfg.device, **sizes)
    return transformers_musicgen.load(mcfg.name, device=mcfg.device, dtype=dtype)
  if mcfg.name == "tiny":
    model = audiocraft_musicgen.build_tiny_musicgen(seed=int(mcfg.get("seed", 0)), device=mcfg.device, **sizes)
  else:
    model = audiocraft_musicgen.load_musicgen(mcfg.name, device=mcfg.device, dtype=dtype)
  return backends.adapt(model)


def _model_build(mcfg) -> dict:
  """The model config fields that change its activations (recorded, compared on resume)."""
  if mcfg.name == "tiny":
    return {"seed": int(mcfg.get("seed", 0)), "tiny": dict(mcfg.get("tiny", {}) or {})}
  return {"dtype": mcfg.get("dtype", None) or ""}


def _prompt_list(ecfg) -> list[dict]:
  ps = prompts_lib.load_prompts(ecfg.prompts)
  ps = prompts_lib.subsample(ps, ecfg.get("per_label", None), ecfg.get("label_key", "emotion"))
  if ecfg.get("max_prompts", 0):
    ps = ps[:ecfg.max_prompts]
  return ps


def _sites(ecfg, info) -> list[str]:
  sites = list(ecfg.sites)
  want_audio = AUDIO_SITE in sites
  model_sites = capture_sites.parse_sites([s for s in sites if s != AUDIO_SITE], info.num_layers)
  if ecfg.get("keep", "cond") == "both":
    model_sites += [s + capture_sites.UNCOND_SUFFIX for s in model_sites
                    if s.startswith(capture_sites.LAYER_PREFIX)]
  return model_sites + ([AUDIO_SITE] if want_audio else [])


def _site_dim(site, info) -> int:
  if site == AUDIO_SITE:
    return len(audio_descriptors.FRAME_DESCRIPTORS)
  return capture_sites.site_dim(site.removesuffix(capture_sites.UNCOND_SUFFIX), info)


def _set_generation(model, ecfg, info) -> dict:
  top_k = int(ecfg.get("top_k", 250))
  if top_k > info.card:
    raise ExtractError(f"extract.top_k={top_k} exceeds the codebook size {info.card}")
  if ecfg.duration <= 0 or ecfg.duration > model.max_duration:
    raise ExtractError(f"extract.duration={ecfg.duration} must be in (0, {model.max_duration}]")
  params = dict(use_sampling=bool(ecfg.get("use_sampling", True)), top_k=top_k,
                top_p=float(ecfg.get("top_p", 0.0)), temperature=float(ecfg.get("temperature", 1.0)),
                duration=float(ecfg.duration), cfg_coef=float(ecfg.get("cfg_coef", 3.0)),
                two_step_cfg=bool(ecfg.get("two_step_cfg", False)))
  model.set_generation_params(**params)
  return params


def _audio_generation(model, ecfg, info, site_names, audio_record) -> dict:
  """The manifest's `generation` record for audio input (what shaped the rows)."""
  if ecfg.duration <= 0 or ecfg.duration > model.max_duration:
    raise ExtractError(f"extract.duration={ecfg.duration} must be in (0, {model.max_duration}]")
  text_sites = [s for s in site_names if s in capture_sites.TEXT_SITES]
  if text_sites and audio_record["conditioning"] == "none":
    raise ExtractError(f"extract.audio.conditioning='none' has no text: drop {text_sites} "
                       f"from extract.sites")
  two_step = bool(ecfg.get("two_step_cfg", False))   # keep='both': separate forwards
  model.set_generation_params(duration=float(ecfg.duration), two_step_cfg=two_step)
  return dict(audio_record, duration=float(ecfg.duration), two_step_cfg=two_step)


def _diff(have: dict, want: dict, prefix: str = "") -> list[str]:
  """'field: stored != requested' for every differing key (nested dicts flattened)."""
  out = []
  for k in sorted(set(have) | set(want)):
    a, b = have.get(k), want.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _diff(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append(f"{prefix}{k}: {a!r} != {b!r}")
  return out


def _open_or_create(path, sites, prompt_rows, model_meta, generation, num_workers, overwrite):
  """Create the dataset once (atomically, so concurrent workers race safely) or reopen it.

  A reopened dataset must have been made by the same experiment: every field that changes
  its rows (model and its build, sites with dtype, generation, prompts, workers) is compared.
  """
  if overwrite and os.path.exists(path):
    import shutil
    shutil.rmtree(path)
  store.remove_stale_creating(path)        # left by a creator that was killed
  if not store.exists(path):
    tmp = store.creating_path(path)
    store.create(tmp, sites, prompts=prompt_rows, model=model_meta, generation=generation,
                 num_workers=num_workers, overwrite=True)
    try:
      os.rename(tmp, path)  # atomic; fails if another worker got there first
    except OSError:
      import shutil
      shutil.rmtree(tmp, ignore_errors=True)
  ds = store.open_dataset(path)
  m = ds.manifest
  site_keys = ("d", "dtype", "codec")
  problems = _diff({n: {k: getattr(s, k) for k in site_keys} for n, s in ds.sites.items()},
                   {n: {k: getattr(s, k) for k in site_keys} for n, s in sites.items()}, "sites.")
  if m.get("num_workers") != num_workers:
    problems.append(f"num_workers: {m.get('num_workers')} != {num_workers}")
  problems += _diff({**_GENERATION_DEFAULTS, **(m.get("generation") or {})}, generation,
                    "generation.")
  stored_model = dict(m.get("model") or {})
  stored_model.setdefault("backend", "audiocraft")      # stores made before the field existed
  problems += _diff(stored_model, model_meta, "model.")
  key = lambda p: (p["text"], p["seed"], p.get("labels") or {})
  if [key(p) for p in ds.prompts] != [key(p) for p in prompt_rows]:
    problems.append("prompt table differs")
  if problems:
    raise ExtractError(f"{path} exists but was made by a different config (stored != "
                       f"requested: {'; '.join(problems[:8])}); rerun with --overwrite to "
                       f"replace it or set another config.dataset")
  try:
    ds.check_files()
  except store.MissingDataError as e:
    raise ExtractError(f"{e}; rerun with --overwrite to re-extract") from e
  return ds


def extract(config, workdir, worker_index: int = 0, num_workers: int = 1,
            overwrite: bool = False, on_batch=None, log=None) -> store.Dataset:
  """Run extraction for `config` into `<workdir>/activations/<config.dataset>/`.

  Skips batches whose prompts are already committed (resume). `on_batch(b)` is called after
  each committed batch (tests use it to interrupt).
  """
  show_bar = log is None                # a caller's own log (tests) gets no bar
  log = log or (lambda s: print(s, file=sys.stderr, flush=True))
  if not 0 <= worker_index < num_workers:
    raise ExtractError(f"--worker_index={worker_index} must be in [0, --num_workers={num_workers})")
  ecfg = config.extract
  source = ecfg.get("source", "prompts")
  if source not in ("prompts", "audio"):
    raise ExtractError(f"extract.source must be 'prompts' or 'audio', got {source!r}")
  if source == "audio":
    prompt_list, windows, audio_record = extract_audio.plan(ecfg, log)
  else:
    prompt_list = _prompt_list(ecfg)
  bs = int(ecfg.batch_size)
  if bs < 1:
    raise ExtractError(f"extract.batch_size must be >= 1, got {bs}")
  keep = ecfg.get("keep", "cond")
  path_mode = ecfg.get("capture", "hooks")
  if path_mode not in ("hooks", "teacher_forced"):
    raise ExtractError(f"extract.capture must be 'hooks' or 'teacher_forced', got {path_mode!r}")

  t0 = time.time()
  if ecfg.get("torch_threads", 0):  # small models on shared cores: 1 thread is far faster
    torch.set_num_threads(int(ecfg.torch_threads))
  with progress.phase(f"extract: loading model {config.model.name} "
                      f"({config.model.get('backend', 'audiocraft')})", log):
    model = build_model(config.model)
  info = model.info
  site_names = _sites(ecfg, info)
  if source == "audio":
    gen = _audio_generation(model, ecfg, info, site_names, audio_record)
  else:
    gen = _set_generation(model, ecfg, info)
  frames = int(gen["duration"] * info.frame_rate)   # as audiocraft's total_gen_len
  dtype = ecfg.get("dtype", "float32")
  codec = ecfg.get("codec", "zstd")     # "none": ~5x faster reads, ~25% more disk (bench/store.py)
  sites = {s: store.SiteSpec(d=_site_dim(s, info), dtype=dtype if s != AUDIO_SITE else "float32",
                             codec=codec)
           for s in site_names}
  seed0 = int(ecfg.get("seed", 0))
  if source == "audio":   # no sampling: nothing to seed
    prompt_rows, seed_rule, path_mode = prompt_list, "none (teacher-forced, no sampling)", \
        "teacher_forced"
  else:
    prompt_rows = [dict(p, seed=seed0 * 1_000_003 + i // bs) for i, p in enumerate(prompt_list)]
    seed_rule = "batch b = prompt_id // batch_size uses seed*1000003 + b"
  generation = dict(gen, frames_per_prompt=frames, batch_size=bs, seed=seed0,
                    seed_rule=seed_rule, keep=keep, capture=path_mode,
                    alignment=(f"lm.layer rows: one per frame; decoding step i -> frame i, last "
                               f"{info.max_delay} delay-pattern steps dropped; conditional half "
                               f"of the CFG batch" + (" (+ .uncond sites)" if keep == "both" else "")
                               + ("; audio: teacher-forced over the clip's codes, pattern step i "
                                  "-> frame i" if source == "audio" else "")),
                    audio_descriptors=list(audio_descriptors.FRAME_DESCRIPTORS)
                    if AUDIO_SITE in sites else [],
                    save_audio=bool(ecfg.get("save_audio", False)))   # audio/<id>.wav
  model_meta = dict(info.to_dict(), source=config.model.name, **_model_build(config.model))
  path = dataset_path(config, workdir)
  ds = _open_or_create(path, sites, prompt_rows, model_meta, generation, num_workers, overwrite)

  n_batches = math.ceil(len(prompt_rows) / bs)
  mine = [b for b in range(n_batches) if b % num_workers == worker_index]
  done = ds.completed_prompts()
  todo = [b for b in mine if not set(range(b * bs, min((b + 1) * bs, len(prompt_rows)))) <= done]
  log(f"extract: {len(prompt_rows)} prompts, {n_batches} batches of {bs}; worker "
      f"{worker_index}/{num_workers} has {len(todo)} of {len(mine)} batches left; model "
      f"{config.model.name} (d={info.d_model}, {info.num_layers} layers) ready in "
      f"{time.time() - t0:.1f}s")
  audio_dir = Path(path) / "audio"
  need_audio = AUDIO_SITE in sites or ecfg.get("save_audio", False)
  model_sites = [s for s in site_names if s != AUDIO_SITE and not s.endswith(capture_sites.UNCOND_SUFFIX)]

  t_start, n_frames, done_now = time.time(), 0, set(done)
  bar = progress.Progress(len(todo), f"extract [worker {worker_index}/{num_workers}]", "batch",
                          warmup=1, disable=not show_bar)
  with bar, ds.writer(worker_index, flush_seconds=float(ecfg.get("flush_seconds", 0.0))) as w:
    for k, b in enumerate(todo):
      ids = list(range(b * bs, min((b + 1) * bs, len(prompt_rows))))
      texts = [prompt_rows[i]["text"] for i in ids]
      seed = prompt_rows[ids[0]]["seed"]
      if source == "audio":
        cap = extract_audio.capture_batch(model, [windows[i] for i in ids], ecfg.get("audio"),
                                          model_sites, keep, info, frames)
      elif path_mode == "hooks":
        cap = record.generate_with_capture(model, texts, model_sites, keep=keep, seed=seed,
                                            return_audio=need_audio)
      else:
        tokens = record.generate_tokens(model, texts, seed)
        cap = record.teacher_forced_capture(model, texts, tokens, model_sites, keep=keep)
        cap.audio = model.generate_audio(tokens) if need_audio else None
      if need_audio:
        cap.acts.update(_audio_outputs(cap.audio, ids, info, frames, audio_dir,
                                       AUDIO_SITE in sites, ecfg.get("save_audio", False)))
      for s in site_names:
        w.append(s, np.concatenate(cap.acts[s]), cap.index(s, ids))
      w.commit(ids)
      n_frames += len(ids) * frames
      done_now.update(ids)
      if on_batch is not None:
        on_batch(b)
      el = time.time() - t_start
      bar.update(1, prompts=f"{len(done_now)}/{len(prompt_rows)}",
                 frames_per_s=f"{n_frames / el:.0f}" if el > 0 else "?")
  ds = store.open_dataset(path)
  ds.check_files()
  el = time.time() - t_start
  log(f"extract: done, {len(ds.completed_prompts())}/{len(prompt_rows)} prompts complete in "
      f"{path} ({time.time() - t0:.1f}s; {n_frames / max(el, 1e-9):.0f} frames/s)")
  return ds


def _audio_outputs(audio, ids, info, frames, audio_dir, descriptors: bool, save: bool):
  out = {}
  wavs = audio.float().cpu().numpy()
  if save:
    import soundfile as sf
    audio_dir.mkdir(parents=True, exist_ok=True)
    for i, wav in zip(ids, wavs):
      sf.write(str(audio_dir / f"{i:06d}.wav"), wav.T, info.sample_rate)
  if descriptors:
    out[AUDIO_SITE] = [audio_descriptors.frame_descriptors(wav, info.sample_rate, info.frame_rate,
                                                        frames) for wav in wavs]
  return out
