"""Per-chunk checksums of committed rows: CRC-32, computed with ISA-L.

A commit record names its algorithm in "checksum_algorithm"; records written before that
field existed hold the same CRC-32 (zlib's polynomial and values) and read as "crc32".
ISA-L's CRC-32 (the `isal` package, carry-less multiply instructions) gives zlib's values
at about five times zlib's speed, so a reader can check every chunk at every read for a
few per cent of the read time (bench/loader.py), on stores written before as well.
"""
from __future__ import annotations

import numpy as np
from isal import isal_zlib

DEFAULT = "crc32"
ALGORITHMS = (DEFAULT,)
DESCRIPTION = "crc32 per chunk_rows rows (little-endian bytes)"


class UnknownAlgorithmError(ValueError):
  """A commit record names a checksum this version cannot compute."""


def algorithm_of(record: dict) -> str:
  """The algorithm of a commit record's checksums ("crc32" when it names none)."""
  algo = record.get("checksum_algorithm", DEFAULT)
  if algo not in ALGORITHMS:
    raise UnknownAlgorithmError(f"checksum_algorithm {algo!r}; this version knows {ALGORITHMS} "
                                f"(written by a newer musicsae-jax? upgrade to read it)")
  return algo


def crc32(rows: np.ndarray, value: int = 0) -> int:
  """CRC-32 (zlib's) of rows' little-endian bytes, continuing from `value`."""
  return isal_zlib.crc32(np.ascontiguousarray(rows).reshape(-1).view(np.uint8), value)


def extend(sums: list[int], start: int, rows: np.ndarray, chunk_rows: int) -> None:
  """Extend per-chunk CRC-32s with rows that begin at row `start` of the array.

  sums[c] covers the committed rows of chunk c; CRC-32 continues from its value, so a
  partial last chunk is extended without reading it back.
  """
  pos, off = start, 0
  while off < len(rows):
    c, within = divmod(pos, chunk_rows)
    take = min(chunk_rows - within, len(rows) - off)
    piece = rows[off:off + take]
    if within == 0:
      sums.append(crc32(piece))
    else:
      sums[c] = crc32(piece, sums[c])
    pos, off = pos + take, off + take
