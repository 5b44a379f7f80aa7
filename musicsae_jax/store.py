"""The activation store: TensorStore zarr3 arrays of activations plus a manifest and prompt table.

The torch bridge writes through this module and the JAX trainer streams from it, so it
imports only numpy, tensorstore and isal (CRC-32). The on-disk layout is the contract in WORKSPACE.md:

  <dataset>/manifest.json                  static description (format, model, sites, workers)
  <dataset>/prompts.jsonl                  prompt_id, text, labels, seed[, split]
  <dataset>/commits/worker-<i>.json        what worker i has committed (rows per site, prompts)
  <dataset>/sites/<site>/acts, index       zarr3 arrays (one writer)
  <dataset>/sites/<site>/part-<i>/acts, index   (worker i of N > 1 writers)

Crash safety: rows are written first, then the worker's commit record is replaced
atomically (write temp file, fsync, rename). Rows past the committed count are invisible
and are overwritten by the next append, so a batch is either committed or not there.

Integrity: the commit record also holds a CRC-32 of every committed chunk (per site,
acts and index; see `checksums`), so `verify()` (CLI: `python -m musicsae_jax.store
verify PATH`) can prove the committed rows are the ones written, and every read checks
them too: a reader reads whole chunks, stats their shard files before and after each
read (MissingDataError when gone) and recomputes each chunk's CRC-32 at every read
(ChecksumError; see SiteReader), so a file corrupted or removed while a job runs fails
that job's next read of it, naming the file and rows. Every written chunk
is stored, zeros included, so a shard file missing under committed rows is damage, never
the zarr fill value.
"""
from __future__ import annotations

import dataclasses
import fcntl
import glob
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorstore as ts

from musicsae_jax import checksums as checksums_lib
from musicsae_jax import files

FORMAT_VERSION = 1
DTYPES = ("float32", "bfloat16")
CODECS = ("zstd", "blosc", "none")
READ_CHUNK_BYTES = 4 << 20   # a read unit of ~4 MB: big enough to stream, small enough to shuffle
SHARD_CHUNKS = 16            # chunks per shard file: ~64 MB objects on disk
_SITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class StoreError(Exception):
  """Base class of every error this module raises on bad input or bad state."""


class StoreExistsError(StoreError, FileExistsError):
  """The dataset directory already exists and overwrite was not asked for."""


class ManifestError(StoreError):
  """manifest.json (or a commit record) is missing, unreadable or of the wrong format."""


class UnknownSiteError(StoreError, KeyError):
  """A site name that the dataset does not have."""

  def __str__(self) -> str:  # KeyError would quote the message
    return str(self.args[0])


class ShapeError(StoreError, ValueError):
  """Rows of the wrong width, dtype or index shape."""


class RowRangeError(StoreError, IndexError):
  """A read past the committed rows (or the blocks) of a site."""


class LockedError(StoreError):
  """Another live process holds this worker's write lock."""


class MissingDataError(StoreError):
  """A shard file that holds committed rows is gone: the dataset is damaged."""


class ChecksumError(StoreError):
  """Committed rows read back do not match the CRC-32 of their commit record."""


class DuplicatePromptError(StoreError, ValueError):
  """Rows or a completion for a prompt that is already committed."""


class NonFiniteError(StoreError, ValueError):
  """NaN or Inf activations: refused at append, reported by verify()."""


@dataclasses.dataclass(frozen=True)
class SiteSpec:
  """One activation site: row width, stored dtype and its chunking.

  chunk_rows is the read unit (one compressed chunk, ~4 MB by default); a shard file
  holds shard_chunks chunks, so writes land as large objects while reads stay small.
  """
  d: int
  dtype: str = "float32"
  chunk_rows: int | None = None
  shard_chunks: int = SHARD_CHUNKS
  codec: str = "zstd"

  def resolved(self) -> "SiteSpec":
    if not isinstance(self.d, (int, np.integer)) or self.d <= 0:
      raise ShapeError(f"site width d must be a positive int, got {self.d!r}")
    if self.dtype not in DTYPES:
      raise ShapeError(f"site dtype must be one of {DTYPES}, got {self.dtype!r}")
    if self.codec not in CODECS:
      raise ShapeError(f"site codec must be one of {CODECS}, got {self.codec!r}")
    rows = self.chunk_rows or default_chunk_rows(int(self.d), self.dtype)
    if rows <= 0 or self.shard_chunks <= 0:
      raise ShapeError(f"chunk_rows and shard_chunks must be positive, got {rows}, {self.shard_chunks}")
    return dataclasses.replace(self, d=int(self.d), chunk_rows=int(rows))

  @property
  def shard_rows(self) -> int:
    return int(self.chunk_rows) * int(self.shard_chunks)

  @property
  def np_dtype(self) -> np.dtype:
    return np.dtype(ts.bfloat16.numpy_dtype if self.dtype == "bfloat16" else np.float32)


def default_chunk_rows(d: int, dtype: str) -> int:
  """Largest power of two of rows whose chunk stays within READ_CHUNK_BYTES (256..65536)."""
  itemsize = 2 if dtype == "bfloat16" else 4
  rows = max(1, READ_CHUNK_BYTES // (d * itemsize))
  return int(min(65536, max(256, 1 << (rows.bit_length() - 1))))


# --------------------------------------------------------------------------------------
# files


def _write_json_atomic(path: str, obj: Any) -> None:
  """Write JSON so that readers see either the old file or the new one, never half."""
  files.write_json(path, obj, indent=1, sort_keys=True)


def _read_json(path: str, what: str) -> dict:
  if not os.path.exists(path):
    raise ManifestError(f"{path}: missing {what}; is this an activation dataset "
                        f"(created by musicsae_jax.store.create)?")
  try:
    with open(path) as f:
      obj = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ManifestError(f"{path}: corrupt {what} ({e}); expected a JSON object") from e
  if not isinstance(obj, dict):
    raise ManifestError(f"{path}: corrupt {what}; expected a JSON object, got {type(obj).__name__}")
  return obj


def _part_dir(root: str, site: str, worker: int, num_workers: int) -> str:
  base = os.path.join(root, "sites", site)
  return base if num_workers == 1 else os.path.join(base, f"part-{worker}")


def _commit_path(root: str, worker: int) -> str:
  return os.path.join(root, "commits", f"worker-{worker}.json")


def _shard_file(array_dir: str, shard: int) -> str:
  """The file of row-shard `shard` of a [rows, width] zarr3 array (default key encoding)."""
  return os.path.join(array_dir, "c", str(shard), "0")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def creating_path(path: str) -> str:
  """Where a dataset is built before its atomic rename to `path` (host and pid named)."""
  return f"{path}.creating-{socket.gethostname()}-{os.getpid()}"


def remove_stale_creating(path: str, max_age_s: float = 3600.0) -> list[str]:
  """Remove `<path>.creating-*` dirs left by killed creators: on this host when the pid is
  gone, from other hosts (shared disks) when older than max_age_s. Returns what went."""
  gone, host = [], socket.gethostname()
  for d in glob.glob(glob.escape(path) + ".creating-*"):
    tail = d.rsplit(".creating-", 1)[1]
    who, _, pid = tail.rpartition("-")
    try:
      age = time.time() - os.path.getmtime(d)
    except OSError:
      continue
    local = who in ("", host) and pid.isdigit()
    if (local and not _pid_alive(int(pid))) or (not local and age > max_age_s):
      shutil.rmtree(d, ignore_errors=True)
      gone.append(d)
  return gone


def _codecs(spec: SiteSpec, width: int, itemsize: int) -> list[dict]:
  inner: list[dict] = [{"name": "bytes", "configuration": {"endian": "little"}}]
  if spec.codec == "zstd":
    inner.append({"name": "zstd", "configuration": {"level": 1, "checksum": False}})
  elif spec.codec == "blosc":
    inner.append({"name": "blosc", "configuration": {
        "cname": "lz4", "clevel": 5, "shuffle": "shuffle", "typesize": itemsize, "blocksize": 0}})
  return [{"name": "sharding_indexed", "configuration": {
      "chunk_shape": [spec.chunk_rows, width],
      "codecs": inner,
      "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                       {"name": "crc32c"}],
      "index_location": "end"}}]


def _array_spec(path: str, width: int, dtype: str, spec: SiteSpec, create: bool) -> dict:
  # store_data_equal_to_fill_value: an all-zero chunk is written too, so every shard under
  # committed rows has a file and a missing one means damage, not "zeros".
  s: dict[str, Any] = {"driver": "zarr3", "kvstore": {"driver": "file", "path": path},
                       "store_data_equal_to_fill_value": True}
  if create:
    itemsize = 2 if dtype == "bfloat16" else 4
    codecs = _codecs(spec, width, itemsize)
    s.update(create=True, delete_existing=True, metadata={
        "shape": [0, width],
        "data_type": dtype,
        "chunk_grid": {"name": "regular",
                       "configuration": {"chunk_shape": [spec.shard_rows, width]}},
        "chunk_key_encoding": {"name": "default"},
        "fill_value": 0,
        "codecs": codecs,
        "dimension_names": ["row", "feature" if dtype != "int32" else "field"],
    })
  return s


def _open_array(path: str, width: int, dtype: str, spec: SiteSpec, create: bool = False):
  try:
    return ts.open(_array_spec(path, width, dtype, spec, create)).result()
  except ValueError as e:
    raise ManifestError(f"{path}: cannot open zarr3 array ({e})") from e


# --------------------------------------------------------------------------------------
# create / open


def create(path: str, sites: Mapping[str, SiteSpec | Mapping[str, Any]], *,
           prompts: Sequence[Mapping[str, Any]] | None = None,
           model: Mapping[str, Any] | None = None,
           generation: Mapping[str, Any] | None = None,
           num_workers: int = 1, overwrite: bool = False,
           extra: Mapping[str, Any] | None = None) -> "Dataset":
  """Create an empty dataset: manifest, prompt table and one empty array pair per site/part.

  prompts: dicts with `text`, optional `labels` (dict), `seed` and `split` (str, e.g.
  "heldout_vocab"; absent means "train"); prompt_id = position.
  """
  path = os.path.abspath(path)
  if os.path.exists(path):
    if not overwrite:
      raise StoreExistsError(f"{path}: dataset already exists; pass overwrite=True "
                             f"(--overwrite) to replace it, or choose another dataset name")
    shutil.rmtree(path)
  if not sites:
    raise ShapeError(f"{path}: a dataset needs at least one site")
  if not isinstance(num_workers, int) or num_workers < 1:
    raise StoreError(f"num_workers must be a positive int, got {num_workers!r}")
  resolved: dict[str, SiteSpec] = {}
  for name, spec in sites.items():
    if not _SITE_RE.match(name):
      raise UnknownSiteError(f"site name {name!r} must match {_SITE_RE.pattern}")
    resolved[name] = (spec if isinstance(spec, SiteSpec) else SiteSpec(**spec)).resolved()
  table = [_prompt_row(i, p) for i, p in enumerate(prompts or [])]

  os.makedirs(os.path.join(path, "commits"))
  files.write_text(os.path.join(path, "prompts.jsonl"),
                   "".join(json.dumps(row) + "\n" for row in table))
  for name, spec in resolved.items():
    for w in range(num_workers):
      part = _part_dir(path, name, w, num_workers)
      _open_array(os.path.join(part, "acts"), spec.d, spec.dtype, spec, create=True)
      _open_array(os.path.join(part, "index"), 2, "int32", spec, create=True)
  manifest = {
      "format": "musicsae-activations",
      "format_version": FORMAT_VERSION,
      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "model": dict(model or {}),
      "generation": dict(generation or {}),
      "sites": {n: dataclasses.asdict(s) | {"shard_rows": s.shard_rows} for n, s in resolved.items()},
      "num_workers": num_workers,
      "num_prompts": len(table),
      "extra": dict(extra or {}),
  }
  _write_json_atomic(os.path.join(path, "manifest.json"), manifest)
  return Dataset(path)


def _prompt_row(i: int, p: Mapping[str, Any]) -> dict:
  if isinstance(p, str):
    p = {"text": p}
  if not isinstance(p, Mapping) or not isinstance(p.get("text"), str):
    raise StoreError(f"prompt {i}: expected a dict with a 'text' string, got {p!r}")
  labels = p.get("labels") or {}
  if not isinstance(labels, Mapping):
    raise StoreError(f"prompt {i}: 'labels' must be a dict, got {labels!r}")
  row = {"prompt_id": i, "text": p["text"], "labels": dict(labels), "seed": p.get("seed", i)}
  if p.get("split") is not None:        # e.g. "heldout_vocab" (analysis); absent = "train"
    if not isinstance(p["split"], str):
      raise StoreError(f"prompt {i}: 'split' must be a string, got {p['split']!r}")
    row["split"] = p["split"]
  return row


def open_dataset(path: str) -> "Dataset":
  """Open an existing dataset for reading (and for `writer()`)."""
  return Dataset(os.path.abspath(path))


def exists(path: str) -> bool:
  return os.path.exists(os.path.join(path, "manifest.json"))


class Dataset:
  """A dataset on disk. Cheap to construct; readers reflect commits as of `refresh()`."""

  def __init__(self, path: str):
    self.path = path
    if not os.path.isdir(path):
      raise ManifestError(f"{path}: no such dataset directory (write one with `python -m "
                          f"launch.extract` or musicsae_jax.store.create)")
    m = _read_json(os.path.join(path, "manifest.json"), "manifest.json")
    if m.get("format") != "musicsae-activations" or not isinstance(m.get("sites"), dict):
      raise ManifestError(f"{path}/manifest.json: not an activation-store manifest "
                          f"(expected format 'musicsae-activations' and a 'sites' object)")
    if m.get("format_version") != FORMAT_VERSION:
      raise ManifestError(f"{path}/manifest.json: format_version {m.get('format_version')!r}, "
                          f"this code reads {FORMAT_VERSION}")
    self.manifest = m
    try:
      self.sites = {n: SiteSpec(**{k: v for k, v in s.items() if k != "shard_rows"})
                    for n, s in m["sites"].items()}
    except TypeError as e:
      raise ManifestError(f"{path}/manifest.json: bad site entry ({e})") from e
    self.num_workers = int(m.get("num_workers", 1))
    self._prompts: list[dict] | None = None

  def __repr__(self) -> str:
    return f"Dataset({self.path!r}, sites={list(self.sites)})"

  @property
  def prompts(self) -> list[dict]:
    if self._prompts is None:
      p = os.path.join(self.path, "prompts.jsonl")
      rows = []
      with open(p) as f:
        for lineno, line in enumerate(f, 1):
          if line.strip():
            try:
              rows.append(json.loads(line))
            except json.JSONDecodeError as e:
              raise ManifestError(f"{p}:{lineno}: corrupt prompt row ({e})") from e
      self._prompts = rows
    return self._prompts

  def commits(self) -> list[dict]:
    """Each worker's commit record (an empty one for workers that have not committed)."""
    out = []
    for w in range(self.num_workers):
      p = _commit_path(self.path, w)
      out.append(_read_json(p, "commit record") if os.path.exists(p) else _empty_commit(w))
    return out

  def completed_prompts(self) -> set[int]:
    return {int(i) for c in self.commits() for i in c["completed_prompts"]}

  def site(self, name: str) -> "SiteReader":
    if name not in self.sites:
      raise UnknownSiteError(f"{self.path}: unknown site {name!r}; this dataset has "
                             f"{sorted(self.sites)}")
    commits = self.commits()     # rows and checksums from the same records
    rows = [int(c["rows"].get(name, 0)) for c in commits]
    sums = [_record_sums(self.path, c, name) for c in commits]
    return SiteReader(self, name, rows, sums)

  def check_files(self) -> None:
    """Raise MissingDataError naming the first shard file missing under committed rows
    (a stat per shard; `verify()` also reads and checksums the rows)."""
    for name in self.sites:
      site = self.site(name)
      for p, n in enumerate(site.part_rows):
        site._check_present(p, 0, n)

  def writer(self, worker_index: int = 0, **kw) -> "Writer":
    return Writer(self, worker_index, **kw)

  def summary(self) -> dict:
    return {"path": self.path, "prompts": len(self.prompts),
            "completed_prompts": len(self.completed_prompts()),
            "sites": {n: {"d": s.d, "dtype": s.dtype, "rows": self.site(n).num_rows}
                      for n, s in self.sites.items()}}


def _empty_commit(worker: int) -> dict:
  return {"worker": worker, "rows": {}, "completed_prompts": [], "flushes": 0}


def _record_sums(root: str, record: dict, site: str) -> dict | None:
  """A commit record's per-chunk CRC-32s of `site` ({"acts": [...], "index": [...]}, None
  when it holds none); ManifestError when it names an algorithm this version lacks."""
  try:
    checksums_lib.algorithm_of(record)
  except checksums_lib.UnknownAlgorithmError as e:
    raise ManifestError(f"{_commit_path(root, int(record.get('worker', 0)))}: {e}") from None
  return (record.get("checksums") or {}).get(site)


# --------------------------------------------------------------------------------------
# reading


class SiteReader:
  """Committed rows of one site across all worker parts, seen as one [rows, d] array.

  Global row ids run through part 0, then part 1, ...; a block is one stored chunk
  (chunk_rows rows) of one part, the unit training reads in shuffled order.

  Every read is checked: the shard files under the rows must exist (a stat before and
  after the read), and each chunk read must match the CRC-32 of its commit record,
  recomputed at every read of it (ISA-L's CRC-32: a few per cent of a read,
  bench/loader.py). Reads are whole chunks (a row read decodes its whole chunk anyway),
  so the checksums cover exactly what was read. A file removed or damaged while a job
  runs fails the job's next read of it. Failures raise MissingDataError / ChecksumError
  naming the file and the rows. Datasets written before checksums existed get the file
  check only.

  `check_every_read = False` checks a chunk at its first read and again at every later
  read whose shard file is not provably the one checked (inode, size, mtime and ctime
  unchanged across the read and since; a file changed within the last seconds is never
  trusted: timestamps are coarse).
  """

  verify_checksums = True     # False only to measure the check's cost (bench/loader.py)
  check_every_read = True     # False: skip the CRC of chunks whose files are unchanged
  crc32 = staticmethod(checksums_lib.crc32)   # the function (bench/loader.py swaps in zlib's)
  _SETTLED_NS = 2_000_000_000  # a file's ctime older than this: its identity is trusted

  def __init__(self, ds: Dataset, name: str, part_rows: list[int],
               checksums: list[dict | None] | None = None):
    self.dataset, self.name = ds, name
    self.spec = ds.sites[name].resolved()
    self.d, self.dtype, self.chunk_rows = self.spec.d, self.spec.dtype, self.spec.chunk_rows
    self.part_rows = part_rows
    self.part_start = np.concatenate([[0], np.cumsum(part_rows)]).astype(np.int64)
    self.num_rows = int(self.part_start[-1])
    blocks = [(p, s) for p, n in enumerate(part_rows) for s in range(0, n, self.chunk_rows)]
    self._blocks = blocks
    self.num_blocks = len(blocks)
    self._arrays: dict[int, tuple[Any, Any]] = {}
    self._sums = list(checksums) if checksums is not None else [None] * len(part_rows)
    self._verified: dict[tuple[int, int, int], tuple] = {}   # (part, array, row) -> file id

  def __repr__(self) -> str:
    return f"SiteReader({self.name!r}, rows={self.num_rows}, d={self.d}, dtype={self.dtype})"

  def _part_base(self, p: int) -> str:
    return _part_dir(self.dataset.path, self.name, p, self.dataset.num_workers)

  def _missing(self, p: int, lo: int, hi: int) -> list[tuple[str, int]]:
    """(file, shard) of every missing shard file under local rows [lo, hi) of part p."""
    rows = self.spec.shard_rows
    out = []
    for shard in range(lo // rows, (hi - 1) // rows + 1 if hi > lo else lo // rows):
      for arr in ("acts", "index"):
        f = _shard_file(os.path.join(self._part_base(p), arr), shard)
        if not os.path.exists(f):
          out.append((f, shard))
    return out

  def _missing_error(self, p: int, f: str, shard: int) -> MissingDataError:
    rows = self.spec.shard_rows
    return MissingDataError(
        f"{f}: missing shard file holding committed rows {shard * rows}.."
        f"{min((shard + 1) * rows, self.part_rows[p]) - 1} of site {self.name!r} "
        f"(worker {p}); the dataset is damaged: check it with `python -m "
        f"musicsae_jax.store verify {self.dataset.path}` and re-extract")

  def _check_present(self, p: int, lo: int, hi: int) -> None:
    """Fail naming the file when a shard under local rows [lo, hi) of part p is missing
    (zarr would silently read its rows as the fill value, zeros). Checked at every read."""
    gone = self._missing(p, lo, hi)
    if gone:
      raise self._missing_error(p, *gone[0])

  def _file(self, p: int, w: int, lo: int) -> str:
    """The shard file of array w (0: acts, 1: index) holding local row lo of part p."""
    return _shard_file(os.path.join(self._part_base(p), ("acts", "index")[w]),
                       lo // self.spec.shard_rows)

  def _file_id(self, p: int, w: int, lo: int) -> tuple:
    """(inode, size, mtime, ctime) of that shard file; MissingDataError when it is gone."""
    f = self._file(p, w, lo)
    try:
      st = os.stat(f)
    except FileNotFoundError:
      raise self._missing_error(p, f, lo // self.spec.shard_rows) from None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

  def _verify_read(self, p: int, w: int, lo: int, rows: np.ndarray, before: tuple) -> None:
    """Check a chunk just read (rows from local row lo of part p, array w) whose shard file
    had identity `before` when the read started: skip the CRC only when the file is the
    one whose chunk passed it before and did not change during this read."""
    after = self._file_id(p, w, lo)
    key = (p, w, lo)
    if (after == before and self._verified.get(key) == after and not self.check_every_read):
      return
    self._check_chunk(p, lo, ("acts", "index")[w], rows)
    if (after == before and self._sums[p] is not None and self.verify_checksums
        and not self.check_every_read and time.time_ns() - after[3] > self._SETTLED_NS):
      self._verified[key] = after

  def _check_chunk(self, p: int, lo: int, what: str, rows: np.ndarray) -> None:
    """Compare rows [lo, lo + len(rows)) of part p (a whole committed chunk) with their
    CRC-32; raise naming the file and rows when they differ."""
    sums = self._sums[p]
    if sums is None or not self.verify_checksums:
      return
    c = lo // self.chunk_rows
    have = sums[what][c] if c < len(sums[what]) else None
    if have is not None and self.crc32(rows) == have:
      return
    hi = lo + len(rows)
    gone = self._missing(p, lo, hi)      # removed during the read: say so
    if gone:
      raise self._missing_error(p, *gone[0])
    f = _shard_file(os.path.join(self._part_base(p), what), lo // self.spec.shard_rows)
    raise ChecksumError(
        f"{f}: {what} rows {lo}..{hi - 1} of site {self.name!r} (worker {p}) do not match "
        f"their checksum (corrupt or overwritten); the dataset is damaged: check it with "
        f"`python -m musicsae_jax.store verify {self.dataset.path}` and re-extract")

  def _chunk_end(self, p: int, lo: int) -> int:
    return min(lo + self.chunk_rows, self.part_rows[p])

  def _part(self, p: int):
    if p not in self._arrays:
      base = _part_dir(self.dataset.path, self.name, p, self.dataset.num_workers)
      self._arrays[p] = (_open_array(os.path.join(base, "acts"), self.d, self.dtype, self.spec),
                         _open_array(os.path.join(base, "index"), 2, "int32", self.spec))
      width = int(self._arrays[p][0].domain.exclusive_max[1])
      if width != self.d:
        raise ManifestError(f"{self.dataset.path}/manifest.json: site {self.name!r} has d={self.d} "
                            f"but its array {base}/acts is {width} wide: the manifest is wrong")
      held = min(int(a.domain.exclusive_max[0]) for a in self._arrays[p])
      if held < self.part_rows[p]:
        raise ManifestError(f"{_commit_path(self.dataset.path, p)}: records {self.part_rows[p]} "
                            f"rows of site {self.name!r} but {base} holds {held}: the dataset "
                            f"is damaged; re-extract it (launch.extract --overwrite)")
    return self._arrays[p]

  def block_rows(self, i: int) -> tuple[int, int]:
    """Global [start, stop) of block i."""
    p, s = self._block(i)
    return int(self.part_start[p] + s), int(self.part_start[p] + self._chunk_end(p, s))

  def _block(self, i: int) -> tuple[int, int]:
    if not 0 <= i < self.num_blocks:
      raise RowRangeError(f"{self.dataset.path}: site {self.name!r} has {self.num_blocks} blocks, "
                          f"asked for block {i}")
    return self._blocks[i]

  def read_block(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    """One chunk-aligned block: (acts [n, d] in the stored dtype, index [n, 2] int32)."""
    return self._finish(self._read_async(i))

  def iter_blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every block in order, the next one read while the caller works on this one."""
    if not self.num_blocks:
      return
    pending = self._read_async(0)
    for i in range(self.num_blocks):
      cur = pending
      if i + 1 < self.num_blocks:
        pending = self._read_async(i + 1)
      yield self._finish(cur)

  def _read_async(self, i: int, which=(0, 1)):
    """Start reading block i's chunk(s) (0: acts, 1: index): (part, start, futures)."""
    p, s = self._block(i)
    return self._read_chunk_async(p, s, which)

  def _read_chunk_async(self, p: int, s: int, which=(0, 1)):
    e = self._chunk_end(p, s)
    ids = [self._file_id(p, w, s) for w in (0, 1)]   # both present (else damage); versions
    arrays = self._part(p)
    return p, s, [arrays[w][s:e].read() for w in which], which, [ids[w] for w in which]

  def _finish(self, pending):
    p, s, futures, which, before = pending
    out = []
    for w, f, b in zip(which, futures, before):
      try:
        rows = f.result()
      except ValueError as e:        # TensorStore: a chunk that no longer decodes
        raise self._damaged(p, s, self._chunk_end(p, s), ("acts", "index")[w], e) from None
      self._verify_read(p, w, s, rows, b)
      out.append(rows)
    return tuple(out)

  def _damaged(self, p: int, lo: int, hi: int, what: str, e: BaseException) -> StoreError:
    gone = self._missing(p, lo, hi)
    if gone:
      return self._missing_error(p, *gone[0])
    f = _shard_file(os.path.join(self._part_base(p), what), lo // self.spec.shard_rows)
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return ChecksumError(
        f"{f}: {what} rows {lo}..{hi - 1} of site {self.name!r} (worker {p}) cannot be "
        f"decoded ({reason[-160:]}); the dataset is damaged: check it with `python -m "
        f"musicsae_jax.store verify {self.dataset.path}` and re-extract")

  def _locate(self, rows) -> tuple[np.ndarray, np.ndarray]:
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= self.num_rows):
      bad = rows[(rows < 0) | (rows >= self.num_rows)][0]
      raise RowRangeError(f"{self.dataset.path}: site {self.name!r} has {self.num_rows} committed "
                          f"rows, asked for row {bad}")
    part = np.searchsorted(self.part_start, rows, side="right") - 1
    return part, rows - self.part_start[part]

  _GATHER_INFLIGHT = 16        # whole chunks read at once by _gather (~64 MB at most)

  def _gather(self, rows, which: int, width: int, dtype) -> np.ndarray:
    """Rows in the order given, read as the whole (checked) chunks that hold them."""
    part, local = self._locate(rows)
    out = np.empty((part.size, width), dtype=dtype)
    key = part * (self.num_rows + 1) + local // self.chunk_rows
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    groups = np.split(order, bounds) if order.size else []
    for g0 in range(0, len(groups), self._GATHER_INFLIGHT):
      batch = groups[g0:g0 + self._GATHER_INFLIGHT]
      reads = []
      for sel in batch:
        p, lo = int(part[sel[0]]), int(local[sel[0]]) // self.chunk_rows * self.chunk_rows
        reads.append((sel, lo, self._read_chunk_async(p, lo, (which,))))
      for sel, lo, pending in reads:
        (chunk,) = self._finish(pending)
        out[sel] = chunk[local[sel] - lo]
    return out

  def read_rows(self, rows) -> np.ndarray:
    """Activations of the given global row ids, in the order given."""
    return self._gather(rows, 0, self.d, self.spec.np_dtype)

  def read_index(self, rows=None) -> np.ndarray:
    """(prompt_id, frame) of the given rows (all committed rows when None)."""
    if rows is None:            # one read per part, checked chunk by chunk
      for p, n in enumerate(self.part_rows):
        self._check_present(p, 0, n)
      before = [{lo: self._file_id(p, 1, lo) for lo in range(0, n, self.chunk_rows)}
                for p, n in enumerate(self.part_rows)]
      futures = [self._part(p)[1][:n].read() for p, n in enumerate(self.part_rows)]
      got = []
      for p, f in enumerate(futures):
        try:
          got.append(f.result())
        except ValueError:            # find the chunk that does not decode, and name it
          for lo in range(0, self.part_rows[p], self.chunk_rows):
            self._finish(self._read_chunk_async(p, lo, (1,)))
          raise
      for p, ix in enumerate(got):
        for lo in range(0, len(ix), self.chunk_rows):
          self._verify_read(p, 1, lo, ix[lo:lo + self.chunk_rows], before[p][lo])
      return np.concatenate(got) if got else np.zeros((0, 2), np.int32)
    return self._gather(rows, 1, 2, np.int32)

  def read_all(self) -> np.ndarray:
    """Every committed row (small sites only: this is the whole site in RAM)."""
    out = [a for a, _ in self.iter_blocks()]
    return np.concatenate(out) if out else np.zeros((0, self.d), self.spec.np_dtype)


# --------------------------------------------------------------------------------------
# writing


class Writer:
  """Appends rows for one worker. Rows and prompt completions become visible together.

  Appended rows are buffered in memory and written when a site's buffer reaches a
  shard, when `flush()` is called, when `flush_seconds` have passed at a `commit()`, and
  on a clean exit from the `with` block. Each flush writes the rows, then atomically
  replaces the worker's commit record: a crash before that loses (only) the unflushed
  batch, and the next writer continues after the committed rows.
  """

  def __init__(self, ds: Dataset, worker_index: int = 0, flush_seconds: float = 60.0):
    if not isinstance(worker_index, int) or not 0 <= worker_index < ds.num_workers:
      raise StoreError(f"{ds.path}: worker_index must be in [0, {ds.num_workers}) for a dataset "
                       f"created with num_workers={ds.num_workers}, got {worker_index!r}")
    self.ds, self.worker = ds, worker_index
    self.flush_seconds = flush_seconds
    self._lock_fd = os.open(_commit_path(ds.path, worker_index) + ".lock", os.O_CREAT | os.O_RDWR)
    try:
      fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(self._lock_fd)
      raise LockedError(f"{ds.path}: worker {worker_index} is being written by another live "
                        f"process; use a different --worker_index or wait for it to finish") from None
    p = _commit_path(ds.path, worker_index)
    for tmp in glob.glob(glob.escape(p) + ".tmp-*"):   # left by a writer killed mid-replace
      os.remove(tmp)
    self._commit = _read_json(p, "commit record") if os.path.exists(p) else _empty_commit(worker_index)
    self._specs = {n: s.resolved() for n, s in ds.sites.items()}
    # Prompts committed by any worker at open: their rows must not be appended again.
    self._done = ds.completed_prompts() | set(self._commit["completed_prompts"])
    # Per-chunk CRCs continue only where the record covers every committed row.
    self._crcs = {}
    for n, spec in self._specs.items():
      have, rows = _record_sums(ds.path, self._commit, n), self.committed_rows(n)
      if have is None and rows:
        continue                    # written before checksums existed: none kept for it
      have = have or {"acts": [], "index": []}
      if len(have["acts"]) != -(-rows // spec.chunk_rows):
        raise ManifestError(f"{p}: checksums of site {n!r} cover {len(have['acts'])} chunks "
                            f"but {rows} rows were committed")
      self._crcs[n] = {"acts": list(have["acts"]), "index": list(have["index"])}
    self._arrays: dict[str, tuple[Any, Any]] = {}
    self._pending: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {n: [] for n in ds.sites}
    self._pending_rows = dict.fromkeys(ds.sites, 0)
    self._pending_prompts: list[int] = []
    self._last_flush = time.monotonic()
    self._closed = False
    for name in ds.sites:        # drop rows a crashed writer left past the commit
      acts, index = self._array(name)
      n = self.committed_rows(name)
      if acts.shape[0] != n:
        acts.resize(exclusive_max=[n, None], shrink_only=True).result()
        index.resize(exclusive_max=[n, None], shrink_only=True).result()
        self._arrays.pop(name)

  def __enter__(self) -> "Writer":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:            # an error mid-batch: keep what was committed, drop the rest
      self._release()

  def committed_rows(self, site: str) -> int:
    return int(self._commit["rows"].get(site, 0))

  def completed_prompts(self) -> set[int]:
    return set(self._commit["completed_prompts"])

  def _array(self, name: str):
    if name not in self._arrays:
      spec = self._specs[name]
      base = _part_dir(self.ds.path, name, self.worker, self.ds.num_workers)
      self._arrays[name] = (_open_array(os.path.join(base, "acts"), spec.d, spec.dtype, spec),
                            _open_array(os.path.join(base, "index"), 2, "int32", spec))
    return self._arrays[name]

  def append(self, site: str, acts: np.ndarray, index: np.ndarray) -> None:
    """Queue rows of one site: acts [n, d] (any float dtype, cast to the site's) and
    index [n, 2] integer (prompt_id, frame)."""
    if self._closed:
      raise StoreError(f"{self.ds.path}: writer for worker {self.worker} is closed")
    if site not in self._specs:
      raise UnknownSiteError(f"{self.ds.path}: unknown site {site!r}; this dataset has "
                             f"{sorted(self._specs)}")
    spec = self._specs[site]
    acts, index = np.asarray(acts), np.asarray(index)
    if acts.ndim != 2 or acts.shape[1] != spec.d:
      raise ShapeError(f"{self.ds.path}: site {site!r} takes rows of width {spec.d} "
                       f"([n, {spec.d}]), got shape {acts.shape}")
    if not (np.issubdtype(acts.dtype, np.floating) or acts.dtype == spec.np_dtype):
      raise ShapeError(f"{self.ds.path}: site {site!r} stores {spec.dtype}; got {acts.dtype} "
                       f"(pass floating-point activations)")
    if index.shape != (acts.shape[0], 2) or not np.issubdtype(index.dtype, np.integer):
      raise ShapeError(f"{self.ds.path}: site {site!r}: index must be integer [{acts.shape[0]}, 2] "
                       f"(prompt_id, frame), got {index.dtype} {index.shape}")
    n_prompts = self.ds.manifest.get("num_prompts", 0)
    if n_prompts and index.size and (index[:, 0].min() < 0 or index[:, 0].max() >= n_prompts):
      raise ShapeError(f"{self.ds.path}: site {site!r}: prompt_id out of range [0, {n_prompts})")
    if not acts.shape[0]:
      return
    if not np.isfinite(acts).all():
      bad = np.nonzero(~np.isfinite(acts).all(1))[0]
      raise NonFiniteError(f"{self.ds.path}: site {site!r}: {len(bad)} of {len(acts)} rows hold "
                           f"NaN/Inf (first: prompt {index[bad[0], 0]}, frame {index[bad[0], 1]})")
    self._check_new(np.unique(index[:, 0]), f"rows of site {site!r}")
    self._pending[site].append((acts.astype(spec.np_dtype, copy=False), index.astype(np.int32)))
    self._pending_rows[site] += acts.shape[0]

  def _check_new(self, prompt_ids, what: str) -> None:
    """Refuse rows or completions for prompts already committed (or completed, pending)."""
    dup = sorted(set(int(i) for i in prompt_ids) & (self._done | set(self._pending_prompts)))
    if dup:
      raise DuplicatePromptError(
          f"{self.ds.path}: worker {self.worker}: {what} for prompt(s) {dup[:5]} that are "
          f"already committed; each prompt is written once (re-extract with --overwrite)")

  def commit(self, prompt_ids: Sequence[int] = ()) -> None:
    """Mark prompts complete; they become visible with their rows at the next flush."""
    ids = [int(i) for i in prompt_ids]
    self._check_new(ids, "a completion")
    self._pending_prompts.extend(ids)
    full = any(self._pending_rows[n] >= self._specs[n].shard_rows for n in self._specs)
    if full or time.monotonic() - self._last_flush >= self.flush_seconds:
      self.flush()

  def flush(self) -> None:
    """Write queued rows, then publish them and pending completions atomically."""
    if not any(self._pending_rows.values()) and not self._pending_prompts:
      return
    new_rows = dict(self._commit["rows"])
    new_crcs = {n: {k: list(v) for k, v in c.items()} for n, c in self._crcs.items()}
    txn = ts.Transaction()      # coalesces the appended pieces into whole-shard writes
    pending = []
    for name, chunks in self._pending.items():
      if not chunks:
        continue
      start = self.committed_rows(name)
      stop = start + self._pending_rows[name]
      arr, idx = self._array(name)
      arr = arr.resize(exclusive_max=[stop, None], expand_only=True).result()
      idx = idx.resize(exclusive_max=[stop, None], expand_only=True).result()
      self._arrays[name] = (arr, idx)
      tarr, tidx = arr.with_transaction(txn), idx.with_transaction(txn)
      crcs = new_crcs.get(name)
      for a, i in chunks:
        pending.append(tarr[start:start + len(a)].write(a))
        pending.append(tidx[start:start + len(a)].write(i))
        if crcs is not None:
          checksums_lib.extend(crcs["acts"], start, a, self._specs[name].chunk_rows)
          checksums_lib.extend(crcs["index"], start, i, self._specs[name].chunk_rows)
        start += len(a)
      new_rows[name] = stop
    for f in pending:
      f.result()
    txn.commit_async().result()
    done = sorted(set(self._commit["completed_prompts"]) | set(self._pending_prompts))
    record = {"worker": self.worker, "rows": new_rows, "completed_prompts": done,
              "checksums": new_crcs, "checksum_algorithm": checksums_lib.DEFAULT,
              "checksum": checksums_lib.DESCRIPTION,
              "flushes": int(self._commit.get("flushes", 0)) + 1,
              "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_json_atomic(_commit_path(self.ds.path, self.worker), record)
    self._commit, self._crcs = record, new_crcs
    self._done |= set(self._pending_prompts)
    self._pending = {n: [] for n in self._specs}
    self._pending_rows = dict.fromkeys(self._specs, 0)
    self._pending_prompts = []
    self._last_flush = time.monotonic()

  def close(self) -> None:
    if not self._closed:
      try:
        self.flush()
      finally:
        self._release()

  def _release(self) -> None:
    if not self._closed:
      self._closed = True
      fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
      os.close(self._lock_fd)


# --------------------------------------------------------------------------------------
# verification


def verify(path: str) -> dict:
  """Check a dataset end to end; returns {'problems': [str], 'sites': {name: rows}}.

  Reads every committed row once and checks: shard files present, per-chunk CRC-32s
  against the commit records, no NaN/Inf, each (prompt, frame) row once, rows only for
  completed prompts, every completed prompt present in every site, and no prompt
  completed by two workers. Every chunk of every site is checked whatever else is wrong
  (a missing file does not hide a corrupt chunk beside it), so the list is complete; an
  empty one means the dataset is whole.
  """
  ds = open_dataset(path)
  problems: list[str] = []
  commits = ds.commits()
  owner: dict[int, int] = {}
  for c in commits:
    for pid in c["completed_prompts"]:
      if int(pid) in owner:
        problems.append(f"prompt {pid} is marked complete by workers {owner[int(pid)]} and "
                        f"{c['worker']}")
      owner.setdefault(int(pid), int(c["worker"]))
  done = set(owner)
  rows_of = {}
  for name in ds.sites:
    site = ds.site(name)
    rows_of[name] = site.num_rows
    keys, nonfinite, damaged = [], 0, False
    for p, n in enumerate(site.part_rows):
      if not n:
        continue
      where = f"site {name!r} worker {p}"
      sums = _record_sums(ds.path, commits[p], name)
      if sums is None:
        problems.append(f"{where}: commit record has no checksums (written by an older "
                        f"version); contents not checked")
      try:
        arrays = site._part(p)
      except StoreError as e:
        problems.append(str(e))
        damaged = True
        continue
      reported: set[str] = set()
      for lo in range(0, n, site.chunk_rows):      # every chunk, whatever else is wrong
        hi = min(lo + site.chunk_rows, n)
        gone = site._missing(p, lo, hi)
        for f, shard in gone:
          if f not in reported:
            reported.add(f)
            problems.append(str(site._missing_error(p, f, shard)))
        damaged |= bool(gone)
        for w, what in enumerate(("acts", "index")):
          f = _shard_file(os.path.join(site._part_base(p), what), lo // site.spec.shard_rows)
          if f in reported:
            continue
          try:
            x = arrays[w][lo:hi].read().result()
          except ValueError as e:
            problems.append(str(site._damaged(p, lo, hi, what, e)))
            damaged |= what == "index"
            continue
          c = lo // site.chunk_rows
          if sums is not None and (c >= len(sums[what]) or
                                   checksums_lib.crc32(x) != sums[what][c]):
            problems.append(f"{f}: {what} rows {lo}..{hi - 1} of {where} do not match their "
                            f"checksum (corrupt or overwritten)")
            damaged |= what == "index"
            if what == "index":
              continue                # its (prompt, frame) keys are not to be trusted
          if what == "acts":
            nonfinite += int(np.count_nonzero(~np.isfinite(x).all(1)))
          else:
            keys.append(x.astype(np.int64))
    if nonfinite:
      problems.append(f"site {name!r}: {nonfinite} rows hold NaN/Inf")
    if not keys:
      if done and not site.num_rows:
        problems.append(f"site {name!r}: no rows, but {len(done)} prompts are marked complete")
      continue
    ix = np.concatenate(keys)
    pair = ix[:, 0] * (1 << 32) + ix[:, 1]
    uniq, counts = np.unique(pair, return_counts=True)
    if (counts > 1).any():
      first = uniq[counts > 1][0]
      problems.append(f"site {name!r}: {int((counts > 1).sum())} (prompt, frame) pairs stored "
                      f"more than once (first: prompt {first >> 32}, frame {first & 0xFFFFFFFF})")
    have = set(np.unique(ix[:, 0]).tolist())
    if have - done:
      problems.append(f"site {name!r}: rows for prompts never marked complete: "
                      f"{sorted(have - done)[:5]}")
    if done - have and not damaged:      # (a missing or corrupt shard already explains it)
      problems.append(f"site {name!r}: prompts marked complete without rows: "
                      f"{sorted(done - have)[:5]}")
  return {"path": ds.path, "problems": problems, "sites": rows_of,
          "completed_prompts": len(done), "prompts": len(ds.prompts)}


def _main(argv: Sequence[str]) -> int:
  """`python -m musicsae_jax.store verify PATH`: exit 0 when whole, 1 listing problems."""
  import argparse
  ap = argparse.ArgumentParser(prog="python -m musicsae_jax.store")
  sub = ap.add_subparsers(dest="cmd", required=True)
  sub.add_parser("verify", help="check a dataset's files, checksums and rows").add_argument("path")
  args = ap.parse_args(argv)
  try:
    report = verify(args.path)
  except StoreError as e:
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    return 2
  return print_report(report)


def print_report(report: dict) -> int:
  """Print a verify() report; 0 when whole, 1 otherwise (an exit status)."""
  rows = ", ".join(f"{n}: {r}" for n, r in report["sites"].items())
  if report["problems"]:
    print(f"{report['path']}: {len(report['problems'])} problem(s)", file=sys.stderr)
    for p in report["problems"]:
      print(f"  {p}", file=sys.stderr)
    return 1
  print(f"{report['path']}: OK ({report['completed_prompts']}/{report['prompts']} prompts "
        f"complete; rows {rows}; checksums match)")
  return 0


if __name__ == "__main__":
  sys.exit(_main(sys.argv[1:]))
