"""Input pipeline: deterministic shuffled batches from a block source into sharded arrays.

A *block source* is anything with `d`, `num_rows`, `num_blocks`, `block_rows(i) ->
(start, stop)`, `read_block(i) -> (acts, index)`, `read_index(rows=None)` and `read_rows(rows)`: a store
site (`musicsae_jax.store`) or an in-memory `ArraySource` (synthetic data), so both share
one code path. Reads are whole blocks (stored chunks).

Shuffling at bounded memory: an epoch is P passes; pass q takes part q of every block
(its train rows split into P parts by a seeded permutation), reads the blocks in a seeded
random order and fills windows of at most `shuffle_rows` rows, each permuted row by row
in memory. P is the smallest pass count (at most `max_passes`) whose pass fits one
window, so every batch mixes rows from across the whole dataset while memory holds about
three windows (the one being served, the next one, read ahead in the background, and the
previous one while a batch straddles two). The price is reading each block P times per
epoch; P = 1 (a full in-memory shuffle) when the dataset fits a window.

Determinism: global batch i is a pure function of (seed, i, S), S = the number of data
streams (default: the process count). Epoch e orders the blocks with rng(seed, e);
stream s takes every S-th of them, in that order in pass 0 and reordered with
rng(seed, e, q, s) in pass q; windows are permuted with
rng(seed, e, q, window, s); the stream's slices of the batches are consecutive slices of
its concatenated windows; the global batch is the streams' slices in order. Each process
computes the streams covering its devices' rows, so with S fixed the batches are the same
on 1 process or many. A resumed run starts at its step and sees exactly the batches an
uninterrupted run would.

The evaluation split is held out by prompt (index column 0), never by row, so frames of
one prompt never sit on both sides. Inputs are scaled so E||x||^2 = d; the scale is
estimated on train rows, saved with the run (normalization.json) and applied here.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import queue
import threading
import time
from typing import Iterator

import jax
import numpy as np

from musicsae_jax import files
from musicsae_jax import mesh as mesh_lib


class DataError(ValueError):
  """The data source cannot serve the requested configuration."""


class ArraySource:
  """An in-memory block source with the store-site read interface."""

  def __init__(self, acts: np.ndarray, index: np.ndarray, chunk_rows: int = 1024):
    if acts.ndim != 2 or index.shape != (acts.shape[0], 2):
      raise DataError(f"ArraySource: acts [n, d] and index [n, 2] expected, got "
                      f"{acts.shape} and {index.shape}")
    self.acts, self.index = acts, index.astype(np.int32)
    self.num_rows, self.d = acts.shape
    self.chunk_rows = int(chunk_rows)
    self.num_blocks = -(-self.num_rows // self.chunk_rows)

  def block_rows(self, i: int) -> tuple[int, int]:
    return i * self.chunk_rows, min((i + 1) * self.chunk_rows, self.num_rows)

  def read_block(self, i: int):
    s = slice(*self.block_rows(i))
    return self.acts[s], self.index[s]

  def read_index(self, rows=None):
    return self.index if rows is None else self.index[np.asarray(rows)]

  def read_rows(self, rows):
    return self.acts[np.asarray(rows)]


# --- evaluation split -----------------------------------------------------------------


def split_prompts(prompt_ids, eval_fraction: float, seed: int) -> np.ndarray:
  """A seeded `eval_fraction` of the distinct prompt ids (sorted), held out for eval."""
  ids = np.unique(np.asarray(prompt_ids))
  if not 0.0 <= eval_fraction < 1.0:
    raise DataError(f"train.eval_fraction must be in [0, 1), got {eval_fraction}")
  if eval_fraction == 0.0:
    return ids[:0]
  if len(ids) < 2:
    raise DataError(f"cannot hold out prompts for evaluation: only {len(ids)} distinct "
                    f"prompt id(s) in the index (set train.eval_fraction=0)")
  n_eval = min(max(1, int(round(eval_fraction * len(ids)))), len(ids) - 1)
  rng = np.random.default_rng([seed, 0xE7A1])
  return np.sort(rng.choice(ids, size=n_eval, replace=False))


# --- normalisation ----------------------------------------------------------------------


def sample_rows(source, eval_prompts, num_samples: int, seed: int) -> np.ndarray:
  """Up to `num_samples` train rows from seeded random blocks, float32 (raw scale).

  Every process draws the same sample, so statistics and inits derived from it agree
  across hosts.
  """
  rng = np.random.default_rng([seed, 0x5CA1E])
  parts, count = [], 0
  for b in rng.permutation(source.num_blocks):
    acts, index = source.read_block(int(b))
    x = np.asarray(acts[~np.isin(index[:, 0], eval_prompts)], np.float32)
    parts.append(x)
    count += len(x)
    if count >= num_samples:
      break
  x = np.concatenate(parts) if parts else np.zeros((0, source.d), np.float32)
  return x[:num_samples]


def estimate_scale(sample: np.ndarray) -> dict:
  """Scale s with E||s x||^2 = d over `sample` (float64 accumulation)."""
  x = np.asarray(sample, np.float64)
  mean_sq = float(np.mean(np.sum(x * x, axis=1))) if len(x) else 0.0
  if mean_sq <= 0.0:
    raise DataError("normalisation: no non-zero training rows to estimate the scale from")
  d = x.shape[1]
  return {"scale": float(np.sqrt(d / mean_sq)), "mean_sq_norm": mean_sq,
          "num_samples": int(len(x)), "d": int(d)}


def save_normalization(path: str, stats: dict) -> None:
  files.write_json(path, stats)


def load_normalization(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


# --- the training stream ----------------------------------------------------------------


def window_rows(shuffle_mb: float, d: int, streams: int = 1) -> int:
  """Rows per shuffle window: the ~3 resident windows of all `streams` fit `shuffle_mb` MB
  as float32. It depends on the job's stream count, never on how many processes share
  the streams, so batches are the same for any process count (each of P processes then
  holds at most shuffle_mb / P)."""
  return max(1, int(shuffle_mb * 2**20) // (3 * 4 * int(d) * max(1, streams)))


class Pipeline:
  """Deterministic batches for global steps i = start, start+1, ... (see module doc).

  The global batch is the concatenation of `streams` equal slices; stream s reads every
  S-th block of each pass's block order and shuffles its own windows, so batch i depends
  on (seed, i, streams) only, never on how many processes share the work. A process
  computes just the streams covering the batch rows its devices hold (from the batch
  sharding): with 'data' split over processes that is a disjoint share of the store's
  blocks; a process whose devices span the whole 'data' axis computes every stream.
  `streams` defaults to the process count (one stream per process); a run keeps its
  value across restarts (train.data_streams in config.json) so it can resume on a
  different number of processes with the same batches.

  `shuffle_rows` bounds a window (rows per stream); `wait_s` is the time the consumer of
  `iterate` has spent waiting for batches (the trainer logs it as data_wait_frac).
  """

  def __init__(self, source, *, batch_size: int, seed: int, eval_prompts, scale: float,
               mesh, shuffle_rows: int = 1 << 18, max_passes: int = 8, prefetch: int = 2,
               process_index: int | None = None, process_count: int | None = None,
               streams: int | None = None, read_threads: int = 1):
    """`read_threads` > 1 reads the blocks of a window in parallel."""
    self.source, self.seed, self.scale = source, int(seed), np.float32(scale)
    self.mesh, self.prefetch = mesh, prefetch
    self.shuffle_rows = max(1, int(shuffle_rows))
    simulated = process_index is not None or process_count is not None
    self.pi = jax.process_index() if process_index is None else process_index
    self.pc = jax.process_count() if process_count is None else process_count
    self.streams = int(streams or self.pc)
    if batch_size % self.streams or batch_size % mesh.shape["data"]:
      raise DataError(f"train.batch_size={batch_size} must divide evenly over "
                      f"{self.streams} data streams (train.data_streams, default: the "
                      f"process count) and the 'data' axis ({mesh.shape['data']})")
    self.global_batch = batch_size
    self.stream_batch = batch_size // self.streams
    if simulated:                       # tests: pretend to be process pi of pc
      if batch_size % self.pc:
        raise DataError(f"train.batch_size={batch_size} must divide over {self.pc} processes")
      self.row_lo = self.pi * batch_size // self.pc
      self.row_hi = (self.pi + 1) * batch_size // self.pc
    else:
      self.row_lo, self.row_hi = _process_rows(mesh, batch_size, source.d)
    self.local_batch = self.row_hi - self.row_lo
    self.my_streams = list(range(self.row_lo // self.stream_batch,
                                 -(-self.row_hi // self.stream_batch)))
    self.eval_prompts = np.asarray(eval_prompts)
    index = source.read_index()
    train = ~np.isin(index[:, 0], self.eval_prompts)
    csum = np.concatenate([[0], np.cumsum(train)])
    bounds = np.array([source.block_rows(b) for b in range(source.num_blocks)],
                      np.int64).reshape(-1, 2)
    self.block_counts = csum[bounds[:, 1]] - csum[bounds[:, 0]]
    self.num_train_rows = int(train.sum())
    if self.num_train_rows // self.streams < self.stream_batch:
      raise DataError(f"only {self.num_train_rows} training rows for a batch of "
                      f"{batch_size}; lower train.batch_size or add data")
    if source.num_blocks < self.streams:      # a stream reads whole blocks: none for some
      raise DataError(f"the data has {source.num_blocks} block(s) (stored chunks of "
                      f"{getattr(source, 'chunk_rows', '?')} rows) for {self.streams} data "
                      f"streams; set train.data_streams <= {source.num_blocks} or store "
                      f"smaller chunks")
    per_stream = -(-self.num_train_rows // self.streams)
    self.passes = int(min(max(1, int(max_passes)), max(1, -(-per_stream // self.shuffle_rows))))
    self._epoch_batches: list[int] = []       # batches per epoch, computed lazily
    self._groups_cache: dict = {}
    self._cache: dict = {}                     # (stream, epoch, window) -> Future
    self._pool = (concurrent.futures.ThreadPoolExecutor(read_threads, "musicsae-read")
                  if read_threads > 1 else None)
    self.batches_in_epoch(0)                  # refuse an unservable split now, not mid-run
    self._loader = concurrent.futures.ThreadPoolExecutor(1, "musicsae-window")
    self.wait_s = 0.0

  def _part_sizes(self, q: int) -> np.ndarray:
    """Rows that pass q takes from each block: part q of P of its train rows."""
    return np.maximum(self.block_counts - q + self.passes - 1, 0) // self.passes

  def _groups(self, epoch: int, stream: int) -> list[tuple[int, np.ndarray, int]]:
    """The stream's windows in epoch `epoch`: (pass, blocks, rows), in serving order."""
    key = (epoch, stream)
    if key not in self._groups_cache:
      out = []
      order = np.random.default_rng([self.seed, epoch]).permutation(self.source.num_blocks)
      for q in range(self.passes):          # the stream's blocks, in a new order each pass
        mine = order[stream::self.streams]
        if q:
          mine = mine[np.random.default_rng([self.seed, epoch, q, stream]).permutation(len(mine))]
        sizes = self._part_sizes(q)[mine]
        start, rows = 0, 0
        for i, n in enumerate(sizes):
          if rows and rows + n > self.shuffle_rows:
            out.append((q, mine[start:i], rows))
            start, rows = i, 0
          rows += int(n)
        if rows:
          out.append((q, mine[start:], rows))
      if len(self._groups_cache) > 2 * self.streams + 2:
        self._groups_cache.pop(next(iter(self._groups_cache)))
      self._groups_cache[key] = out
    return self._groups_cache[key]

  def batches_in_epoch(self, epoch: int) -> int:
    while len(self._epoch_batches) <= epoch:
      e = len(self._epoch_batches)
      rows = [sum(g[2] for g in self._groups(e, s)) for s in range(self.streams)]
      if min(rows) < self.stream_batch:
        raise DataError(f"epoch {e}: data stream {int(np.argmin(rows))} gets {min(rows)} "
                        f"training rows, fewer than its {self.stream_batch} per batch; "
                        f"lower train.batch_size or train.data_streams, or add data")
      self._epoch_batches.append(min(rows) // self.stream_batch)
    return self._epoch_batches[epoch]

  def _locate(self, step: int) -> tuple[int, int]:
    epoch = 0
    while step >= self.batches_in_epoch(epoch):
      step -= self.batches_in_epoch(epoch)
      epoch += 1
    return epoch, step

  def _block_part(self, epoch: int, q: int, b) -> np.ndarray:
    """Part q of block b's train rows (float32, unscaled)."""
    acts, index = self.source.read_block(int(b))
    keep = np.flatnonzero(~np.isin(index[:, 0], self.eval_prompts))
    if self.passes > 1:
      perm = np.random.default_rng([self.seed, epoch, int(b), 0xB1]).permutation(len(keep))
      keep = np.sort(keep[perm[q::self.passes]])
    return np.asarray(acts[keep], np.float32)

  def _load_window(self, stream: int, epoch: int, g: int, q: int, blocks, n: int):
    # Each block's part is read, converted to float32, scaled and scattered into its
    # seeded rows of one preallocated window by the reader threads (TensorStore decodes
    # and numpy converts and scatters outside the GIL), so nothing runs serially per
    # row: on an accelerator host one thread doing the conversion and scatter left the
    # trainer waiting on data. Every part's rows are known before it is read (its size
    # is _part_sizes), so the result does not depend on the thread count or on the
    # order the reads finish in, and the window is never copied.
    dest = np.random.default_rng([self.seed, epoch, q, g, stream, 0x6B]).permutation(n)
    out = np.empty((n, self.source.d), np.float32)
    sizes = self._part_sizes(q)[np.asarray(blocks, np.int64)]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    if offsets[-1] != n:
      raise DataError(f"window of {n} rows planned from parts of {int(offsets[-1])} rows")

    def fill(i: int) -> None:
      part = self._block_part(epoch, q, blocks[i])
      if len(part) != sizes[i]:
        raise DataError(f"block {int(blocks[i])}: {len(part)} training rows read, "
                        f"{int(sizes[i])} expected (the store changed under the run?)")
      np.multiply(part, self.scale, out=part)
      out[dest[offsets[i]:offsets[i + 1]]] = part

    for _ in (self._pool.map if self._pool else map)(fill, range(len(blocks))):
      pass
    return out

  def _window(self, stream: int, epoch: int, g: int) -> np.ndarray:
    """Window g of the stream's epoch; schedules the next one in the background."""
    key = (stream, epoch, g)
    nxt = (stream, epoch, g + 1) if g + 1 < len(self._groups(epoch, stream)) else \
        (stream, epoch + 1, 0)
    for k in (key, nxt):        # group lists are computed here, in the caller's thread
      if k not in self._cache:
        self._cache[k] = self._loader.submit(self._load_window, *k,
                                             *self._groups(k[1], stream)[k[2]])
    while len(self._cache) > 3 * len(self.my_streams):     # served, next, straddled
      old = next(k for k in self._cache if k not in (key, nxt))
      self._cache.pop(old)
    return self._cache[key].result()

  def stream_batch_np(self, stream: int, step: int) -> np.ndarray:
    """Stream `stream`'s slice of global batch `step`, float32 [stream_batch, d]."""
    epoch, j = self._locate(step)
    lo, hi = j * self.stream_batch, (j + 1) * self.stream_batch
    out, offset = [], 0
    for g, (_, _, n) in enumerate(self._groups(epoch, stream)):
      if offset + n > lo and offset < hi:
        rows = self._window(stream, epoch, g)
        out.append(rows[max(lo - offset, 0):hi - offset])
      offset += n
      if offset >= hi:
        break
    return np.concatenate(out)

  def local_batch_np(self, step: int) -> np.ndarray:
    """This process's rows [row_lo, row_hi) of global batch `step`, float32, scaled."""
    x = np.concatenate([self.stream_batch_np(s, step) for s in self.my_streams])
    off = self.my_streams[0] * self.stream_batch
    return x[self.row_lo - off:self.row_hi - off]

  def global_batch_at(self, step: int) -> jax.Array:
    local = self.local_batch_np(step)
    return jax.make_array_from_process_local_data(
        mesh_lib.batch_sharding(self.mesh), local, (self.global_batch, local.shape[1]))

  def iterate(self, start: int) -> Iterator[jax.Array]:
    """Global batches from `start` on, produced by a background prefetch thread."""
    q: queue.Queue = queue.Queue(maxsize=max(1, self.prefetch))
    stop = threading.Event()

    def produce():
      step = start
      try:
        while not stop.is_set():
          item = self.global_batch_at(step)
          while not stop.is_set():
            try:
              q.put(item, timeout=0.1)
              break
            except queue.Full:
              continue
          step += 1
      except BaseException as e:  # surface reader errors in the consumer
        q.put(e)

    thread = threading.Thread(target=produce, daemon=True, name="musicsae-prefetch")
    thread.start()
    try:
      while True:
        t0 = time.perf_counter()
        item = q.get()
        self.wait_s += time.perf_counter() - t0
        if isinstance(item, BaseException):
          raise item
        yield item
    finally:
      stop.set()


def _process_rows(mesh, batch_size: int, d: int) -> tuple[int, int]:
  """The contiguous rows [lo, hi) of a global batch that this process's devices hold."""
  idx = mesh_lib.batch_sharding(mesh).addressable_devices_indices_map((batch_size, d))
  spans = sorted({(sl[0].start or 0, batch_size if sl[0].stop is None else sl[0].stop)
                  for sl in idx.values()})
  lo, hi = spans[0][0], spans[-1][1]
  covered = 0
  for a, b in spans:
    if a > lo + covered:
      raise DataError(f"this process's devices hold non-contiguous batch rows {spans}; "
                      "order the mesh so each process owns a contiguous 'data' range")
    covered = max(covered, b - lo)
  return lo, hi


# --- evaluation data --------------------------------------------------------------------


def eval_rows(source, eval_prompts, max_rows: int | None, seed: int) -> np.ndarray:
  """Global row ids of the held-out prompts (a seeded subset when over `max_rows`)."""
  index = source.read_index()
  rows = np.flatnonzero(np.isin(index[:, 0], eval_prompts))
  if max_rows is not None and len(rows) > max_rows:
    rng = np.random.default_rng([seed, 0xE7A2])
    rows = np.sort(rng.choice(rows, size=max_rows, replace=False))
  return rows


def load_eval(source, eval_prompts, max_rows: int | None, seed: int, scale: float):
  """The held-out split in memory, scaled: float32 [n, d]."""
  rows = eval_rows(source, eval_prompts, max_rows, seed)
  if len(rows) == 0:
    return np.zeros((0, source.d), np.float32)
  return np.asarray(source.read_rows(rows), np.float32) * np.float32(scale)


def eval_batches(x: np.ndarray, batch_size: int, mesh) -> Iterator[tuple[jax.Array, int]]:
  """Fixed-size global eval batches (zero-padded at the end) and their valid row counts.

  Every process holds the whole eval set, so arrays are built with a callback that
  slices it; this is correct on one host and on many.
  """
  sharding = mesh_lib.batch_sharding(mesh)
  for lo in range(0, len(x), batch_size):
    chunk = x[lo:lo + batch_size]
    n = len(chunk)
    if n < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - n, x.shape[1]), x.dtype)])
    yield jax.make_array_from_callback(chunk.shape, sharding, lambda idx, c=chunk: c[idx]), n


def dataset_path(workdir: str, dataset: str) -> str:
  return os.path.join(workdir, "activations", dataset)
