"""Train-step throughput: the JAX step (musicsae_jax.train.make_train_step) vs a plain
PyTorch step of the same architecture on the same CPU, and the measured f32 matmul peak.

    python bench/train_step.py                 # quick: d=256, m=4096, k=32, batch 1024
    python bench/train_step.py --preset=full   # d=1024, m=16384, k=32, batch 4096
    python bench/train_step.py --preset=full --compare=topk,batchtopk,matryoshka
                                               # JAX steps only, round-robin in one process:
                                               # each step time relative to the first's

Prints one JSON object per architecture. Effective GFLOP/s uses the dense convention of
10·B·d·m FLOPs per step (forward 4, backward 6), so sparse implementations can exceed
the matmul peak. The torch step is the straightforward one (dense latents, dense decode,
Adam, clipping, parallel-gradient removal, decoder renormalisation, AuxK when a latent is
dead: like the JAX step it skips AuxK when none is, as throughout this benchmark).

Timing: per architecture the JAX step, the torch step and both matmuls run round-robin
(one call each per round, after warm-up) in this one process, so load from other jobs on
a shared machine hits them alike; step times are the min over rounds (medians are
printed too), the matmul peak is measured in the same rounds, and loadavg_1m is the
1-minute load average when the row was printed.
"""
import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

from musicsae_jax import sae as sae_lib
from musicsae_jax import train as train_lib

PRESETS = {"quick": dict(d=256, m=4096, k=32, batch=1024, iters=10),
           "full": dict(d=1024, m=16384, k=32, batch=4096, iters=3)}
ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")


def _time_interleaved(fns, iters, warmup=2):
  """{name: (min, median) seconds}: the callables run round-robin, one call each per
  round, so a load change on a shared machine hits them all alike; the min is the
  least disturbed call."""
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  ts = {n: [] for n in fns}
  for _ in range(iters):
    for n, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      ts[n].append(time.perf_counter() - t0)
  return {n: (min(v), float(np.median(v))) for n, v in ts.items()}


# --- JAX ----------------------------------------------------------------------------------


def jax_step_fn(arch, d, m, k, batch, x_np):
  cfg = dict(architecture=arch, m=m, k=k, k_aux=d // 2,
             matryoshka_prefixes=[m // 8, m // 4, m // 2, m])
  graphdef, params, stats = nnx.split(sae_lib.make_sae(cfg, d=d, rngs=nnx.Rngs(0)),
                                      nnx.Param, ...)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-4))
  step = jax.jit(train_lib.make_train_step(graphdef, tx, dead_tokens=10**7),
                 donate_argnums=(0,))
  box = [train_lib.init_state(params, stats, tx, m)]
  x = jnp.asarray(x_np)

  def run():
    box[0], met = step(box[0], x)
    jax.block_until_ready(met["loss"])

  return run


def jax_matmul_fn(d, m, batch):
  a = jnp.asarray(np.random.default_rng(0).normal(size=(batch, d)), jnp.float32)
  b = jnp.asarray(np.random.default_rng(1).normal(size=(d, m)), jnp.float32)
  mm = jax.jit(jnp.dot)
  return lambda: mm(a, b).block_until_ready()


# --- PyTorch reference ----------------------------------------------------------------------


class TorchSAE(torch.nn.Module):
  def __init__(self, arch, d, m, k, k_aux, prefixes):
    super().__init__()
    w = torch.randn(m, d)
    w = w / w.norm(dim=1, keepdim=True)
    self.W_dec = torch.nn.Parameter(w)
    self.W_enc = torch.nn.Parameter(w.T.clone())
    self.b_enc = torch.nn.Parameter(torch.zeros(m))
    self.b_dec = torch.nn.Parameter(torch.zeros(d))
    if arch == "jumprelu":
      self.log_threshold = torch.nn.Parameter(torch.full((m,), float(np.log(1e-3))))
    self.arch, self.m, self.k, self.k_aux, self.prefixes = arch, m, k, k_aux, prefixes

  def loss(self, x, dead):
    pre = (x - self.b_dec) @ self.W_enc + self.b_enc
    a = self.arch
    if a == "relu":
      z = torch.relu(pre)
      x_hat = z @ self.W_dec + self.b_dec
      return ((x - x_hat) ** 2).sum(-1).mean() + 5.0 * (z @ self.W_dec.norm(dim=1)).mean()
    if a == "jumprelu":
      theta = self.log_threshold.exp()
      z = _JumpReLU.apply(pre, theta)
      x_hat = z @ self.W_dec + self.b_dec
      return ((x - x_hat) ** 2).sum(-1).mean() + 1e-3 * _Step.apply(pre, theta).sum(-1).mean()
    if a == "topk":
      v, i = pre.topk(self.k, dim=-1)
      z = torch.zeros_like(pre).scatter(-1, i, torch.relu(v))
    else:                                          # batchtopk, matryoshka
      v, i = torch.relu(pre).flatten().topk(x.shape[0] * self.k)
      z = torch.zeros_like(pre).flatten().scatter(0, i, v).view_as(pre)
    if a == "matryoshka":
      recons = [z[:, :p] @ self.W_dec[:p] + self.b_dec for p in self.prefixes]
      x_hat = recons[-1]                             # the last prefix is all of m
      main = torch.stack([((x - r) ** 2).sum(-1).mean() for r in recons]).mean()
    else:
      x_hat = z @ self.W_dec + self.b_dec
      main = ((x - x_hat) ** 2).sum(-1).mean()
    if not bool(dead.any()):                         # AuxK only when a latent is dead
      return main
    res = (x - x_hat).detach()                       # AuxK on dead latents
    av, ai = torch.where(dead, torch.relu(pre), 0.0).topk(self.k_aux, dim=-1)
    e_hat = torch.zeros_like(pre).scatter(-1, ai, av) @ self.W_dec
    den = ((res - res.mean(0)) ** 2).sum(-1).mean()
    aux = ((res - e_hat) ** 2).sum(-1).mean() / den.clamp_min(1e-12)
    return main + aux / 32


class _JumpReLU(torch.autograd.Function):
  @staticmethod
  def forward(ctx, pre, theta):
    ctx.save_for_backward(pre, theta)
    return pre * (pre > theta)

  @staticmethod
  def backward(ctx, g):
    pre, theta = ctx.saved_tensors
    rect = (((pre - theta) / 1e-3).abs() < 0.5).to(g.dtype)
    return g * (pre > theta), (-(theta / 1e-3) * rect * g).sum(0)


class _Step(torch.autograd.Function):
  @staticmethod
  def forward(ctx, pre, theta):
    ctx.save_for_backward(pre, theta)
    return (pre > theta).to(pre.dtype)

  @staticmethod
  def backward(ctx, g):
    pre, theta = ctx.saved_tensors
    rect = (((pre - theta) / 1e-3).abs() < 0.5).to(g.dtype)
    return torch.zeros_like(pre), (-(1 / 1e-3) * rect * g).sum(0)


def torch_step_fn(arch, d, m, k, batch, x_np):
  torch.manual_seed(0)
  model = TorchSAE(arch, d, m, k, d // 2, [m // 8, m // 4, m // 2, m])
  opt = torch.optim.Adam(model.parameters(), lr=1e-4)
  x = torch.from_numpy(x_np)
  dead = torch.zeros(m, dtype=torch.bool)

  def run():
    opt.zero_grad(set_to_none=True)
    model.loss(x, dead).backward()
    with torch.no_grad():
      w, g = model.W_dec, model.W_dec.grad
      g -= (g * w).sum(-1, keepdim=True) * w
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      opt.step()
      w /= w.norm(dim=-1, keepdim=True)

  return run


def torch_matmul_fn(d, m, batch):
  a, b = torch.randn(batch, d), torch.randn(d, m)
  return lambda: a @ b


def compare(archs, preset, d, m, k, batch, iters, x):
  """JAX steps of several architectures timed round-robin in this one process (the same
  load hits all of them); speeds relative to the first architecture's. Also the process
  CPU time per step (all threads): on a machine shared with other jobs it counts the work
  done rather than the waiting, so its ratio is the steadier one."""
  cpu = {a: [] for a in archs}

  def timed(a, fn):
    def run():
      c0 = time.process_time()
      fn()
      cpu[a].append(time.process_time() - c0)
    return run

  t = _time_interleaved({a: timed(a, jax_step_fn(a, d, m, k, batch, x)) for a in archs}, iters)
  c = {a: (min(v[2:]), float(np.median(v[2:]))) for a, v in cpu.items()}   # after warm-up
  base, cbase = t[archs[0]], c[archs[0]]
  for a in archs:
    print(json.dumps({
        "arch": a, "preset": preset, "d": d, "m": m, "k": k, "batch": batch, "iters": iters,
        "jax_step_ms": round(t[a][0] * 1e3, 2), "jax_step_ms_median": round(t[a][1] * 1e3, 2),
        f"speed_vs_{archs[0]}": round(base[0] / t[a][0], 3),
        f"speed_vs_{archs[0]}_median": round(base[1] / t[a][1], 3),
        "cpu_s": round(c[a][0], 3), "cpu_s_median": round(c[a][1], 3),
        f"cpu_speed_vs_{archs[0]}": round(cbase[0] / c[a][0], 3),
        f"cpu_speed_vs_{archs[0]}_median": round(cbase[1] / c[a][1], 3),
        "loadavg_1m": round(os.getloadavg()[0], 2)}), flush=True)


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                  help="sizes: " + "; ".join(f"{k}: {v}" for k, v in sorted(PRESETS.items())))
  ap.add_argument("--archs", default=",".join(ARCHS), help="comma-separated architectures")
  ap.add_argument("--iters", type=int, default=0, help="timed steps (0: preset default)")
  ap.add_argument("--compare", default="",
                  help="comma-separated archs: time only their JAX steps, round-robin")
  args = ap.parse_args()
  p = PRESETS[args.preset]
  d, m, k, batch = p["d"], p["m"], p["k"], p["batch"]
  iters = args.iters or p["iters"]
  x = np.random.default_rng(0).normal(size=(batch, d)).astype(np.float32)
  if args.compare:
    compare(args.compare.split(","), args.preset, d, m, k, batch, iters, x)
    return
  flops = 10 * batch * d * m
  mm_flops = 2 * batch * d * m
  for arch in args.archs.split(","):
    # JAX step, torch step and both matmuls timed round-robin in this process
    t = _time_interleaved({"jax": jax_step_fn(arch, d, m, k, batch, x),
                           "torch": torch_step_fn(arch, d, m, k, batch, x),
                           "jmm": jax_matmul_fn(d, m, batch),
                           "tmm": torch_matmul_fn(d, m, batch)}, iters)
    tj, tt = t["jax"][0], t["torch"][0]
    peak, tpeak = mm_flops / t["jmm"][0] / 1e9, mm_flops / t["tmm"][0] / 1e9
    print(json.dumps({
        "arch": arch, "preset": args.preset, "d": d, "m": m, "k": k, "batch": batch,
        "device": str(jax.devices()[0].platform), "torch_threads": torch.get_num_threads(),
        "iters": iters, "timing": "min over round-robin iters",
        "jax_step_ms": round(tj * 1e3, 2), "jax_step_ms_median": round(t["jax"][1] * 1e3, 2),
        "jax_acts_per_s": round(batch / tj),
        "jax_eff_gflops": round(flops / tj / 1e9, 1),
        "torch_step_ms": round(tt * 1e3, 2),
        "torch_step_ms_median": round(t["torch"][1] * 1e3, 2),
        "torch_acts_per_s": round(batch / tt),
        "torch_eff_gflops": round(flops / tt / 1e9, 1),
        "speedup_vs_torch": round(tt / tj, 2),
        "speedup_vs_torch_median": round(t["torch"][1] / t["jax"][1], 2),
        "matmul_peak_gflops": round(peak, 1), "torch_matmul_peak_gflops": round(tpeak, 1),
        "frac_of_matmul_peak": round(flops / tj / 1e9 / peak, 3),
        "loadavg_1m": round(os.getloadavg()[0], 2)}), flush=True)


if __name__ == "__main__":
  main()
