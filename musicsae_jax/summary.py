"""What a stage says when it ends: its headline numbers, rounded for a person, and where
its files went (JAX-free; the launch scripts print these lines)."""
from __future__ import annotations

import os


def number(v) -> str:
  """4 significant digits for floats (0.08162 rather than 0.08161924034357071)."""
  if isinstance(v, bool) or not isinstance(v, float):
    return str(v)
  return f"{v:.4g}"


def _written(run_dir: str, names: tuple[str, ...]) -> str:
  present = [n for n in names if os.path.exists(os.path.join(run_dir, n.rstrip("/")))]
  return f"written to {run_dir}: {', '.join(present)}" if present else f"run folder: {run_dir}"


def train(final: dict, run_dir: str) -> list[str]:
  """Two lines: the run's final evaluation, and the files it holds."""
  run = os.path.basename(os.path.normpath(run_dir))
  if final.get("preempted"):
    return [f"run {run}: stopped at step {final['step']} on SIGTERM, checkpointed; "
            "rerun the same command to resume", f"run folder: {run_dir}"]
  shown = [f"{k.removeprefix('eval_')} {number(v)}" for k, v in final.items()
           if k.startswith(("eval_", "synthetic_")) and isinstance(v, (int, float))]
  head = f"run {run}: step {final['step']}" + (f"; eval {', '.join(shown)}" if shown else "")
  return [head, _written(run_dir, ("final_metrics.json", "metrics.jsonl", "config.json",
                                   "training_curves.png", "feature_density.png",
                                   "checkpoints/"))]


def sweep(record: dict, run_dir: str) -> list[str]:
  """One line per member (FVU, L0, dead %, * on the Pareto front) and the files."""
  lines = []
  for r in record.get("members", []):
    dead = r.get("dead_frac")
    lines.append(f"{'*' if r.get('pareto') else ' '} {r.get('run')}: FVU "
                 f"{number(r.get('fvu'))}, L0 {number(r.get('l0'))}, dead "
                 f"{'–' if dead is None else f'{100 * dead:.2f} %'}")
  lines.append("(* = on the FVU-L0 Pareto front) "
               + _written(run_dir, ("sweep.json", "sweep.png")))
  return lines
