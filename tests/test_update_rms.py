"""The scale of each named optimizer's step: the RMS of its update at
learning rate 1 on a Gaussian gradient, measured against the table of
``docs/optimizers.rst`` (written by ``python -m examples.update_rms``)."""

from __future__ import annotations

import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ortho_optax
from examples import update_rms
from ortho_optax.transforms import shape

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


@pytest.mark.parametrize("rms", [0.2, 1.0])
def test_scale_to_rms_matches_numpy(rms):
  """Per matrix of a stacked leaf (float64 NumPy reference); a zero matrix
  stays zero; vectors pass; bfloat16 keeps its dtype."""
  rng = np.random.default_rng(1)
  w = rng.standard_normal((3, 5, 7)).astype(np.float32)
  w[1] = 0.0
  updates = {"w": jnp.asarray(w), "b": jnp.ones(7)}
  dns = {"w": ortho_optax.DimensionNumbers(1, 2), "b": None}
  tx = shape.scale_to_rms(rms, dimension_numbers=dns)
  out, _ = tx.update(updates, tx.init(updates))
  x = w.astype(np.float64)
  r = np.sqrt(np.mean(x**2, axis=(1, 2), keepdims=True))
  want = np.where(r > 0, x * rms / np.where(r > 0, r, 1), 0)
  np.testing.assert_allclose(out["w"], want, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(out["b"], updates["b"])
  half = {"w": jnp.asarray(w[0], jnp.bfloat16)}
  tx = shape.scale_to_rms(rms)
  out, _ = tx.update(half, tx.init(half))
  assert out["w"].dtype == jnp.bfloat16
  got = np.sqrt(np.mean(np.asarray(out["w"], np.float64) ** 2))
  assert got == pytest.approx(rms, rel=1e-2)


def _check_update_rms(names):
  grads = update_rms.gaussian_grads()
  for name in names:
    tx = getattr(ortho_optax, name)(1.0, update_rms=0.2)
    for k, v in update_rms.update_rms(
        tx, grads, update_rms.steps_of(name)
    ).items():
      assert v == pytest.approx(0.2, rel=1e-5), (name, k)


def test_update_rms_gives_one_scale():
  """``update_rms=0.2``: every matrix step of RMS 0.2 at learning rate 1,
  whatever the method's own scale (the table's spread is 100x)."""
  _check_update_rms(("muon", "auon", "scion"))


@pytest.mark.slow
def test_update_rms_gives_one_scale_everywhere():
  _check_update_rms(update_rms.NAMED)


def test_update_rms_default_is_the_paper_scale():
  """``None`` adds no step: the optimizer, its state included, is the one
  without the argument."""
  grads = update_rms.gaussian_grads()
  params = jax.tree.map(jnp.zeros_like, grads)
  plain = ortho_optax.dion(1.0)
  explicit = ortho_optax.dion(1.0, update_rms=None)
  assert jax.tree.structure(plain.init(params)) == jax.tree.structure(
      explicit.init(params)
  )


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1e20, 1e30])
def test_scale_to_rms_over_the_float32_range(scale):
  """An update of 1e-30 (whose squares underflow) or 1e30 (whose squares
  overflow) still comes out at the target RMS, per matrix."""
  rng = np.random.default_rng(2)
  w = rng.standard_normal((2, 6, 9)).astype(np.float32)
  tx = shape.scale_to_rms(0.2)
  u = {"w": jnp.asarray(w * np.float32(scale))}
  out, _ = tx.update(u, tx.init(u))
  got = np.sqrt(np.mean(np.asarray(out["w"], np.float64) ** 2, axis=(1, 2)))
  np.testing.assert_allclose(got, 0.2, rtol=1e-5)
  x = w.astype(np.float64)
  want = x * 0.2 / np.sqrt(np.mean(x**2, axis=(1, 2), keepdims=True))
  np.testing.assert_allclose(out["w"], want, rtol=1e-5, atol=1e-7)
