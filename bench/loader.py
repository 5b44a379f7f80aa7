"""The training loader's memory, speed and mixing on a store written in prompt order.

Writes a site (default d=1536 bf16, like MusicGen-medium's residual stream; 500 rows a
prompt, prompts in order, as extraction writes them), then, each in a fresh process so
peak RSS is its own, serves `--batches` batches of 4096 through `musicsae_jax.data.Pipeline`
with the trainer's default window budget (`train.shuffle_mb`) and with a window that holds
the whole dataset (a full in-memory shuffle). Reports peak RSS, MB/s served and distinct
prompts per batch (the prompt id rides in two bf16-exact columns of every row).

  python bench/loader.py [--sizes_mb=512,2048] [--d=1536] [--batches=60]
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from musicsae_jax import store  # noqa: E402

ROWS_PER_PROMPT = 500


def write(path: str, size_mb: int, d: int, dtype: str) -> int:
  spec = store.SiteSpec(d=d, dtype=dtype)
  rows = size_mb * (1 << 20) // (d * spec.np_dtype.itemsize)
  n_prompts = -(-rows // ROWS_PER_PROMPT)
  ds = store.create(path, {"site": spec}, prompts=[f"p{i}" for i in range(n_prompts)],
                    overwrite=True)
  rng = np.random.default_rng(0)
  with ds.writer(flush_seconds=1e9) as w:
    for p in range(n_prompts):
      n = min(ROWS_PER_PROMPT, rows - p * ROWS_PER_PROMPT)
      x = rng.standard_normal((n, d), dtype=np.float32)
      x[:, 0], x[:, 1] = p // 256, p % 256          # exact in bf16: the batch's prompts
      w.append("site", x, np.stack([np.full(n, p), np.arange(n)], 1))
      w.commit([p])
  return rows


def serve(path: str, shuffle_mb: float, batches: int, batch: int) -> dict:
  """Runs in its own process: RSS is this loader's (plus the JAX runtime's)."""
  from musicsae_jax import data as data_lib, mesh as mesh_lib, train as train_lib
  t = train_lib.default_config()
  site = store.open_dataset(path).site("site")
  ev = data_lib.split_prompts(site.read_index()[:, 0], t.eval_fraction, 0)
  pipe = data_lib.Pipeline(site, batch_size=batch, seed=0, eval_prompts=ev, scale=1.0,
                           mesh=mesh_lib.make_mesh(), max_passes=t.shuffle_max_passes,
                           shuffle_rows=data_lib.window_rows(shuffle_mb, site.d),
                           read_threads=min(8, max(1, (os.cpu_count() or 1) // 2)))
  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  it = pipe.iterate(0)
  distinct = []
  t0 = time.perf_counter()
  for _ in range(batches):
    x = np.asarray(next(it))
    distinct.append(len(np.unique(x[:, 0] * 256 + x[:, 1])))
  secs = time.perf_counter() - t0
  it.close()
  return {"shuffle_mb": shuffle_mb, "passes": pipe.passes, "window_rows": pipe.shuffle_rows,
          "train_rows": pipe.num_train_rows, "distinct_prompts_per_batch": float(np.mean(distinct)),
          "served_mb_s": round(batches * batch * site.d * 4 / secs / 1e6, 1),
          "rss_before_mb": round(rss0), "peak_rss_mb": round(
              resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes_mb", default="512,2048", help="store sizes to compare")
  p.add_argument("--d", type=int, default=1536)
  p.add_argument("--dtype", default="bfloat16", choices=store.DTYPES)
  p.add_argument("--batches", type=int, default=60)
  p.add_argument("--batch", type=int, default=4096)
  p.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
  p.add_argument("--_serve", nargs=2, help=argparse.SUPPRESS)
  a = p.parse_args()
  if a._serve:
    print(json.dumps(serve(a._serve[0], float(a._serve[1]), a.batches, a.batch)))
    return
  from musicsae_jax import train as train_lib
  default_mb = train_lib.default_shuffle_mb("cpu")     # this benchmark's loader runs on CPU
  for size in [int(s) for s in a.sizes_mb.split(",")]:
    tmp = tempfile.mkdtemp(dir=a.dir)
    try:
      rows = write(os.path.join(tmp, "ds"), size, a.d, a.dtype)
      for mode, mb in (("bounded", default_mb), ("full_shuffle", 4.0 * size * 4)):
        if mode == "full_shuffle" and size > 512:
          continue                          # a whole-dataset window: only the small store
        out = subprocess.run([sys.executable, __file__, f"--batches={a.batches}",
                              f"--batch={a.batch}", "--_serve", os.path.join(tmp, "ds"), str(mb)],
                             capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
          sys.exit(out.stderr[-2000:])
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps({"bench": "loader", "mode": mode, "store_mb": size, "rows": rows,
                          "d": a.d, "dtype": a.dtype, **row}), flush=True)
    finally:
      shutil.rmtree(tmp)


if __name__ == "__main__":
  main()
