"""Quiet library chatter in launch scripts: keep our progress lines and everyone's warnings."""
import logging as pylogging

from absl import logging

_NOISY_PATHS = ("/orbax/",)                       # logs every save/restore step at INFO
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
