"""The training loader's memory, speed and mixing on a store written in prompt order.

Writes a site (default d=1536 bf16, like MusicGen-medium's residual stream; 500 rows a
prompt, prompts in order, as extraction writes them), then, each in a fresh process so
peak RSS is its own, serves `--batches` batches of 4096 through `musicsae_jax.data.Pipeline`
with the trainer's default window budget (`train.shuffle_mb`) and with a window that holds
the whole dataset (a full in-memory shuffle). Reports peak RSS, MB/s served and distinct
prompts per batch (the prompt id rides in two bf16-exact columns of every row).

It also measures what the per-read integrity checks cost (`checksum_cost`): the read
without a checksum (the baseline), the default (ISA-L's CRC-32 of every chunk at every
read), the identity mode (check_every_read=False) and zlib's CRC-32 (the same values,
the function used before) at every read; interleaved in one process, min and median,
wall and CPU seconds, with the load average, since a shared machine is noisy.
`read_profile` splits one block read into its parts (TensorStore read and decode, the
four stats, each checksum function on the chunk just decoded). With --crc32c_codec it also measures an
alternative the store does not use: a second store of the same rows whose chunks end
with zarr3's `crc32c` codec (written here by wrapping `store._codecs`), which
TensorStore verifies in C++ at every read of a chunk, read without the store's checksum.

  python bench/loader.py [--sizes_mb=512,2048] [--d=1536] [--batches=60]
  python bench/loader.py --sizes_mb=512 --checksum_repeats=9 --skip_serve [--codec=none]
  python bench/loader.py --sizes_mb=512 --checksum_repeats=7 --skip_serve --crc32c_codec
"""
import argparse
import concurrent.futures
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


def write(path: str, size_mb: int, d: int, dtype: str, codec: str = "zstd",
          chunk_crc32c: bool = False) -> int:
  """The bench store; chunk_crc32c: each chunk's codec chain ends with zarr3's crc32c."""
  spec = store.SiteSpec(d=d, dtype=dtype, codec=codec)
  rows = size_mb * (1 << 20) // (d * spec.np_dtype.itemsize)
  n_prompts = -(-rows // ROWS_PER_PROMPT)
  codecs = store._codecs
  if chunk_crc32c:             # the arrays' zarr.json then names it: every reader checks it
    def with_crc32c(*a, **k):
      out = codecs(*a, **k)
      out[0]["configuration"]["codecs"].append({"name": "crc32c"})
      return out
    store._codecs = with_crc32c
  try:
    ds = store.create(path, {"site": spec}, prompts=[f"p{i}" for i in range(n_prompts)],
                      overwrite=True)
  finally:
    store._codecs = codecs
  with open(os.path.join(path, "sites", "site", "acts", "zarr.json")) as f:
    inner = json.load(f)["codecs"][0]["configuration"]["codecs"]
  assert (inner[-1]["name"] == "crc32c") == chunk_crc32c, inner
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


# mode: (store, verify_checksums, check_every_read, CRC-32 function); "crc32c": the rows
# rewritten with zarr3's crc32c codec (--crc32c_codec only)
_CHECK_MODES = {"off": ("plain", False, True, "isal"), "default": ("plain", True, True, "isal"),
                "changed_only": ("plain", True, False, "isal"),
                "zlib_every_read": ("plain", True, True, "zlib"),
                "crc32c_codec": ("crc32c", False, True, "isal")}


def _configure(site, mode: str):
  import zlib
  _, site.verify_checksums, site.check_every_read, fn = _CHECK_MODES[mode]
  if fn == "zlib":             # the function before ISA-L's: same values
    site.crc32 = lambda rows, value=0: zlib.crc32(
        np.ascontiguousarray(rows).reshape(-1).view(np.uint8), value)


def _pct(x, ref) -> float:
  return round(100 * (x / ref - 1), 2)


def _summary(times: dict) -> dict:
  out = {}
  for mode, ts in times.items():
    wall, cpu = np.array([t[0] for t in ts]), np.array([t[1] for t in ts])
    out[mode] = {"min_s": round(float(wall.min()), 4), "median_s": round(float(np.median(wall)), 4),
                 "first_s": round(float(wall[0]), 4), "cpu_median_s": round(float(np.median(cpu)), 4)}
  for mode in [m for m in times if m != "off"]:
    out[mode]["overhead_pct"] = {
        "min": _pct(out[mode]["min_s"], out["off"]["min_s"]),
        "median": _pct(out[mode]["median_s"], out["off"]["median_s"]),
        "cpu_median": _pct(out[mode]["cpu_median_s"], out["off"]["cpu_median_s"])}
  return out


def read_profile(path: str, repeats: int) -> dict:
  """Where a checked block read's time goes, per block (ms, CPU, the median over passes):
  the TensorStore read and decode of acts and index (`read`), the four shard stats of the
  check (`stats`), and each checksum of the acts chunk just decoded, as the reader runs
  it (each function gets its own read of the block, so each is the first to touch the
  decoded bytes): ISA-L's CRC-32 (the store's), zlib's CRC-32 (the same values, the
  function used before) and, for comparison when their packages are installed, xxHash's
  xxh3_64 and google-crc32c's hardware CRC32C."""
  import zlib
  from musicsae_jax import checksums
  fns = {"crc32_isal": checksums.crc32, "crc32_zlib": lambda x: zlib.crc32(x.reshape(-1).view(np.uint8))}
  try:
    import xxhash
    fns["xxh3_64"] = lambda x: xxhash.xxh3_64_intdigest(x.reshape(-1).view(np.uint8))
  except ImportError:
    pass
  try:
    import google_crc32c
    fns["crc32c"] = lambda x: google_crc32c.value(x.reshape(-1).view(np.uint8))
  except ImportError:
    pass
  site = store.open_dataset(path).site("site")
  site.verify_checksums = False
  parts = {k: [] for k in ["read", "stats", *fns]}
  for _ in range(repeats):
    acc = dict.fromkeys(parts, 0.0)
    for i in range(site.num_blocks):
      p, s = site._block(i)
      for k, fn in fns.items():
        c0 = time.process_time()
        acts, _ = site.read_block(i)
        c1 = time.process_time()
        fn(acts)
        c2 = time.process_time()
        for w in (0, 1, 0, 1):
          site._file_id(p, w, s)
        acc["read"] += (c1 - c0) / len(fns)
        acc[k] += c2 - c1
        acc["stats"] += (time.process_time() - c2) / len(fns)
    for k in parts:
      parts[k].append(acc[k] / site.num_blocks)
  med = {k: float(np.median(v)) for k, v in parts.items()}
  mb = site.chunk_rows * site.d * site.spec.np_dtype.itemsize / 1e6
  return {"block_mb": round(mb, 2),
          "ms_per_block": {k: round(1e3 * v, 4) for k, v in med.items()},
          "pct_of_read": {k: round(100 * v / med["read"], 2) for k in fns for v in [med[k]]},
          "checksum_gb_s": {k: round(mb / 1e3 / med[k], 1) for k in fns if med[k] > 0}}


def checksum_cost(paths: dict, repeats: int, threads: int) -> dict:
  """What the per-read checks cost, in the same process, modes interleaved (a few blocks,
  or one window, at a time, in rotated order, so load swings hit every mode alike),
  on the store (`plain`) and, when given, a copy of its rows whose chunks carry the
  crc32c codec (`crc32c`): `off` (no checksum: stats only, the baseline), `default`
  (ISA-L's CRC-32 of every chunk at every read, a stat before and after it),
  `changed_only` (check_every_read=False: a chunk's CRC at its first read by this reader
  and whenever its file changed), `zlib_every_read` (zlib's CRC-32, the function used
  before, at every read), `crc32c_codec` (the crc32c store without the store's CRC:
  TensorStore checks each chunk's crc32c at every read; stats as in `off`). Measured on raw block reads (read_block on the loader's
  thread count) and on the loader filling its shuffle windows (read, checks, float32,
  scale, scatter), one reader per mode kept over the passes as a training job keeps it.
  min / median over the passes; `first_s`: the first pass."""
  from musicsae_jax import data as data_lib, mesh as mesh_lib, train as train_lib
  time.sleep(2.5)               # the files settle, as any store extracted earlier has
  modes = {m: v for m, v in _CHECK_MODES.items() if v[0] in paths}
  readers = {m: store.open_dataset(paths[v[0]]).site("site") for m, v in modes.items()}
  for m, site in readers.items():
    _configure(site, m)
  names = list(modes)
  reads = {m: [] for m in modes}
  step = 4 * threads           # blocks read by one mode before the next mode's turn
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    for site in readers.values():     # warm-up, untimed: pools, first allocations
      list(pool.map(site.read_block, range(min(step, site.num_blocks))))
    for _ in range(repeats):
      acc = {m: [0.0, 0.0] for m in modes}
      for k, lo in enumerate(range(0, readers["off"].num_blocks, step)):
        for m in names[k % len(names):] + names[:k % len(names)]:   # rotated: no order bias
          t0, c0 = time.perf_counter(), time.process_time()
          for _ in pool.map(readers[m].read_block, range(lo, min(lo + step, readers[m].num_blocks))):
            pass
          acc[m][0] += time.perf_counter() - t0
          acc[m][1] += time.process_time() - c0
      for m in modes:
        reads[m].append(tuple(acc[m]))
  t = train_lib.default_config()
  ev = data_lib.split_prompts(readers["off"].read_index()[:, 0], t.eval_fraction, 0)
  pipes = {m: data_lib.Pipeline(
      store.open_dataset(paths[v[0]]).site("site"), batch_size=4096, seed=0, eval_prompts=ev,
      scale=1.0, mesh=mesh_lib.make_mesh(), max_passes=t.shuffle_max_passes,
      shuffle_rows=data_lib.window_rows(train_lib.default_shuffle_mb("cpu"), readers["off"].d),
      read_threads=threads) for m, v in modes.items()}
  for m, pipe in pipes.items():
    _configure(pipe.source, m)
  groups = pipes["off"]._groups(0, 0)
  windows = {m: [] for m in modes}
  for pipe in pipes.values():         # warm-up, untimed
    pipe._load_window(0, 0, 0, *groups[0])
  for _ in range(repeats):
    acc = {m: [0.0, 0.0] for m in modes}
    for g, grp in enumerate(groups):
      for m in names[g % len(names):] + names[:g % len(names)]:
        t0, c0 = time.perf_counter(), time.process_time()
        pipes[m]._load_window(0, 0, g, *grp)
        acc[m][0] += time.perf_counter() - t0
        acc[m][1] += time.process_time() - c0
    for m in modes:
      windows[m].append(tuple(acc[m]))
  return {"blocks": readers["off"].num_blocks, "read_threads": threads, "repeats": repeats,
          "block_reads": _summary(reads),
          "loader_windows": {"windows": len(groups), "passes": pipes["off"].passes,
                             **_summary(windows)},
          "loadavg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes_mb", default="512,2048", help="store sizes to compare")
  p.add_argument("--d", type=int, default=1536)
  p.add_argument("--dtype", default="bfloat16", choices=store.DTYPES)
  p.add_argument("--codec", default="zstd", choices=store.CODECS)
  p.add_argument("--batches", type=int, default=60)
  p.add_argument("--batch", type=int, default=4096)
  p.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
  p.add_argument("--checksum_repeats", type=int, default=5,
                 help="passes over every block with and without the CRC check (0: skip)")
  p.add_argument("--skip_serve", action="store_true", help="only the checksum comparison")
  p.add_argument("--crc32c_codec", action="store_true",
                 help="also a store whose chunks carry zarr3's crc32c codec (not used by the store)")
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
      rows = write(os.path.join(tmp, "ds"), size, a.d, a.dtype, a.codec)
      if a.checksum_repeats:
        paths = {"plain": os.path.join(tmp, "ds")}
        if a.crc32c_codec:
          paths["crc32c"] = os.path.join(tmp, "ds_crc32c")
          write(paths["crc32c"], size, a.d, a.dtype, a.codec, chunk_crc32c=True)
        prof = read_profile(paths["plain"], a.checksum_repeats)
        print(json.dumps({"bench": "loader_read_profile", "store_mb": size, "d": a.d,
                          "dtype": a.dtype, "codec": a.codec, **prof}), flush=True)
        cost = checksum_cost(paths, a.checksum_repeats, min(8, max(1, (os.cpu_count() or 1) // 2)))
        shutil.rmtree(os.path.join(tmp, "ds_crc32c"), ignore_errors=True)
        print(json.dumps({"bench": "loader_checksum_cost", "store_mb": size, "d": a.d,
                          "dtype": a.dtype, "codec": a.codec, **cost}), flush=True)
      for mode, mb in (("bounded", default_mb), ("full_shuffle", 4.0 * size * 4)):
        if a.skip_serve:
          break
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
