"""The documentation: it builds without a warning, documents every public
name, and every example in it (pages and docstrings) runs."""

import doctest
import pathlib
import re
import subprocess
import sys
import zlib

import pytest

import ortho_optax

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.rst")) + sorted(DOCS.glob("*.md"))
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.fixture(scope="module")
def html(tmp_path_factory):
  """Builds the HTML documentation as CI and the README do."""
  out = tmp_path_factory.mktemp("html")
  proc = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b",
       "html", str(DOCS), str(out)],
      cwd=REPO, capture_output=True, text=True, check=False,
  )
  return proc, out


def test_build_has_no_warnings(html):
  proc, _ = html
  assert proc.returncode == 0, (
      f"sphinx-build -W failed:\n{proc.stderr}\n{proc.stdout}"
  )


def _inventory(path: pathlib.Path) -> dict[str, str]:
  """``{name: domain:role}`` of a Sphinx ``objects.inv`` (format 2)."""
  lines = path.read_bytes().split(b"\n", 4)
  assert lines[0] == b"# Sphinx inventory version 2", lines[0]
  entries = {}
  for line in zlib.decompress(lines[4]).decode().splitlines():
    m = re.match(r"(.+?)\s+(\S+)\s+(-?\d+)\s+(\S*)\s+(.*)", line)
    if m:
      entries[m.group(1)] = m.group(2)
  return entries


def test_every_public_name_is_documented(html):
  proc, out = html
  assert proc.returncode == 0, proc.stderr
  inventory = _inventory(out / "objects.inv")
  missing = [
      name
      for name in ortho_optax.__all__
      if not inventory.get(f"ortho_optax.{name}", "").startswith("py:")
  ]
  assert not missing, f"not documented on any page: {missing}"
  # The pages name the public API, never a private module path, which moves
  # when the package is reorganized (autodoc still records each class's
  # defining path as an alias, for cross-references).
  private = [p.name for p in PAGES if "ortho_optax._" in p.read_text()]
  assert not private, f"pages naming private modules: {private}"


@pytest.mark.parametrize(
    "page", [p for p in PAGES if ">>>" in p.read_text()],
    ids=lambda p: p.name,
)
def test_page_examples_run(page):
  """Each page's ``>>>`` examples, as written (doctest prints failures)."""
  result = doctest.testfile(
      str(page), module_relative=False, optionflags=FLAGS, verbose=False
  )
  assert result.attempted > 0
  assert result.failed == 0, f"{result.failed} example(s) of {page.name} failed"


def test_guides_have_examples():
  for name in ("getting_started.rst", "migrating.rst", "pod.rst"):
    assert ">>>" in (DOCS / name).read_text(), name


def _docstring_tests():
  finder = doctest.DocTestFinder(exclude_empty=True)
  tests = []
  for name in ortho_optax.__all__:
    obj = getattr(ortho_optax, name)
    if ">>>" not in (getattr(obj, "__doc__", None) or ""):
      continue
    tests += finder.find(obj, f"ortho_optax.{name}", module=False, globs={})
  return tests


@pytest.mark.parametrize("test", _docstring_tests(), ids=lambda t: t.name)
def test_docstring_examples_run(test):
  runner = doctest.DocTestRunner(optionflags=FLAGS, verbose=False)
  runner.run(test)
  result = runner.summarize(verbose=False)
  assert result.attempted > 0
  assert result.failed == 0, f"{result.failed} example(s) of {test.name} failed"
