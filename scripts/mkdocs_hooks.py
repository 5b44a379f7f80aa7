"""mkdocs hook: README.md and WORKSPACE.md live at the repository root (where GitHub and a
clone show them) and are written once; the site takes them as its home page and its
workspace page, links rewritten as seen from docs/, so no copy can drift."""
import os
import re

from mkdocs.structure.files import File

_LINK = re.compile(r"(!?\[[^\]]*\])\(([^)\s]+)\)")
ROOT_PAGES = {"README.md": "index.md", "WORKSPACE.md": "workspace.md"}


def as_seen_from_docs(text: str) -> str:
  """A root page's links from docs/: `docs/x.md` -> `x.md`, a root page -> its site page,
  any other relative path -> `../path`; URLs and same-page anchors kept."""
  def rewrite(m):
    label, target = m.group(1), m.group(2)
    if target.startswith(("http://", "https://", "mailto:", "#")):
      return m.group(0)
    path, sep, anchor = target.partition("#")
    if path in ROOT_PAGES:
      return f"{label}({ROOT_PAGES[path]}{sep}{anchor})"
    if path.startswith("docs/"):
      return f"{label}({target[len('docs/'):]})"
    return f"{label}(../{target})"
  return _LINK.sub(rewrite, text)


def root_pages_in_docs(text: str) -> str:
  """In a docs/ page, `../WORKSPACE.md` (right on GitHub) -> the site's own page."""
  for root, page in ROOT_PAGES.items():
    text = text.replace(f"](../{root}", f"]({page}")
  return text


def on_files(files, config):
  root = os.path.dirname(config["config_file_path"])
  for name, page in ROOT_PAGES.items():
    with open(os.path.join(root, name)) as f:
      files.append(File.generated(config, page, content=as_seen_from_docs(f.read())))
  return files


def on_page_markdown(markdown, page, config, files):
  return root_pages_in_docs(markdown)
