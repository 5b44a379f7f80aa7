"""Store throughput vs raw file I/O of the same bytes on the same disk, in one run.

Writes a realistic site (default d=1536 bf16, 1 GB) through `musicsae_jax.store` in
extraction-sized appends, then reads it back as chunk-aligned blocks in random order
(what training does). The reference is a plain sequential write (with fsync) and read
of the same bytes. Prints one JSON object; the goal is store/raw >= 0.7 both ways.

  python bench/store.py [--size_mb=1024] [--d=1536] [--dtype=bfloat16] [--codec=zstd]
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from musicsae_jax import store  # noqa: E402


def activations(rows: int, d: int, dtype, seed=0) -> np.ndarray:
  """Random rows: like residual streams (bf16 mantissas are noise), they barely compress."""
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((rows, d), dtype=np.float32) * 2).astype(dtype)


def raw_io(path: str, data: np.ndarray) -> tuple[float, float]:
  t = time.perf_counter()
  with open(path, "wb") as f:
    f.write(data.view(np.uint8).reshape(-1).data)
    f.flush()
    os.fsync(f.fileno())
  w = time.perf_counter() - t
  t = time.perf_counter()
  with open(path, "rb") as f:
    buf = f.read()
  r = time.perf_counter() - t
  assert len(buf) == data.nbytes
  return w, r


def store_io(path: str, data: np.ndarray, d: int, dtype: str, codec: str, append_rows: int):
  ds = store.create(path, {"site": store.SiteSpec(d=d, dtype=dtype, codec=codec)}, overwrite=True)
  rows = data.shape[0]
  index = np.stack([np.arange(rows) // 150, np.arange(rows) % 150], 1).astype(np.int32)
  t = time.perf_counter()
  with ds.writer(flush_seconds=1e9) as w:
    for s in range(0, rows, append_rows):
      w.append("site", data[s:s + append_rows], index[s:s + append_rows])
      w.commit([])
  os.sync()
  wt = time.perf_counter() - t
  site = store.open_dataset(path).site("site")
  order = np.random.default_rng(1).permutation(site.num_blocks)
  t = time.perf_counter()
  n = 0
  for i in order:
    a, _ = site.read_block(int(i))
    n += a.shape[0]
  rt = time.perf_counter() - t
  assert n == rows
  return wt, rt, site.chunk_rows, ds.sites["site"].resolved().shard_rows


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size_mb", type=int, default=1024, help="bytes of activations to write (MB)")
  p.add_argument("--d", type=int, default=1536, help="row width (d_model)")
  p.add_argument("--dtype", default="bfloat16", choices=store.DTYPES, help="stored dtype")
  p.add_argument("--codec", default="zstd", choices=store.CODECS, help="chunk compression")
  p.add_argument("--append_rows", type=int, default=1500, help="rows per append (~10 prompts x 3 s)")
  p.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
  a = p.parse_args()
  if a.dir is not None and not os.path.isdir(a.dir):
    p.error(f"--dir={a.dir}: no such directory (create it, or omit --dir for a temp dir)")
  spec = store.SiteSpec(d=a.d, dtype=a.dtype)
  rows = a.size_mb * (1 << 20) // (a.d * spec.np_dtype.itemsize)
  data = activations(rows, a.d, spec.np_dtype)
  mb = data.nbytes / 1e6
  tmp = tempfile.mkdtemp(dir=a.dir)
  try:
    raw_w, raw_r = raw_io(os.path.join(tmp, "raw.bin"), data)
    st_w, st_r, chunk_rows, shard_rows = store_io(os.path.join(tmp, "ds"), data, a.d, a.dtype,
                                                  a.codec, a.append_rows)
    on_disk = sum(os.path.getsize(os.path.join(r, f))
                  for r, _, fs in os.walk(os.path.join(tmp, "ds", "sites")) for f in fs)
  finally:
    shutil.rmtree(tmp)
  out = {
      "bench": "store", "rows": int(rows), "d": a.d, "dtype": a.dtype, "codec": a.codec, "mb": round(mb, 1),
      "chunk_rows": chunk_rows, "chunk_mb": round(chunk_rows * a.d * spec.np_dtype.itemsize / 1e6, 2),
      "shard_rows": shard_rows, "compression_ratio": round(data.nbytes / on_disk, 3),
      "raw_write_mb_s": round(mb / raw_w, 1), "raw_read_mb_s": round(mb / raw_r, 1),
      "store_write_mb_s": round(mb / st_w, 1), "store_block_read_mb_s": round(mb / st_r, 1),
      "write_ratio": round(raw_w / st_w, 3), "read_ratio": round(raw_r / st_r, 3),
      "cpu_count": os.cpu_count(),
  }
  print(json.dumps(out))


if __name__ == "__main__":
  main()
