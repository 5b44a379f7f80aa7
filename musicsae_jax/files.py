"""Atomic writes for every file another run reads (config.json, manifests, metrics, results).

A file is written to `<path>.tmp-<pid>`, flushed to disk, then renamed over `path`
(`os.replace`), so a reader, or the next run after a crash or a full disk, sees the old
file or the new one, never a half-written or empty one. A failed write removes its
temporary file, leaves `path` as it was and raises `WriteError`, one line naming the file:
free the space and rerun the same command.

Standard library only: the store (numpy + tensorstore), the bridge (torch) and the JAX side
all write through it.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator


class WriteError(OSError):
  """Writing a file failed (disk full, read-only, permissions); the message names it."""

  def __init__(self, path: str, err: OSError):
    super().__init__(err.errno, err.strerror or str(err), path)
    self.message = (f"{path}: cannot write ({err.strerror or err}); the previous version, if "
                    f"any, is untouched: free space (or fix permissions) and rerun the same "
                    f"command")

  def __str__(self) -> str:
    return self.message


def _fsync_dir(path: str) -> None:
  try:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass                         # some filesystems cannot sync a directory; the rename stands
  finally:
    os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yield a temporary path to write `path`'s new contents into (by any library: json,
  safetensors, matplotlib); on success it replaces `path`, on failure it is removed and
  the error becomes a WriteError naming `path`."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    yield tmp
    fd = os.open(tmp, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
    os.replace(tmp, path)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    if isinstance(e, WriteError):
      raise
    raise WriteError(path, e) from e
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
  _fsync_dir(path)


def write_text(path: str, text: str | bytes) -> None:
  """Replace `path` with `text` atomically."""
  with atomic_path(path) as tmp:
    with open(tmp, "wb" if isinstance(text, bytes) else "w") as f:
      f.write(text)


def write_json(path: str, obj: Any, **dump_kw) -> None:
  """Replace `path` with `obj` as JSON atomically (indent=2 unless given). The text is
  made first, so an object that cannot be serialised leaves no file behind."""
  dump_kw.setdefault("indent", 2)
  write_text(path, json.dumps(obj, **dump_kw))


def save_figure(fig, path: str, **savefig_kw) -> None:
  """`fig.savefig(path)` atomically (a matplotlib figure; the format from the suffix)."""
  fmt = os.path.splitext(path)[1].lstrip(".") or "png"
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format=fmt, **savefig_kw)


def append_line(path: str, line: str) -> None:
  """Append one line (a metrics row). A failure raises WriteError naming the file; a line
  cut short by a full disk or a kill is dropped by the reader that resumes the run."""
  try:
    with open(path, "a") as f:
      f.write(line if line.endswith("\n") else line + "\n")
  except OSError as e:
    raise WriteError(path, e) from e
