"""Progress for long stages (tqdm), with an ETA that leaves out warm-up, and phase lines.

    with progress.phase("loading facebook/musicgen-small"):     # "... done in 41.2 s"
      model = load()
    bar = progress.Progress(total=n, desc="extract", unit="batch", warmup=1)
    for ...:
      bar.update(1, frames_per_s=f"{r:.0f}")
    bar.close()

The first `warmup` items (compilation, cold caches, CUDA kernels) are counted but not
timed: the rate and ETA start once they are done, so the first ETA is not inflated by
them. On a terminal this is a live tqdm bar; into a log file it is one plain line (the
same tqdm meter) at most every `log_every` seconds and at the end. No JAX, no torch: the
bridge uses it too.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Callable

from tqdm.auto import tqdm

_BAR = ("{desc}: {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} {unit} "
        "[{elapsed} elapsed, ETA {remaining}, {rate_fmt}{postfix}]")
_LINE = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed} elapsed, ETA {remaining}, {rate_fmt}{postfix}]"


def _default_log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


class Progress:
  """A progress display over `total` items; `write` prints a line above it."""

  def __init__(self, total: int, desc: str, unit: str = "it", warmup: int = 1,
               initial: int = 0, disable: bool = False, interactive: bool | None = None,
               log_every: float = 15.0):
    self.total, self.desc, self.unit = int(total), desc, unit
    self.n = int(initial)
    self.warmup_until = self.n + max(int(warmup), 0)
    self.silent = disable                                  # no bar and no lines at all
    self.disable = disable or self.total - self.n <= 1     # no bar: nothing worth one
    self.interactive = sys.stderr.isatty() if interactive is None else interactive
    self.log_every = float(log_every)
    self._postfix: dict = {}
    self._bar = None
    self._t0 = time.time() if self.n >= self.warmup_until else None   # timing starts here
    self._n0, self._last_line = self.n, 0.0
    if not self.disable and self.interactive:
      self._open()

  # --- interactive: a live tqdm bar, reopened when warm-up ends --------------------------
  def _open(self):
    if self._bar is not None:
      self._bar.close()
    warming = self._t0 is None
    fmt = ("{desc}: {n_fmt}/{total_fmt} {unit} (warming up, not timed){postfix}"
           if warming else _BAR)
    self._bar = tqdm(total=self.total, initial=self.n, desc=self.desc, unit=self.unit,
                     smoothing=0, bar_format=fmt, file=sys.stderr, mininterval=0.5,
                     dynamic_ncols=True, leave=not warming)
    if self._postfix:
      self._bar.set_postfix(self._postfix, refresh=False)

  # --- log files: the same meter as one line ---------------------------------------------
  def line(self) -> str:
    """The current meter as text (rate and ETA from the items after warm-up)."""
    warming = self._t0 is None
    elapsed = 0.0 if warming else time.time() - self._t0
    postfix = ", ".join(f"{k}={v}" for k, v in self._postfix.items())
    return tqdm.format_meter(self.n, self.total, elapsed, prefix=self.desc, unit=self.unit,
                             initial=self._n0, postfix=postfix or None,
                             bar_format=_LINE if not warming else
                             "{desc}: {n_fmt}/{total_fmt} {unit} (warming up, not timed)")

  def update(self, n: int = 1, **postfix) -> None:
    if postfix:
      self._postfix.update({k: str(v) for k, v in postfix.items()})
    before, self.n = self.n, self.n + int(n)
    if self._t0 is None and self.n >= self.warmup_until:   # warm-up just ended: time from here
      self._t0, self._n0 = time.time(), self.n
      self._last_line = self._t0                           # first line after log_every
    if self.disable:
      return
    if self.interactive:
      if self._bar.bar_format != _BAR and self._t0 is not None:
        self._open()
      else:
        if postfix:
          self._bar.set_postfix(self._postfix, refresh=False)
        self._bar.update(self.n - before)
      return
    now = time.time()
    if self.n >= self.total or (self._t0 is not None and now - self._last_line >= self.log_every):
      self._last_line = now
      print(self.line(), file=sys.stderr, flush=True)

  def write(self, line: str) -> None:
    """A log line that does not tear the bar (nothing when silent)."""
    if self.silent:
      return
    if self._bar is not None:
      self._bar.write(line, file=sys.stderr)
    else:
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


@contextlib.contextmanager
def heartbeat(what: str, log: Callable[[str], None] | None = None, every: float = 15.0):
  """A line every `every` seconds while a step with no progress of its own runs (an SAE
  probe over thousands of latents, a CLAP pass in another process); silent when the step
  ends sooner, so quick steps add no lines."""
  log = log or _default_log
  t0, stop = time.time(), threading.Event()

  def beat():
    while not stop.wait(every):
      log(f"{what}: still running, {time.time() - t0:.0f} s")

  thread = threading.Thread(target=beat, daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()
