"""What every launch script shares: quiet library logs, and user errors without tracebacks."""
import contextlib
import logging as pylogging
import os

from absl import app, logging

from musicsae_jax import store

_NOISY_PATHS = ("/orbax/",)                          # logs every save/restore step at INFO
_NOISY_MESSAGES = ("Unable to initialize backend",)  # JAX probing for a TPU on CPU/GPU hosts


class _QuietLibraries(pylogging.Filter):

  def filter(self, record):
    if record.levelno >= pylogging.WARNING:
      return True
    if any(p in record.pathname for p in _NOISY_PATHS):
      return False
    return not any(m in str(record.msg) for m in _NOISY_MESSAGES)


def quiet_library_logs() -> None:
  logging.get_absl_handler().addFilter(_QuietLibraries())


@contextlib.contextmanager
def user_errors(*extra: type[BaseException]):
  """Bad input (config, files, store) ends the script with its message, not a traceback.

  Our errors name the file/flag and what was expected; the traceback would only bury
  that. Set MUSICSAE_TRACEBACK=1 to see it anyway.
  """
  try:
    yield
  except (store.StoreError, ValueError, FileNotFoundError, *extra) as e:
    if os.environ.get("MUSICSAE_TRACEBACK"):
      raise
    raise app.UsageError(f"{type(e).__name__}: {e}") from e
