"""Every named optimizer takes the shared arguments of ``base.SHARED_ARGS``.

Their signatures spell the arguments out (for IDEs, type checkers and
``optax.inject_hyperparams``); these tests hold each signature and each
docstring's ``Args:`` section to the one list in ``optimizers/base.py``.
"""

from __future__ import annotations

import inspect

import pytest

import ortho_optax
from ortho_optax.optimizers import base
from ortho_optax.optimizers import learning_rates

NAMED = (
    "adamuon",
    "auon",
    "dion",
    "dion2",
    "muon",
    "normuon",
    "root",
    "scion",
    "shampoo",
    "soap",
    "trion",
    "trust_region",
)
# Scion's matrices decay by its constrained step (``constrained``), not by
# a weight decay argument.
NOT_TAKEN = {"scion": ("weight_decay", "weight_decay_mask")}


def _signature(name):
  return inspect.signature(getattr(ortho_optax, name))


@pytest.mark.parametrize("name", NAMED)
def test_signature_ends_with_the_shared_arguments(name):
  params = list(_signature(name).parameters.values())
  shared = [
      a for a in base.SHARED_ARGS if a.name not in NOT_TAKEN.get(name, ())
  ]
  tail = params[-len(shared):]
  assert [p.name for p in tail] == [a.name for a in shared]
  for p, a in zip(tail, shared):
    assert p.kind is inspect.Parameter.KEYWORD_ONLY, p
    expected = a.annotation or inspect.Parameter.empty
    assert p.annotation == expected, (p, a)
    if a.name in base.SHARED_HYPERPARAMETERS:
      assert isinstance(p.default, float) and p.default >= 0, p
    else:
      assert p.default == a.default, (p, a)


@pytest.mark.parametrize("name", NAMED)
def test_args_section_is_the_signature_with_the_shared_lines(name):
  fn = getattr(ortho_optax, name)
  entries = base.args_entries(fn.__doc__)
  assert list(entries) == list(_signature(name).parameters)
  # What the source docstring documents itself (its own wording of a
  # shared argument, e.g. Dion's right factors in ``mu_dtype``).
  source = base.args_entries(inspect.getsource(fn).split('"""')[1])
  assert base.SHARED_ENTRY in source
  for a in base.SHARED_ARGS:
    if a.name not in entries:
      continue
    if a.name in source:
      assert source[a.name] != a.doc, f"{name} repeats {a.name}'s line"
    else:
      assert entries[a.name] == a.doc, (name, a.name)


def test_assembled_lines_fit_80_columns():
  for name in NAMED:
    doc = getattr(ortho_optax, name).__doc__
    assert max(len(line) for line in doc.splitlines()) <= 80, name


def test_a_docstring_without_the_shared_entry_is_refused():
  def f(learning_rate, *, skip_nonfinite=True):
    """F.

    Args:
      learning_rate: a rate.
      skip_nonfinite: skip.
    """
  f.__doc__ = f.__doc__.replace("\n    ", "\n  ")
  with pytest.raises(ValueError, match=r"\*\*shared"):
    base.document_shared_args(f)


def test_shared_checks_name_the_argument():
  with pytest.raises((ValueError, TypeError), match="weight_decay_mode"):
    ortho_optax.dion(0.01, weight_decay_mode="sometimes")
  with pytest.raises((ValueError, TypeError), match="weight_decay"):
    ortho_optax.muon(0.02, weight_decay=-1.0)
  with pytest.raises((ValueError, TypeError), match="adam_b1"):
    ortho_optax.trion(0.02, adam_b1=1.5)


# The named optimizers whose docstrings write `**engine:` for the
# orthogonalization arguments' lines.
ENGINE_USERS = (
    "adamuon", "dion2", "muon", "normuon", "root", "scion", "trion",
    "trust_region",
)


def _source_entries(name):
  fn = getattr(ortho_optax, name)
  return base.args_entries(inspect.getsource(fn).split('"""')[1])


@pytest.mark.parametrize("name", NAMED)
def test_engine_lines_come_from_one_list(name):
  source = _source_entries(name)
  assert (base.ENGINE_ENTRY in source) == (name in ENGINE_USERS), name
  if name not in ENGINE_USERS:
    return
  entries = base.args_entries(getattr(ortho_optax, name).__doc__)
  taken = [n for n in base.ENGINE_ARGS if n in entries]
  assert taken, name
  for n in taken:
    if n in source:
      assert source[n] != base.ENGINE_ARGS[n], f"{name} repeats {n}'s line"
    else:
      assert entries[n] == base.ENGINE_ARGS[n], (name, n)


@pytest.mark.parametrize("name", NAMED)
def test_recommended_rate_is_written_from_the_table(name):
  source = _source_entries(name)["learning_rate"]
  text = base.args_entries(getattr(ortho_optax, name).__doc__)
  if name in learning_rates.PROVISIONAL:
    assert "Recommended:" in source, name
    return
  assert "Recommended:" not in source, name
  assert text["learning_rate"].endswith(base.recommendation(name)), name


def test_a_provisional_rate_must_say_how_it_was_chosen(monkeypatch):
  # No rate is provisional today; the guard is for the next new optimizer.
  monkeypatch.setattr(base._learning_rates, "PROVISIONAL", ("soap",))

  def soap(learning_rate, *, skip_nonfinite=True):
    """F.

    Args:
      learning_rate: a rate.
      **shared: the shared arguments.
    """
  soap.__doc__ = soap.__doc__.replace("\n    ", "\n  ")
  with pytest.raises(ValueError, match="provisional"):
    base.document_shared_args(soap)


@pytest.mark.parametrize("name", NAMED)
def test_the_shared_arguments_are_written_one_a_line(name):
  # The layout of every signature: the method's own arguments (several a
  # line), then the shared ones, one a line in SHARED_ARGS's order, the
  # same text in every optimizer but for a method's own default.
  lines = inspect.getsource(getattr(ortho_optax, name)).splitlines()
  start = next(
      i for i, line in enumerate(lines) if line.startswith("    update_rms:")
  )
  end = lines.index(") -> optax.GradientTransformation:")
  params = list(_signature(name).parameters.values())
  shared = [p for p in params if p.name in base.SHARED_NAMES]
  assert [line.split(":")[0].split("=")[0].strip()
          for line in lines[start:end]] == [p.name for p in shared]
