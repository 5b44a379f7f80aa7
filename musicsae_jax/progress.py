"""Progress for long stages (tqdm), with an ETA that leaves out warm-up, and phase lines.

    with progress.phase("loading facebook/musicgen-small"):     # "... done in 41.2 s"
      model = load()
    bar = progress.Progress(total=n, desc="extract", unit="batch", warmup=1)
    for ...:
      bar.update(1, frames_per_s=f"{r:.0f}")
    bar.close()

The first `warmup` items (compilation, cold caches, CUDA kernels) are counted but not
timed: the rate and ETA start once they are done, so the first ETA is not inflated by
them. numpy/tqdm only: the bridge uses it too.
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable

from tqdm.auto import tqdm


def _default_log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


class Progress:
  """One tqdm bar; `write` prints a line above it (metrics, evaluations)."""

  def __init__(self, total: int, desc: str, unit: str = "it", warmup: int = 1,
               initial: int = 0, disable: bool = False):
    self.total, self.desc, self.unit = int(total), desc, unit
    self.warmup_until = int(initial) + max(int(warmup), 0)
    self.n, self.disable = int(initial), disable
    self._postfix: dict = {}
    self._bar = None
    self._interactive = sys.stderr.isatty()
    self._open(self.n, warming=self.n < self.warmup_until)

  def _open(self, initial: int, warming: bool):
    if self._bar is not None:
      self._bar.close()
    fmt = ("{desc}: {n_fmt}/{total_fmt} {unit} (warming up, not timed){postfix}" if warming
           else "{desc}: {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} {unit} "
                "[{elapsed} elapsed, ETA {remaining}, {rate_fmt}{postfix}]")
    self._bar = tqdm(total=self.total, initial=initial, desc=self.desc, unit=self.unit,
                     smoothing=0, bar_format=fmt, disable=self.disable, file=sys.stderr,
                     mininterval=0.5 if self._interactive else 15.0, dynamic_ncols=True,
                     leave=not warming)
    if self._postfix:
      self._bar.set_postfix(self._postfix, refresh=False)

  def update(self, n: int = 1, **postfix) -> None:
    self.n += int(n)
    if postfix:
      self._postfix.update(postfix)
      self._bar.set_postfix(self._postfix, refresh=False)
    if self.n >= self.warmup_until and self._bar.n < self.warmup_until and \
       self.n - n < self.warmup_until:                 # warm-up just ended: time from here
      self._bar.n = self.n
      self._open(self.n, warming=False)
      return
    self._bar.update(int(n))

  def write(self, line: str) -> None:
    """A log line that does not tear the bar."""
    if self.disable:
      return
    if self._interactive:
      self._bar.write(line, file=sys.stderr)
    else:                                  # a log file: no bar redrawn after every line
      print(line, file=sys.stderr, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


@contextlib.contextmanager
def phase(what: str, log: Callable[[str], None] | None = None):
  """One line when a loading phase starts and one when it ends, with its duration."""
  log = log or _default_log
  log(f"{what} ...")
  t0 = time.time()
  yield
  log(f"{what}: done in {time.time() - t0:.1f} s")
