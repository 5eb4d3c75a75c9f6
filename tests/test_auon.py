"""Tests of ``auon_orthogonalize`` (AuON and Hybrid-AuON, arXiv 2509.24320)."""

import engine_inputs as E
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ortho_optax

AUON = ortho_optax.auon_orthogonalize
ERR = jax.jit(ortho_optax.orthogonality_error)
CLASSES = tuple(E.INPUT_CLASSES)


def auon_reference(g, gamma=1.0, hybrid_steps=0, eps=1e-7):
  """The paper's formula in float64 numpy (spec newton_schulz.md §5).

  ``eps`` counts in units of ``2^floor(log2 max|g|)`` (the library's
  scale-free epsilon, see ``ortho_optax._normalization.prescale``).
  """
  g = np.asarray(g, np.float64)
  norm = np.sqrt(np.sum(g**2, axis=(-2, -1), keepdims=True))
  amax = np.max(np.abs(g), axis=(-2, -1), keepdims=True)
  safe = np.where(amax > 0, amax, 1)
  unit = np.where(amax > 0, 2.0 ** np.floor(np.log2(safe)), 1)
  x = g / (norm + eps * unit)
  if hybrid_steps:
    tall = x.shape[-2] > x.shape[-1]
    if tall:
      x = np.swapaxes(x, -1, -2)
    a, b, c = E.MUON_REF
    for _ in range(hybrid_steps):
      gram = x @ np.swapaxes(x, -1, -2)
      x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
      x = np.swapaxes(x, -1, -2)
  r = np.sqrt(np.mean(np.cosh(gamma * x) ** 2, axis=(-2, -1), keepdims=True))
  return x / (r + 1e-8)


@pytest.mark.parametrize("hybrid_steps", [0, 1, 2])
@pytest.mark.parametrize("gamma", [1.0, 1.5])
@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (2, 3, 8, 12)])
def test_matches_formula(shape, gamma, hybrid_steps):
  x_np = np.random.default_rng(0).standard_normal(shape)
  got = AUON(jnp.asarray(x_np, jnp.float32), gamma=gamma,
             hybrid_steps=hybrid_steps)
  want = auon_reference(x_np, gamma, hybrid_steps)
  assert got.shape == shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-5)


def test_matches_formula_fp64():
  x_np = E.power_law(16, 24)
  with E.x64():
    got = AUON(jnp.asarray(x_np), gamma=1.5, hybrid_steps=1)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, auon_reference(x_np, 1.5, 1),
                               atol=1e-12)


@pytest.mark.parametrize("kind", CLASSES)
def test_is_not_an_orthogonalization(kind):
  """Against polar_svd: AuON is a uniform rescaling of G / ||G||_F.

  Its singular values are the input's divided by ~||G||_F, so the polar
  error is far from 0 (spec §11: 0.96-0.995 at 512-4096; smaller matrices
  have fewer, larger normalized singular values, hence the looser bound).
  """
  x_np = E.make_input(kind, 64, 160)
  x = jnp.asarray(x_np, jnp.float32)
  y = AUON(x)
  err = ERR(y, x)
  assert 0.8 <= err["polar_error"] <= 1.0
  assert err["sv_max"] <= 1.0
  s_in = np.linalg.svd(x_np, compute_uv=False)
  s_out = np.linalg.svd(np.asarray(y, np.float64), compute_uv=False)
  ratio = s_out / s_in
  np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
  r = 1.0 / (ratio[0] * np.linalg.norm(x_np))
  # r = sqrt(mean cosh^2) is in [1, sqrt(1 + sinh(1)^2 / N)] ~ 1.
  assert 1.0 - 1e-6 <= r <= np.sqrt(1 + np.sinh(1.0) ** 2 / x_np.size) + 1e-6


def test_hybrid_moves_toward_polar():
  x = jnp.asarray(E.gaussian(64, 160, 1), jnp.float32)
  plain = ERR(AUON(x), x)["polar_error"]
  hybrid = ERR(AUON(x, hybrid_steps=5), x)["polar_error"]
  assert hybrid < plain
  # Five Muon steps then a near-1 scale: about Muon-ref's error.
  muon = ERR(ortho_optax.newton_schulz(x, coeffs="muon"), x)["polar_error"]
  np.testing.assert_allclose(hybrid, muon, atol=0.05)


@pytest.mark.parametrize("gamma", [1.0, 1.5])
def test_spiky_matrix(gamma):
  """One non-zero entry: X = e_11, r^2 = (cosh(gamma)^2 + N - 1) / N."""
  x = jnp.zeros((4, 5)).at[0, 0].set(3.0)
  y = AUON(x, gamma=gamma)
  n = 20
  r = np.sqrt((np.cosh(gamma) ** 2 + n - 1) / n)
  np.testing.assert_allclose(y[0, 0], 1.0 / (r + 1e-8), rtol=1e-6)
  assert float(jnp.sum(jnp.abs(y))) == pytest.approx(float(y[0, 0]))


@pytest.mark.parametrize("hybrid_steps", [0, 1])
def test_zero_matrix_maps_to_zero(hybrid_steps):
  for shape in [(4, 6), (6, 4), (2, 4, 6)]:
    y = AUON(jnp.zeros(shape), hybrid_steps=hybrid_steps)
    np.testing.assert_array_equal(y, np.zeros(shape))


def test_batched_equals_looped_and_jit():
  x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 12, 20)),
                  jnp.float32)
  want = jnp.stack([AUON(m, hybrid_steps=1) for m in x])
  np.testing.assert_allclose(AUON(x, hybrid_steps=1), want, atol=1e-6)
  jitted = jax.jit(AUON, static_argnames=("gamma", "hybrid_steps", "eps"))
  np.testing.assert_allclose(jitted(x, hybrid_steps=1), want, atol=1e-6)


def test_dtypes():
  x = jnp.asarray(E.gaussian(12, 20, 3), jnp.float32)
  y16 = AUON(x.astype(jnp.bfloat16), hybrid_steps=1)
  assert y16.dtype == jnp.bfloat16
  np.testing.assert_allclose(y16.astype(jnp.float32),
                             AUON(x, hybrid_steps=1), atol=2e-2)
  xc = x + 1j * jnp.asarray(E.gaussian(12, 20, 4), jnp.float32)
  yc = AUON(xc)
  assert yc.dtype == jnp.complex64
  assert np.all(np.isfinite(yc))


def test_positive_scale_invariance():
  x = jnp.asarray(E.gaussian(12, 20, 5), jnp.float32)
  np.testing.assert_allclose(AUON(1e-2 * x), AUON(x), atol=1e-6)
  np.testing.assert_allclose(AUON(1e3 * x), AUON(x), atol=1e-6)


@pytest.mark.parametrize(
    "x, kwargs, error, match",
    [
        (jnp.ones(4), {}, ValueError, "`x`.*rank"),
        (jnp.ones((4, 4), jnp.int32), {}, TypeError, "`x`"),
        (jnp.ones((4, 4)), {"hybrid_steps": -1}, ValueError, "`hybrid_steps`"),
        (jnp.ones((4, 4)), {"hybrid_steps": 1.0}, TypeError,
         "`hybrid_steps`"),
        (jnp.ones((4, 4)), {"hybrid_steps": True}, TypeError,
         "`hybrid_steps`"),
        (jnp.ones((4, 4)), {"eps": -1.0}, ValueError, "`eps`"),
    ],
)
def test_bad_input(x, kwargs, error, match):
  with pytest.raises(error, match=match):
    AUON(x, **kwargs)
