"""Size a run before paying for it: memory per device, FLOPs per step, store bandwidth.

  python -m launch.plan --config=configs/musicgen_medium.py --devices=8 --device=v5e
  python -m launch.plan --config=configs/synthetic_tiny.py --d=32 --devices=8 \
      --mesh_data=2 --mesh_model=4 --step_time_ms=5

Config fields (sae.d/m/expansion/k/k_aux/architecture, train.batch_size/mesh_*/sharding)
are the defaults; flags override them. The model behind the numbers is in
musicsae_jax/plan.py (and docs/MULTIHOST.md).
"""
import json

from absl import app, flags

from launch import common

from musicsae_jax import plan

common.define_config()
flags.DEFINE_integer("d", None, "Input width (when the config leaves sae.d to the store).")
flags.DEFINE_integer("m", None, "Latents (overrides sae.m / expansion).")
flags.DEFINE_integer("k", None, "Active latents per row (TopK family).")
flags.DEFINE_integer("batch", None, "Global batch (overrides train.batch_size).")
flags.DEFINE_integer("devices", 1, "Total accelerator devices.")
flags.DEFINE_integer("mesh_data", None, "'data' axis size (-1: the rest).")
flags.DEFINE_integer("mesh_model", None, "'model' axis size (-1: the rest).")
flags.DEFINE_enum("sharding", None, ["data", "latent"], "Parameter sharding mode.")
flags.DEFINE_integer("hosts", 1, "Hosts (processes) reading the store.")
flags.DEFINE_enum("device", None, list(plan.DEVICES), "Device preset (peak, memory).")
flags.DEFINE_float("peak_tflops", None, "Peak TFLOP/s per device (overrides --device).")
flags.DEFINE_float("mfu", 1.0, "Fraction of peak reached (1.0: the lower bound).")
flags.DEFINE_float("step_time_ms", None, "Assume this step time for the bandwidth.")
flags.DEFINE_enum("store_dtype", "bfloat16", list(plan.DTYPE_BYTES), "Store dtype.")
flags.DEFINE_bool("json", False, "Print JSON instead of the table.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  if FLAGS.m is not None:
    config.sae.m = FLAGS.m
  if FLAGS.k is not None:
    config.sae.k = FLAGS.k
  kw = {k: getattr(FLAGS, k) for k in ("mesh_data", "mesh_model", "sharding")
        if getattr(FLAGS, k) is not None}
  p = plan.plan_from_config(
      config, d=FLAGS.d, batch=FLAGS.batch, devices=FLAGS.devices, hosts=FLAGS.hosts,
      store_dtype=FLAGS.store_dtype, device=FLAGS.device, peak_tflops=FLAGS.peak_tflops,
      mfu=FLAGS.mfu, step_time_s=FLAGS.step_time_ms / 1e3 if FLAGS.step_time_ms else None,
      **kw)
  r = p.report()
  print(json.dumps(r, indent=2) if FLAGS.json else plan.format_report(r))


if __name__ == "__main__":
  common.run(main)
