"""Run plots: training curves and the log10 feature-density histogram (matplotlib, Agg)."""
from __future__ import annotations

import json

import numpy as np

from musicsae_jax import files, metrics


def pyplot():
  """matplotlib.pyplot on the Agg backend (files only, no display), imported on first use."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def read_metrics(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_training(rows: list[dict], path: str) -> None:
  """Loss, MSE, L0, FVU (train batch and pooled eval), dead fraction and lr vs step."""
  fig = training_figure(rows)
  files.save_figure(fig, path, dpi=100)
  pyplot().close(fig)


def training_figure(rows: list[dict]):
  """The figure `plot_training` writes (returned, so tests can read its axes)."""
  plt = pyplot()
  train = [r for r in rows if r.get("kind") == "train"]
  evals = [r for r in rows if r.get("kind") == "eval"]
  panels = [("loss", "loss", True), ("mse", "mse", True), ("l0", "L0", False),
            ("fvu", "FVU", True), ("dead_frac", "dead fraction", False), ("lr", "lr", False)]
  fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
  for ax, (key, title, log) in zip(axes.flat, panels):
    for src, label, style in ((train, "train", "-"), (evals, "eval", "o-")):
      pts = [(r["step"], r[key]) for r in src if r.get(key) is not None]
      if pts:
        s, v = zip(*pts)
        ax.plot(s, v, style, label=label, ms=3)
    if log and ax.lines and all(y > 0 for ln in ax.lines for y in ln.get_ydata()):
      ax.set_yscale("log")
    elif ax.lines:     # plain numbers: a constant L0 of 16 must read 16, not an offset
      ys = np.concatenate([np.asarray(ln.get_ydata(), float) for ln in ax.lines])
      lo, hi = float(ys.min()), float(ys.max())
      if hi - lo <= 1e-6 * max(1.0, abs(hi)):      # float noise around a constant
        pad = 0.1 * abs(hi) or 1.0
        ax.set_ylim(lo - pad, hi + pad)
      ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_title(title)
    ax.set_xlabel("step")
    if len(ax.lines) > 1:
      ax.legend()
  fig.tight_layout()
  return fig


def density_figure(density: np.ndarray, xlabel: str, title: str, figsize=(6, 4)):
  """Histogram of log10(firing frequency); latents that never fire are counted in the title."""
  density = np.asarray(density, np.float64)
  alive = density[density > 0]
  fig, ax = pyplot().subplots(figsize=figsize)
  if len(alive):
    ax.hist(np.log10(alive), bins=50)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("latents")
  ax.set_title(f"{title}: {metrics.dead_count(density)} of {len(density)} dead (never fire)")
  fig.tight_layout()
  return fig


def plot_density(density: np.ndarray, path: str, title: str = "feature density") -> None:
  fig = density_figure(density, "log10 firing frequency (eval rows)", title)
  files.save_figure(fig, path, dpi=100)
  pyplot().close(fig)


def sweep_figure(record: dict, highlight: str | None = None):
  """A sweep at a glance: eval FVU against L0 per member with the Pareto front joined
  (lower-left is better), and each member's dead-latent percentage."""
  rows = [r for r in record.get("members", []) if r.get("fvu") is not None]
  plt = pyplot()
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5),
                               gridspec_kw={"width_ratios": [3, 2]})
  front = set(record.get("pareto") or [])
  groups = sorted({r["group"] for r in rows})
  for g in groups:
    pts = [r for r in rows if r["group"] == g]
    ax.scatter([r["l0"] for r in pts], [r["fvu"] for r in pts], s=36, zorder=3,
               label=f"group {g}" if len(groups) > 1 else "members")
  fr = sorted((r for r in rows if r["name"] in front), key=lambda r: r["l0"])
  if fr:
    ax.step([r["l0"] for r in fr], [r["fvu"] for r in fr], where="post", color="k",
            lw=1, zorder=2, label="Pareto front")
    ax.scatter([r["l0"] for r in fr], [r["fvu"] for r in fr], s=90, facecolors="none",
               edgecolors="k", zorder=4)
  for r in rows:
    ax.annotate(r["name"], (r["l0"], r["fvu"]), fontsize=7, xytext=(3, 3),
                textcoords="offset points",
                fontweight="bold" if r["name"] == highlight else "normal")
  ax.set_xlabel("L0 (active latents per token, eval)")
  ax.set_ylabel("FVU (eval)")
  ax.set_title(f"sweep {record.get('run', '')}: FVU vs L0")
  if all(r["fvu"] > 0 for r in rows) and rows:
    ax.set_yscale("log")
  ax.legend(fontsize=8)
  names = [r["name"] for r in rows]
  dead = [100.0 * (r.get("dead_frac") or 0.0) for r in rows]
  colors = ["k" if n == highlight else "C0" for n in names]
  bars = bx.barh(range(len(rows)), dead, color=colors)
  bx.bar_label(bars, labels=[f"{v:.1f}" for v in dead], fontsize=7, padding=2)
  bx.set_xlim(0, max([1.0, *dead]) * 1.15)
  bx.set_yticks(range(len(rows)), names, fontsize=7)
  bx.invert_yaxis()
  bx.set_xlabel("dead latents (% never firing on eval rows)")
  bx.set_title("dead % per member")
  fig.tight_layout()
  return fig


def plot_sweep(record: dict, path: str) -> None:
  fig = sweep_figure(record)
  files.save_figure(fig, path, dpi=100)
  pyplot().close(fig)
