"""The recommended learning rates: one table, quoted by every docstring."""

import inspect
import pathlib
import sys

import pytest

import ortho_optax
from ortho_optax.optimizers import learning_rates

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from examples import optimizers as example_optimizers  # noqa: E402

NAMED = (
    "muon", "turbo_muon", "normuon", "adamuon", "root", "auon",
    "hybrid_auon", "scion", "trust_region", "dion", "dion2", "trion",
    "soap", "shampoo",
)


def test_every_named_optimizer_has_one():
  assert sorted(ortho_optax.RECOMMENDED_LEARNING_RATES) == sorted(NAMED)
  for name, lr in ortho_optax.RECOMMENDED_LEARNING_RATES.items():
    assert callable(getattr(ortho_optax, name))
    assert 0 < lr < 1, name


@pytest.mark.parametrize("name", NAMED)
def test_docstring_quotes_the_table_and_the_tasks(name):
  doc = inspect.getdoc(getattr(ortho_optax, name))
  lr = ortho_optax.recommended_learning_rate(name)
  text = " ".join(doc.split())
  if name in learning_rates.PROVISIONAL:
    assert f"Recommended: ``{lr:g}`` (provisional" in text, name
    return
  assert f"Recommended: ``{lr:g}``, chosen on the tasks" in text, name
  assert "lm, lm_deep and digits_cnn" in text, name
  assert learning_rates.CHOSEN_ON == ("lm", "lm_deep", "digits_cnn")


def test_examples_use_the_table():
  for name in NAMED:
    assert (example_optimizers.default_learning_rate(name)
            == ortho_optax.recommended_learning_rate(name)), name


def test_unknown_name_lists_the_names():
  with pytest.raises(ValueError, match=r"`name`='adam' .* muon, turbo_muon"):
    ortho_optax.recommended_learning_rate("adam")

