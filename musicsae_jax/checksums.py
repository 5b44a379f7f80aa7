"""Per-chunk checksums of committed rows: the algorithms a commit record may name.

A commit record names its algorithm in "checksum_algorithm"; records written before that
field existed hold zlib CRC-32s and read as "crc32". New records use xxh3_64 (xxHash),
about five times faster than zlib's CRC-32 on a chunk just decoded, so a reader can check
every chunk at every read for a few per cent of the read time (bench/loader.py).

Digests are stored as JSON ints for crc32 (as they always were) and as 16-digit lowercase
hex strings for xxh3_64 (64-bit ints lose precision in many JSON readers).
"""
from __future__ import annotations

import zlib

import numpy as np
import xxhash

DEFAULT = "xxh3_64"
LEGACY = "crc32"                # records without "checksum_algorithm"
ALGORITHMS = (DEFAULT, LEGACY)
DESCRIPTION = {"xxh3_64": "xxh3_64 per chunk_rows rows (little-endian bytes)",
               "crc32": "crc32 per chunk_rows rows (little-endian bytes)"}


class UnknownAlgorithmError(ValueError):
  """A commit record names a checksum this version cannot compute."""


def algorithm_of(record: dict) -> str:
  """The algorithm of a commit record's checksums (LEGACY when it names none)."""
  algo = record.get("checksum_algorithm", LEGACY)
  if algo not in ALGORITHMS:
    raise UnknownAlgorithmError(f"checksum_algorithm {algo!r}; this version knows {ALGORITHMS} "
                                f"(upgrade musicsae-jax to read it)")
  return algo


def _bytes(rows: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(rows).reshape(-1).view(np.uint8)


def digest(algo: str, rows: np.ndarray) -> int:
  """The checksum of rows' little-endian bytes, as an int."""
  if algo == "xxh3_64":
    return xxhash.xxh3_64_intdigest(_bytes(rows))
  return zlib.crc32(_bytes(rows))


def decode(algo: str, stored) -> int:
  """A digest as stored in JSON -> int."""
  return int(stored, 16) if algo == "xxh3_64" else int(stored)


def encode(algo: str, value: int) -> int | str:
  """An int digest -> its JSON form."""
  return f"{value:016x}" if algo == "xxh3_64" else int(value)


class ChunkSums:
  """The per-chunk digests of one array, extended as rows are appended.

  sums[c] covers the committed rows of chunk c. CRC-32 continues from its value; xxh3
  continues from a hasher kept for the open (last, partial) chunk, so a flush extends
  it without reading rows back. A writer resuming a partial xxh3 chunk seeds that hasher
  with `resume(rows)` (the chunk's committed rows, read back once).
  """

  def __init__(self, algo: str, sums: list[int] | None = None):
    self.algo = algo
    self.sums = list(sums or [])
    self._open = None            # xxh3 state of the last chunk while it is partial

  def copy(self) -> "ChunkSums":
    out = ChunkSums(self.algo, self.sums)
    out._open = None if self._open is None else self._open.copy()
    return out

  def resume(self, rows: np.ndarray) -> None:
    """Seed the open chunk's state from its committed rows (xxh3; CRC-32 needs none)."""
    if self.algo == "xxh3_64":
      self._open = xxhash.xxh3_64(_bytes(rows))

  def extend(self, start: int, rows: np.ndarray, chunk_rows: int) -> None:
    """Append rows that begin at row `start` of the array."""
    pos, off = start, 0
    while off < len(rows):
      c, within = divmod(pos, chunk_rows)
      take = min(chunk_rows - within, len(rows) - off)
      piece = _bytes(rows[off:off + take])
      if self.algo == "crc32":
        if within == 0:
          self.sums.append(zlib.crc32(piece))
        else:
          self.sums[c] = zlib.crc32(piece, self.sums[c])
      else:
        if within == 0:
          self._open = xxhash.xxh3_64()
          self.sums.append(0)
        elif self._open is None:
          raise RuntimeError("ChunkSums.extend: a partial xxh3 chunk continued without "
                             "resume()")
        self._open.update(piece)
        self.sums[c] = self._open.intdigest()
      pos, off = pos + take, off + take
