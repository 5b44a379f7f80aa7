"""Steering hooks for MusicGen generation: add directions, clamp SAE features, steer text.

Every steerer is a context manager that registers torch forward hooks on entry and removes
them on exit (also on error); several can be active at once and compose (each sees the
output of the previous one, in entry order)::

    d, man = load_directions("exports/tiny")           # unit rows + manifest
    with add_direction(model, 3, d[0], alpha=4.0, relative_to=man["mean_norm"]):
        wav = model.generate(["calm piano"])

LM layer hooks sit on the backend's decoder layer (bridge.models.backends: audiocraft
`model.lm.transformer.layers[i]`, transformers `model.decoder.model.decoder.layers[i]`;
output `[B', S, D]`). With classifier-free guidance the batch is `[cond; uncond]` (rows
`[:B'/2]` are conditional) on both; with audiocraft's `two_step_cfg` each step makes a
conditional call then an unconditional one. A step is the position of the frame being
decoded: the call's decoding offset (audiocraft's streaming offset, transformers' cache
length) plus the row's position in S, so
`steps=(start, stop)` means decoding passes start..stop-1 (delay pattern: pass i predicts
codebook 0 of frame i) and also applies position-wise to a teacher-forced forward.
`schedule` shapes the edit inside that window (`parse_schedule`): every step (default),
every n-th step (`"every:4"`), or a linear ramp (`"ramp:50"`: weight (k+1)/50 at the k-th
step of the window, then 1). The weight multiplies the added vector (add_direction) or
the SAE edit (clamp_features).
Vectors are cast to the activation's dtype/device (fp16 on CUDA). No jax imports here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Callable, Mapping

import numpy as np
import torch

from bridge.models import backends, capture_sites
from bridge import config_defaults

HALVES = ("cond", "uncond", "both")
SCHEDULES = ("every", "ramp")


def parse_schedule(spec) -> tuple[str, int] | None:
  """`""`/None: every step; `"every:n"` / `("every", n)`; `"ramp:n"` / `("ramp", n)`."""
  if spec is None or spec in ("", "all"):
    return None
  kind, _, n = spec.partition(":") if isinstance(spec, str) else (spec[0], None, spec[1])
  try:
    n = int(n)
  except (TypeError, ValueError):
    n = 0
  if kind not in SCHEDULES or n < 1:
    raise ValueError(f"schedule={spec!r}; expected '', 'every:N' or 'ramp:N' with N >= 1")
  return kind, n


def schedule_weights(schedule, positions: torch.Tensor, start: int) -> torch.Tensor:
  """Float weight of each absolute step in `positions` (window start `start`)."""
  k = (positions - start).float()
  if schedule is None:
    return torch.ones_like(k)
  kind, n = schedule
  if kind == "every":
    return (torch.remainder(positions - start, n) == 0).float()
  return torch.clamp((k + 1) / n, max=1.0)


def load_directions(path: str) -> tuple[torch.Tensor, dict]:
  """(`directions [n, d]` float32, manifest) from `directions.safetensors` + `.json`."""
  from safetensors.torch import load_file
  p = os.path.join(path, "directions.safetensors")
  if not os.path.exists(p):
    raise FileNotFoundError(f"{p} not found: export directions first, e.g. `python -m "
                            f"launch.export --config=... --workdir=... --from_selectivity=1` "
                            f"(after launch.analyze) or `--features=3,17`")
  with open(os.path.join(path, "directions.json")) as f:
    return load_file(p)["directions"], json.load(f)


def _as_vector(v, d: int) -> torch.Tensor:
  t = torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v).float()
  if t.shape != (d,):
    raise ValueError(f"steering vector has shape {tuple(t.shape)}; the site has width {d}")
  return t


class _Steerer(contextlib.AbstractContextManager):
  """Base: a forward hook that edits the chosen rows (half) and positions (steps).

  Subclasses implement `edit(x) -> x'` on a `[n, D]` slice of the output.
  """

  def __init__(self, module: torch.nn.Module, *, half: str = "cond",
               steps: tuple[int | None, int | None] | None = None,
               offset_fn: Callable[[dict, int], int] | None = None, two_step: bool = False,
               schedule=None, rows_fn: Callable[[int], slice | None] | None = None):
    if half not in HALVES:
      raise ValueError(f"half={half!r}; allowed: {', '.join(HALVES)}")
    self.module, self.half, self.two_step = module, half, two_step
    start, stop = steps if steps is not None else (None, None)
    self.start, self.stop = (0 if start is None else int(start)), stop
    self.offset_fn = offset_fn or (lambda kwargs, S: 0)
    self.rows_fn = rows_fn          # overrides the half -> rows rule (text encoder calls)
    self.schedule = parse_schedule(schedule)
    self.calls = 0            # hook calls seen (tests, debugging)
    self._handle = None
    self._seen: dict[int, int] = {}

  # -- which rows and positions --------------------------------------------------------
  def _rows(self, n: int, offset: int) -> slice | None:
    if self.rows_fn is not None:
      return self.rows_fn(n)
    if self.two_step:        # one half per call: cond first, then uncond, at each offset
      k = self._seen.get(offset, 0)
      if offset == 0 and k >= 2:          # a new generation restarts at offset 0
        self._seen.clear()
        k = 0
      self._seen[offset] = k + 1
      is_cond = k % 2 == 0
      want = self.half == "both" or (self.half == "cond") == is_cond
      return slice(0, n) if want else None
    if self.half == "both":
      return slice(0, n)
    if n % 2:
      raise RuntimeError(f"half={self.half!r} needs a [cond; uncond] batch; got {n} rows "
                         f"(odd). Use half='both' without classifier-free guidance.")
    return slice(0, n // 2) if self.half == "cond" else slice(n // 2, n)

  def _positions(self, S: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions to edit [S] bool, their schedule weights [n_kept] float)."""
    pos = torch.arange(offset, offset + S)
    keep = pos >= self.start
    if self.stop is not None:
      keep &= pos < int(self.stop)
    w = schedule_weights(self.schedule, pos, self.start)
    keep &= w > 0
    return keep, w[keep]

  def edit(self, x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """x [r, s, D] -> edited x; `w` [s] schedule weights (None: all 1)."""
    raise NotImplementedError

  def _hook(self, module, args, output, kwargs=None):
    self.calls += 1
    out = output[0] if isinstance(output, tuple) else output
    squeeze = out.dim() == 2
    o = out.unsqueeze(1) if squeeze else out
    offset = int(self.offset_fn(kwargs, o.shape[1]))
    rows = self._rows(o.shape[0], offset)
    keep, w = self._positions(o.shape[1], offset)
    keep = keep.to(o.device)
    if rows is None or not bool(keep.any()):
      return None
    w = None if bool((w == 1).all()) else w.to(o.device)
    self._cur_pos = torch.arange(offset, offset + o.shape[1])[keep.cpu()]   # steps being edited
    self._cur_rows, self._cur_keep = rows, keep                             # for subclasses
    new = o.clone()
    blk = new[rows]                                   # view [r, S, D]
    sel = blk[:, keep]                                # copy [r, s, D]
    blk[:, keep] = self.edit(sel, w).to(o.dtype)
    new = new.squeeze(1) if squeeze else new
    return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

  def __enter__(self):
    if self._handle is not None:
      raise RuntimeError("steering hook already active (contexts are not re-entrant)")
    self._seen.clear()
    self._handle = self.module.register_forward_hook(
        lambda m, a, kw, o: self._hook(m, a, o, kw), with_kwargs=True)
    return self

  def __exit__(self, *exc):
    if self._handle is not None:
      self._handle.remove()
      self._handle = None
    return False


def _site_module(model, layer) -> torch.nn.Module:
  """`layer`: an index (the residual stream after that block) or an LM site name
  (`lm.layer.<i>`, `lm.layer.<i>.attn`, `lm.layer.<i>.cross_attn`), on either backend."""
  be = backends.adapt(model)
  if isinstance(layer, str):
    try:
      return be.layer_module(layer)
    except capture_sites.UnknownSiteError as e:
      raise ValueError(str(e)) from None
  n = be.info.num_layers
  if not 0 <= int(layer) < n:
    raise ValueError(f"layer={layer} out of range: the LM has {n} layers")
  return be.layer_module(int(layer))


def _layer_kwargs(model, layer, half, steps, schedule=None) -> dict:
  be = backends.adapt(model)
  return dict(module=_site_module(be, layer), half=half, steps=steps,
              offset_fn=be.step_offset, two_step=be.two_step, schedule=schedule)


class add_direction(_Steerer):
  """Add `alpha · v` (× `relative_to`, e.g. the site's mean norm) at `lm.layer.<layer>`.

  `layer` is an index (residual stream) or an LM site name: `"lm.layer.3.attn"` /
  `"lm.layer.3.cross_attn"` steer the output of that block's attention module (as in SMITIN).

  Magnitudes: with `relative_to=man["mean_norm"]` (the site's RMS activation norm from
  directions.json) alpha is unit-free, and 2-8 is a strong push (the demo uses 4 and 8);
  without it, alpha is in raw activation units of the site, so compare it with that norm.
  """

  def __init__(self, model, layer: int, direction, alpha: float, relative_to: float | None = None,
               half: str = "cond", steps: tuple[int | None, int | None] | None = None,
               schedule=None):
    kw = _layer_kwargs(model, layer, half, steps, schedule)
    super().__init__(**kw)
    d = int(backends.adapt(model).info.d_model)
    self.alpha = float(alpha) * (1.0 if relative_to is None else float(relative_to))
    self.vector = self.alpha * _as_vector(direction, d)
    self._cast: torch.Tensor | None = None

  def edit(self, x, w=None):
    if self._cast is None or self._cast.dtype != x.dtype or self._cast.device != x.device:
      self._cast = self.vector.to(device=x.device, dtype=x.dtype)
    if w is None:
      return x + self._cast
    return x + w.to(x.dtype)[None, :, None] * self._cast


FeatureSpec = Mapping[int, "float | tuple[str, float]"]


def _clamp_delta(sae, x: torch.Tensor, features: FeatureSpec) -> torch.Tensor:
  """Σ_j (z'_j - z_j) W_dec[j] in f32: decode(z') + (x - decode(z)) - x, without the
  round-off of decoding all other latents twice, so nothing else moves."""
  ids = torch.tensor(sorted(int(j) for j in features), device=x.device)
  z = sae.encode(x.float())[..., ids]
  target = []
  for col, j in enumerate(ids.tolist()):
    spec = features[j]
    if isinstance(spec, (tuple, list)):
      if spec[0] != "scale":
        raise ValueError(f"feature {j}: spec {spec!r}; use a value or ('scale', s)")
      target.append(z[..., col] * float(spec[1]))
    else:
      target.append(torch.full_like(z[..., col], float(spec)))
  dz = torch.stack(target, -1) - z
  return dz @ sae.W_dec[ids].to(device=x.device, dtype=torch.float32)


class clamp_features(_Steerer):
  """Set (`{id: value}`) or scale (`{id: ('scale', s)}`) SAE latents at `lm.layer.<layer>`.

  x' = decode(z') + (x - decode(z)): the SAE's reconstruction error is added back, so the
  activation changes only along the chosen features' decoder rows. Values are in the
  export's latent units (raw activation units): the same numbers `sae.encode(x)`,
  `features.json` (`mean_active`, `max`) and the report show. Typical: 1-5x the feature's
  usual active value (look it up there; 0 ablates), or `('scale', s)` to multiply
  whatever it is.
  """

  def __init__(self, model, layer: int, sae, features: FeatureSpec, half: str = "cond",
               steps: tuple[int | None, int | None] | None = None, schedule=None):
    super().__init__(**_layer_kwargs(model, layer, half, steps, schedule))
    if not features:
      raise ValueError("clamp_features: no features given")
    bad = [j for j in features if not 0 <= int(j) < sae.m]
    if bad:
      raise ValueError(f"features {bad} out of range [0, {sae.m})")
    if isinstance(layer, str):
      if sae.site is not None and sae.site != layer:
        raise ValueError(f"the SAE was trained on site {sae.site}, not {layer}")
    elif sae.layer is not None and int(sae.layer) != int(layer):
      raise ValueError(f"the SAE was trained on layer {sae.layer}, not {layer}")
    self.sae, self.features = sae, dict(features)

  def edit(self, x, w=None):
    if self.sae.W_dec.device != x.device:
      self.sae.to(x.device)
    delta = _clamp_delta(self.sae, x, self.features)
    if w is not None:
      delta = w.to(delta.device)[None, :, None] * delta
    return (x.float() + delta).to(x.dtype)


class transplant_features(_Steerer):
  """Impose a recorded activation pattern of SAE features, step by step (error term kept).

  `pattern` [B or 1, P, F] gives, for each prompt row (1: the same for all), the value of
  features `ids` at decoding steps 0..P-1 (e.g. `record_features` on a source generation
  with another prompt); steps >= P are left alone. x' = x + Σ_j (alpha·pattern_j - z_j) W_dec[j],
  as in clamp_features, so at alpha = 1 the SAE reads back exactly the source pattern
  (for features that stay above their threshold).
  """

  def __init__(self, model, layer: int, sae, ids, pattern, alpha: float = 1.0,
               half: str = "cond", steps: tuple[int | None, int | None] | None = None,
               schedule=None):
    super().__init__(**_layer_kwargs(model, layer, half, steps, schedule))
    self.sae, self.ids = sae, [int(i) for i in ids]
    self.pattern = float(alpha) * torch.as_tensor(np.asarray(pattern), dtype=torch.float32)
    if self.pattern.dim() != 3 or self.pattern.shape[2] != len(self.ids):
      raise ValueError(f"pattern has shape {tuple(self.pattern.shape)}; expected "
                       f"[rows, steps, {len(self.ids)}]")

  def edit(self, x, w=None):
    pos = self._cur_pos
    ok = pos < self.pattern.shape[1]
    if not bool(ok.any()):
      return x
    xs = x[:, ok.to(x.device)]
    rows = self.pattern if self.pattern.shape[0] == xs.shape[0] else \
        self.pattern[:1].expand(xs.shape[0], -1, -1)
    target = rows[:, pos[ok]].to(x.device)                        # [r, s', F]
    ids = torch.tensor(self.ids, device=x.device)
    z = self.sae.encode(xs.float())[..., ids]
    dz = target - z
    if w is not None:
      dz = w[ok.to(w.device)].to(dz.device)[None, :, None] * dz
    out = x.float().clone()
    out[:, ok.to(x.device)] = xs.float() + dz @ self.sae.W_dec[ids].to(x.device, torch.float32)
    return out.to(x.dtype)


def record_features(model, texts, layer, sae, ids, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
  """(tokens, pattern [B, T, F]): features `ids` at each step of an unsteered generation of
  `texts` (teacher-forced re-read: pass i reads frame i), the input of transplant_features."""
  from bridge.capture import record
  tokens = record.generate_tokens(model, texts, seed=seed)
  site = layer if isinstance(layer, str) else f"lm.layer.{layer}"
  cap = record.teacher_forced_capture(model, texts, tokens, [site])
  rows = torch.from_numpy(np.stack(cap.acts[site])).float()
  with torch.no_grad():
    return tokens, sae.encode(rows)[..., [int(i) for i in ids]]


class add_text_direction(_Steerer):
  """Add `alpha · v` to the text conditioning: `site='cond.proj'` (after audiocraft's
  projection into the LM width; padded tokens are re-zeroed by audiocraft's mask) or
  `'t5.hidden'` (the T5 last hidden state, 768-d for T5-base). Every token of the chosen
  half's prompts is shifted; `steps` does not apply (conditioning is computed once).
  Magnitudes as for `add_direction`: alpha x `relative_to` (that site's RMS norm), or raw
  units of the site without it.

  transformers: T5 runs on the B prompts only (the unconditional half is zeros appended
  after it, fully masked in cross-attention), and the projection runs at every step on
  `[2B]` rows; so half='cond' there means every T5 row, and half='uncond' is refused (a
  masked half cannot be steered)."""

  def __init__(self, model, direction, alpha: float, relative_to: float | None = None,
               site: str = "cond.proj", half: str = "cond"):
    be = backends.adapt(model)
    if site not in ("cond.proj", "t5.hidden"):
      raise ValueError(f"site={site!r}; allowed: 'cond.proj', 't5.hidden'")
    info, rows_fn = be.info, None
    if site == "cond.proj":
      module, d = be.proj_module(), info.d_model
    else:
      module, d = be.text_module(), info.t5_dim
    if be.name == "transformers":
      if half == "uncond":
        raise ValueError("half='uncond' on the transformers backend: its unconditional text "
                         "is zeros fully masked in cross-attention, so steering it does nothing")
      if site == "t5.hidden":
        rows_fn = lambda n: slice(0, n)   # noqa: E731 - T5 sees only the conditional prompts
    super().__init__(module, half=half, rows_fn=rows_fn)
    self.site = site
    self.vector = float(alpha) * (1.0 if relative_to is None else float(relative_to)) * \
        _as_vector(direction, d)

  def edit(self, x, w=None):
    return x + self.vector.to(device=x.device, dtype=x.dtype)

  def _hook(self, module, args, output, kwargs=None):
    if self.site == "t5.hidden":         # a ModelOutput: edit last_hidden_state in place
      h = output.last_hidden_state
      new = super()._hook(module, args, h, kwargs)
      if new is not None:
        output.last_hidden_state = new
      return output
    return super()._hook(module, args, output, kwargs)


# --------------------------------------------------------------------------------------
# The steering experiment (launch/steer.py): prompts × strengths, baseline vs steered
# --------------------------------------------------------------------------------------

STEER_DEFAULTS = config_defaults.steer().to_dict()   # every config.steer field and its default


def _selected(features, man: dict, exp_dir: str) -> list[int]:
  """Positions in directions.json of the feature ids `steer.features` names (None: all)."""
  ids = [int(i) for i in man["feature_ids"]]
  if features is None:
    return list(range(len(ids)))
  missing = [int(f) for f in features if int(f) not in ids]
  if missing:
    raise ValueError(f"--config.steer.features: feature ids {missing} are not among the "
                     f"exported directions {ids} ({exp_dir}/directions.json); export them "
                     f"with launch.export --features=...")
  return [ids.index(int(f)) for f in features]


def check_sizes(sizes: dict, dirs, layer, text_site, exp_dir: str, model_name: str) -> None:
  """The exported directions must match the model they steer: width (of the LM, or of the
  text site) and layer. `sizes`: {d_model, num_layers, t5_dim} (audiocraft_musicgen.expected_sizes before
  the model loads, or its model_info after)."""
  if text_site:
    width = sizes["t5_dim"] if text_site == "t5.hidden" else sizes["d_model"]
    if dirs.shape[1] != width:
      raise ValueError(f"{exp_dir}/directions.safetensors: directions are {dirs.shape[1]} wide "
                       f"but {text_site} of model {model_name!r} is {width} wide")
    return
  if dirs.shape[1] != sizes["d_model"]:
    raise ValueError(f"{exp_dir}/directions.safetensors: directions are {dirs.shape[1]} wide "
                     f"but model {model_name!r} has d_model={sizes['d_model']}; export from a "
                     f"run trained on this model's activations")
  if not isinstance(layer, str) and not 0 <= layer < sizes["num_layers"]:
    raise ValueError(f"{exp_dir}/directions.json: layer {layer} but model {model_name!r} has "
                     f"{sizes['num_layers']} layers")


def _check_fits(model, dirs, layer, exp_dir: str, model_name: str, text_site=None) -> None:
  """check_sizes against the loaded model (and an attention site's module)."""
  info = backends.model_info(model)
  check_sizes(dataclasses.asdict(info), dirs, layer, text_site, exp_dir, model_name)
  if isinstance(layer, str) and not text_site:
    _site_module(model, layer)      # an attention site of a layer the model has
