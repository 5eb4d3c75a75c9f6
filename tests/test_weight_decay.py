"""Tests of ``add_cautious_decayed_weights`` against a NumPy re-derivation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ortho_optax
from ortho_optax.optimizers import base as _base
from ortho_optax.transforms import weight_decay as _wd


def _reference(u, p, lam):
  """Chen et al. (arXiv 2510.12402), Algorithm 1, before the learning rate:
  ``u + lam * 1[u * p >= 0] * p`` (``Re(conj(u) p)`` for complex), float64."""
  u = np.asarray(u).astype(np.complex128 if np.iscomplexobj(u) else np.float64)
  p = np.asarray(p).astype(u.dtype)
  agree = np.real(np.conj(u) * p) >= 0
  return u + lam * np.where(agree, p, 0)


def _pair(seed, shape, dtype):
  rng = np.random.default_rng(seed)

  def draw():
    x = rng.standard_normal(shape)
    if jnp.issubdtype(dtype, jnp.complexfloating):
      x = x + 1j * rng.standard_normal(shape)
    return x

  u, p = draw(), draw()
  # Ties: zero updates and zero parameters (both agree, as ">= 0" says).
  u.flat[:3] = 0
  p.flat[3:5] = 0
  return jnp.asarray(u, dtype), jnp.asarray(p, dtype)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "complex64"])
@pytest.mark.parametrize("shape", [(7,), (5, 6), (2, 3, 4)])
def test_matches_numpy(dtype, shape):
  u, p = _pair(0, shape, jnp.dtype(dtype))
  lam = 0.3
  tx = ortho_optax.add_cautious_decayed_weights(lam)
  out, _ = jax.jit(tx.update)({"x": u}, tx.init({"x": p}), {"x": p})
  assert out["x"].dtype == u.dtype
  want = _reference(u, p, lam)
  tol = 1e-2 if dtype == "bfloat16" else 1e-6
  np.testing.assert_allclose(np.asarray(out["x"]), want, rtol=tol, atol=tol)
  # About half of the entries disagree: the test separates the two rules.
  decoupled = np.asarray(u) + lam * np.asarray(p)
  if u.size >= 20:
    assert np.abs(want - decoupled).max() > 0.1


def test_schedule_is_stepped_and_state_is_optax():
  u, p = _pair(1, (4, 5), jnp.float32)
  schedule = lambda count: 0.1 * (count + 1)  # noqa: E731
  tx = ortho_optax.add_cautious_decayed_weights(schedule)
  state = tx.init(p)
  ref_state = optax.add_decayed_weights(schedule).init(p)
  assert jax.tree.structure(state) == jax.tree.structure(ref_state)
  update = jax.jit(tx.update)
  for t in range(3):
    out, state = update(u, state, p)
    np.testing.assert_allclose(
        out, _reference(u, p, 0.1 * (t + 1)), rtol=1e-6, atol=1e-6
    )
  assert int(state.count) == 3


def test_agreeing_equals_decoupled_and_disagreeing_is_identity():
  u, p = _pair(2, (6, 3), jnp.float32)
  p = jnp.where(p == 0, 1.0, p)
  tx = ortho_optax.add_cautious_decayed_weights(0.5)
  same = jnp.abs(u) * jnp.sign(p)  # every entry agrees (or u = 0)
  out, _ = tx.update(same, tx.init(p), p)
  want, _ = optax.add_decayed_weights(0.5).update(same, None, p)
  np.testing.assert_array_equal(out, want)
  opposite = -jnp.abs(u) * jnp.sign(p) - 1.0 * jnp.sign(p)
  out, _ = tx.update(opposite, tx.init(p), p)
  np.testing.assert_array_equal(out, opposite)


def test_signs_not_products():
  """bfloat16 products of tiny entries underflow to 0; the signs decide."""
  u = jnp.array([1e-30, -1e-30], jnp.bfloat16)
  p = jnp.array([-1e-30, -1e-30], jnp.bfloat16)
  assert float((u * p)[0]) == 0.0  # the product alone would say "agree"
  tx = ortho_optax.add_cautious_decayed_weights(1.0)
  out, _ = tx.update(u, tx.init(p), p)
  np.testing.assert_array_equal(
      np.asarray(out, np.float32), np.asarray(u + jnp.array([0, 1]) * p,
                                              np.float32)
  )


def test_mask_none_leaves_zero_decay_and_inject():
  u, p = _pair(3, (4, 4), jnp.float32)
  params = {"w": p, "b": p[0], "frozen": None}
  updates = {"w": u, "b": u[0], "frozen": None}
  mask = {"w": True, "b": False, "frozen": False}
  tx = ortho_optax.add_cautious_decayed_weights(0.2, mask)
  out, _ = tx.update(updates, tx.init(params), params)
  np.testing.assert_allclose(out["w"], _reference(u, p, 0.2), rtol=1e-6)
  np.testing.assert_array_equal(out["b"], u[0])
  assert out["frozen"] is None
  # Zero decay: the updates themselves.
  tx0 = ortho_optax.add_cautious_decayed_weights(0.0)
  out, _ = tx0.update(updates, tx0.init(params), params)
  np.testing.assert_array_equal(out["w"], u)
  # An injected (array) weight decay gives the float's updates.
  injected = optax.inject_hyperparams(ortho_optax.add_cautious_decayed_weights)(
      weight_decay=0.2
  )
  got, _ = jax.jit(injected.update)(u, injected.init(p), p)
  plain = ortho_optax.add_cautious_decayed_weights(0.2)
  want, _ = plain.update(u, plain.init(p), p)
  np.testing.assert_array_equal(got, want)


def test_errors():
  with pytest.raises(ValueError, match="`weight_decay`"):
    ortho_optax.add_cautious_decayed_weights(-0.1)
  with pytest.raises(TypeError, match="`mask`"):
    ortho_optax.add_cautious_decayed_weights(0.1, mask="yes")
  tx = ortho_optax.add_cautious_decayed_weights(0.1)
  with pytest.raises(ValueError, match="params"):
    tx.update(jnp.ones(3), tx.init(jnp.ones(3)))
  with pytest.raises(ValueError, match="`weight_decay_mode`.*'cautious'"):
    _base.decayed_weights(0.1, mode="careful")
  for mode in _wd.MODES:
    _base.check_weight_decay_mode(mode)
