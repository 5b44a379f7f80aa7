"""Export a trained SAE (and chosen decoder directions) to safetensors + JSON for torch.

The exported files are the whole contract between the JAX side and the torch bridge, so
they are self-describing and in the layout SAELens users already load::

    exports/<run>/sae_weights.safetensors   W_enc [d, m], b_enc [m], W_dec [m, d], b_dec [d],
                                      threshold [m] (jumprelu, batchtopk, matryoshka)
    exports/<run>/cfg.json            architecture (SAELens inference name), d_in, d_sae,
                                      k, hook_name (a module path on the backend's model:
                                      audiocraft MusicGen.lm transformer.layers.12,
                                      transformers MusicgenForConditionalGeneration
                                      decoder.model.decoder.layers.12), hook_layer, metadata,
                                      musicsae (our site name, e.g. lm.layer.12, and more)

`sae_lens.SAE.load_from_disk(exports/<run>)` loads it (tests/test_saelens.py).
    exports/<run>/directions.safetensors + directions.json   (see export_directions)

Input normalisation is folded in. Training saw x_n = s·x (s > 0); the exported SAE takes
raw x and returns the raw reconstruction x̂_n / s. Writing z' = z / s (latents in raw
activation units, so a latent value times its unit decoder row is its raw contribution)::

    pre' = (x - b_dec/s) W_enc + b_enc/s = pre / s
    relu(pre/s) = relu(pre)/s;  pre/s > θ/s  <=>  pre > θ;  top-k order is unchanged
    x̂ = z' W_dec + b_dec/s = (z W_dec + b_dec) / s

so W_enc and W_dec are unchanged (decoder rows stay unit norm), b_enc, b_dec and every
threshold are divided by s. No torch here: this module is numpy + safetensors.numpy.

The boundary is decided alike on both sides: JAX fires a latent iff pre > θ (strict), on
inputs x_n = fl(s·x), with θ = exp(log_threshold) as *JAX* computes it (XLA's exp can
differ from numpy's by an ulp). The exported θ' is the largest float32 t with
fl(s·t) <= θ, so `x > θ'` holds exactly when `fl(s·x) > θ`: an input exactly at the
threshold is off on both sides, the next float up is on on both (see fold_threshold).
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

import numpy as np
from safetensors.numpy import load_file, save_file

from musicsae_jax import files

FORMAT_VERSION = 2     # 2: sae_weights.safetensors, hook_name a torch module path
SAE_FILE, CFG_FILE = "sae_weights.safetensors", "cfg.json"   # the names SAELens loads
LEGACY_SAE_FILE = "sae.safetensors"                            # exports before format 2
DIR_FILE, DIR_MANIFEST = "directions.safetensors", "directions.json"
ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")
# What SAELens calls the same *inference* computation. BatchTopK/Matryoshka infer with a
# fixed threshold, pre * (pre > θ), which is exactly JumpReLU with θ broadcast to [m].
SAELENS_ARCH = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu",
                "jumprelu": "jumprelu", "matryoshka": "jumprelu"}
_CORE = ("W_enc", "b_enc", "W_dec", "b_dec")


class ExportError(ValueError):
  """Bad export input or a malformed export directory (names the file and the problem)."""


# The object a hook_name is relative to, per backend (`model.backend` in the config).
HOOK_ROOTS = {"audiocraft": "MusicGen.lm (audiocraft LMModel)",
              "transformers": "MusicgenForConditionalGeneration (transformers)"}


def hook_module(site: str, backend: str = "audiocraft") -> str:
  """The torch module a user hooks to read `site`, as a path relative to `HOOK_ROOTS[backend]`.

  audiocraft: relative to `MusicGen.lm`, `lm.get_submodule(path)` for the layers and
  `cond.proj`; the T5 sites name the conditioner's `t5` attribute (not a registered
  submodule: reach it with attribute access). transformers: relative to the
  `MusicgenForConditionalGeneration`, `model.get_submodule(path)` for every site.
  `t5.pooled` is the T5 output mean-pooled over valid tokens. Layer outputs are
  `[2B, T, D]` under guidance on both: conditional rows, then unconditional.
  """
  if backend not in HOOK_ROOTS:
    raise ExportError(f"model.backend={backend!r}; expected one of {', '.join(HOOK_ROOTS)}")
  layer = _layer_of(site.removesuffix(".uncond"))
  if backend == "transformers":
    if layer is not None:
      return f"decoder.model.decoder.layers.{layer}"
    base, _, tail = site.removesuffix(".uncond").rpartition(".")
    if tail in _HF_ATTN_MODULES and _layer_of(base) is not None:
      return f"decoder.model.decoder.layers.{_layer_of(base)}.{_HF_ATTN_MODULES[tail]}"
    return {"cond.proj": "enc_to_dec_proj", "t5.hidden": "text_encoder",
            "t5.pooled": "text_encoder"}.get(site, site)
  if layer is not None:
    return f"transformer.layers.{layer}"          # output [2B, T, D]: cond rows, then uncond
  base, _, tail = site.removesuffix(".uncond").rpartition(".")
  if tail in _ATTN_MODULES and _layer_of(base) is not None:   # lm.layer.<i>.attn / .cross_attn
    return f"transformer.layers.{_layer_of(base)}.{_ATTN_MODULES[tail]}"
  text = "condition_provider.conditioners.description"
  return {"cond.proj": f"{text}.output_proj", "t5.hidden": f"{text}.t5",
          "t5.pooled": f"{text}.t5"}.get(site, site)


_ATTN_MODULES = {"attn": "self_attn", "cross_attn": "cross_attention"}   # output (x, None)
_HF_ATTN_MODULES = {"attn": "self_attn", "cross_attn": "encoder_attn"}    # output (x, weights)


def _block_of(site: str) -> int | None:
  """The transformer block of an LM site, attention sub-sites included (SAELens hook_layer)."""
  base = site.removesuffix(".uncond")
  for tail in _ATTN_MODULES:
    base = base.removesuffix(f".{tail}")
  return _layer_of(base)


def _layer_of(site: str) -> int | None:
  tail = site.rsplit(".", 1)[-1]
  return int(tail) if site.startswith("lm.layer.") and tail.isdigit() else None


def sae_params(model) -> dict[str, np.ndarray]:
  """{name: np.ndarray} of an nnx SAE module (params and the BatchTopK threshold stat)."""
  out = {}
  for name in _CORE + ("log_threshold", "threshold"):
    if hasattr(model, name):
      out[name] = np.asarray(getattr(model, name)[...])
  return out


def fold_threshold(theta, scale: float) -> np.ndarray:
  """Raw-unit threshold θ' for a training-space θ: the largest float32 t with
  fl32(scale·t) <= θ, so `x > θ'` <=> `fl32(scale·x) > θ` for every float32 x."""
  theta = np.asarray(theta, np.float32)
  s = np.float32(scale)
  t = (theta / s).astype(np.float32)
  for _ in range(4):                    # fl(θ/s) is within an ulp or two of the answer
    t = np.where(s * t > theta, np.nextafter(t, np.float32(-np.inf)), t)
  for _ in range(4):
    up = np.nextafter(t, np.float32(np.inf))
    t = np.where(s * up <= theta, up, t)
  return t.astype(np.float32)


def _jax_exp(a) -> np.ndarray:
  """exp as the JAX model computes it, so the exported θ is the one JAX compares with."""
  import jax.numpy as jnp  # the JAX side's own numbers; numpy's exp may differ by an ulp
  return np.asarray(jnp.exp(jnp.asarray(a, jnp.float32)), np.float32)


def fold_params(params: dict[str, Any], architecture: str, scale: float) -> dict[str, np.ndarray]:
  """Training-space params -> raw-input tensors (see module docstring for the algebra)."""
  if architecture not in ARCHITECTURES:
    raise ExportError(f"architecture={architecture!r} unknown; allowed: {', '.join(ARCHITECTURES)}")
  s = float(scale)
  if not s > 0 or not np.isfinite(s):
    raise ExportError(f"normalisation scale={scale!r} must be a finite positive number")
  missing = [n for n in _CORE if n not in params]
  if missing:
    raise ExportError(f"params lack {missing} (have {sorted(params)})")
  p = {n: np.asarray(params[n], np.float32) for n in _CORE}
  d, m = p["W_enc"].shape
  if p["W_dec"].shape != (m, d) or p["b_enc"].shape != (m,) or p["b_dec"].shape != (d,):
    raise ExportError(f"inconsistent shapes: " + ", ".join(f"{n} {p[n].shape}" for n in _CORE))
  out = {"W_enc": p["W_enc"], "W_dec": p["W_dec"],
         "b_enc": (p["b_enc"] / s).astype(np.float32), "b_dec": (p["b_dec"] / s).astype(np.float32)}
  if architecture == "jumprelu":
    if "log_threshold" not in params:
      raise ExportError("jumprelu params lack 'log_threshold'")
    out["threshold"] = fold_threshold(_jax_exp(params["log_threshold"]), s)
  elif architecture in ("batchtopk", "matryoshka"):
    if "threshold" not in params:
      raise ExportError(f"{architecture} params lack the inference 'threshold'")
    thr = fold_threshold(params["threshold"], s)
    out["threshold"] = np.broadcast_to(thr, (m,)).astype(np.float32)
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def export_sae(params: dict[str, Any], sae_cfg: Any = None, *, site: str, layer: int | None,
               d: int, m: int, k: int | None, architecture: str, scale: float, out_dir: str,
               normalization: dict | None = None, model_name: str = "",
               extra: dict | None = None, backend: str = "audiocraft") -> str:
  """Write `sae_weights.safetensors` + `cfg.json` (normalisation folded in); returns out_dir.

  `params` are training-space arrays (`W_enc`, `b_enc`, `W_dec`, `b_dec`, plus
  `log_threshold` for jumprelu or the scalar `threshold` for batchtopk/matryoshka);
  `sae_cfg` is the training `c.sae` dict (recorded as is).
  """
  tensors = fold_params(params, architecture, scale)
  if tensors["W_enc"].shape != (d, m):
    raise ExportError(f"W_enc has shape {tensors['W_enc'].shape}; expected (d={d}, m={m})")
  if architecture in ("topk", "batchtopk", "matryoshka") and not (k and 1 <= int(k) < m):
    raise ExportError(f"{architecture} needs 1 <= k < m={m}, got k={k!r}")
  os.makedirs(out_dir, exist_ok=True)
  if sae_cfg is not None and hasattr(sae_cfg, "to_dict"):
    sae_cfg = sae_cfg.to_dict()
  norm = dict(normalization or {})
  norm.update(scale=float(scale), folded=True)
  hook_layer = layer if layer is not None else _block_of(site)
  k_out = int(k) if k is not None and architecture in ("topk", "batchtopk", "matryoshka") else None
  cfg = {
      # SAELens (v5 flat fields and v6 `metadata`): what an existing loader reads.
      "architecture": SAELENS_ARCH[architecture],
      "d_in": int(d), "d_sae": int(m), "dtype": "float32", "device": "cpu",
      "apply_b_dec_to_input": True,
      "normalize_activations": "none",          # folded in: feed raw activations
      "hook_name": hook_module(site, backend), "hook_layer": hook_layer, "hook_head_index": None,
      "model_name": model_name,
      "activation_fn_str": {"relu": "relu", "topk": "topk"}.get(SAELENS_ARCH[architecture], "relu"),
      "activation_fn_kwargs": {"k": k_out} if architecture == "topk" else {},
      "metadata": {"model_name": model_name, "hook_name": hook_module(site, backend),
                   "hook_layer": hook_layer, "hook_head_index": None, "musicsae_site": site,
                   "hook_module_root": HOOK_ROOTS[backend], "model_backend": backend},
      # This project: the training architecture and how to undo the folding.
      "musicsae": {
          "format_version": FORMAT_VERSION, "architecture": architecture, "k": k_out,
          "site": site, "layer": hook_layer, "normalization": norm,
          "latent_units": "raw (training-space latent = exported latent * scale)",
          "sae_config": sae_cfg or {}, **(extra or {}),
      },
  }
  if architecture == "topk":
    cfg["k"] = k_out
  with files.atomic_path(os.path.join(out_dir, SAE_FILE)) as tmp:
    save_file(tensors, tmp, metadata={"format": "musicsae", "architecture": architecture})
  files.write_json(os.path.join(out_dir, CFG_FILE), cfg)
  return out_dir


def load_export(out_dir: str) -> tuple[dict[str, np.ndarray], dict]:
  """(tensors, cfg) of an export directory, checked against each other."""
  sp, cp = os.path.join(out_dir, SAE_FILE), os.path.join(out_dir, CFG_FILE)
  if not os.path.exists(sp) and os.path.exists(os.path.join(out_dir, LEGACY_SAE_FILE)):
    sp = os.path.join(out_dir, LEGACY_SAE_FILE)
  for p in (sp, cp):
    if not os.path.exists(p):
      raise ExportError(f"{p} not found: not an SAE export directory")
  with open(cp) as f:
    cfg = json.load(f)
  tensors = load_file(sp)
  arch = cfg.get("musicsae", {}).get("architecture")
  if arch not in ARCHITECTURES:
    raise ExportError(f"{cp}: musicsae.architecture={arch!r}; expected one of {ARCHITECTURES}")
  d, m = cfg["d_in"], cfg["d_sae"]
  if tensors["W_enc"].shape != (d, m) or tensors["W_dec"].shape != (m, d):
    raise ExportError(f"{sp}: W_enc {tensors['W_enc'].shape} / W_dec {tensors['W_dec'].shape} "
                      f"do not match d_in={d}, d_sae={m} in {cp}")
  if (arch in ("jumprelu", "batchtopk", "matryoshka")) != ("threshold" in tensors):
    raise ExportError(f"{sp}: 'threshold' presence does not match architecture {arch}")
  return tensors, cfg


# --------------------------------------------------------------------------------------
# Decoder directions
# --------------------------------------------------------------------------------------


def export_directions(params: dict[str, Any], feature_ids: Sequence[int],
                      labels: Sequence[str] | None, site: str, layer: int | None,
                      mean_norm: float | None, out_dir: str, *, run: str = "",
                      step: int | None = None) -> str:
  """`directions.safetensors` (`directions [n, d]`, unit rows of W_dec) + `directions.json`.

  The manifest carries the site's mean activation norm (raw units) so steering strengths
  can be given relative to it (alpha × mean_norm). Folding never changes W_dec, so
  training-space and exported decoder rows give the same directions.
  """
  W = np.asarray(params["W_dec"], np.float32)
  ids = [int(i) for i in feature_ids]
  if not ids:
    raise ExportError("export_directions: no feature ids given")
  bad = [i for i in ids if not 0 <= i < W.shape[0]]
  if bad:
    raise ExportError(f"feature ids {bad} out of range [0, {W.shape[0]})")
  labels = [str(x) for x in labels] if labels is not None else [f"feature_{i}" for i in ids]
  if len(labels) != len(ids):
    raise ExportError(f"{len(labels)} labels for {len(ids)} feature ids")
  rows = W[ids]
  norms = np.linalg.norm(rows, axis=1, keepdims=True)
  if np.any(norms == 0):
    raise ExportError(f"features {[i for i, n in zip(ids, norms[:, 0]) if n == 0]} have zero "
                      "decoder rows")
  os.makedirs(out_dir, exist_ok=True)
  with files.atomic_path(os.path.join(out_dir, DIR_FILE)) as tmp:
    save_file({"directions": np.ascontiguousarray(rows / norms, np.float32)}, tmp)
  manifest = {"format_version": FORMAT_VERSION, "run": run, "step": step, "site": site,
              "layer": layer if layer is not None else _layer_of(site),
              "feature_ids": ids, "labels": labels,
              "mean_norm": None if mean_norm is None else float(mean_norm),
              "d": int(W.shape[1])}
  files.write_json(os.path.join(out_dir, DIR_MANIFEST), manifest)
  return out_dir


def load_directions(out_dir: str) -> tuple[np.ndarray, dict]:
  """(directions [n, d], manifest)."""
  p = os.path.join(out_dir, DIR_FILE)
  if not os.path.exists(p):
    raise ExportError(f"{p} not found")
  with open(os.path.join(out_dir, DIR_MANIFEST)) as f:
    return load_file(p)["directions"], json.load(f)


# --------------------------------------------------------------------------------------
# From a training run
# --------------------------------------------------------------------------------------


def restore_params(run_dir: str, step: int | None = None) -> tuple[dict[str, np.ndarray], int]:
  """SAE arrays of a run's best checkpoint (lowest eval FVU), else its latest, else `step`.

  Restores the saved flat dict without a target (no optimizer template needed) and keeps
  `params.*` and `stats.*` leaves.
  """
  ck_dir = os.path.join(run_dir, "checkpoints")
  if not os.path.isdir(ck_dir) or not os.listdir(ck_dir):   # say so before Orbax starts
    raise ExportError(f"no checkpoint under {ck_dir}: train the run first (launch.train)")
  import orbax.checkpoint as ocp  # heavy; only needed here
  from musicsae_jax import checkpoint as ckpt_lib
  ck = ckpt_lib.Checkpointer(ck_dir, async_save=False)
  try:
    if step is None:
      step = ck.best_step()
      step = ck.latest_step() if step is None else step
    if step is None:
      raise ExportError(f"no checkpoint under {run_dir}/checkpoints: train the run first")
    flat = ck.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  finally:
    ck.close()
  out = {}
  for key, v in flat["state"].items():
    head, _, name = key.partition(".")
    if head in ("params", "stats") and "." not in name:
      out[name] = np.asarray(v)
  return out, int(step)


def _mean_norm(norm: dict) -> float | None:
  """RMS activation norm of the site, from the run's normalisation record."""
  if norm.get("mean_sq_norm"):
    return float(np.sqrt(norm["mean_sq_norm"]))
  if norm.get("scale") and norm.get("d"):
    return float(np.sqrt(norm["d"]) / norm["scale"])   # E||s x||^2 = d
  return None


def export_run(workdir: str, run: str, out: str | None = None, *, step: int | None = None,
               feature_ids: Iterable[int] | None = None,
               labels: Sequence[str] | None = None) -> str:
  """`runs/<run>/` checkpoint -> `exports/<run>/` (SAE, and directions if features given)."""
  run_dir = os.path.join(workdir, "runs", run)
  cfg_path = os.path.join(run_dir, "config.json")
  if not os.path.exists(cfg_path):
    raise ExportError(f"{cfg_path} not found: no run {run!r} in {workdir}")
  with open(cfg_path) as f:
    config = json.load(f)
  norm_path = os.path.join(run_dir, "normalization.json")
  norm = json.load(open(norm_path)) if os.path.exists(norm_path) else {"scale": 1.0}
  params, step = restore_params(run_dir, step)
  from musicsae_jax import sae as sae_lib
  d = int(params["W_enc"].shape[0])
  sae_cfg = {k: v for k, v in config.get("sae", {}).items() if k != "d"}
  resolved = sae_lib.resolve_config(sae_cfg, d)
  arch, m = resolved["architecture"], resolved["m"]
  site = config.get("train", {}).get("site") or ""
  if not site:
    site = "synthetic" if config.get("train", {}).get("source") == "synthetic" else "unknown"
  out = out or os.path.join(workdir, "exports", run)
  ids = [int(i) for i in (feature_ids or [])]
  bad = [i for i in ids if not 0 <= i < m]
  if bad:          # checked before anything is written: a failed export leaves the old one
    raise ExportError(f"feature ids {bad} out of range [0, {m}) for run {run!r}")
  mcfg = config.get("model") if isinstance(config.get("model"), dict) else {}
  model_name, backend = mcfg.get("name", ""), mcfg.get("backend", "audiocraft")
  export_sae(params, resolved, site=site, layer=_layer_of(site), d=d, m=m,
             k=resolved.get("k"), architecture=arch, scale=float(norm.get("scale", 1.0)),
             out_dir=out, normalization=norm, model_name=model_name,
             extra={"run": run, "step": step}, backend=backend)
  if ids:
    export_directions(params, ids, labels, site, _layer_of(site), _mean_norm(norm), out,
                      run=run, step=step)
  else:            # directions from an older checkpoint would no longer match sae.*
    for name in (DIR_FILE, DIR_MANIFEST):
      if os.path.exists(os.path.join(out, name)):
        os.remove(os.path.join(out, name))
  return out
