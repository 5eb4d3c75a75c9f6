"""Parity of ``muon`` with the reference Muon step and with optax's muon.

The reference is KellerJordan/Muon (``muon.py``), re-derived here in NumPy
in PyTorch's ``(out, in)`` layout and translated at the boundary: a Flax
kernel ``W`` of shape ``(in, out)`` is the torch weight ``W.T``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ortho_optax

MDN = optax.contrib.MuonDimensionNumbers
MUON_COEFFS = (3.4445, -4.7750, 2.0315)
STEPS = 10
LR = 0.02
WD = 0.1
BETA = 0.95


def _normal(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# Flax (in, out) kernels: square, wide (fan_out > fan_in) and tall.
SHAPES = {"square": (6, 6), "wide": (4, 10), "tall": (12, 5)}


def _params():
  return {
      k: {"kernel": _normal(i, s)} for i, (k, s) in enumerate(SHAPES.items())
  }


def _grads(step):
  return {
      k: {"kernel": _normal(100 + 10 * step + i, s)}
      for i, (k, s) in enumerate(SHAPES.items())
  }


# ------------------------------------------------- reference (torch layout)


def _reference_ns5(g, steps=5, eps=1e-7):
  """``zeropower_via_newtonschulz5`` of KellerJordan/Muon, in NumPy."""
  a, b, c = MUON_COEFFS
  x = g.astype(np.float32)
  transposed = x.shape[-2] > x.shape[-1]
  if transposed:
    x = x.T
  x = x / (np.linalg.norm(x) + np.float32(eps))
  for _ in range(steps):
    gram = x @ x.T
    poly = b * gram + c * gram @ gram
    x = a * x + poly @ x
  if transposed:
    x = x.T
  return x


def _reference_muon_step(w_torch, g_torch, m_torch, lr, wd, beta):
  """One step of ``Muon`` for a torch ``(out, in)`` weight.

  ``muon_update``: ``momentum.lerp_(grad, 1 - beta)``, Nesterov
  ``grad.lerp_(momentum, beta)``, NS5, ``* max(1, rows / cols) ** 0.5``;
  then ``p.mul_(1 - lr * wd)`` and ``p.add_(update, alpha=-lr)``.
  """
  m_torch = m_torch + (1 - beta) * (g_torch - m_torch)
  u = g_torch + beta * (m_torch - g_torch)
  o = _reference_ns5(u)
  rows, cols = g_torch.shape
  o = o * max(1.0, rows / cols) ** 0.5
  w_torch = w_torch * (1 - lr * wd)
  w_torch = w_torch - lr * o
  return w_torch, m_torch


def _run_reference():
  params = {k: v["kernel"].T.copy() for k, v in _params().items()}  # (out, in)
  mom = {k: np.zeros_like(v) for k, v in params.items()}
  for t in range(STEPS):
    grads = _grads(t)
    for k in params:
      params[k], mom[k] = _reference_muon_step(
          params[k], grads[k]["kernel"].T, mom[k], LR, WD, BETA
      )
  return {k: {"kernel": v.T} for k, v in params.items()}  # back to (in, out)


def _run(tx, params, grads_fn=_grads, steps=STEPS):
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for t in range(steps):
    params, state = step(params, state, grads_fn(t))
  return params


def test_reference_muon_translation_of_layout():
  """The torch-layout step on W.T is the transpose of the polar factor."""
  g = _normal(0, (5, 9))  # torch (out=5, in=9): wide, no transpose
  o = _reference_ns5(g)
  o_t = _reference_ns5(g.T)  # the Flax (in, out) kernel: tall, transposed
  np.testing.assert_allclose(o_t, o.T, rtol=1e-6, atol=1e-6)


def test_muon_reference_settings_match_keller_jordan_muon():
  tx = ortho_optax.muon(
      LR,
      beta=BETA,
      method="newton_schulz",
      coeffs="muon",
      normalization="frobenius",
      eps=1e-7,
      weight_decay=WD,
  )
  got = _run(tx, jax.tree.map(jnp.asarray, _params()))
  want = _run_reference()
  for k in SHAPES:
    np.testing.assert_allclose(
        got[k]["kernel"], want[k]["kernel"], rtol=1e-5, atol=1e-5, err_msg=k
    )
  # Not vacuous: the parameters moved by far more than the tolerance.
  moved = max(
      float(np.max(np.abs(want[k]["kernel"] - _params()[k]["kernel"])))
      for k in SHAPES
  )
  assert moved > 0.1


def test_muon_default_is_the_reference_iteration():
  """Defaults: Muon's coefficients and normalization, Gram form where cheaper.

  The Gram form computes the same polynomial, so the default matches the
  reference up to float32 rounding; on the wide matrix it is the Gram form
  (a different program), hence the looser tolerance than the test above.
  """
  tx = ortho_optax.muon(LR, beta=BETA, weight_decay=WD)
  got = _run(tx, jax.tree.map(jnp.asarray, _params()))
  want = _run_reference()
  for k in SHAPES:
    np.testing.assert_allclose(
        got[k]["kernel"], want[k]["kernel"], rtol=1e-4, atol=1e-4, err_msg=k
    )


def test_muon_polar_express_option_differs_from_reference():
  """``coeffs="polar_express"`` is another step, close in direction."""
  tx = ortho_optax.muon(LR, weight_decay=WD, coeffs="polar_express")
  got = _run(tx, jax.tree.map(jnp.asarray, _params()))
  want = _run_reference()
  k = "wide"
  delta_got = got[k]["kernel"] - _params()[k]["kernel"]
  delta_want = want[k]["kernel"] - _params()[k]["kernel"]
  assert not np.allclose(delta_got, delta_want, atol=1e-3)
  cos = np.sum(delta_got * delta_want) / (
      np.linalg.norm(delta_got) * np.linalg.norm(delta_want)
  )
  assert cos > 0.95


OPTAX_SETTINGS = dict(
    bias_correction=True,
    method="newton_schulz",
    coeffs="muon",
    normalization="frobenius",
    eps=1e-8,
    adam_b2=0.999,
)


@pytest.mark.parametrize("weight_decay", [0.0, WD])
def test_muon_optax_settings_match_optax_contrib_muon(weight_decay):
  params = jax.tree.map(jnp.asarray, _params())
  ours = ortho_optax.muon(LR, weight_decay=weight_decay, **OPTAX_SETTINGS)
  theirs = optax.contrib.muon(LR, weight_decay=weight_decay)
  got, want = _run(ours, params), _run(theirs, params)
  for k in SHAPES:
    np.testing.assert_allclose(
        got[k]["kernel"], want[k]["kernel"], rtol=1e-5, atol=1e-5, err_msg=k
    )


# The argument table of docs/migrating.rst: an optax.contrib.muon argument
# and what muon needs, on top of OPTAX_SETTINGS, for the same step.
_DION_3 = ((4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377),
           (3.7418, -5.5913, 2.3037))
OPTAX_ARGUMENTS = {
    "dion": ({"ns_coeffs": "dion"}, {"coeffs": "dion"}),
    # A (k, 3) table: optax runs its k rows whatever ns_steps >= k.
    "table": ({"ns_coeffs": _DION_3, "ns_steps": 5}, {"coeffs": _DION_3}),
    "ns_steps": ({"ns_steps": 3}, {"steps": 3}),
    "aol": ({"preconditioning": "aol"}, {"normalization": "aol"}),
    "schatten": (
        {"preconditioning": "schatten"}, {"normalization": "schatten4"}
    ),
    "consistent_rms": (
        {"consistent_rms": 0.2}, {"shape_rule": "moonlight", "shape_rms": 0.2}
    ),
    "momentum": (
        {"beta": 0.9, "nesterov": False}, {"beta": 0.9, "nesterov": False}
    ),
}


@functools.cache
def _optax_settings_run():
  params = jax.tree.map(jnp.asarray, _params())
  return _run(ortho_optax.muon(LR, **OPTAX_SETTINGS), params, steps=3)


@pytest.mark.parametrize("case", sorted(OPTAX_ARGUMENTS))
def test_optax_argument_translation(case):
  theirs_kwargs, ours_kwargs = OPTAX_ARGUMENTS[case]
  params = jax.tree.map(jnp.asarray, _params())
  ours = ortho_optax.muon(LR, **{**OPTAX_SETTINGS, **ours_kwargs})
  theirs = optax.contrib.muon(LR, **theirs_kwargs)
  got, want = _run(ours, params, steps=3), _run(theirs, params, steps=3)
  for k in SHAPES:
    np.testing.assert_allclose(
        got[k]["kernel"], want[k]["kernel"], rtol=1e-5, atol=1e-5, err_msg=k
    )
  # Not vacuous: the setting changes the step.
  default = _optax_settings_run()
  assert any(
      not np.allclose(got[k]["kernel"], default[k]["kernel"], atol=1e-5)
      for k in SHAPES
  )


def test_muon_optax_dimension_numbers_match_optax_contrib_muon():
  """Conv and stacked kernels routed the optax way, in both libraries."""
  shapes = {"conv": (3, 3, 2, 4), "stack": (2, 4, 6), "w": (5, 3)}
  dns = {"conv": MDN((0, 1, 2), 3), "stack": MDN(1, 2), "w": MDN(0, 1)}
  params = {k: jnp.asarray(_normal(i, s)) for i, (k, s) in enumerate(
      shapes.items())}

  def grads(t):
    return {k: _normal(50 + 5 * t + i, s) for i, (k, s) in enumerate(
        shapes.items())}

  ours = ortho_optax.muon(LR, dimension_numbers=dns, **OPTAX_SETTINGS)
  theirs = optax.contrib.muon(LR, muon_weight_dimension_numbers=dns)
  got = _run(ours, params, grads)
  want = _run(theirs, params, grads)
  for k in shapes:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5,
                               err_msg=k)
