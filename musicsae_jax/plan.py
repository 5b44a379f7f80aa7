"""Memory / throughput planner: size an SAE run before paying for the machines.

Pure arithmetic (no JAX), so it runs anywhere. Model of one training step:

* Parameters (float32): W_enc [d, m], W_dec [m, d], b_enc [m], b_dec [d], plus
  log_threshold [m] for JumpReLU. Per device: everything in 'data' sharding; in 'latent'
  sharding every m-sized array is split over the 'model' axis (b_dec stays whole).
* Optimizer: Adam's mu and nu mirror the params (2x); gradients are one more copy during
  the step; the dead-latent counter is m int32 (split like b_enc).
* Activations per device (float32, the dominant live intermediates of one step): the
  pre-activations, their gradient and the code z, [B/data, m/model] each (3 arrays), plus
  x, x_hat and the residual, [B/data, d] each (3 arrays). An estimate: XLA may fuse some.
* FLOPs per step (FACTS.md): dense 10*B*d*m (forward 4, backward 6). TopK / BatchTopK /
  Matryoshka here use a sparse decode and sparse encoder backward: 2*B*d*m (the dense
  encoder forward) + 8*B*k*d (k-row decode forward, its two gradients, and the encoder
  gradient for the k picked latents); AuxK adds up to 8*B*k_aux*d while dead latents
  exist. ReLU and JumpReLU are dense.
* Step time = FLOPs / (devices * peak * mfu); the store must deliver B*d*bytes per step.
"""
from __future__ import annotations

import dataclasses
from typing import Any

# Published peaks (dense bf16 TFLOP/s per chip) and memory per chip (GiB).
DEVICES = {
    "v5e": {"peak_tflops": 197.0, "hbm_gib": 16.0},
    "v4": {"peak_tflops": 275.0, "hbm_gib": 32.0},
    "v5p": {"peak_tflops": 459.0, "hbm_gib": 95.0},
    "h100": {"peak_tflops": 989.0, "hbm_gib": 80.0},     # SXM, dense (no sparsity)
    "h200": {"peak_tflops": 989.0, "hbm_gib": 141.0},
    "a100": {"peak_tflops": 312.0, "hbm_gib": 80.0},
    "cpu": {"peak_tflops": 0.35, "hbm_gib": 0.0},       # this project's 2-core box, f32
}
SPARSE_ARCHS = ("topk", "batchtopk", "matryoshka")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class PlanError(ValueError):
  """The requested plan is inconsistent (mesh vs devices, missing sizes)."""


@dataclasses.dataclass
class Plan:
  d: int
  m: int
  k: int | None
  k_aux: int | None
  architecture: str
  batch: int
  devices: int
  mesh_data: int
  mesh_model: int
  sharding: str
  hosts: int
  store_bytes: int
  device: str | None
  peak_tflops: float | None
  mfu: float
  step_time_s: float | None            # given by the user, else from FLOPs/peak/mfu

  # --- memory ---------------------------------------------------------------------------
  @property
  def m_local(self) -> int:
    return self.m // self.mesh_model if self.sharding == "latent" else self.m

  @property
  def batch_local(self) -> int:
    return self.batch // self.mesh_data

  def param_count(self) -> int:
    extra = self.m if self.architecture == "jumprelu" else 0
    return 2 * self.d * self.m + self.m + self.d + extra

  def param_bytes_per_device(self) -> int:
    extra = self.m_local if self.architecture == "jumprelu" else 0
    return 4 * (2 * self.d * self.m_local + self.m_local + self.d + extra)

  def optimizer_bytes_per_device(self) -> int:
    """Adam mu + nu (2x params) and the m int32 steps-since-fired counter."""
    return 2 * self.param_bytes_per_device() + 4 * self.m_local

  def grad_bytes_per_device(self) -> int:
    return self.param_bytes_per_device()

  def activation_bytes_per_device(self) -> int:
    return 4 * self.batch_local * (3 * self.m_local + 3 * self.d)

  def total_bytes_per_device(self) -> int:
    return (self.param_bytes_per_device() + self.optimizer_bytes_per_device()
            + self.grad_bytes_per_device() + self.activation_bytes_per_device())

  # --- compute ----------------------------------------------------------------------------
  def flops_dense(self) -> float:
    return 10.0 * self.batch * self.d * self.m

  def flops_sparse(self) -> float | None:
    if self.architecture not in SPARSE_ARCHS or not self.k:
      return None
    return 2.0 * self.batch * self.d * self.m + 8.0 * self.batch * self.k * self.d

  def flops_auxk_max(self) -> float:
    if self.architecture not in SPARSE_ARCHS or not self.k_aux:
      return 0.0
    return 8.0 * self.batch * self.k_aux * self.d

  def flops_per_step(self) -> float:
    """As implemented: sparse for the TopK family, dense otherwise."""
    s = self.flops_sparse()
    return self.flops_dense() if s is None else s

  def step_time(self) -> float | None:
    if self.step_time_s:
      return self.step_time_s
    if not self.peak_tflops:
      return None
    return self.flops_per_step() / (self.devices * self.peak_tflops * 1e12 * self.mfu)

  # --- input ------------------------------------------------------------------------------
  def batch_read_bytes(self) -> int:
    return self.batch * self.d * self.store_bytes

  def read_bytes_per_host(self) -> float:
    """Each host reads the batch rows of its share of the 'data' axis."""
    return self.batch_read_bytes() / max(1, min(self.hosts, self.mesh_data))

  def report(self) -> dict[str, Any]:
    t = self.step_time()
    out = {
        "d": self.d, "m": self.m, "k": self.k, "architecture": self.architecture,
        "batch": self.batch, "devices": self.devices,
        "mesh": {"data": self.mesh_data, "model": self.mesh_model},
        "sharding": self.sharding, "hosts": self.hosts,
        "params": self.param_count(),
        "param_bytes_per_device": self.param_bytes_per_device(),
        "optimizer_bytes_per_device": self.optimizer_bytes_per_device(),
        "grad_bytes_per_device": self.grad_bytes_per_device(),
        "activation_bytes_per_device": self.activation_bytes_per_device(),
        "total_bytes_per_device": self.total_bytes_per_device(),
        "flops_per_step": self.flops_per_step(),
        "flops_dense": self.flops_dense(),
        "flops_sparse": self.flops_sparse(),
        "flops_auxk_max": self.flops_auxk_max(),
        "flops_per_device": self.flops_per_step() / self.devices,
        "batch_read_bytes": self.batch_read_bytes(),
        "device": self.device, "peak_tflops": self.peak_tflops, "mfu": self.mfu,
        "step_time_s": t,
    }
    if t:
      out["tokens_per_s"] = self.batch / t
      out["read_bytes_per_s"] = self.batch_read_bytes() / t
      out["read_bytes_per_s_per_host"] = self.read_bytes_per_host() / t
    if self.device in DEVICES and DEVICES[self.device]["hbm_gib"]:
      out["fits"] = self.total_bytes_per_device() <= DEVICES[self.device]["hbm_gib"] * 2**30
    return out


def make_plan(*, d: int, m: int, k: int | None = None, k_aux: int | None = None,
              architecture: str = "topk", batch: int, devices: int = 1,
              mesh_data: int = -1, mesh_model: int = 1, sharding: str | None = None,
              hosts: int = 1, store_dtype: str = "bfloat16", device: str | None = None,
              peak_tflops: float | None = None, mfu: float = 1.0,
              step_time_s: float | None = None) -> Plan:
  """A `Plan`, with the mesh resolved like `mesh.make_mesh` (-1 = the rest)."""
  if devices < 1:
    raise PlanError(f"--devices={devices} must be >= 1")
  if mesh_data == -1 and mesh_model == -1:
    raise PlanError("at most one of --mesh_data / --mesh_model may be -1")
  if mesh_data == -1:
    mesh_data = devices // mesh_model if mesh_model > 0 and devices % mesh_model == 0 else 0
  if mesh_model == -1:
    mesh_model = devices // mesh_data if mesh_data > 0 and devices % mesh_data == 0 else 0
  if mesh_data * mesh_model != devices or mesh_data < 1:
    raise PlanError(f"mesh data={mesh_data} x model={mesh_model} does not match "
                    f"{devices} devices")
  sharding = sharding or ("latent" if mesh_model > 1 else "data")
  if sharding not in ("data", "latent"):
    raise PlanError(f"sharding must be 'data' or 'latent', got {sharding!r}")
  if sharding == "latent" and m % mesh_model:
    raise PlanError(f"latent sharding: m={m} is not divisible by model={mesh_model}")
  if batch % mesh_data:
    raise PlanError(f"batch {batch} does not divide over data={mesh_data}")
  if store_dtype not in DTYPE_BYTES:
    raise PlanError(f"store dtype {store_dtype!r}; known: {', '.join(DTYPE_BYTES)}")
  if device is not None and device not in DEVICES:
    raise PlanError(f"device {device!r}; known: {', '.join(DEVICES)}")
  if peak_tflops is None and device is not None:
    peak_tflops = DEVICES[device]["peak_tflops"]
  if not 0 < mfu <= 1:
    raise PlanError(f"mfu={mfu} must be in (0, 1]")
  return Plan(d=int(d), m=int(m), k=k, k_aux=k_aux, architecture=architecture,
              batch=int(batch), devices=devices, mesh_data=mesh_data, mesh_model=mesh_model,
              sharding=sharding, hosts=hosts, store_bytes=DTYPE_BYTES[store_dtype],
              device=device, peak_tflops=peak_tflops, mfu=mfu, step_time_s=step_time_s)


def plan_from_config(config, *, d: int | None = None, batch: int | None = None,
                     **kw) -> Plan:
  """A `Plan` from an experiment config (`c.sae`, `c.train`); kw override the mesh etc."""
  sae = dict(config.sae)
  t = dict(config.get("train", {}) or {})
  d = d or sae.get("d")
  if not d:
    raise PlanError("the config's sae.d is None (taken from the store at training time); "
                    "pass --d")
  m = sae.get("m") or int(sae.get("expansion", 16) * d)
  arch = sae.get("architecture", "topk")
  k = sae.get("k", 32) if arch in SPARSE_ARCHS else None
  k_aux = sae.get("k_aux") or (d // 2 if arch in SPARSE_ARCHS else None)
  kw.setdefault("mesh_data", t.get("mesh_data", -1))
  kw.setdefault("mesh_model", t.get("mesh_model", 1))
  kw.setdefault("sharding", t.get("sharding"))
  return make_plan(d=int(d), m=int(m), k=k, k_aux=k_aux, architecture=arch,
                   batch=int(batch or t.get("batch_size", 1024)), **kw)


def _size(n: float) -> str:
  for unit, s in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= s:
      return f"{n / s:.2f} {unit}"
  return f"{n:.0f} B"


def format_report(r: dict) -> str:
  mesh = r["mesh"]
  lines = [
      f"SAE {r['architecture']} d={r['d']} m={r['m']} k={r['k']}  batch={r['batch']}  "
      f"{r['devices']} devices (data={mesh['data']} x model={mesh['model']}, "
      f"{r['sharding']} sharding), {r['hosts']} host(s)",
      f"  params                {r['params']:,} ({_size(4 * r['params'])} f32)",
      f"  per device: params    {_size(r['param_bytes_per_device'])}",
      f"              Adam+ctr  {_size(r['optimizer_bytes_per_device'])}",
      f"              grads     {_size(r['grad_bytes_per_device'])}",
      f"              acts/step {_size(r['activation_bytes_per_device'])}",
      f"              total     {_size(r['total_bytes_per_device'])}"
      + ("" if "fits" not in r else ("  (fits)" if r["fits"] else "  (DOES NOT FIT)")),
      f"  FLOPs/step            {r['flops_per_step']:.4g}  (dense 10BdM: "
      f"{r['flops_dense']:.4g}; AuxK up to +{r['flops_auxk_max']:.3g})",
      f"  FLOPs/step/device     {r['flops_per_device']:.4g}",
      f"  store bytes/batch     {_size(r['batch_read_bytes'])}",
  ]
  if r.get("step_time_s"):
    peak = (f"{r['peak_tflops']:g} TFLOP/s/device at mfu={r['mfu']:g}"
            if r.get("peak_tflops") else "given")
    lines += [
        f"  step time             {1e3 * r['step_time_s']:.3f} ms ({peak}); "
        f"{r['tokens_per_s']:.4g} acts/s",
        f"  store read needed     {r['read_bytes_per_s'] / 1e6:.1f} MB/s total, "
        f"{r['read_bytes_per_s_per_host'] / 1e6:.1f} MB/s per host",
    ]
  return "\n".join(lines)
