"""The report's clips inside report.html: every player's audio as a data URI (Ogg Vorbis,
about a tenth of the WAV), so the page still plays when it is copied or mailed alone.
Past `BUDGET_MB` of embedded audio the remaining players stay linked to `audio/` beside
the page (a real MusicGen report can hold hundreds of 10 s clips); each embedded player
keeps its file's name in `data-file`."""
from __future__ import annotations

import base64
import html
import io
import os
import re

BUDGET_MB = 24.0
_PLAYER = re.compile(r'<audio(?P<attrs>[^>]*?)\ssrc=(?P<q>["\'])(?P<src>(?!data:)[^"\']+)(?P=q)')
_EMBEDDED = re.compile(r'src=["\']data:audio/[^"\']*')


def data_uri(path: str) -> str:
  """`path` (any format libsndfile reads) as an Ogg Vorbis data URI."""
  import soundfile as sf
  audio, rate = sf.read(path, dtype="float32", always_2d=True)
  buf = io.BytesIO()
  sf.write(buf, audio, rate, format="OGG", subtype="VORBIS")
  return "data:audio/ogg;base64," + base64.b64encode(buf.getvalue()).decode()


def embed(page: str, report_dir: str, budget_mb: float = BUDGET_MB) -> str:
  """`page` with linked clips (paths relative to `report_dir`) replaced by data URIs, in
  page order, while the embedded audio stays within `budget_mb`; missing files stay links."""
  budget = budget_mb * 2 ** 20
  used = sum(len(m) for m in _EMBEDDED.findall(page))
  cache: dict[str, str] = {}

  def swap(m):
    nonlocal used
    src = html.unescape(m.group("src"))
    path = os.path.join(report_dir, src)
    if not os.path.isfile(path):
      return m.group(0)
    uri = cache.get(src) or cache.setdefault(src, data_uri(path))
    if used + len(uri) > budget:
      return m.group(0)
    used += len(uri)
    return f'<audio{m.group("attrs")} data-file="{html.escape(src)}" src="{uri}"'

  return _PLAYER.sub(swap, page)
