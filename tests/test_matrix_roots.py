"""Inverse roots by eigh, coupled Newton and PRISM; PRISM's polar engine.

References are float64 NumPy re-derivations: ``eigh`` of the same (rounded)
input with the same relative epsilon, and the SVD's ``U V^T``.
"""

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ortho_optax as oo
from ortho_optax.engines import matrix_roots as mr
from ortho_optax.engines import prism as pr

KAPPAS = (1.0, 1e2, 1e4, 1e6, 1e8)
SCALES = (1e-30, 1.0, 1e30)


def _spd(n, kappa, rng):
  """``Q diag(lambda) Q^T``, log-uniform ``lambda`` in [1 / kappa, 1]."""
  q, _ = np.linalg.qr(rng.standard_normal((n, n)))
  return (q * np.logspace(0.0, -np.log10(kappa), n)) @ q.T


def _reference(a, p, eps):
  """float64 ``(A + eps lambda_max I)^{-1/p}``, negative eigenvalues
  clipped to zero, as the ``eigh`` method does."""
  a = np.asarray(jnp.asarray(a, jnp.float32), np.float64)
  a = (a + np.swapaxes(a, -1, -2)) / 2
  lam, u = np.linalg.eigh(a)
  lam = np.maximum(lam, 0)
  shifted = lam + eps * lam.max(axis=-1, keepdims=True, initial=0.0)
  inv = np.where(shifted > 0, np.where(shifted > 0, shifted, 1)
                 ** (-1.0 / p), 0)
  return (u * inv[..., None, :]) @ np.swapaxes(u, -1, -2)


def _rel(x, ref):
  x = np.asarray(jnp.asarray(x, jnp.float32), np.float64)
  num = np.linalg.norm(x - ref, axis=(-2, -1))
  return num / np.maximum(np.linalg.norm(ref, axis=(-2, -1)), 1e-300)


@functools.cache
def _root(method, eps, **options):
  return jax.jit(functools.partial(
      mr.inverse_root, p=4, method=method, eps=eps, **options))


@functools.cache
def _batch(n=16):
  """kappa x scale, ``(5, 3, n, n)`` in float64."""
  rng = np.random.default_rng(0)
  base = np.stack([_spd(n, k, rng) for k in KAPPAS])
  return np.stack([base * c for c in SCALES], axis=1)


# ------------------------------------------------------------- accuracy


@pytest.mark.parametrize("method", ["newton", "prism"])
def test_inverse_4th_root_matches_float64_eigh(method):
  """Condition numbers 1..1e8, scales 1e-30..1e30, float32, eps=1e-6
  (condition number of A + eps lambda_max I up to 1e6): within 1e-3 at
  every condition number (the float32 eigh method is at 2.4e-2). Measured
  (16 x 16): 2.2e-4 / 3.1e-4 at kappa 1e6 and 6.1e-4 / 6.0e-4 at 1e8
  (newton / prism); before the tau split and the chunked matmul of the M
  update (matrix_roots' ``update``) 4.7e-4 / 5.8e-4 and 1.2e-3 / 1.3e-3.
  Deterministic (PRISM's sketch from a seed)."""
  x = jnp.asarray(_batch().astype(np.float32))
  out = _root(method, 1e-6)(x)
  err = _rel(out, _reference(x, 4, 1e-6))
  assert np.isfinite(err).all()
  for k, t in enumerate((1e-6, 1e-6, 1e-5, 4.5e-4, 8.5e-4)):
    assert err[k].max() <= t, (KAPPAS[k], err[k])
  np.testing.assert_array_equal(out, _root(method, 1e-6)(x))


@pytest.mark.parametrize("method", ["newton", "prism"])
def test_inverse_4th_root_kappa_1e8_eps_1e_6(method):
  """The benchmark's hardest case (benchmarks/matrix_roots.py, other
  draws): 32 x 32, log-uniform spectrum with condition number 1e8,
  eps=1e-6, 3 matrices x scales 1e-30, 1, 1e30, float32, against float64
  eigh. Measured: newton 6.7e-4, prism 6.0e-4; 1.06e-3 and 9.1e-4 with
  the tau split alone (no chunks), 1.62e-3 and 1.19e-3 before either (the
  rounding of A + eps lambda_max I alone costs ~3e-4)."""
  rng = np.random.default_rng(0)
  base = np.stack([_spd(32, 1e8, rng) for _ in range(3)])
  x = jnp.asarray(np.stack([base * c for c in SCALES], axis=1).astype(
      np.float32))
  err = _rel(_root(method, 1e-6)(x), _reference(x, 4, 1e-6))
  assert err.max() <= 8.5e-4, err


@pytest.mark.parametrize("n", [1, 3, 10])
def test_chunked_product(n):
  """The M update's chunked product equals the plain one to rounding,
  for sizes below, at and above the chunk count, and Hermitian blocks."""
  rng = np.random.default_rng(n)
  a = _spd(n, 1e2, rng)
  u = jnp.asarray(a @ a + a, jnp.float32)  # commutes with a
  v = jnp.asarray(a, jnp.float32)
  want = np.asarray(u, np.float64) @ np.asarray(v, np.float64)
  for symmetric in (True, False):
    got = np.asarray(mr._chunked_product(u, v, symmetric), np.float64)
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


def test_split_scalar():
  """update's tau: the power of two nearest the middle of [1, (1 +
  alpha)^p], exact, for a Python alpha (Newton's) and an array (PRISM's)."""
  assert float(mr._split_scalar(0.25, 4)) == 2.0
  assert float(mr._split_scalar(1.0, 1)) == 2.0
  alpha = jnp.asarray([0.25, 0.65, 1.0], jnp.float32)
  np.testing.assert_array_equal(mr._split_scalar(alpha, 4), [2.0, 4.0, 8.0])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["newton", "prism"])
def test_inverse_4th_root_eps_1e_5_all_kappas_within_1e_3(method):
  """eps=1e-5 keeps every condition number up to 1e8 within 1e-3 (measured
  <= 2e-4)."""
  x = jnp.asarray(_batch().astype(np.float32))
  err = _rel(_root(method, 1e-5)(x), _reference(x, 4, 1e-5))
  assert err.max() <= 1e-3, err


@pytest.mark.slow
@pytest.mark.parametrize("method", ["newton", "prism"])
def test_bfloat16_inputs(method):
  """bfloat16 inputs are rounded to a matrix that is indefinite by ~1e-3
  lambda_max once kappa > ~1e3; up to kappa=1e2 the root is within 1e-3 of
  the float64 root of the rounded matrix."""
  x = jnp.asarray(_batch()[:2].astype(np.float32)).astype(jnp.bfloat16)
  out = _root(method, 1e-5)(x)
  assert out.dtype == jnp.float32
  assert _rel(out, _reference(x, 4, 1e-5)).max() <= 1e-3


def test_float32_eigh_reference_method():
  """The eigh method in float32 against float64 (the table's baseline):
  within 1e-3 up to kappa=1e4 at eps=1e-6."""
  x = jnp.asarray(_batch()[:3].astype(np.float32))
  err = _rel(_root("eigh", 1e-6)(x), _reference(x, 4, 1e-6))
  assert err.max() <= 1e-3, err


def test_prism_needs_fewer_steps_and_flops_than_newton():
  """eps=1e-6: PRISM's default 11 steps do what Newton's 21 do (the
  accuracy test above), at 0.52x the FLOPs."""
  assert mr.default_steps(4, 1e-6, "prism") == 11
  assert mr.default_steps(4, 1e-6, "newton") == 21
  ratio = (mr.inverse_root_flops((256, 256), "prism")
           / mr.inverse_root_flops((256, 256), "newton"))
  assert 0.5 < ratio < 0.55


@pytest.mark.slow
def test_newton_with_prisms_steps_is_far_off_and_seeds_agree():
  x = jnp.asarray(_batch()[4, 1].astype(np.float32))
  ref = _reference(x, 4, 1e-6)
  assert _rel(_root("newton", 1e-6, steps=11)(x), ref) > 0.1
  a = _root("prism", 1e-6)(x)
  b = _root("prism", 1e-6, seed=7)(x)
  assert 0 < np.abs(np.asarray(a - b)).max()
  assert max(_rel(a, ref), _rel(b, ref)) <= 3e-3


@pytest.mark.slow
@pytest.mark.parametrize("method", ["newton", "prism"])
def test_bound_frobenius(method):
  """Distributed Shampoo's start (c = 2 ||A||_F / (p + 1)) converges to the
  same root (with more steps for a flat spectrum)."""
  x = jnp.asarray(_batch()[:4, 1].astype(np.float32))
  out = mr.inverse_root(x, 4, method=method, eps=1e-5, bound="frobenius",
                        steps=30)
  assert _rel(out, _reference(x, 4, 1e-5)).max() <= 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("p", [1, 2, 3])
def test_other_powers(p):
  x = jnp.asarray(_batch()[:3, 1].astype(np.float32))
  ref = _reference(x, p, 1e-5)
  for method in ("newton", "prism"):
    out = mr.inverse_root(x, p, method=method, eps=1e-5)
    assert _rel(out, ref).max() <= 1e-3, (method, p)


# ------------------------------------------------------- edge cases


@pytest.mark.parametrize("method", ["newton", "prism"])
def test_zero_and_indefinite_in_one_batch(method):
  """A zero matrix maps to zeros; a matrix with a negative eigenvalue (not
  PSD: the guard stops its iteration) stays finite. (2, 16, 16), the
  shape of the property test below: no new compilation."""
  rng = np.random.default_rng(3)
  q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
  lam = np.logspace(0, -3, 16)
  lam[-1] = -0.3
  bad = (q * lam) @ q.T
  x = jnp.asarray(np.stack([np.zeros((16, 16)), bad]), jnp.float32)
  out = np.asarray(_root(method, 1e-6)(x))
  np.testing.assert_array_equal(out[0], 0.0)
  assert np.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["newton", "prism"])
def test_one_by_one_and_empty(method):
  f = functools.partial(mr.inverse_root, p=4, method=method)
  for shape in [(0, 0), (3, 0, 0), (0, 4, 4)]:
    assert f(jnp.zeros(shape)).shape == shape
  one = f(jnp.asarray([[[16.0]], [[1e-30]]]), eps=0.0)
  np.testing.assert_allclose(one[:, 0, 0], [0.5, 1e30**0.25], rtol=1e-6)


def test_errors():
  a = jnp.eye(3)
  with pytest.raises(ValueError, match="`method`"):
    mr.inverse_root(a, 4, method="schur")
  with pytest.raises(ValueError, match="`bound`"):
    mr.inverse_root(a, 4, method="newton", bound="gershgorin")
  with pytest.raises(ValueError, match="`steps`"):
    mr.inverse_root(a, 4, method="newton", steps=0)
  with pytest.raises(ValueError, match="`sketch_size`"):
    mr.inverse_root(a, 4, method="prism", sketch_size=0)
  with pytest.raises(ValueError, match="`seed`"):
    mr.inverse_root(a, 4, method="prism", seed=-1)
  with pytest.raises(TypeError, match="`power_iterations`"):
    mr.inverse_root(a, 4, method="newton", power_iterations=2.5)
  with pytest.raises(ValueError, match="`a`"):
    mr.inverse_root(jnp.ones((3, 4)), 4, method="newton")
  with pytest.raises(ValueError, match="`shape`"):
    mr.inverse_root_flops((3, 4), "newton")
  with pytest.raises(ValueError, match="`method`"):
    mr.default_steps(4, 1e-6, "eigh")
  with pytest.raises(ValueError, match="`sketch_size`"):
    pr.prism(jnp.ones((3, 4)), sketch_size=0)
  with pytest.raises(ValueError, match="`normalization`"):
    oo.orthogonalize(jnp.ones((3, 4)), "prism", normalization="l1")


# ---------------------------------------------------------- FLOP models


@pytest.mark.parametrize("method", mr.METHODS)
@pytest.mark.parametrize("p", [1, 3, 4])
def test_inverse_root_flops_equal_the_jaxpr(method, p):
  cases = [((3, 16, 16), jnp.float32, {}),
           ((600, 600), jnp.float32, dict(steps=4)),
           ((5, 5), jnp.complex64, dict(bound="frobenius", eps=0.0)),
           ((7, 7), jnp.float32, dict(steps=2, sketch_size=3,
                                      symmetric=False,
                                      power_iterations=5))]
  for shape, dt, options in cases:
    spec = jax.ShapeDtypeStruct(shape, dt)
    counted = oo.count_matmul_flops(
        lambda a, o=options: mr.inverse_root(a, p, method=method, **o),
        spec)
    want = mr.inverse_root_flops(shape, method, p=p, dtype=dt, **options)
    assert counted == want, (shape, options)


def test_inverse_root_flop_formula():
  """Plain products, p = 4: (steps - 1) * 4 + 1 products of 2 n^3, the
  power iteration's 101 matrix-vector products and PRISM's 5 sketches of
  8 columns per step."""
  n, k = 64, 9
  newton = mr.inverse_root_flops((n, n), "newton", steps=k, symmetric=False)
  assert newton == ((k - 1) * 4 + 1) * 2 * n**3 + 101 * 2 * n * n
  prism = mr.inverse_root_flops((n, n), "prism", steps=k, symmetric=False)
  assert prism - newton == k * 5 * 2 * n * n * 8
  assert mr.inverse_root_flops((2, n, n), "eigh") == 2 * 2 * n**3


@pytest.mark.parametrize("shape", [(16, 40), (40, 16), (2, 16, 16),
                                   (600, 700)])
def test_prism_polar_flops_equal_the_jaxpr(shape):
  for options in ({}, dict(normalization="spectral", steps=3,
                           sketch_size=4),
                  dict(normalization="frobenius", symmetric=False)):
    spec = jax.ShapeDtypeStruct(shape, jnp.float32)
    counted = oo.count_matmul_flops(
        lambda x, o=options: oo.orthogonalize(x, "prism", **o), spec)
    assert counted == oo.orthogonalize_flops(shape, "prism", **options)
  m, n = sorted(shape[-2:])
  if m < 512:
    assert oo.orthogonalize_flops(shape, "prism", steps=2) == (
        np.prod(shape[:-2], dtype=int) * 2
        * (4 * m * m * n + 2 * m**3 + 5 * 2 * m * m * 8))


# ------------------------------------------------------ PRISM, polar


def _polar(x):
  u, _, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
  return u @ vt


@functools.cache
def _orth(**options):
  return jax.jit(functools.partial(oo.orthogonalize, method="prism",
                                   **options))


def test_prism_polar_factor_matches_svd():
  """Gaussian 24 x 64: within 1e-4 of U V^T after PRISM's 5 steps, where
  Polar Express's 5-step table is at ~0.09."""
  x = np.random.default_rng(0).standard_normal((2, 24, 64)).astype(
      np.float32)
  ref = _polar(x)
  five = _rel(_orth()(jnp.asarray(x)), ref)
  pe = _rel(oo.orthogonalize(jnp.asarray(x), "newton_schulz",
                             normalization="schatten4"), ref)
  assert five.max() <= 1e-4 and pe.min() > 0.03, (five, pe)


@pytest.mark.slow
def test_prism_polar_factor_power_law_spectrum():
  """Power-law singular values (i^-2.2, three decades), wide and tall:
  within 1e-4 after 10 steps."""
  rng = np.random.default_rng(0)
  u, _ = np.linalg.qr(rng.standard_normal((24, 24)))
  v, _ = np.linalg.qr(rng.standard_normal((64, 24)))
  x = ((u / np.arange(1, 25) ** 2.2) @ v.T).astype(np.float32)
  ref = _polar(x)
  assert _rel(_orth(steps=10)(jnp.asarray(x)), ref) <= 1e-4
  assert _rel(_orth(steps=10)(jnp.asarray(x.T)), ref.T) <= 1e-4


def test_prism_polar_edge_cases():
  """Zero matrix to zero, x1e30 gives the unit-scale result, in one
  batch; deterministic."""
  x = np.random.default_rng(1).standard_normal((6, 10)).astype(np.float32)
  batch = jnp.asarray(np.stack([np.zeros_like(x), x, x * 1e30]))
  f = _orth()
  out = np.asarray(f(batch))
  np.testing.assert_array_equal(out[0], 0.0)
  np.testing.assert_allclose(out[2], out[1], atol=1e-5)
  np.testing.assert_array_equal(out, np.asarray(f(batch)))
  assert f(jnp.zeros((0, 5))).shape == (0, 5)


@pytest.mark.slow
def test_prism_polar_bfloat16():
  y = oo.orthogonalize(jnp.ones((8, 16), jnp.bfloat16), "prism",
                       compute_dtype=jnp.bfloat16)
  assert y.dtype == jnp.bfloat16
  assert np.isfinite(np.asarray(y, np.float32)).all()


# --------------------------------------------------- property tests


@hypothesis.settings(max_examples=6, deadline=None, derandomize=True)
@hypothesis.given(
    method=st.sampled_from(["newton", "prism"]),
    log_kappa=st.floats(0.0, 8.0),
    log_scales=st.lists(st.floats(-30.0, 30.0), min_size=2, max_size=2),
    seed=st.integers(0, 2**16),
)
def test_property_kappa_and_scales(method, log_kappa, log_scales, seed):
  """Random spectra (condition number 1..1e8) and scales 1e-30..1e30 in
  one (2, 16, 16) batch, so one compilation per method: within 3e-3 of
  the float64 root, never NaN/inf."""
  a = _spd(16, 10.0**log_kappa, np.random.default_rng(seed))
  x = jnp.asarray(np.stack([a * 10.0**c for c in log_scales]), jnp.float32)
  out = np.asarray(_root(method, 1e-6)(x))
  assert np.isfinite(out).all()
  assert _rel(out, _reference(x, 4, 1e-6)).max() <= 3e-3


@pytest.mark.slow
@hypothesis.settings(max_examples=12, deadline=None, derandomize=True)
@hypothesis.given(
    method=st.sampled_from(["newton", "prism"]),
    n=st.integers(0, 9),
    batch=st.sampled_from([(), (2,), (0,)]),
    log_scale=st.floats(-30.0, 30.0),
    seed=st.integers(0, 2**16),
)
def test_property_shapes_and_scales(method, n, batch, log_scale, seed):
  """Wishart matrices of random shapes (zero-size, 1 x 1, batched) and
  scales 1e-30..1e30: the float64 root within 1e-3 (eps=1e-4), never
  NaN/inf."""
  rng = np.random.default_rng(seed)
  g = rng.standard_normal(batch + (n, n + 2))
  a = (g @ np.swapaxes(g, -1, -2) * 10.0**log_scale).astype(np.float32)
  x = jnp.asarray(a)
  out = np.asarray(mr.inverse_root(x, 4, method=method, eps=1e-4))
  assert out.shape == a.shape and np.isfinite(out).all()
  if out.size:
    assert _rel(out, _reference(x, 4, 1e-4)).max() <= 1e-3


@pytest.mark.slow
def test_muon_with_prism():
  """Muon can use PRISM: method="prism" reaches the engine (its update's
  singular values are equal, as a polar factor's are)."""
  params = {"w": jnp.zeros((8, 12)), "b": jnp.zeros((12,))}
  grads = {"w": jax.random.normal(jax.random.key(0), (8, 12)),
           "b": jnp.ones((12,))}
  tx = oo.muon(0.02, method="prism", steps=6)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  s = np.linalg.svd(np.asarray(updates["w"]), compute_uv=False)
  assert np.isfinite(s).all() and s.max() / s.min() < 1 + 1e-4


@pytest.mark.slow
def test_traced_eps():
  """eps may be traced (optax.inject_hyperparams under jit): the default
  steps are then float32's floor's, and the root is the concrete eps's."""
  x = jnp.asarray(_batch()[3, 1].astype(np.float32))
  ref = _reference(x, 4, 1e-6)
  for method in ("newton", "prism"):
    out = jax.jit(lambda a, e, m=method: mr.inverse_root(
        a, 4, method=m, eps=e))(x, 1e-6)
    assert _rel(out, ref) <= 1e-3, method
