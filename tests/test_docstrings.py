"""Every docstring example runs: doctests of the package, the README's code.

``tests/test_docs.py`` runs the examples of the public objects' docstrings;
this runs every other docstring's of every module of ``ortho_optax``
(module, private function, class and method docstrings). A Python example
in a docstring must be written as a doctest (``>>>``), so that it runs. The
README's Python blocks run in order, in one namespace, as a reader would
paste them.
"""

import doctest
import functools
import importlib
import inspect
import pathlib
import pkgutil
import re

import ortho_optax

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _modules():
  yield ortho_optax
  for info in pkgutil.walk_packages(ortho_optax.__path__, "ortho_optax."):
    yield importlib.import_module(info.name)


def _docstrings() -> dict[str, str]:
  """``{qualified name: docstring}`` of every module and object."""
  docs = {}
  for module in _modules():
    finder = doctest.DocTestFinder(exclude_empty=False)
    for test in finder.find(module):
      docs[test.name] = test.docstring or ""
  # Public objects the finder does not reach (functools.partial variants).
  for name in ortho_optax.__all__:
    obj = getattr(ortho_optax, name)
    doc = getattr(obj, "__doc__", None)
    if isinstance(obj, functools.partial):
      obj = obj.func
    module = getattr(obj, "__module__", None) or ""
    if doc and module.startswith("ortho_optax") and (
        doc not in docs.values()
    ):
      docs[f"ortho_optax.{name}"] = doc
  return docs


DOCSTRINGS = _docstrings()
# What tests/test_docs.py::test_docstring_examples_run runs already.
PUBLIC_DOCS = {
    getattr(getattr(ortho_optax, name), "__doc__", None)
    for name in ortho_optax.__all__
}
_PARSER = doctest.DocTestParser()
EXAMPLES = {
    name: doc for name, doc in sorted(DOCSTRINGS.items())
    if _PARSER.get_examples(doc)
}


def test_docstrings_are_collected():
  """The collection reaches private modules' functions and partials."""
  for name in (
      "ortho_optax.optimizers.muon.muon",
      "ortho_optax.optimizers.scion.scion",
      "ortho_optax.optimizers.auon.hybrid_auon",
      "ortho_optax.routing",
  ):
    assert name in DOCSTRINGS, name
  for name in ("ortho_optax.optimizers.muon.muon",
               "ortho_optax.optimizers.scion.scion",
               "ortho_optax.tools.pome.pome"):
    assert name in EXAMPLES, name


def test_other_docstring_examples_run():
  """The examples that are not a public object's (module docstrings,
  internal helpers), each docstring in its own namespace."""
  failures = []
  for name, doc in EXAMPLES.items():
    if doc in PUBLIC_DOCS:
      continue
    test = _PARSER.get_doctest(doc, {}, name, None, 0)
    out = []
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    if runner.run(test, out=out.append, clear_globs=True).failed:
      failures.append("".join(out))
  assert not failures, "\n".join(failures)


def test_python_examples_are_doctests():
  """A ``code-block:: python`` in a docstring never runs: use ``>>>``."""
  blocks = [
      name for name, doc in DOCSTRINGS.items()
      if re.search(r"code-block::\s*python", doc)
  ]
  assert not blocks, f"write these examples as doctests: {blocks}"


def _readme_blocks() -> list[str]:
  return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_python_runs():
  blocks = _readme_blocks()
  assert blocks
  namespace = {"__name__": "readme"}
  for i, block in enumerate(blocks):
    try:
      exec(compile(block, f"README.md python block {i}", "exec"), namespace)  # noqa: S102
    except Exception as e:  # pylint: disable=broad-except
      raise AssertionError(f"README python block {i} failed:\n{block}") from e


def test_public_objects_have_docstrings():
  missing = [
      name for name in ortho_optax.__all__
      if not inspect.getdoc(getattr(ortho_optax, name))
  ]
  assert not missing
