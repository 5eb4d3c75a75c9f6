"""README.md's "What is in the box" table names every public name."""

import pathlib
import re

import ortho_optax

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def box_table() -> str:
  """The rows of the table under the "What is in the box" heading."""
  text = README.read_text()
  start = text.index("## What is in the box")
  rows = []
  for line in text[start:].splitlines()[1:]:
    if line.startswith("|"):
      rows.append(line)
    elif rows:  # The first line after the table ends it.
      break
  return "\n".join(rows)


def test_box_table_names_every_public_name():
  named = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", box_table()))
  missing = sorted(set(ortho_optax.__all__) - named)
  assert not missing, (
      "README.md's 'What is in the box' table does not name these public"
      f" names of ortho_optax.__all__ (add each, in backticks, to its"
      f" layer's row): {', '.join(missing)}"
  )
