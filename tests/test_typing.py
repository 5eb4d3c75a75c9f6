"""The library's type hints hold: mypy finds no error in ``ortho_optax/``.

Settings in ``pyproject.toml`` (``[tool.mypy]``); ``ortho_optax/py.typed``
tells users' type checkers to read the hints.
"""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_mypy_finds_no_error(tmp_path):
  # A fresh cache: about 8 CPU seconds, most of them reading jax's hints.
  proc = subprocess.run(
      [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path),
       "--no-error-summary", "ortho_optax"],
      cwd=REPO, capture_output=True, text=True, check=False,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_py_typed_marker_ships_in_the_package():
  assert (REPO / "ortho_optax" / "py.typed").is_file()
