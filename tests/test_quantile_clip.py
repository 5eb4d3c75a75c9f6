"""Tests of clip_by_quantile (ROOT's robust component)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ortho_optax


def _heavy_tailed(seed, shape):
  return np.random.default_rng(seed).standard_t(2.0, shape).astype(np.float32)


def test_clip_is_exact_and_about_ten_percent():
  u = _heavy_tailed(0, (40, 50))
  tx = ortho_optax.clip_by_quantile(0.9)
  out, _ = tx.update({"w": jnp.asarray(u)}, tx.init({"w": jnp.zeros(u.shape)}))
  tau = np.quantile(np.abs(u), 0.9, method="linear") + 1e-9
  np.testing.assert_allclose(out["w"], np.clip(u, -tau, tau), rtol=1e-6)
  # Soft-threshold form of the reference: U - sign(U) relu(|U| - tau).
  soft = u - np.sign(u) * np.maximum(np.abs(u) - tau, 0.0)
  np.testing.assert_allclose(out["w"], soft, rtol=1e-6, atol=1e-7)
  frac = np.mean(np.abs(u) > tau)
  assert 0.095 <= frac <= 0.105


def test_per_matrix_quantile_for_stacked_layers_and_vectors_pass():
  u = _heavy_tailed(1, (3, 10, 20)) * np.array([1, 10, 100], np.float32)[
      :, None, None
  ]
  b = _heavy_tailed(2, (7,))
  tx = ortho_optax.clip_by_quantile(0.8)
  out, _ = jax.jit(tx.update)(
      {"w": jnp.asarray(u), "b": jnp.asarray(b)},
      tx.init({"w": jnp.zeros(u.shape), "b": jnp.zeros(7)}),
  )
  for i in range(3):
    tau = np.quantile(np.abs(u[i]), 0.8) + 1e-9
    np.testing.assert_allclose(out["w"][i], np.clip(u[i], -tau, tau), rtol=1e-6)
  np.testing.assert_array_equal(out["b"], b)


def test_bf16_keeps_dtype():
  tx = ortho_optax.clip_by_quantile()
  x = {"w": jnp.ones((4, 6), jnp.bfloat16)}
  out, _ = tx.update(x, tx.init(x))
  assert out["w"].dtype == jnp.bfloat16


@pytest.mark.parametrize("q", [-0.1, 1.5])
def test_bad_q_raises(q):
  with pytest.raises(ValueError, match="`q`"):
    ortho_optax.clip_by_quantile(q)


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 100), (2, 4099)])
@pytest.mark.parametrize("q", [0.0, 0.1, 0.5, 0.9, 0.999, 1.0])
def test_selection_quantile_equals_numpy(shape, q):
  from ortho_optax.transforms.quantile_clip import quantile_of_magnitudes
  x = _heavy_tailed(3, shape)
  got = jax.jit(lambda x: quantile_of_magnitudes(x, q))(jnp.asarray(x))
  # q is a float32 hyperparameter; its position q (n - 1) is exact.
  q32 = float(np.float32(q))
  want = np.quantile(np.abs(x).astype(np.float64), q32, axis=-1)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
  # A traced q (optax.inject_hyperparams) gives the same bits.
  traced = jax.jit(quantile_of_magnitudes)(jnp.asarray(x), jnp.float32(q))
  np.testing.assert_array_equal(traced, got)


@pytest.mark.parametrize("n", [1, 2, 24, 4099, 768 * 3072, 2**30 + 7])
def test_quantile_position_is_exact(n):
  """k and frac of q (n - 1) for float32 q, against exact rationals; in
  float32 the product is 0.25 off for a 768 x 3072 matrix."""
  from fractions import Fraction

  from ortho_optax.transforms.quantile_clip import quantile_position
  rng = np.random.default_rng(n % 1000)
  qs = [0.0, 2.0**-8, 0.1, 0.5, 0.9, 0.999, 1.0] + list(rng.uniform(0, 1, 20))
  f = jax.jit(lambda q: quantile_position(q, n))
  for q in qs:
    q32 = np.float32(q)
    k, frac = f(q32)
    pos = Fraction(float(q32)) * (n - 1)
    whole = pos.numerator // pos.denominator
    assert int(k) == whole, (q, n)
    assert np.float32(frac) == np.float32(float(pos - whole)), (q, n)


def test_selection_quantile_with_ties_zeros_and_traced_q():
  from ortho_optax.transforms.quantile_clip import quantile_of_magnitudes
  x = np.array([[1, -1, 1, 2, -2, 3, 0, -0.0, 5], [0] * 9], np.float32)
  f = jax.jit(quantile_of_magnitudes)
  for q in np.linspace(0, 1, 17):
    np.testing.assert_allclose(
        f(jnp.asarray(x), jnp.float32(q)),
        np.quantile(np.abs(x), q, axis=-1), rtol=1e-6, atol=1e-7)


def test_complex_clips_magnitudes_and_keeps_phases():
  """For complex U the soft threshold U - sign(U) relu(|U| - tau), with
  sign(U) = U / |U|, clips |U| at tau (NumPy re-derivation)."""
  rng = np.random.default_rng(0)
  u = (rng.standard_t(2.0, (20, 30)) + 1j * rng.standard_t(2.0, (20, 30)))
  u = u.astype(np.complex64)
  tx = ortho_optax.clip_by_quantile(0.9)
  out, _ = tx.update(
      {"w": jnp.asarray(u)}, tx.init({"w": jnp.zeros(u.shape, u.dtype)})
  )
  tau = np.quantile(np.abs(u), 0.9, method="linear") + 1e-9
  mag = np.abs(u)
  soft = u - (u / mag) * np.maximum(mag - tau, 0.0)
  assert out["w"].dtype == jnp.complex64
  np.testing.assert_allclose(out["w"], soft, rtol=1e-5, atol=1e-6)
  assert 0.09 <= np.mean(mag > tau) <= 0.11
