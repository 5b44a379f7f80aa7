"""Headless Chromium (Debian's `chromium`) as a test instrument: open a page from disk and
report what its <audio> elements say once their metadata loads (a duration, or an error).

The page is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`, fds 3
and 4, JSON messages ended by NUL) and polled in real time. `--dump-dom` with a virtual-time
budget is not used: virtual time does not wait for the media pipeline, so on a slow or
busy machine the DOM was dumped before any <audio> had reported."""
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

CHROMIUM = shutil.which("chromium")
INSTALL = "headless Chromium not found: apt-get install chromium"
# Set by .ci/run: there a missing browser fails the browser tests instead of skipping them.
REQUIRED = os.environ.get("MUSICSAE_REQUIRE_CHROMIUM") == "1"


def require():
  """Skip the calling test with one line when Chromium is absent; fail instead where
  MUSICSAE_REQUIRE_CHROMIUM=1 (CI), so a green CI always means the pages opened."""
  import pytest
  if CHROMIUM is None:
    if REQUIRED:
      pytest.fail(INSTALL + " (MUSICSAE_REQUIRE_CHROMIUM=1: CI must open the pages)")
    pytest.skip(INSTALL)

# Resolves to a JSON list once every <audio> has loaded its metadata or failed.
_PROBE = """new Promise(resolve => {
  const start = () => {
    const as = Array.from(document.querySelectorAll('audio')), out = [];
    let left = as.length;
    if (!left) return resolve('[]');
    as.forEach((a, i) => {
      const end = v => { if (out[i] === undefined) { out[i] = v; if (--left === 0) resolve(JSON.stringify(out)); } };
      a.addEventListener('loadedmetadata', () => end(a.duration));
      a.addEventListener('error', () => end('error ' + (a.error && a.error.code)));
      a.preload = 'metadata'; a.load();
    });
  };
  if (document.readyState === 'complete') start(); else window.addEventListener('load', start);
})"""


class _DevTools:
  """A minimal DevTools-protocol client on Chromium's debugging pipe."""

  def __init__(self, to_browser, from_browser):
    self._w, self._r, self._next, self._buf = to_browser, from_browser, 0, b""

  def call(self, method, deadline, session=None, **params):
    self._next += 1
    msg = {"id": self._next, "method": method, "params": params}
    if session:
      msg["sessionId"] = session
    os.write(self._w, json.dumps(msg).encode() + b"\0")
    while True:
      while b"\0" not in self._buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self._r], [], [], left)[0]:
          raise TimeoutError(f"Chromium did not answer {method} in time")
        chunk = os.read(self._r, 1 << 16)
        if not chunk:
          raise RuntimeError(f"Chromium closed its debugging pipe during {method}")
        self._buf += chunk
      raw, self._buf = self._buf.split(b"\0", 1)
      reply = json.loads(raw)
      if reply.get("id") == self._next:
        if "error" in reply:
          raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]


def audio_durations(html_path: str, timeout: int = 120) -> list:
  """Durations (s) or 'error N' per <audio> of the page at `html_path`, as Chromium loads
  them from disk (relative paths resolve as they do for a reader who opens the file)."""
  return _evaluate(html_path, _PROBE, timeout, "the page's audio did not report in Chromium")


def evaluate(html_path: str, expression: str, timeout: int = 120):
  """The JSON value of a JavaScript `expression` (a promise is awaited) evaluated in the page
  at `html_path` once it has loaded from disk; the expression returns JSON.stringify(...)."""
  return _evaluate(html_path, expression, timeout, "the page's script failed in Chromium")


def _evaluate(html_path: str, expression: str, timeout: int, what: str):
  deadline = time.monotonic() + timeout
  to_r, to_w = os.pipe()      # we write, Chromium reads on fd 3
  from_r, from_w = os.pipe()  # Chromium writes on fd 4, we read
  profile = tempfile.mkdtemp(prefix="chromium-profile-")
  cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--window-size=1000,800",
         "--mute-audio", "--no-first-run", f"--user-data-dir={profile}",
         "--remote-debugging-pipe", "about:blank"]

  def wire():  # in the child: the pipe ends onto fds 3 and 4, via high fds so none clobbers
    high_r, high_w = fcntl.fcntl(to_r, fcntl.F_DUPFD, 100), fcntl.fcntl(from_w, fcntl.F_DUPFD, 100)
    os.dup2(high_r, 3)
    os.dup2(high_w, 4)

  log = tempfile.TemporaryFile()
  proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                          pass_fds=(3, 4), preexec_fn=wire)
  os.close(to_r)
  os.close(from_w)
  try:
    tools = _DevTools(to_w, from_r)
    target = tools.call("Target.createTarget", deadline,
                        url="file://" + os.path.abspath(html_path))["targetId"]
    session = tools.call("Target.attachToTarget", deadline, targetId=target,
                         flatten=True)["sessionId"]
    while True:  # until the page (not about:blank) is the one evaluated
      res = tools.call("Runtime.evaluate", deadline, session=session,
                       expression="location.protocol + document.readyState", returnByValue=True)
      if res["result"].get("value") == "file:complete":
        break
      if time.monotonic() > deadline:
        raise TimeoutError(f"{html_path} did not finish loading in Chromium")
      time.sleep(0.1)
    res = tools.call("Runtime.evaluate", deadline, session=session, expression=expression,
                     awaitPromise=True, returnByValue=True)
    if "exceptionDetails" in res:
      raise RuntimeError(f"the page's script failed: {res['exceptionDetails']}")
    return json.loads(res["result"]["value"])
  except (TimeoutError, RuntimeError) as e:
    log.seek(0)
    tail = log.read().decode(errors="replace")[-1500:]
    raise AssertionError(f"{what}: {e}\n{tail}") from None
  finally:
    proc.kill()
    proc.wait()
    os.close(to_w)
    os.close(from_r)
    log.close()
    shutil.rmtree(profile, ignore_errors=True)
