"""Tools: not gradient transformations (checkpoint and parameter edits)."""
