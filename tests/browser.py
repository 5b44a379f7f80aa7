"""Headless Chromium (Debian's `chromium`) as a test instrument: open a page from disk and
report what its <audio> elements say once their metadata loads (a duration, or an error)."""
import json
import re
import shutil
import subprocess

CHROMIUM = shutil.which("chromium")
INSTALL = "headless Chromium not found: apt-get install chromium"

_PROBE = """<script>
window.addEventListener('load', () => {
  const as = Array.from(document.querySelectorAll('audio')), out = [];
  let left = as.length;
  const done = () => { const p = document.createElement('pre'); p.id = 'audio-probe';
    p.textContent = JSON.stringify(out); document.body.appendChild(p); };
  if (!left) done();
  as.forEach((a, i) => {
    const end = v => { out[i] = v; if (--left === 0) done(); };
    a.addEventListener('loadedmetadata', () => end(a.duration));
    a.addEventListener('error', () => end('error ' + (a.error && a.error.code)));
    a.preload = 'metadata'; a.load();
  });
});
</script>"""


def audio_durations(html_path: str, timeout: int = 120) -> list:
  """Durations (s) or 'error N' per <audio> of the page, as Chromium loads them.

  The probe goes into a sibling copy of the page, so relative paths resolve as they do
  for a reader who opens the original."""
  probe_path = html_path[:-len(".html")] + ".probe.html"
  with open(html_path) as f:
    page = f.read()
  with open(probe_path, "w") as f:
    f.write(page.replace("</body>", _PROBE + "</body>") if "</body>" in page else page + _PROBE)
  r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                      "--virtual-time-budget=20000", "--dump-dom", f"file://{probe_path}"],
                     capture_output=True, text=True, timeout=timeout)
  m = re.search(r'<pre id="audio-probe">([^<]*)</pre>', r.stdout)
  assert m, f"the page did not finish loading its audio: {r.stderr[-1000:]}"
  return json.loads(m.group(1))
