"""Hermitian products as one triangle of blocks (engines/symmetric.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ortho_optax
from ortho_optax.engines import normalization as _normalization
from ortho_optax.engines import symmetric as _symmetric

FLOPS = ortho_optax.orthogonalize_flops
MATMUL = functools.partial(_normalization.matmul, compute_dtype=jnp.float32)


def _normal(shape, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape)
  if np.issubdtype(dtype, np.complexfloating):
    x = x + 1j * rng.standard_normal(shape)
  return x.astype(dtype)


@pytest.mark.parametrize(
    "m, expected",
    [(1, (1,)), (511, (511,)), (512, (256, 256)), (777, (259, 259, 259)),
     (1030, (258, 258, 257, 257)), (2048, (256,) * 8), (4096, (512,) * 8)],
)
def test_block_sizes(m, expected):
  assert _symmetric.block_sizes(m) == expected
  assert _symmetric.block_sizes(m, symmetric=False) == (m,)


@pytest.mark.parametrize("m", [7, 512, 777, 1030])
def test_product_flops_equal_traced(m):
  n = 16
  spec = jax.ShapeDtypeStruct((2, m, n), jnp.float32)
  counted = ortho_optax.count_matmul_flops(
      lambda x: _symmetric.hermitian_product(x, x, MATMUL), spec
  )
  assert counted == 2 * _symmetric.product_flops(m, n)
  k = len(_symmetric.block_sizes(m))
  # k (k + 1) / 2 of k^2 blocks (exact for equal blocks).
  if m % k == 0:
    assert _symmetric.product_flops(m, n) * 2 * k == 2 * m * m * n * (k + 1)


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
@pytest.mark.parametrize("shape", [(5, 3), (600, 24), (2, 777, 8), (1030, 4)])
def test_gram_equals_plain_product(shape, dtype):
  x = jnp.asarray(_normal(shape, dtype=dtype))
  got = _symmetric.hermitian_product(
      x, x, functools.partial(_normalization.matmul, compute_dtype=x.dtype)
  )
  want = np.asarray(x) @ np.swapaxes(np.asarray(x).conj(), -1, -2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  # Blocks below the diagonal blocks are mirrored: exactly Hermitian there.
  sizes = _symmetric.block_sizes(shape[-2])
  block = np.repeat(np.arange(len(sizes)), sizes)
  off = block[:, None] != block[None, :]
  got = np.asarray(got)
  np.testing.assert_array_equal(
      got[..., off], np.swapaxes(got.conj(), -1, -2)[..., off]
  )


def test_commuting_product_equals_plain():
  """P Q for polynomials P, Q in a Hermitian A (the Gram form's products)."""
  x = _normal((600, 700)).astype(np.float64)
  a = x @ x.T / 700
  p = 2 * a + a @ a
  q = a - 0.5 * a @ a @ a
  got = _symmetric.hermitian_product(
      jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32), MATMUL
  )
  np.testing.assert_allclose(got, p @ q, rtol=1e-4, atol=1e-3 * np.abs(p @ q).max())


@pytest.mark.parametrize("shape", [(512, 1536), (1030, 1030), (2, 600, 1800)])
@pytest.mark.parametrize(
    "method, options",
    [("newton_schulz", {}), ("newton_schulz", {"normalization": "spectral"}),
     ("newton_schulz", {"normalization": "aol"}),
     ("gram_newton_schulz", {}), ("gram_newton_schulz", {"restarts": ()}),
     ("auto", {"coeffs": "muon", "normalization": "frobenius"}),
     ("auon", {"hybrid_steps": 2})],
)
@pytest.mark.parametrize("symmetric", [True, False])
def test_flop_model_equals_traced(shape, method, options, symmetric):
  options = dict(options, symmetric=symmetric)
  spec = jax.ShapeDtypeStruct(shape, jnp.float32)
  counted = ortho_optax.count_matmul_flops(
      lambda x: ortho_optax.orthogonalize(x, method, **options), spec
  )
  assert FLOPS(shape, method, **options) == counted


@pytest.mark.parametrize("shape", [(1024, 4096), (2048, 2048)])
def test_flops_at_most_three_quarters(shape):
  """The issue's target: <= 0.75x today's (plain) orthogonalize FLOPs."""
  assert FLOPS(shape) <= 0.75 * FLOPS(shape, symmetric=False)
  assert ortho_optax.select_method(shape) == ortho_optax.select_method(
      shape, symmetric=False
  )


def test_small_matrices_keep_the_plain_product():
  for shape in [(64, 256), (511, 2048)]:
    assert FLOPS(shape) == FLOPS(shape, symmetric=False)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize(
    "method", ["newton_schulz", "gram_newton_schulz"]
)
def test_engine_equals_plain_and_svd_polar(method):
  """Same result as the plain products to rounding; same polar error.

  The Gram form amplifies float32 round-off (its plain products already
  differ from the standard form's by ~3e-4 here), so "to rounding" is
  measured against that difference, which the triangle does not exceed.
  """
  x = jnp.asarray(_normal((512, 1024), seed=3))
  sym = ortho_optax.orthogonalize(x, method)
  plain = ortho_optax.orthogonalize(x, method, symmetric=False)
  if method == "newton_schulz":
    assert _rel(sym, plain) < 1e-5
  else:
    standard = ortho_optax.orthogonalize(x, "newton_schulz", symmetric=False)
    rounding = _rel(plain, standard)
    assert _rel(sym, standard) <= 1.1 * rounding
    assert _rel(sym, plain) <= 2 * rounding
  u, _, vh = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
  polar = u @ vh
  err_sym = np.linalg.norm(np.asarray(sym, np.float64) - polar)
  err_plain = np.linalg.norm(np.asarray(plain, np.float64) - polar)
  assert err_sym <= 1.01 * err_plain
  assert err_sym / np.sqrt(512) < 0.2


def test_bad_symmetric_raises():
  with pytest.raises(TypeError, match="`symmetric`"):
    ortho_optax.newton_schulz(jnp.ones((4, 4)), symmetric="yes")


def test_default_is_per_backend():
  """Blocked products by default only where they measured faster (CPU)."""
  assert _symmetric.default_symmetric("cpu") is True
  for backend in ("gpu", "cuda", "rocm", "tpu", "METAL", "someday"):
    assert _symmetric.default_symmetric(backend) is False
  # These tests run on the CPU, whose default is unchanged.
  assert jax.default_backend() == "cpu"
  assert _symmetric.default_symmetric() is True
  assert _symmetric.resolve_symmetric(None, "gpu") is False
  assert _symmetric.resolve_symmetric(True, "gpu") is True
  assert _symmetric.resolve_symmetric(False, "cpu") is False
  with pytest.raises(TypeError, match="`backend`"):
    _symmetric.default_symmetric(3)


@pytest.mark.parametrize("shape", [(1024, 4096), (2048, 2048)])
def test_flop_model_of_another_backend_is_plain(shape):
  assert FLOPS(shape) == FLOPS(shape, symmetric=True)
  assert FLOPS(shape, backend="cpu") == FLOPS(shape, symmetric=True)
  assert FLOPS(shape, backend="gpu") == FLOPS(shape, symmetric=False)
  assert FLOPS(shape, backend="gpu") > FLOPS(shape)
  # Available by argument on every backend.
  assert FLOPS(shape, backend="gpu", symmetric=True) == FLOPS(shape)
  assert ortho_optax.select_method(shape, backend="gpu") == (
      ortho_optax.select_method(shape, symmetric=False)
  )


@pytest.mark.parametrize(
    "method", ["auto", "newton_schulz", "gram_newton_schulz"]
)
def test_traced_on_another_backend_gets_plain_products(method, monkeypatch):
  """The engines read the backend when traced: with ``jax.default_backend``
  saying ``"gpu"``, ``symmetric=None`` traces the plain products, the FLOP
  model (resolving the same default) agrees, and ``symmetric=True`` still
  gives the blocks."""
  shape = (512, 1024)
  spec = jax.ShapeDtypeStruct(shape, jnp.float32)

  def counted(**options):
    return ortho_optax.count_matmul_flops(
        lambda x: ortho_optax.orthogonalize(x, method, **options), spec
    )

  on_cpu = counted()
  assert on_cpu == FLOPS(shape, method, symmetric=True)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert counted() == FLOPS(shape, method, symmetric=False) == FLOPS(
      shape, method
  )
  assert counted() > on_cpu
  assert counted(symmetric=True) == on_cpu


def test_gpu_benchmark_line_says_when_to_flip(monkeypatch):
  """benchmarks/gpu.sh prints this line (orthogonalize.py --symmetric):
  the backend's default against the run's triangle / plain time."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  path = (pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
          / "orthogonalize.py")
  spec = importlib.util.spec_from_file_location("bench_orthogonalize", path)
  bench = importlib.util.module_from_spec(spec)
  # Its dataclasses look their module up in sys.modules.
  monkeypatch.setitem(sys.modules, spec.name, bench)
  spec.loader.exec_module(bench)
  gain = [((1024, 4096), 0.81), ((2048, 2048), 0.9)]
  loss = [((1024, 4096), 1.02), ((2048, 2048), 1.3)]
  noise = [((1024, 4096), 0.9), ((2048, 2048), 0.97)]
  line = bench.symmetric_default_line(gain)
  assert "'cpu': on" in line and "Consistent" in line, line
  assert "FLIP: this run says off" in bench.symmetric_default_line(loss)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  line = bench.symmetric_default_line(gain)
  assert "'gpu': off" in line and "FLIP: this run says on" in line, line
  assert "SYMMETRIC_DEFAULTS['gpu'] = True" in line
  assert "Consistent" in bench.symmetric_default_line(loss)
  assert "no change" in bench.symmetric_default_line(noise)
