"""Tests of scale_by_elementwise_norm (AdaMuon's second moment)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ortho_optax


def _normal(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_matches_numpy_and_rms():
  tx = ortho_optax.scale_by_elementwise_norm(0.9, 1e-8, rms=0.2)
  state = tx.init({"w": jnp.zeros((6, 4)), "b": jnp.zeros(4)})
  assert isinstance(state.nu["b"], optax.MaskedNode)
  v = np.zeros((6, 4))
  for step in range(4):
    o = _normal(step, (6, 4))
    out, state = tx.update({"w": jnp.asarray(o), "b": jnp.ones(4)}, state)
    v = 0.9 * v + 0.1 * o.astype(np.float64) ** 2
    o_hat = o / (np.sqrt(v) + 1e-8)
    expected = o_hat * 0.2 * np.sqrt(24) / (np.linalg.norm(o_hat) + 1e-8)
    np.testing.assert_allclose(out["w"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.sqrt(np.mean(np.asarray(out["w"]) ** 2)), 0.2, rtol=1e-5
    )
    np.testing.assert_array_equal(out["b"], np.ones(4))


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="`beta`"):
    ortho_optax.scale_by_elementwise_norm(-0.1)
  with pytest.raises(ValueError, match="`rms`"):
    ortho_optax.scale_by_elementwise_norm(rms=-1.0)


def test_complex_matches_numpy_with_magnitudes():
  """Complex updates: the second moment is |O|^2, real, so each entry is
  divided by its own magnitude's RMS and keeps its phase."""
  rng = np.random.default_rng(0)
  tx = ortho_optax.scale_by_elementwise_norm(0.9, 1e-8, rms=0.2)
  state = tx.init({"w": jnp.zeros((6, 4), jnp.complex64)})
  assert state.nu["w"].dtype == jnp.float32
  v = np.zeros((6, 4))
  for _ in range(3):
    o = (rng.standard_normal((6, 4)) + 1j * rng.standard_normal((6, 4)))
    out, state = tx.update({"w": jnp.asarray(o, jnp.complex64)}, state)
    v = 0.9 * v + 0.1 * np.abs(o) ** 2
    o_hat = o / (np.sqrt(v) + 1e-8)
    want = o_hat * 0.2 * np.sqrt(24) / (np.linalg.norm(o_hat) + 1e-8)
    np.testing.assert_allclose(out["w"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.angle(out["w"]), np.angle(o), atol=1e-5)


def test_stochastic_second_moment_is_unbiased():
  """A stochastic u8 ``nu`` drawn from the step count: its mean over many
  draws is the float second moment (round to nearest keeps a bias)."""
  from ortho_optax.state import quantized

  fmt = quantized.QuantFormat("q8", stochastic=True)
  tx = ortho_optax.scale_by_elementwise_norm(0.9, nu_dtype=fmt)
  o = {"w": jnp.asarray(
      np.random.default_rng(0).standard_normal((16, 8)), jnp.float32)}
  state = tx.init(o)
  assert state.nu["w"].code == "u8"
  update = jax.jit(tx.update)
  nus = []
  for t in range(64):
    # The same state, step counts t: independent draws of one rounding.
    s = state._replace(count=jnp.asarray(t, jnp.int32))
    _, s = update(o, s)
    assert int(s.count) == t + 1
    nus.append(np.asarray(quantized.dequantize(s.nu["w"])))
  want = 0.1 * np.asarray(o["w"]) ** 2
  mean = np.mean(nus, axis=0)
  # One draw errs by up to 2 * 0.0035 of the block max; 64 draws average
  # it down by 8x (and a draw never equals round-to-nearest everywhere).
  top = np.max(want)
  assert np.max(np.abs(mean - want)) <= 2 * 0.0035 * top / 8 * 3
  assert not all(np.array_equal(nus[0], n) for n in nus[1:])
