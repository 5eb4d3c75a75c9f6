"""One-line errors for the command lines of the example scripts.

A mistyped option, a value that does not parse, a configuration file that
does not load or a configuration that cannot run ends the script with one
line on stderr, ``<script>: error: <what>``, and exit status 2, not a
traceback: the traceback of a mistake on the command line points into absl
and ml_collections, not at the mistake. Passing ``--verbosity`` explicitly
keeps the traceback of a ``ConfigError`` (for a bug report).

This module imports only absl, so that a command-line mistake is reported
before JAX and Flax load.
"""

import ast
import contextlib
import pathlib
import sys

from absl import app
from absl import flags


class ConfigError(ValueError):
  """A configuration that cannot run; the message names the setting."""


def one_line(text) -> str:
  """``text`` with every run of whitespace (newlines too) as one space."""
  return " ".join(str(text).split())


def fail(message) -> None:
  """Prints ``<script>: error: <message>`` on one line; exits with 2."""
  script = pathlib.Path(sys.argv[0]).name if sys.argv else "example"
  print(f"{script}: error: {one_line(message)}", file=sys.stderr, flush=True)
  sys.exit(2)


def _flag_names(argv) -> list[str]:
  return [a.split("=", 1)[0] for a in argv[1:] if a.startswith("-")]


def _unknown_field_message(argv, error: LookupError) -> str:
  """What ml_collections' KeyError/AttributeError for an override means.

  ml_collections raises ``KeyError("'optimizr'\\nDid you mean ...")`` for an
  unknown field of ``--config.optimizr.name=...``; the option is found by the
  field's name among the command line's dotted options.
  """
  text = str(error.args[0]) if error.args else str(error)
  if text[:1] in "'\"":  # AttributeError(str(KeyError(...))): a repr.
    try:
      text = str(ast.literal_eval(text))
    except (ValueError, SyntaxError):
      pass
  lines = text.strip().splitlines()
  field = lines[0].strip("'\"") if lines else ""
  hint = one_line(" ".join(lines[1:]))
  options = [
      n for n in _flag_names(argv)
      if "." in n and field in n.lstrip("-").split(".")[1:]
  ]
  if not options:  # e.g. "Attribute <class 'int'>.x does not exist ..."
    options = [n for n in _flag_names(argv) if "." in n and
               n.lstrip("-").split(".", 1)[1] in text]
  where = f"unknown option {options[0]}" if options else "unknown option"
  if options and field and hint.lower().startswith("did you mean"):
    return f"{where}: the configuration has no field {field!r}; {hint}"
  if options and field and len(lines) == 1 and field.isidentifier():
    return f"{where}: the configuration has no field {field!r}"
  return f"{where}: {one_line(text)}"


@contextlib.contextmanager
def flag_definitions():
  """Reports an unknown ``--config.*`` field met while flags are defined.

  A configuration flag with a default file applies the command line's
  overrides when it is defined, before parsing; wrap its definition in this.
  """
  try:
    yield
  except (KeyError, AttributeError) as e:  # ml_collections: unknown field.
    fail(_unknown_field_message(sys.argv, e))


def _load_failure(error: Exception) -> str:
  """The cause of a configuration file's failure to load, in one line."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[-1] if lines else type(error).__name__


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, every mistake reported in one line.

  Args:
    argv: the command line, ``sys.argv``.

  Returns:
    The arguments left for ``main`` (absl's ``flags_parser`` contract).
  """
  flag_values = flags.FLAGS
  try:
    rest = flag_values(argv)
  except flags.Error as e:  # Unknown flag, unparsable value, missing flag.
    fail(f"{e} (--helpfull lists the options)")
  except (KeyError, AttributeError) as e:  # ml_collections: unknown field.
    fail(_unknown_field_message(argv, e))
  except Exception as e:  # pylint: disable=broad-except
    # A configuration file runs while it is parsed: its own errors (a
    # SyntaxError, ...) end up here. The traceback with --verbosity.
    if any(a.startswith("--verbosity") for a in argv):
      raise
    fail(f"cannot parse the command line: {type(e).__name__}: {e}")
  # ml_collections reports a configuration file that failed to load on the
  # first use of the configuration; use it now, so that a missing or broken
  # file is a command-line error too.
  if "config" in flag_values:
    try:
      _ = flag_values.config.keys
    except Exception as e:  # pylint: disable=broad-except
      fail(f"--config: cannot load the configuration file: "
           f"{_load_failure(e)}")
  return rest


def run(main) -> None:
  """``absl.app.run(main)`` with one-line command-line errors.

  Args:
    main: the script's ``main(argv)``; a ``ConfigError`` it raises is
      reported in one line (with its traceback if ``--verbosity`` is set).
  """

  def guarded(argv):
    if len(argv) > 1:
      fail(f"unexpected arguments {' '.join(argv[1:])!r} (options are"
           " written --name=value)")
    try:
      return main(argv)
    except ConfigError as e:
      if flags.FLAGS["verbosity"].present:
        raise
      fail(e)

  app.run(guarded, flags_parser=parse_flags)
