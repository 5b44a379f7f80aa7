"""Steering vectors that need no SAE: difference of means between labelled prompts (CAA),
and linear-probe weight directions.

For each value v of a label, the vector is mean(prompt means | label = v) - mean(prompt
means | label != v) over a store site: the activation-addition baseline (ActAdd/CAA) an
SAE direction has to beat. Rows are saved unit-norm in the directions format
(`directions.safetensors` + `directions.json`, `kind: "mean_difference"`, the raw
norms in `norms`), so `launch.steer` applies them exactly like decoder directions
(alpha x the site's `mean_norm`). numpy + tensorstore only.
"""
from __future__ import annotations

import os

import numpy as np
from safetensors.numpy import save_file

from musicsae_jax import export, files, store


def _prompt_means(ds_path: str, site: str, label_key: str):
  """(per-prompt means [P, d], has rows [P], label per prompt [P] str, values, RMS norm)."""
  ds = store.open_dataset(ds_path)
  reader = ds.site(site)
  prompts = ds.prompts
  P = len(prompts)
  total = np.zeros((P, reader.d), np.float64)
  count = np.zeros(P, np.int64)
  sq, rows = 0.0, 0
  for i in range(reader.num_blocks):
    acts, index = reader.read_block(i)
    acts = np.asarray(acts, np.float64)
    pid = np.asarray(index)[:, 0].astype(np.int64)
    np.add.at(total, pid, acts)
    np.add.at(count, pid, 1)
    sq += float((acts ** 2).sum())
    rows += len(acts)
  if not rows:
    raise export.ExportError(f"{ds_path}: site {site!r} holds no rows")
  labels = [(p.get("labels") or {}).get(label_key) for p in prompts]
  have = count > 0
  values = sorted({v for v, h in zip(labels, have) if v is not None and h})
  if len(values) < 2:
    raise export.ExportError(f"{ds_path}: label {label_key!r} has {len(values)} value(s) on "
                             f"prompts with rows; a mean difference needs 2 or more")
  means = total / np.maximum(count, 1)[:, None]
  lab = np.array([str(v) for v in labels])
  return means, have, lab, [str(v) for v in values], float(np.sqrt(sq / rows))


def mean_difference(ds_path: str, site: str, label_key: str):
  """(vectors [V, d] raw, values, prompts per value, site RMS row norm) from the store."""
  means, have, lab, values, mean_norm = _prompt_means(ds_path, site, label_key)
  vecs, n = [], []
  for v in values:
    inside = have & (lab == str(v))
    vecs.append(means[inside].mean(0) - means[have & ~inside].mean(0))
    n.append(int(inside.sum()))
  return np.stack(vecs), values, n, mean_norm


def probe_directions(ds_path: str, site: str, label_key: str, *, l2: float = 1e-3,
                     steps: int = 100):
  """(vectors [V, d] raw, values, prompts per value, RMS norm): the analysis probe's
  multinomial logistic regression on per-prompt means, mapped back to raw units.

  The probe standardises inputs (x - mu) / sd, so the raw-space gradient of logit c is
  W[:, c] / sd; logits are shift-invariant, so the direction that raises class c against
  the others is that minus the mean over classes.
  """
  from musicsae_jax.analysis import probes       # JAX: only this baseline needs it
  means, have, lab, values, mean_norm = _prompt_means(ds_path, site, label_key)
  keep = have & np.isin(lab, values)
  x, y = means[keep], np.array([values.index(v) for v in lab[keep]])
  _, W, _ = probes.fit(x, y, len(values), l2=l2, steps=steps)
  sd = x.std(0)
  g = W[: x.shape[1]] / np.where(sd > 1e-8, sd, 1.0)[:, None]     # [d, V]
  g = (g - g.mean(1, keepdims=True)).T
  return g, values, [int((y == i).sum()) for i in range(len(values))], mean_norm


KINDS = {"mean_difference": mean_difference, "probe": probe_directions}


def export_mean_difference(ds_path: str, site: str, label_key: str, out_dir: str, *,
                           run: str = "", kind: str = "mean_difference") -> str:
  """Write one vector per value of `label_key` (`kind`: mean_difference | probe) as directions."""
  vecs, values, n, mean_norm = KINDS[kind](ds_path, site, label_key)
  norms = np.linalg.norm(vecs, axis=1)
  if np.any(norms == 0):
    raise export.ExportError(f"zero mean difference for {[v for v, x in zip(values, norms) if x == 0]}")
  os.makedirs(out_dir, exist_ok=True)
  with files.atomic_path(os.path.join(out_dir, export.DIR_FILE)) as tmp:
    save_file({"directions": np.ascontiguousarray(vecs / norms[:, None], np.float32)}, tmp)
  manifest = {"format_version": export.FORMAT_VERSION, "kind": kind, "run": run,
              "step": None, "site": site, "layer": export._layer_of(site),
              "feature_ids": list(range(len(values))),
              "labels": [f"{label_key}={v}" for v in values], "norms": norms.tolist(),
              "prompts_per_value": n, "dataset": ds_path, "mean_norm": mean_norm,
              "d": int(vecs.shape[1])}
  files.write_json(os.path.join(out_dir, export.DIR_MANIFEST), manifest)
  return out_dir
