"""Parity of Dion, Dion2 and Trion with NumPy re-derivations of their references.

Each reference is re-derived, in float64 NumPy, from its PyTorch code
(microsoft/dion ``dion.py`` and ``dion2.py``; IST-DASLab's ``trion_update``,
matmul path), in PyTorch's layout (``W`` of shape ``(out, in)``), and
compared, transposed, with the named optimizer on Flax ``(in, out)``
kernels over ``STEPS`` steps in float32, weight decay included. The
matrices cover the three cases of every reference: ``out > in``, ``out <
in`` and square; a stacked ``(layers, in, out)`` leaf checks that each
layer is its own matrix.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ortho_optax

STEPS = 10
RTOL = 1e-4
MUON_ABC = (3.4445, -4.7750, 2.0315)
# microsoft/dion `_POLAR_EXPRESS_COEFFS` (safety factor 1.02 in rows 1-4).
PE_ROWS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
# Flax (in, out) kernels: out > in, out < in, square.
SHAPES = {"up": (6, 16), "down": (16, 6), "square": (10, 10)}


def _normal(seed, shape, scale=1.0):
  rng = np.random.default_rng(seed)
  return (scale * rng.standard_normal(shape)).astype(np.float32)


def _init(shapes=SHAPES, seed=50):
  return {
      k: _normal(seed + i, s, 0.5) for i, (k, s) in enumerate(shapes.items())
  }


def _grads(shapes=SHAPES, seed=0):
  return [
      {
          k: _normal(seed + 100 * t + i, s)
          for i, (k, s) in enumerate(shapes.items())
      }
      for t in range(STEPS)
  ]


def _run(tx, params, grads, state=None):
  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params) if state is None else state
  step = jax.jit(tx.update)
  for g in grads:
    updates, state = step(jax.tree.map(jnp.asarray, g), state, params)
    params = optax.apply_updates(params, updates)
  return params


def _assert_close(actual, expected, start):
  """Relative error of the displacement ``W_T - W_0``, below ``RTOL``.

  Measured on the displacement, not on ``W_T`` (which is mostly ``W_0``):
  3e-6 at most over these cases.
  """
  for k in expected:
    a = np.asarray(actual[k], np.float64)
    moved = np.linalg.norm(expected[k] - np.asarray(start[k], np.float64))
    err = np.linalg.norm(a - expected[k]) / moved
    assert err < RTOL, (k, err)


def _ns(x, rows, scale, eps):
  """Quintic Newton-Schulz, float64, on the wide orientation."""
  x = np.asarray(x, np.float64)
  tall = x.shape[0] > x.shape[1]
  if tall:
    x = x.T
  x = x / (np.linalg.norm(x) * scale + eps)
  for a, b, c in rows:
    g = x @ x.T
    x = a * x + (b * g + c * g @ g) @ x
  return x.T if tall else x


# ------------------------------------------------------------------- Dion


def _dion_q(state):
  """The right factors in a named optimizer's state."""
  (found,) = [
      x
      for x in jax.tree.leaves(
          state, is_leaf=lambda x: isinstance(x, ortho_optax.ScaleByDionState)
      )
      if isinstance(x, ortho_optax.ScaleByDionState)
  ]
  return found.q


def _numpy_dion(params, grads, q0, lr, mu, wd, eps=1e-8):
  """microsoft/dion ``Dion`` (``dion_update_ddp`` on one device)."""
  w = {k: np.asarray(v, np.float64).T for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in w.items()}
  q = {k: np.asarray(v, np.float64) for k, v in q0.items()}
  for g in grads:
    for k in w:
      fan_out, fan_in = w[k].shape
      transposed = fan_out < fan_in  # so that the matrix is tall
      m[k] += g[k].T
      mb = m[k].T if transposed else m[k]
      # The reference's randomized Cholesky QR spans the same space as a
      # Householder QR (column signs aside, which cancel below).
      p, _ = np.linalg.qr(mb @ q[k])
      r = mb.T @ p
      if not mb.any():
        p, r = np.zeros_like(p), q[k]
      mb = mb - (1 - mu) * p @ r.T
      q[k] = r / (np.linalg.norm(r, axis=0, keepdims=True) + eps)
      m[k] = mb.T if transposed else mb
      update = p @ q[k].T
      update = update.T if transposed else update
      w[k] = (1 - lr * wd) * w[k] - lr * math.sqrt(fan_out / fan_in) * update
  return {k: v.T for k, v in w.items()}


SLOW = pytest.mark.slow


@pytest.mark.parametrize("rank", [2, 0.5, pytest.param(1.0, marks=SLOW)])
def test_dion_equals_numpy(rank):
  params, grads = _init(), _grads()
  tx = ortho_optax.dion(0.02, rank=rank, weight_decay=0.1, seed=3)
  state = tx.init(jax.tree.map(jnp.asarray, params))
  # The initial right factors are random draws: the reference takes ours.
  q0 = {k: np.asarray(v[0]) for k, v in _dion_q(state).items()}
  expected = _numpy_dion(params, grads, q0, 0.02, 0.95, 0.1)
  _assert_close(_run(tx, params, grads, state), expected, params)


def test_dion_stacked_layers_are_separate_matrices():
  shapes = {"stack": (3, 6, 10)}
  params, grads = _init(shapes), _grads(shapes)
  tx = ortho_optax.dion(0.02, rank=3)
  state = tx.init(jax.tree.map(jnp.asarray, params))
  q = _dion_q(state)
  for layer in range(3):
    flat = {"w": params["stack"][layer]}
    steps = [{"w": g["stack"][layer]} for g in grads]
    expected = _numpy_dion(
        flat, steps, {"w": np.asarray(q["stack"][layer])}, 0.02, 0.95, 0.0
    )
    got = _run(tx, params, grads, state)["stack"][layer]
    _assert_close({"w": got}, expected, flat)


# ------------------------------------------------------------------ Dion2


def _numpy_dion2(params, grads, fraction, lr, ef_decay, wd, eps=1e-8):
  """microsoft/dion ``Dion2`` (one device; Polar Express, no bfloat16)."""
  w = {k: np.asarray(v, np.float64).T for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in w.items()}
  for g in grads:
    for k in w:
      rows, cols = w[k].shape
      m[k] += g[k].T
      by_rows = rows <= cols  # select along the shorter side
      mm = m[k] if by_rows else m[k].T
      k_sel = (
          max(1, math.ceil(fraction * mm.shape[0]))
          if isinstance(fraction, float)
          else fraction
      )
      idx = np.argsort(-np.abs(mm).sum(axis=1))[:k_sel]
      selected = mm[idx].copy()
      mm[idx] *= ef_decay
      m[k] = mm if by_rows else mm.T
      ortho = _ns(selected, PE_ROWS, 1.02, eps)
      update = np.zeros_like(mm)
      update[idx] = ortho
      update = update if by_rows else update.T
      w[k] = (1 - lr * wd) * w[k] - lr * math.sqrt(rows / cols) * update
  return {k: v.T for k, v in w.items()}


@pytest.mark.parametrize("rank", [0.25, 3, pytest.param(1.0, marks=SLOW)])
def test_dion2_equals_numpy(rank):
  params, grads = _init(), _grads()
  tx = ortho_optax.dion2(
      0.02, rank=rank, weight_decay=0.1, method="newton_schulz"
  )
  expected = _numpy_dion2(params, grads, rank, 0.02, 0.95, 0.1)
  _assert_close(_run(tx, params, grads), expected, params)


# ------------------------------------------------------------------ Trion


def _dct(n):
  """IST-DASLab's ``dct3_matrix`` (the orthonormal DCT-II matrix)."""
  i = np.arange(n)
  q = math.sqrt(2 / n) * np.cos(np.pi * i[:, None] * (2 * i[None, :] + 1)
                                / (2 * n))
  q[0] *= math.sqrt(0.5)
  return q


def _numpy_trion(params, grads, rank, lr, mu, wd):
  """IST-DASLab ``Trion`` (``trion_update``, matmul path, one device)."""
  w = {k: np.asarray(v, np.float64).T for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in w.items()}
  for g in grads:
    for k in w:
      rows, cols = w[k].shape
      m[k] += g[k].T
      d = _dct(min(rows, cols))
      if rows >= cols:  # right projection
        s = m[k] @ d
        idx = np.argsort(-np.abs(s).sum(axis=0))[:rank]
        q, low = d[:, idx], s[:, idx]
        m[k] -= (1 - mu) * low @ q.T
        update = _ns(low, [MUON_ABC] * 5, 1.0, 1e-7) @ q.T
      else:
        s = d @ m[k]
        idx = np.argsort(-np.abs(s).sum(axis=1))[:rank]
        q, low = d[idx, :], s[idx, :]
        m[k] -= (1 - mu) * q.T @ low
        update = q.T @ _ns(low, [MUON_ABC] * 5, 1.0, 1e-7)
      scale = math.sqrt(max(1.0, rows / cols))  # the "kj" scaling
      w[k] = (1 - lr * wd) * w[k] - lr * scale * update
  return {k: v.T for k, v in w.items()}


@pytest.mark.parametrize(
    "rank, dct",
    [(2, "matmul"), (5, "fft"), pytest.param(5, "matmul", marks=SLOW),
     pytest.param(2, "fft", marks=SLOW)],
)
def test_trion_equals_numpy(rank, dct):
  params, grads = _init(), _grads()
  tx = ortho_optax.trion(
      0.02, rank=rank, weight_decay=0.1, dct=dct, method="newton_schulz"
  )
  expected = _numpy_trion(params, grads, rank, 0.02, 0.95, 0.1)
  _assert_close(_run(tx, params, grads), expected, params)


def test_trion_rank_fraction_rounds_up():
  params, grads = _init(), _grads()
  tx = ortho_optax.trion(0.02, rank=0.25, method="newton_schulz")
  # min sides 6, 6, 10 -> ceil(0.25 * 6) = 2 and ceil(0.25 * 10) = 3.
  got = _run(tx, params, grads)
  for k, r in (("up", 2), ("down", 2), ("square", 3)):
    sub = {k: params[k]}
    expected = _numpy_trion(sub, [{k: g[k]} for g in grads], r, 0.02, 0.95,
                            0.0)
    _assert_close({k: got[k]}, expected, sub)
