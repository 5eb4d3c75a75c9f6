"""Builds ``corpus.txt`` from the docstrings of the CPython standard library.

Run once (it is already run and its output committed)::

  python examples/data/build_corpus.py

Every machine with Python has the standard library's sources, so the corpus
needs no download. The output depends on the Python version (the committed
file was built with CPython 3.11.7); the LM examples read the committed file,
so runs do not depend on the local Python.
"""

import ast
import pathlib
import sys
import sysconfig

# Test suites are mostly code and fixtures, not prose.
_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test"}
)
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def iter_docstrings(stdlib: pathlib.Path):
  """Yields the docstrings of all modules, classes and functions, in order."""
  files = sorted(
      p for p in stdlib.rglob("*.py")
      if not _SKIP_DIRS.intersection(p.relative_to(stdlib).parts)
  )
  for path in files:
    try:
      tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
      continue
    for node in ast.walk(tree):
      if isinstance(node, _DOC_NODES):
        doc = ast.get_docstring(node)
        if doc and doc.strip():
          yield doc.strip()


def main():
  stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
  out = pathlib.Path(__file__).with_name("corpus.txt")
  text = "\n\n".join(iter_docstrings(stdlib)) + "\n"
  out.write_text(text, encoding="utf-8")
  print(
      f"wrote {out} ({len(text.encode('utf-8')):,} bytes) from {stdlib} "
      f"(Python {sys.version.split()[0]})"
  )


if __name__ == "__main__":
  main()
