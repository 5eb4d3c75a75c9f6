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
