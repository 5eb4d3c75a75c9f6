"""Sphinx configuration of the ortho_optax documentation.

Build (warnings are errors, as in CI's ``tests/test_docs.py``)::

  python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import os
import sys

# The checkout's package, not an installed copy elsewhere.
sys.path.insert(0, os.path.abspath(".."))

import ortho_optax  # noqa: E402

project = "ortho_optax"
author = "ortho_optax authors"
copyright = "2026, ortho_optax authors"  # noqa: A001
release = ortho_optax.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Docstrings are Google style with RST inside (formulas in ``.. math::``).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
# Pages document the public names (``ortho_optax.muon``), not the private
# modules that define them.
add_module_names = False

# The benchmark tables are Markdown files written by the benchmark scripts;
# their own headings start at whatever level the script chose, so an
# included table may skip a heading level under the page's sections.
suppress_warnings = ["myst.header"]

html_theme = "alabaster"
html_title = f"ortho_optax {release}"
html_theme_options = {
    "description": "Muon-style optimizers for JAX and Optax",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "240px",
}
html_static_path = []
