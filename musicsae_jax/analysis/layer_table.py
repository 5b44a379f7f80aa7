"""The layer sweep's table: which layer to use for which concept (launch.layer_sweep).

Reads, per swept site, the run's `reports/<run>/probes.json` (launch.analyze: linear
probe accuracy on the raw site and on the SAE's latents, per label) and `fidelity.json`
(launch.localize: FVU, L0, loss recovered), and picks per label the site whose SAE
latents probe best (ties: the better loss recovered). JSON in, JSON + Markdown out; no
torch, no JAX.
"""
from __future__ import annotations

import json
import os

from musicsae_jax import files


def _load(path: str):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def site_row(workdir: str, site: str, run: str, half: str = "cond") -> dict:
  """One site's numbers (None where a stage has not written its file)."""
  rep = os.path.join(workdir, "reports", run)
  row = {"site": site, "run": run, "fvu": None, "l0": None, "loss_recovered": None,
         "probe_raw": {}, "probe_sae": {}}
  fid = _load(os.path.join(rep, "fidelity.json"))
  if fid is not None:
    h = fid["halves"].get(half) or next(iter(fid["halves"].values()))
    row.update(fvu=h["fvu"], l0=h["l0"], loss_recovered=h["loss_recovered_mean"])
  pr = _load(os.path.join(rep, "probes.json"))
  if pr is not None:
    for label, entries in pr.get("probes", {}).items():
      for e in entries:
        if e.get("name") == site:
          row["probe_raw"][label] = e["accuracy"]
        elif e.get("name") == f"sae:{site}":
          row["probe_sae"][label] = e["accuracy"]
  return row


def summarize(rows: list[dict]) -> dict:
  """{rows, best: {label: {site, probe_sae, probe_raw, loss_recovered}}}."""
  labels = sorted({k for r in rows for k in list(r["probe_sae"]) + list(r["probe_raw"])})
  best = {}
  for label in labels:
    cands = [r for r in rows if label in r["probe_sae"] or label in r["probe_raw"]]
    key = lambda r: (r["probe_sae"].get(label, r["probe_raw"].get(label, -1.0)),
                     r["loss_recovered"] if r["loss_recovered"] is not None else -1e9)
    b = max(cands, key=key)
    best[label] = {"site": b["site"], "probe_sae": b["probe_sae"].get(label),
                   "probe_raw": b["probe_raw"].get(label), "loss_recovered": b["loss_recovered"]}
  return {"labels": labels, "rows": rows, "best": best}


def _f(x, nd=3) -> str:
  return "–" if x is None else f"{x:.{nd}f}"


def markdown(table: dict) -> str:
  labels = table["labels"]
  head = ["site", "FVU", "L0", "loss recovered"] + [f"{k} (SAE / raw)" for k in labels]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in table["rows"]:
    cells = [r["site"], _f(r["fvu"]), _f(r["l0"], 1), _f(r["loss_recovered"])]
    cells += [f"{_f(r['probe_sae'].get(k))} / {_f(r['probe_raw'].get(k))}" for k in labels]
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  lines.append("Best site per concept (probe accuracy on the SAE latents, then loss recovered):")
  for k, b in table["best"].items():
    lines.append(f"- {k}: {b['site']} (SAE probe {_f(b['probe_sae'])}, raw probe "
                 f"{_f(b['probe_raw'])}, loss recovered {_f(b['loss_recovered'])})")
  return "\n".join(lines) + "\n"


def write(workdir: str, out_run: str, sites_runs: list[tuple[str, str]]) -> tuple[str, str]:
  """Write reports/<out_run>/layer_sweep.json and .md; returns both paths."""
  table = summarize([site_row(workdir, s, r) for s, r in sites_runs])
  out = os.path.join(workdir, "reports", out_run)
  os.makedirs(out, exist_ok=True)
  pj, pm = os.path.join(out, "layer_sweep.json"), os.path.join(out, "layer_sweep.md")
  files.write_json(pj, table, indent=1)
  files.write_text(pm, markdown(table))
  return pj, pm
