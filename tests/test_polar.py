"""Tests of ``polar_svd`` (the exact oracle) and ``orthogonality_error``."""

import engine_inputs as E
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ortho_optax

POLAR = ortho_optax.polar_svd
ERR = ortho_optax.orthogonality_error
CLASSES = tuple(E.INPUT_CLASSES)


# --- polar_svd ----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(48, 80), (80, 48), (64, 64), (1, 9)])
@pytest.mark.parametrize("kind", CLASSES)
def test_exact_to_1e5_in_float32(kind, shape):
  x_np = E.make_input(kind, *shape)
  y = POLAR(jnp.asarray(x_np, jnp.float32))
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(y, E.polar_f64(x_np), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (32, 32)])
@pytest.mark.parametrize("kind", CLASSES)
def test_polar_decomposition_properties_fp64(kind, shape):
  """Y has orthonormal rows/columns and H = Y^T X is symmetric PSD, X = Y H."""
  x_np = E.make_input(kind, *shape, seed=1)
  with E.x64():
    y = np.asarray(POLAR(jnp.asarray(x_np)))
  m, n = shape
  gram = y @ y.T if m <= n else y.T @ y
  np.testing.assert_allclose(gram, np.eye(min(m, n)), atol=1e-10)
  h = y.T @ x_np
  np.testing.assert_allclose(h, h.T, atol=1e-10)
  assert np.linalg.eigvalsh(h).min() > -1e-10
  np.testing.assert_allclose(y @ h, x_np, atol=1e-10)


def test_complex_input():
  x_np = E.gaussian(24, 40, 2) + 1j * E.gaussian(24, 40, 3)
  y = POLAR(jnp.asarray(x_np, jnp.complex64))
  assert y.dtype == jnp.complex64
  np.testing.assert_allclose(y, E.polar_f64(x_np), atol=1e-5)
  y = np.asarray(y)
  np.testing.assert_allclose(y @ y.conj().T, np.eye(24), atol=1e-5)
  h = y.conj().T @ x_np
  np.testing.assert_allclose(h, h.conj().T, atol=1e-4)


@pytest.mark.parametrize("shape", [(20, 32), (32, 20)])
def test_rank_deficient_gives_partial_isometry(shape):
  """Numerically zero singular values map to 0 (what NS converges to)."""
  rank = 5
  sigma = np.r_[np.linspace(1.0, 0.5, rank), np.zeros(min(shape) - rank)]
  x_np = E.with_spectrum(*shape, sigma, seed=4)
  y = POLAR(jnp.asarray(x_np, jnp.float32))
  s = np.linalg.svd(np.asarray(y, np.float64), compute_uv=False)
  np.testing.assert_allclose(s[:rank], 1.0, atol=1e-5)
  np.testing.assert_allclose(s[rank:], 0.0, atol=1e-5)
  u, _, vh = np.linalg.svd(x_np)
  np.testing.assert_allclose(y, u[:, :rank] @ vh[:rank], atol=1e-5)
  # Newton-Schulz agrees on the rank-deficient input.
  ns = ortho_optax.newton_schulz(jnp.asarray(x_np, jnp.float32),
                                 coeffs="polar_express_paper")
  np.testing.assert_allclose(ns, y, atol=1e-3)


@pytest.mark.parametrize("shape", [(4, 6), (3, 4, 6), (1, 1)])
def test_zero_matrix_maps_to_zero(shape):
  y = POLAR(jnp.zeros(shape))
  np.testing.assert_array_equal(y, np.zeros(shape))


def test_batched_equals_looped():
  x = jnp.asarray(np.random.default_rng(5).standard_normal((2, 3, 12, 20)),
                  jnp.float32)
  want = jnp.stack([POLAR(m) for m in x.reshape(-1, 12, 20)])
  np.testing.assert_allclose(POLAR(x), want.reshape(x.shape), atol=1e-6)


def test_dtype_preserved_and_jit():
  x = jnp.asarray(E.gaussian(16, 24, 6), jnp.float32)
  y16 = POLAR(x.astype(jnp.bfloat16))
  assert y16.dtype == jnp.bfloat16
  np.testing.assert_allclose(y16.astype(jnp.float32), POLAR(x), atol=1e-2)
  np.testing.assert_allclose(jax.jit(POLAR)(x), POLAR(x), atol=1e-6)
  with E.x64():
    assert POLAR(jnp.asarray(E.gaussian(4, 6))).dtype == jnp.float64


@pytest.mark.parametrize(
    "x, error, match",
    [(jnp.ones(3), ValueError, "`x`.*rank"),
     (jnp.ones((3, 3), jnp.int32), TypeError, "`x`.*dtype")],
)
def test_bad_input(x, error, match):
  with pytest.raises(error, match=match):
    POLAR(x)


# --- orthogonality_error ------------------------------------------------------


def test_error_of_exact_polar_is_zero():
  x = jnp.asarray(E.ill_conditioned(32, 48), jnp.float32)
  err = ERR(POLAR(x), x)
  assert set(err) == {"sv_min", "sv_max", "polar_error"}
  assert err["polar_error"] < 1e-5
  np.testing.assert_allclose((err["sv_min"], err["sv_max"]), 1.0, atol=1e-5)


def test_error_values_match_definition():
  x_np = E.gaussian(20, 36, 7)
  y_np = E.gaussian(20, 36, 8) * 0.1 + E.polar_f64(x_np)
  err = ERR(jnp.asarray(y_np, jnp.float32), jnp.asarray(x_np, jnp.float32))
  ref = E.polar_f64(x_np)
  want = np.linalg.norm(y_np - ref) / np.linalg.norm(ref)
  s = np.linalg.svd(y_np, compute_uv=False)
  np.testing.assert_allclose(err["polar_error"], want, rtol=1e-5)
  np.testing.assert_allclose(err["sv_min"], s.min(), rtol=1e-5)
  np.testing.assert_allclose(err["sv_max"], s.max(), rtol=1e-5)


def test_scaled_polar_has_error_c_minus_1():
  x = jnp.asarray(E.power_law(16, 16), jnp.float32)
  err = ERR(2.0 * POLAR(x), x)
  np.testing.assert_allclose(err["polar_error"], 1.0, atol=1e-5)
  np.testing.assert_allclose((err["sv_min"], err["sv_max"]), 2.0, atol=1e-5)


def test_batch_shape_and_tall_input():
  x = jnp.asarray(np.random.default_rng(9).standard_normal((2, 3, 20, 8)),
                  jnp.float32)
  err = ERR(POLAR(x), x)
  for v in err.values():
    assert v.shape == (2, 3)
  assert np.all(err["polar_error"] < 1e-5)


def test_accepts_bfloat16_and_complex():
  x = jnp.asarray(E.gaussian(12, 20, 10), jnp.float32)
  err = ERR(POLAR(x).astype(jnp.bfloat16), x.astype(jnp.bfloat16))
  assert err["polar_error"] < 1e-2
  xc = jnp.asarray(E.gaussian(12, 20, 11) + 1j * E.gaussian(12, 20, 12),
                   jnp.complex64)
  assert ERR(POLAR(xc), xc)["polar_error"] < 1e-5


def test_zero_input_gives_no_nan():
  z = jnp.zeros((5, 7))
  err = ERR(z, z)
  for v in err.values():
    assert np.isfinite(v)
  assert err["polar_error"] == 0.0


@pytest.mark.parametrize(
    "y, x, error, match",
    [(jnp.ones((3, 4)), jnp.ones((4, 3)), ValueError, "`y` and `x`"),
     (jnp.ones(3), jnp.ones((3, 3)), ValueError, "`y`"),
     (jnp.ones((3, 3)), jnp.ones(3), ValueError, "`x`"),
     (jnp.ones((3, 3), jnp.int32), jnp.ones((3, 3)), TypeError, "`y`")],
)
def test_error_bad_input(y, x, error, match):
  with pytest.raises(error, match=match):
    ERR(y, x)
