"""What every launch script shares: the config flag, quiet logs, and one-line user errors.

    _CONFIG = common.define_config()
    ...
    if __name__ == "__main__":
      common.run(main)

`run` parses flags (a relative `--config=configs/…` also resolves against the repository,
so it works from any directory), silences library chatter, and ends bad input with one
line on stderr naming the flag or file and what was expected: no module docstring, no
flag list, no traceback, no library's log of the same failure. `--verbose` (or
MUSICSAE_TRACEBACK=1) brings the traceback and the libraries' error logs back.
"""
import difflib
import errno
import logging as pylogging
import os
import shlex
import subprocess
import sys
import time
import warnings

from absl import app, flags, logging
from ml_collections import config_flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:       # config files import `configs.base` from any cwd
  sys.path.append(REPO_ROOT)

_NOISY_PATHS = ("/orbax/",)                          # logs every save/restore step at INFO
_NOISY_MESSAGES = ("Unable to initialize backend",)  # JAX probing for a TPU on CPU/GPU hosts
_QUIET_LOGGERS = ("audiocraft", "matplotlib", "numba", "urllib3", "httpx", "huggingface_hub",
                  "filelock", "fsspec", "PIL")
_QUIET_WARNINGS = (
    ("Trying to estimate tuning", UserWarning),      # librosa.estimate_tuning on noise
    ("n_fft=.* is too large for input signal", UserWarning),
    ("Empty filters detected in mel frequency basis", UserWarning),
)


class UserError(Exception):
  """Bad input: the message names the flag or file and what was expected."""


_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Show what libraries log about a failure (e.g. each background thread "
    "of a failed checkpoint save, with its traceback) and the failure's own traceback; "
    "without it a failure is one line (MUSICSAE_TRACEBACK=1 does the same).")


def traceback_requested() -> bool:
  if os.environ.get("MUSICSAE_TRACEBACK", "") not in ("", "0"):
    return True
  return flags.FLAGS.is_parsed() and bool(_VERBOSE.value)


def define_config(help_text: str = "Experiment config file (configs/*.py)."):
  """The `--config` flag: every field of the file (which starts from configs/base.py)
  can be overridden, `--config.train.grad_clip=0.5`."""
  return config_flags.DEFINE_config_file("config", None, help_text, lock_config=True)


def resolve_config_path(path: str) -> str:
  """`path` as given when it exists; else relative to the repository (configs/…)."""
  file = path.split(":", 1)[0]
  if not file or os.path.isabs(file) or os.path.exists(file):
    return path
  alt = os.path.join(REPO_ROOT, file)
  return alt + path[len(file):] if os.path.exists(alt) else path


class _QuietLibraries(pylogging.Filter):

  def filter(self, record):
    if record.levelno >= pylogging.ERROR and any(p in record.pathname for p in _NOISY_PATHS):
      # Orbax logs a failed background save from each of its threads, traceback and all;
      # the trainer reports it once (CheckpointSaveError). --verbose shows them.
      return traceback_requested()
    if record.levelno >= pylogging.WARNING:
      return True
    if any(p in record.pathname for p in _NOISY_PATHS):
      return False
    return not any(m in str(record.msg) for m in _NOISY_MESSAGES)


def quiet_library_logs() -> None:
  """Results, progress and warnings that matter: drop library INFO chatter and the
  warnings librosa raises on short or silent clips; short absl lines (no thread ids)."""
  handler = logging.get_absl_handler()
  handler.addFilter(_QuietLibraries())
  handler.setFormatter(pylogging.Formatter("%(levelname).1s %(asctime)s %(message)s",
                                           "%H:%M:%S"))
  for name in _QUIET_LOGGERS:
    pylogging.getLogger(name).setLevel(pylogging.WARNING)
  for message, category in _QUIET_WARNINGS:
    warnings.filterwarnings("ignore", message=message, category=category)
  sys.excepthook = _quiet_excepthook(sys.excepthook)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _quiet_excepthook(hook):
  """Drop the 'Event loop is closed' trace that a native callback of an aborted async save
  prints after the save's own error (unless --verbose); everything else as before."""

  def excepthook(kind, value, tb):
    if (kind is RuntimeError and str(value) == "Event loop is closed"
        and not traceback_requested()):
      return
    hook(kind, value, tb)

  return excepthook


def _fail(message: str, code: int = 2):
  prog = os.path.basename(sys.argv[0]).removesuffix(".py")
  print(f"{prog}: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _config_arg(argv: list[str]) -> tuple[int, str] | tuple[None, None]:
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return i, a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):         # `--config FILE`: make it one token
      argv[i:i + 2] = ["--config=" + argv[i + 1]]
      return i, argv[i].split("=", 1)[1]
  return None, None


def _bad_override(argv: list[str], path: str | None) -> str | None:
  """The first `--config.a.b=v` whose path the config file lacks, explained."""
  if not path:
    return None
  try:
    import importlib.util
    spec = importlib.util.spec_from_file_location("_config_file", path.split(":", 1)[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config(*path.split(":", 1)[1:])
  except Exception:  # pylint: disable=broad-except  # the file itself is broken: say that
    return None
  for a in argv:
    if not a.startswith("--config."):
      continue
    field = a[len("--config."):].split("=", 1)[0]
    node, seen = cfg, []
    for part in field.split("."):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if part not in keys:
        where = "config" + "".join("." + s for s in seen)
        near = difflib.get_close_matches(part, keys, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        return (f"--config.{field}: {where} has no field {part!r}{hint} "
                f"(all fields: python -m launch.config --config=…)")
      node, seen = node[part], seen + [part]
  return None


def _parse_flags(argv: list[str], known_only: bool = False) -> list[str]:
  argv = list(argv)
  i, path = _config_arg(argv)
  if i is not None:
    argv[i] = "--config=" + resolve_config_path(path)
    file = argv[i].split("=", 1)[1].split(":", 1)[0]
    if not os.path.isfile(file):
      _fail(f"--config={path}: no such file (looked in {os.getcwd()} and {REPO_ROOT})")
  try:
    return flags.FLAGS(argv, known_only=known_only)
  except flags.Error as e:
    if traceback_requested():
      raise
    _fail(f"{e}" + ("" if "--help" in str(e) else "  (--helpshort lists the flags)"))
  except (AttributeError, KeyError, TypeError, ValueError, ImportError) as e:
    if traceback_requested():
      raise
    bad = _bad_override(argv, argv[i].split("=", 1)[1] if i is not None else None)
    if bad:
      _fail(bad)
    first = str(e).strip().splitlines()
    last = [ln for ln in first if ln.strip()][-1] if first else type(e).__name__
    _fail((f"--config={path}: " if path else "") + f"{type(e).__name__}: {last.strip()}")


def user_message(e: BaseException) -> str:
  """One line: the exception's type (unless it says nothing) and its first lines."""
  text = " ".join(str(e).split("\n")[:2]).strip() or repr(e)
  if isinstance(e, (UserError, app.UsageError)):
    return text
  if isinstance(e, PermissionError) or (isinstance(e, OSError) and e.errno == errno.EROFS):
    return f"cannot write {e.filename or ''}: {e.strerror or text} (is --workdir writable?)"
  if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
    text = f"{e.filename}: {text}"
  return f"{type(e).__name__}: {text}"


def _user_error_types(extra=()):
  from musicsae_jax import store
  return (UserError, app.UsageError, store.StoreError, ValueError, OSError, *extra)


def _reader_left() -> None:
  """The reader of stdout went away (`launch.config --json | head`): stop quietly, as a
  Unix tool does, instead of a traceback when Python flushes stdout at exit."""
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, sys.stdout.fileno())
  sys.exit(0)


def guard(main, extra=()):
  """`main` with bad input (config, files, store, permissions) reported in one line."""

  def guarded(argv):
    quiet_library_logs()
    try:
      return main(argv)
    except BrokenPipeError:
      _reader_left()
    except _user_error_types(extra) as e:
      if traceback_requested():
        raise
      _fail(user_message(e))

  return guarded


def user_errors(*extra: type[BaseException]):
  """Kept for scripts that name extra error types: `with common.user_errors(X): ...`."""
  import contextlib

  @contextlib.contextmanager
  def ctx():
    try:
      yield
    except extra as e:
      if traceback_requested():
        raise
      raise UserError(user_message(e)) from e
  return ctx()


def run(main, *, known_only: bool = False, extra: tuple = ()) -> None:
  """`app.run(main)` with short flag errors, quiet logs and one-line user errors."""
  app.run(guard(main, extra), flags_parser=lambda argv: _parse_flags(argv, known_only))


# --- chains of stages (launch.demo, launch.organism) ----------------------------------------
def chain_args(argv: list[str], stages: list[str], allowed, config: str) -> tuple[list[str], str]:
  """The `--config.*` overrides a chain passes to every stage, and its config file's absolute
  path; other arguments, unknown stages and a missing config file are usage errors."""
  overrides = [a for a in argv[1:] if a.startswith("--config.")]
  extra = [a for a in argv[1:] if not a.startswith("--config.")]
  if extra:
    raise app.UsageError(f"unexpected arguments: {extra}")
  unknown = [s for s in stages if s not in allowed]
  if unknown:
    raise app.UsageError(f"--stages: unknown {unknown}; choose from {tuple(allowed)}")
  path = resolve_config_path(config)                 # configs/… works from any cwd
  if not os.path.exists(path.split(":", 1)[0]):
    raise app.UsageError(f"--config={config}: no such file (looked in {os.getcwd()} "
                         f"and {REPO_ROOT})")
  return overrides, os.path.abspath(path)


def run_chain(commands: list[tuple[str, list[str]]], *, skipped=lambda stage: None,
              on_failure: str = "") -> float:
  """Run (stage, command) pairs in order, each in a fresh process from the repository root
  (torch and JAX never share one), printing the command that reruns the stage alone. A
  stage for which `skipped(stage)` gives a reason is not run; a failing stage ends the
  chain with its exit status. Returns the chain's seconds."""
  t0 = time.time()
  for i, (stage, cmd) in enumerate(commands, 1):
    head = f"=== [{i}/{len(commands)}] {stage}"
    why = skipped(stage)
    if why:
      print(f"{head}: {why}")
      continue
    print(f"\n{head}: python {shlex.join(cmd[1:])}", flush=True)
    t = time.time()
    r = subprocess.run(cmd, cwd=REPO_ROOT)
    if r.returncode:
      print(f"=== {stage} failed (exit {r.returncode}){on_failure}", file=sys.stderr)
      sys.exit(r.returncode)
    print(f"=== {stage} done in {time.time() - t:.0f} s", flush=True)
  return time.time() - t0
