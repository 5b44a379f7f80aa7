"""`load_sae(path)`: a trained SAE from a run or an export, taking RAW activations.

Training saw inputs multiplied by the run's normalisation scale s; this folds s into the
weights (the same algebra as `musicsae_jax.export`), so the returned Flax NNX module's
`encode`, `decode` and `__call__` take and return activations exactly as the model
produced them, and latents are in raw units (a latent times its unit decoder row is its
raw contribution). The torch twin is `bridge.load_sae(export_dir)`.
"""
from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from musicsae_jax import export as export_lib


def _is_export(path: str) -> bool:
  return os.path.exists(os.path.join(path, export_lib.CFG_FILE))


def _is_run(path: str) -> bool:
  return os.path.exists(os.path.join(path, "config.json"))


def _set(model, tensors: dict[str, np.ndarray], architecture: str):
  """Put raw-unit tensors (an export's layout) into the module's parameters."""
  for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
    getattr(model, name)[...] = jnp.asarray(tensors[name], jnp.float32)
  if architecture == "jumprelu":
    model.log_threshold[...] = jnp.log(jnp.asarray(tensors["threshold"], jnp.float32))
  elif architecture in ("batchtopk", "matryoshka"):
    model.threshold[...] = jnp.asarray(tensors["threshold"].reshape(-1)[0], jnp.float32)
  return model


def load_sae(path: str, step: int | None = None):
  """The SAE of `path` on raw activations: a run directory (`<workdir>/runs/<run>`, the
  best checkpoint, else the latest, or `step`) or an export directory
  (`<workdir>/exports/<run>`, what `launch.export` wrote).

  The module gains `.info`: architecture, site, scale (folded in), units ('raw'), step.
  """
  from musicsae_jax import sae as sae_lib
  if _is_export(path):
    tensors, cfg = export_lib.load_export(path)
    ms = cfg["musicsae"]
    arch, d, m = ms["architecture"], int(cfg["d_in"]), int(cfg["d_sae"])
    sae_cfg = {k: v for k, v in (ms.get("sae_config") or {}).items() if k != "d"}
    sae_cfg.update(architecture=arch, m=m)
    if ms.get("k") is not None:
      sae_cfg["k"] = int(ms["k"])
    info = {"site": ms.get("site"), "scale": float(ms["normalization"]["scale"]),
            "step": ms.get("step")}
  elif _is_run(path):
    with open(os.path.join(path, "config.json")) as f:
      run_cfg = json.load(f)
    params, got_step = export_lib.restore_params(path, step)
    d = int(params["W_enc"].shape[0])
    sae_cfg = {k: v for k, v in run_cfg["sae"].items() if k != "d"}
    resolved = sae_lib.resolve_config(sae_cfg, d)
    arch, m = resolved["architecture"], resolved["m"]
    norm_path = os.path.join(path, "normalization.json")
    scale = float(json.load(open(norm_path))["scale"]) if os.path.exists(norm_path) else 1.0
    tensors = export_lib.fold_params(params, arch, scale)
    info = {"site": run_cfg.get("train", {}).get("site"), "scale": scale, "step": got_step}
  else:
    raise FileNotFoundError(f"{path}: neither a run directory (config.json) nor an export "
                            f"directory ({export_lib.CFG_FILE} + {export_lib.SAE_FILE})")
  model = sae_lib.make_sae(sae_cfg, d=d, rngs=nnx.Rngs(0))
  _set(model, tensors, arch)
  model.info = dict(info, architecture=arch, d=d, m=m, units="raw",
                    source=os.path.abspath(path))
  return model
