"""The browser tests skip with one line on a user's machine without Chromium, and fail under
CI (MUSICSAE_REQUIRE_CHROMIUM=1), where a skip would hide that no page was opened."""
import subprocess
import sys
import textwrap

import pytest

from tests import browser


def test_require_skips_for_users_and_fails_under_ci(monkeypatch):
  monkeypatch.setattr(browser, "CHROMIUM", None)
  monkeypatch.setattr(browser, "REQUIRED", False)
  with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
    browser.require()
  monkeypatch.setattr(browser, "REQUIRED", True)
  with pytest.raises(pytest.fail.Exception, match="MUSICSAE_REQUIRE_CHROMIUM=1"):
    browser.require()
  monkeypatch.setattr(browser, "CHROMIUM", "/usr/bin/chromium")
  browser.require()                       # present: no skip, no failure


def test_the_run_ends_with_skips_counted_by_reason(tmp_path):
  """A pytest run with this conftest closes with 'skipped: N, by reason:' and each reason."""
  (tmp_path / "conftest.py").write_text(open("tests/conftest.py").read())
  (tmp_path / "test_x.py").write_text(textwrap.dedent("""
      import pytest
      def test_a(): pytest.skip("no widget")
      def test_b(): pytest.skip("no widget")
      @pytest.mark.skip(reason="not here")
      def test_c(): pass
      def test_d(): pass
  """))
  out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                       capture_output=True, text=True, cwd=tmp_path).stdout
  assert "skipped: 3, by reason:" in out, out
  assert "2 x no widget" in out and "1 x not here" in out, out
