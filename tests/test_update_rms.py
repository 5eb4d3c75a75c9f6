"""The scale of each named optimizer's step: the RMS of its update at
learning rate 1 on a Gaussian gradient, measured against the table of
``docs/optimizers.rst`` (written by ``python -m examples.update_rms``)."""

from __future__ import annotations

import math
import pathlib
import re

import numpy as np
import pytest

from examples import update_rms

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "optimizers.rst"
# Seeded, so the measurement is deterministic up to the backend's float32
# arithmetic; a changed scale rule moves a number by far more.
RTOL = 2e-3


def _docs_rows() -> dict:
  text = DOCS.read_text()
  block = re.search(
      r"\.\. update-rms-table-start\n(.*?)\.\. update-rms-table-end",
      text,
      re.S,
  )
  assert block, "docs/optimizers.rst has no update-rms table"
  return update_rms.parse_table(block.group(1))


def _check(names):
  docs = _docs_rows()
  measured = update_rms.measure(names)
  for name, row in measured.items():
    np.testing.assert_allclose(
        [row[k] for k in update_rms.SHAPES],
        [docs[name][k] for k in update_rms.SHAPES],
        rtol=RTOL,
        err_msg=f"{name}: rerun python -m examples.update_rms",
    )
  return measured


def test_docs_table_lists_every_named_optimizer_and_adamw():
  assert set(_docs_rows()) == {"adamw", *update_rms.NAMED}


def test_table_round_trips():
  rows = {"adamw": {k: 1.0 for k in update_rms.SHAPES}}
  assert update_rms.parse_table(update_rms.table(rows)) == rows


def test_muon_and_dion_match_the_docs_and_the_analytic_scale():
  """Muon and AdamW against closed forms, independent of the code: AdamW's
  first step is the gradient's sign (RMS 1); Muon's is an orthogonal
  matrix (RMS ``1/sqrt(max(m, n))``) times ``sqrt(max(1, fan_out /
  fan_in))``, up to the Newton-Schulz iteration's inexact singular values
  (within about 0.7-1.2 of 1)."""
  measured = _check(("muon", "dion"))
  for k, (m, n) in update_rms.SHAPES.items():
    assert measured["adamw"][k] == pytest.approx(1.0, rel=1e-4)
    exact = math.sqrt(max(1.0, n / m)) / math.sqrt(max(m, n))
    assert 0.7 * exact < measured["muon"][k] < 1.2 * exact, (k, exact)


@pytest.mark.slow
def test_every_named_optimizer_matches_the_docs():
  _check(update_rms.NAMED)
