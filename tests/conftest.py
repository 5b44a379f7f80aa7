"""Test set-up: 8 simulated CPU devices for every test, set before JAX starts; and a closing
count of skipped tests by reason, so a run says plainly what it did not check."""
import collections
import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def pytest_terminal_summary(terminalreporter):
  skipped = terminalreporter.stats.get("skipped", [])
  if not skipped:
    terminalreporter.write_line("skipped: none")
    return
  reasons = collections.Counter(
      str(r.longrepr[2]).removeprefix("Skipped: ") if isinstance(r.longrepr, tuple)
      else str(r.longrepr) for r in skipped)
  terminalreporter.write_line(f"skipped: {len(skipped)}, by reason:")
  for reason, n in reasons.most_common():
    terminalreporter.write_line(f"  {n} x {reason}")
