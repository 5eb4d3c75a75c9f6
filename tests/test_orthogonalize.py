"""Tests of the dispatcher, the "auto" choice and the FLOP cost model."""

import engine_inputs as E
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax.contrib._muon as optax_muon
import pytest

import ortho_optax

ORTH = ortho_optax.orthogonalize
FLOPS = ortho_optax.orthogonalize_flops
SELECT = ortho_optax.select_method
ERR = jax.jit(ortho_optax.orthogonality_error)
NORMALIZATIONS = ("frobenius", "spectral", "aol", "schatten4")
METHODS = ("auto", "newton_schulz", "gram_newton_schulz", "polar_svd", "auon")


def optax_ns_flops(shape):
  """optax.contrib Muon-ref, 5 steps: 5 (4 m^2 n + 2 m^3) per matrix."""
  *batch, m, n = shape
  m, n = sorted((m, n))
  return int(np.prod(batch, dtype=np.int64)) * 5 * (4 * m * m * n + 2 * m**3)


def optax_ns(x):
  return optax_muon.orthogonalize_via_newton_schulz(
      x, jnp.asarray((3.4445, -4.7750, 2.0315)), 5, eps=1e-8
  )


def counted(shape, method, dtype=jnp.float32, **options):
  """Matmul FLOPs traced from ``orthogonalize`` (no computation runs)."""
  spec = jax.ShapeDtypeStruct(shape, dtype)
  return ortho_optax.count_matmul_flops(
      lambda x: ORTH(x, method, **options), spec
  )


# --- FLOP model == FLOPs counted from the jaxpr -------------------------------

SHAPES = [(64, 256), (256, 64), (96, 96), (2, 3, 32, 80), (1, 7), (7, 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize(
    "options",
    [{}, {"coeffs": "muon"}, {"coeffs": "dion", "steps": 3},
     {"coeffs": "polar_express_paper"}, {"coeffs": "turbo"},
     {"coeffs": np.asarray(E.DION_5[:2])}],
    ids=["pe", "muon", "dion3", "pe_paper8", "turbo", "array"],
)
def test_flops_newton_schulz(shape, normalization, options):
  options = dict(options, normalization=normalization)
  assert FLOPS(shape, "newton_schulz", **options) == counted(
      shape, "newton_schulz", **options
  )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize(
    "steps, restarts",
    [(None, None), (None, ()), (None, (1,)), (None, (2, 4)),
     (None, (1, 2, 3, 4)), (8, None), (8, (3,)), (1, None), (2, (1,))],
)
def test_flops_gram(shape, normalization, steps, restarts):
  coeffs = "polar_express_paper" if steps == 8 else "polar_express"
  options = dict(coeffs=coeffs, steps=steps, restarts=restarts,
                 normalization=normalization)
  assert FLOPS(shape, "gram_newton_schulz", **options) == counted(
      shape, "gram_newton_schulz", **options
  )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("hybrid_steps", [0, 1, 3])
def test_flops_auon(shape, hybrid_steps):
  assert FLOPS(shape, "auon", hybrid_steps=hybrid_steps) == counted(
      shape, "auon", hybrid_steps=hybrid_steps
  )


@pytest.mark.parametrize("shape", SHAPES)
def test_flops_polar_svd(shape):
  assert FLOPS(shape, "polar_svd") == counted(shape, "polar_svd")


@pytest.mark.parametrize(
    "shape", SHAPES + [(512, 2048), (2048, 512), (512, 512), (1024, 4096),
                       (4, 256, 1024)])
@pytest.mark.parametrize(
    "options",
    [{}, {"compute_dtype": jnp.bfloat16}, {"coeffs": "dion"},
     {"normalization": "frobenius"}, {"restarts": (1, 3)},
     {"coeffs": "turbo"}, {"steps": 8, "coeffs": "polar_express_paper"}],
    ids=["default", "bf16", "dion", "frobenius", "restarts", "turbo", "pe8"],
)
def test_flops_auto(shape, options):
  assert FLOPS(shape, "auto", **options) == counted(shape, "auto", **options)
  assert FLOPS(shape, **options) == FLOPS(shape, "auto", **options)


def test_flops_complex_is_four_times_real():
  shape = (24, 40)
  real = FLOPS(shape, "newton_schulz")
  assert counted(shape, "newton_schulz", jnp.complex64) == 4 * real
  # The model says so too (it counted the real arithmetic before).
  assert FLOPS(shape, "newton_schulz", dtype=jnp.complex64) == 4 * real


@pytest.mark.parametrize("shape", [(512, 2048), (96, 96), (3, 40, 24)])
def test_optax_baseline_formula(shape):
  spec = jax.ShapeDtypeStruct(shape, jnp.float32)
  fn = optax_ns if len(shape) == 2 else jax.vmap(optax_ns)
  assert ortho_optax.count_matmul_flops(fn, spec) == optax_ns_flops(shape)


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (512, 512)])
def test_standard_ns_flop_formula(shape):
  """5 steps cost (20 alpha + 10) m^3 with plain products (spec §10)."""
  m, n = sorted(shape)
  assert FLOPS(shape, "newton_schulz", symmetric=False) == (
      (20 * n // m + 10) * m**3
  )


@pytest.mark.parametrize(
    "shape, gflop_std, gflop_gram",
    [((1024, 4096), 96.6, 64.4), ((2048, 8192), 773, 515)],
)
def test_spec_flop_examples(shape, gflop_std, gflop_gram):
  """Spec §10: GFLOP for 5 iterations, standard / Gram with one restart."""
  plain = dict(symmetric=False)
  np.testing.assert_allclose(FLOPS(shape, "newton_schulz", **plain) / 1e9,
                             gflop_std, rtol=2e-3)
  np.testing.assert_allclose(
      FLOPS(shape, "gram_newton_schulz", **plain) / 1e9, gflop_gram,
      rtol=2e-3,
  )
  # No restart: the spec's (4 alpha + 34) m^3.
  m, n = shape
  np.testing.assert_allclose(
      FLOPS(shape, "gram_newton_schulz", restarts=(), **plain),
      (4 * n / m + 34) * m**3, rtol=1e-12,
  )


# --- The auto choice ----------------------------------------------------------


@pytest.mark.parametrize(
    "shape, method, max_ratio",
    [((512, 2048), "gram_newton_schulz", 0.7),
     ((2048, 512), "gram_newton_schulz", 0.7),
     ((1024, 4096), "gram_newton_schulz", 0.7),
     ((8, 512, 2048), "gram_newton_schulz", 0.7),
     ((512, 512), "newton_schulz", 1.0)],
)
def test_auto_choice_and_flop_ratio_vs_optax(shape, method, max_ratio):
  assert SELECT(shape, jnp.float32) == method
  assert FLOPS(shape, "auto") / optax_ns_flops(shape) <= max_ratio


def test_auto_break_even_at_alpha_1_5():
  # (20 alpha + 10) m^3 vs (8 alpha + 28) m^3: equal at alpha = 1.5 (the
  # tie goes to the standard form).
  assert FLOPS((64, 96), "newton_schulz") == FLOPS((64, 96),
                                                    "gram_newton_schulz")
  assert SELECT((64, 96)) == "newton_schulz"
  assert SELECT((64, 100)) == "gram_newton_schulz"
  assert SELECT((64, 64)) == "newton_schulz"


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
    batch=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    m=st.integers(1, 4096),
    n=st.integers(1, 4096),
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16]),
    compute_dtype=st.sampled_from([None, jnp.bfloat16, jnp.float16]),
)
def test_auto_never_gram_in_half_precision(batch, m, n, dtype, compute_dtype):
  shape = tuple(batch) + (m, n)
  half = dtype != jnp.float32 or compute_dtype is not None
  method = SELECT(shape, dtype, compute_dtype=compute_dtype)
  if half:
    assert method == "newton_schulz"
  ratio = FLOPS(shape, compute_dtype=compute_dtype) / optax_ns_flops(shape)
  assert ratio <= 1.0  # never more than optax's Newton-Schulz


def test_auto_never_gram_for_bfloat16_arrays():
  x = jnp.asarray(E.gaussian(32, 160), jnp.float32)
  want = ortho_optax.newton_schulz(x, normalization="schatten4",
                                   compute_dtype=jnp.bfloat16)
  np.testing.assert_array_equal(ORTH(x, compute_dtype=jnp.bfloat16), want)
  want16 = ortho_optax.newton_schulz(x.astype(jnp.bfloat16),
                                     normalization="schatten4")
  np.testing.assert_array_equal(ORTH(x.astype(jnp.bfloat16)), want16)


def test_auto_runs_the_selected_engine_with_its_defaults():
  wide = jnp.asarray(E.gaussian(32, 160), jnp.float32)
  square = jnp.asarray(E.gaussian(48, 48), jnp.float32)
  np.testing.assert_array_equal(
      ORTH(wide),
      ortho_optax.gram_newton_schulz(wide, coeffs="polar_express",
                                     normalization="schatten4"),
  )
  np.testing.assert_array_equal(
      ORTH(square),
      ortho_optax.newton_schulz(square, coeffs="polar_express",
                                normalization="schatten4"),
  )
  # Same polynomial either way: the choice changes cost, not the result.
  np.testing.assert_allclose(
      ORTH(wide),
      ortho_optax.newton_schulz(wide, normalization="schatten4"),
      atol=1e-4,
  )


def test_auto_keeps_other_normalizations():
  x = jnp.asarray(E.gaussian(32, 48), jnp.float32)
  np.testing.assert_array_equal(
      ORTH(x, coeffs="turbo"), ortho_optax.newton_schulz(x, coeffs="turbo")
  )
  np.testing.assert_array_equal(
      ORTH(x, normalization="frobenius"),
      ortho_optax.newton_schulz(x, normalization="frobenius"),
  )


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (96, 96)])
@pytest.mark.parametrize("kind", tuple(E.INPUT_CLASSES))
def test_auto_is_at_least_as_accurate_as_optax(kind, shape):
  x = jnp.asarray(E.make_input(kind, *shape), jnp.float32)
  ours = ERR(ORTH(x), x)
  ref = ERR(optax_ns(x), x)
  assert ours["polar_error"] <= ref["polar_error"]
  assert ours["sv_max"] <= 1.1411 + 1e-3  # PE-5's published maximum


# --- Dispatch -----------------------------------------------------------------


def test_dispatch_to_each_engine():
  x = jnp.asarray(E.power_law(24, 40), jnp.float32)
  cases = [
      ("newton_schulz", {"coeffs": "dion"},
       ortho_optax.newton_schulz(x, coeffs="dion")),
      ("gram_newton_schulz", {"restarts": (1,)},
       ortho_optax.gram_newton_schulz(x, restarts=(1,))),
      ("polar_svd", {}, ortho_optax.polar_svd(x)),
      ("auon", {"hybrid_steps": 1},
       ortho_optax.auon_orthogonalize(x, hybrid_steps=1)),
  ]
  for method, options, want in cases:
    np.testing.assert_array_equal(ORTH(x, method, **options), want)
    np.testing.assert_array_equal(ORTH(x, method=method, **options), want)


@pytest.mark.parametrize("method", METHODS)
def test_zero_matrix_maps_to_zero(method):
  for shape in [(6, 10), (10, 6), (2, 6, 6)]:
    y = ORTH(jnp.zeros(shape), method)
    np.testing.assert_array_equal(y, np.zeros(shape))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0), (3, 0, 4)])
def test_zero_size_input_is_returned(method, shape):
  """An empty matrix is its own (empty) polar factor, for every engine and
  normalization (the norms' reductions have no identity on it)."""
  x = jnp.zeros(shape, jnp.float32)
  options = [{}]
  if method in ("newton_schulz", "gram_newton_schulz"):
    options = [dict(normalization=n) for n in
               ("frobenius", "spectral", "aol", "schatten4")]
  for opts in options:
    y = ORTH(x, method, **opts)
    assert y.shape == shape and y.dtype == x.dtype


@pytest.mark.parametrize("method", METHODS)
def test_jit_shape_and_dtype(method):
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 16, 40)),
                  jnp.float32)
  y = jax.jit(lambda x: ORTH(x, method))(x)
  assert y.shape == x.shape and y.dtype == x.dtype
  np.testing.assert_allclose(y, ORTH(x, method), atol=1e-4)


# --- Bad input ----------------------------------------------------------------


def test_unknown_method():
  x = jnp.ones((4, 4))
  with pytest.raises(ValueError, match="`method`"):
    ORTH(x, "svd")
  with pytest.raises(ValueError, match="`method`"):
    ORTH(x, method=None)
  with pytest.raises(ValueError, match="`method`"):
    FLOPS((4, 4), "nope")


@pytest.mark.parametrize(
    "fn", [lambda: SELECT((4,)), lambda: FLOPS((4,)),
           lambda: FLOPS((4,), "newton_schulz")])
def test_shape_rank_below_two(fn):
  with pytest.raises(ValueError, match="`shape`"):
    fn()


@pytest.mark.parametrize(
    "x, method, options, error, match",
    [
        (jnp.ones(4), "auto", {}, ValueError, "`x`"),
        (jnp.ones((4, 4), jnp.int32), "auto", {}, TypeError, "`x`"),
        (jnp.ones((4, 4)), "auto", {"steps": 0}, ValueError, "`steps`"),
        (jnp.ones((4, 4)), "auto", {"coeffs": "nope"}, ValueError,
         "`coeffs`"),
        (jnp.ones((4, 4)), "auto", {"normalization": "x"}, ValueError,
         "`normalization`"),
        (jnp.ones((4, 16)), "auto", {"restarts": (7,)}, ValueError,
         "`restarts`"),
        (jnp.ones((4, 16)), "auto", {"compute_dtype": jnp.int32}, TypeError,
         "`compute_dtype`"),
        (jnp.ones((4, 4)), "newton_schulz", {"coeffs": np.ones((3, 4))},
         ValueError, "`coeffs`"),
        (jnp.ones((4, 16)), "gram_newton_schulz", {"restarts": (0,)},
         ValueError, "`restarts`"),
        (jnp.ones((4, 4)), "auon", {"hybrid_steps": -1}, ValueError,
         "`hybrid_steps`"),
        (jnp.ones((4, 4)), "polar_svd", {"steps": 3}, TypeError, "steps"),
    ],
)
def test_bad_input(x, method, options, error, match):
  with pytest.raises(error, match=match):
    ORTH(x, method, **options)


@pytest.mark.parametrize(
    "method, options, error, match",
    [("newton_schulz", {"steps": 0}, ValueError, "`steps`"),
     ("newton_schulz", {"coeffs": (1.0, 2.0)}, ValueError, "`coeffs`"),
     ("gram_newton_schulz", {"restarts": (5,)}, ValueError, "`restarts`"),
     ("auto", {"steps": 1.5}, TypeError, "`steps`")],
)
def test_bad_flop_options(method, options, error, match):
  with pytest.raises(error, match=match):
    FLOPS((8, 16), method, **options)
