"""The named optimizers' orthogonalization defaults (``_base.engine_options``)."""

import jax.numpy as jnp
import numpy as np
import pytest

import ortho_optax
from ortho_optax.optimizers import base as _base

MUON = {"coeffs": "muon", "normalization": "frobenius"}


@pytest.mark.parametrize("method", ["auto", "newton_schulz",
                                    "gram_newton_schulz"])
def test_newton_schulz_engines_default_to_muons_recipe(method):
  assert _base.engine_options(method) == MUON
  assert _base.engine_options(method, coeffs=None, steps=None) == MUON


def test_normalization_follows_the_coefficient_table():
  assert _base.engine_options("auto", coeffs="turbo") == {
      "coeffs": "turbo", "normalization": "aol"}
  assert _base.engine_options("auto", coeffs="polar_express") == {
      "coeffs": "polar_express", "normalization": "frobenius"}
  table = np.array([[3.4445, -4.775, 2.0315]] * 5)
  opts = _base.engine_options("newton_schulz", coeffs=table)
  assert opts["normalization"] == "frobenius"
  assert opts["coeffs"] is table


def test_explicit_options_are_kept():
  opts = _base.engine_options(
      "auto", coeffs="polar_express", normalization="schatten4", steps=4,
      eps=1e-8)
  assert opts == {"coeffs": "polar_express", "normalization": "schatten4",
                  "steps": 4, "eps": 1e-8}


@pytest.mark.parametrize("method", ["polar_svd", "auon"])
def test_other_engines_get_only_what_was_set(method):
  assert _base.engine_options(method) == {}
  assert _base.engine_options(method, eps=1e-6, coeffs=None) == {"eps": 1e-6}


def test_default_muon_runs_with_other_engines():
  """``method="polar_svd"`` takes no coefficients: none are passed."""
  params = {"w": jnp.ones((4, 6)) + jnp.eye(4, 6)}
  tx = ortho_optax.muon(0.1, method="polar_svd")
  state = tx.init(params)
  updates, _ = tx.update({"w": jnp.eye(4, 6)}, state, params)
  # polar(E) of the 4x6 identity block is itself (the momentum only scales
  # it); the (in=4, out=6) kernel's shape factor is sqrt(6 / 4).
  np.testing.assert_allclose(
      updates["w"], -0.1 * np.sqrt(1.5) * np.eye(4, 6), atol=1e-6)


def test_a_recipe_applies_only_without_explicit_coefficients():
  recipe = {"coeffs": "polar_express", "normalization": "schatten4"}
  assert _base.engine_options("auto", recipe) == recipe
  assert _base.engine_options("auto", recipe, steps=3) == recipe | {
      "steps": 3}
  assert _base.engine_options("auto", recipe, coeffs="muon") == MUON
  assert _base.engine_options("polar_svd", recipe) == {}


def test_adamuon_default_is_muons_recipe():
  """AdaMuon's default step equals Muon's recipe, not Polar Express's."""
  params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(8, 12)),
                             jnp.float32)}
  grads = {"w": params["w"][::-1] ** 3}
  explicit = ortho_optax.adamuon(
      0.01, coeffs="muon", normalization="frobenius")
  default = ortho_optax.adamuon(0.01)
  polar_express = ortho_optax.adamuon(0.01, coeffs="polar_express")
  out = [tx.update(grads, tx.init(params), params)[0]["w"]
         for tx in (explicit, default, polar_express)]
  np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-7)
  assert not np.allclose(out[0], out[2], atol=1e-4)


def test_adamuon_sign_changes_the_step():
  """``sign=True`` orthogonalizes sign(momentum): a different step."""
  params = {"w": jnp.asarray(np.random.default_rng(1).normal(size=(8, 12)),
                             jnp.float32)}
  grads = {"w": params["w"][::-1] ** 3}
  out = [tx.update(grads, tx.init(params), params)[0]["w"]
         for tx in (ortho_optax.adamuon(0.01, sign=s) for s in (False, True))]
  assert not np.allclose(out[0], out[1], atol=1e-4)
