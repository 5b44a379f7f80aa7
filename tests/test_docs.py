"""The documentation: README stays a short front door, every relative link in the repo's
Markdown resolves (file and #anchor), and the mkdocs site builds with --strict."""
import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, p) for p in ("README.md", "WORKSPACE.md")] + sorted(
    glob.glob(os.path.join(ROOT, "docs", "*.md")))
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
  """The text outside fenced code blocks and inline code (links there are examples)."""
  text = re.sub(r"(?ms)^```.*?^```", "", text)
  return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
  """A heading's anchor as GitHub and mkdocs make it."""
  h = re.sub(r"[^\w\- ]", "", heading.strip().lower())
  return h.replace(" ", "-")


def anchors(path: str) -> set[str]:
  with open(path) as f:
    text = re.sub(r"(?ms)^```.*?^```", "", f.read())
  return {slug(h) for h in re.findall(r"(?m)^#{1,6} (.*)$", text)}


def links(path: str) -> list[str]:
  with open(path) as f:
    return [t for t in _LINK.findall(_prose(f.read()))
            if not t.startswith(("http://", "https://", "mailto:"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_resolves(page):
  bad = []
  for target in links(page):
    path, _, anchor = target.partition("#")
    dest = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
    if not os.path.exists(dest):
      bad.append(f"{target}: no such file")
    elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
      bad.append(f"{target}: no heading with that anchor in {os.path.relpath(dest, ROOT)}")
  assert not bad, f"{os.path.relpath(page, ROOT)}: " + "; ".join(bad)


def test_link_check_catches_a_broken_link(tmp_path):
  """The check above can fail: a missing file and a missing anchor are both found."""
  (tmp_path / "a.md").write_text("# A\n\n## Real heading\n")
  (tmp_path / "b.md").write_text("[x](a.md#real-heading) [y](a.md#nope) [z](gone.md) `[c](gone.md)`")
  assert links(str(tmp_path / "b.md")) == ["a.md#real-heading", "a.md#nope", "gone.md"]
  assert anchors(str(tmp_path / "a.md")) == {"a", "real-heading"}


def test_readme_is_a_short_front_door():
  text = open(os.path.join(ROOT, "README.md")).read()
  assert len(text.splitlines()) <= 120
  assert "make demo" in text and "make test" in text
  for page in ("docs/demo.md", "docs/training.md", "docs/analysis.md", "docs/steering.md"):
    assert f"]({page})" in text


def test_site_builds_strict(tmp_path):
  """mkdocs: every page in the nav, no broken anchors between pages, nothing left out (no
  -q: mkdocs counts warnings for --strict only at the levels it logs)."""
  r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                      "-f", os.path.join(ROOT, "mkdocs.yml"), "-d", str(tmp_path / "site")],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-3000:]
  assert (tmp_path / "site" / "index.html").exists()
  assert (tmp_path / "site" / "steering" / "index.html").exists()
  home = (tmp_path / "site" / "index.html").read_text()
  assert "A 10-minute tour" in home and 'href="training/"' in home
  assert "manifest" in (tmp_path / "site" / "workspace" / "index.html").read_text()


def test_root_pages_enter_the_site_with_their_links_rewritten():
  sys.path.insert(0, os.path.join(ROOT, "scripts"))
  try:
    import mkdocs_hooks
  finally:
    sys.path.pop(0)
  text = ("[a](docs/training.md#x) [b](WORKSPACE.md#store) [c](configs/tiny.py) [d](#tour) "
          "[e](https://example.org/p.md) ![f](docs/sweep.png)")
  assert mkdocs_hooks.as_seen_from_docs(text) == (
      "[a](training.md#x) [b](workspace.md#store) [c](../configs/tiny.py) [d](#tour) "
      "[e](https://example.org/p.md) ![f](sweep.png)")
  assert mkdocs_hooks.root_pages_in_docs("see [w](../WORKSPACE.md#runs)") == "see [w](workspace.md#runs)"
