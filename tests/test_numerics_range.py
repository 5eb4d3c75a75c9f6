"""Numerics over the whole finite range of the dtype (issue 11, class 1).

Orthogonalization does not depend on the input's scale, and neither may the
implementation: ``orthogonalize(c X)`` must agree with ``orthogonalize(X)``
from the smallest normal number up to ``finfo.max / max|X|``, for every
engine and normalization, in float32, bfloat16 and float16; and an
optimizer must never turn finite gradients into a non-finite, zero or
shrunken step. The matrices are small, so each case compiles quickly; the
scales of one case go through one batched call (each matrix of a batch is
scaled on its own).
"""

import functools
import os
import sys

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ortho_optax as oo

sys.path.insert(0, os.path.dirname(__file__))
from parity_second_order_test import ShampooReference  # noqa: E402
from parity_second_order_test import SoapReference  # noqa: E402

# (id, method, options): every engine, and newton_schulz with each
# normalization.
ENGINES = [
    ("ns-frobenius", "newton_schulz", dict(normalization="frobenius")),
    ("ns-spectral", "newton_schulz", dict(normalization="spectral")),
    ("ns-aol-turbo", "newton_schulz", dict(coeffs="turbo")),
    ("ns-schatten4", "newton_schulz", dict(normalization="schatten4")),
    ("gram-frobenius", "gram_newton_schulz", dict(normalization="frobenius")),
    ("gram-aol", "gram_newton_schulz", dict(normalization="aol")),
    ("auto", "auto", {}),
    ("polar_svd", "polar_svd", {}),
    ("auon", "auon", {}),
    ("hybrid_auon", "auon", dict(hybrid_steps=1)),
    ("prism", "prism", {}),
]
ENGINE_IDS = [e[0] for e in ENGINES]
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
          "float16": jnp.float16}
# Relative Frobenius distance allowed between orthogonalize(c X) and
# orthogonalize(X): the output's rounding (measured: <= 4e-6 in float32 and
# 0 in the half-precision types for every engine).
TOL = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 1e-2}


@functools.cache
def _engine(method, **options):
  return jax.jit(functools.partial(oo.orthogonalize, method=method, **options))


def _run_engine(engine_id, x):
  _, method, options = ENGINES[ENGINE_IDS.index(engine_id)]
  return _engine(method, **options)(x)


def _f64(x):
  return np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)


def _rel_dist(a, b):
  """Per-matrix ``||a - b||_F / ||b||_F`` over the last two axes."""
  num = np.linalg.norm(a - b, axis=(-2, -1))
  return num / np.maximum(np.linalg.norm(b, axis=(-2, -1)), 1e-30)


def _few_bit_matrix(rng, shape):
  """Entries +-{1..8}: ``c X`` is exact in every dtype for the ``c`` below,
  and ``min|X| >= 1``, so no entry of ``c X`` is subnormal (XLA flushes
  those to zero on CPU and GPU) for any ``c >= finfo.tiny``."""
  return rng.integers(1, 9, shape) * rng.choice([-1.0, 1.0], shape)


# ------------------------------------------------------------ scale invariance


@pytest.mark.parametrize("engine_id", ENGINE_IDS)
@hypothesis.settings(max_examples=4, deadline=None, derandomize=True)
@hypothesis.given(
    dtype=st.sampled_from(sorted(DTYPES)),
    seed=st.integers(0, 2**16),
    exps=st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6),
    mantissas=st.lists(st.sampled_from([1.0, 1.25, 1.5, 1.75]), min_size=6,
                       max_size=6),
)
def test_scale_invariance(engine_id, dtype, seed, exps, mantissas):
  """``orthogonalize(c X) == orthogonalize(X)`` for c in [tiny, max / max|X|]."""
  dt = DTYPES[dtype]
  fi = jnp.finfo(dt)
  rng = np.random.default_rng(seed)
  x = _few_bit_matrix(rng, (6, 10))
  lo, hi = np.log2(float(fi.tiny)), np.log2(float(fi.max) / 8 / 1.75)
  # Always the two ends of the range, then the drawn scales.
  ks = np.concatenate([[lo, np.floor(hi)], lo + np.asarray(exps) * (hi - lo)])
  cs = np.asarray([1.0, 1.0] + mantissas) * 2.0 ** np.floor(ks)
  batch = np.concatenate([x[None], cs[:, None, None] * x[None]])
  xb = jnp.asarray(batch.astype(np.float32)).astype(dt)
  np.testing.assert_array_equal(_f64(xb), batch)  # c X is exact
  out = _f64(_run_engine(engine_id, xb))
  assert np.isfinite(out).all()
  dist = _rel_dist(out[1:], out[:1])
  assert dist.max() <= TOL[dtype], (cs, dist)


# ---------------------------------------------------- zero matrices (the floor)


@pytest.mark.parametrize("engine_id", ENGINE_IDS)
@pytest.mark.parametrize("eps", [None, 0.0])
def test_zero_matrix_and_extreme_scales_in_one_batch(engine_id, eps):
  """The documented floor: zero in, zero out, also with ``eps=0``; an AOL
  zero row stays zero. Each matrix of a batch is scaled on its own: x1e30
  and x1e-30 next to a zero matrix give the unit-scale result."""
  _, method, options = ENGINES[ENGINE_IDS.index(engine_id)]
  if eps is not None:
    if method == "polar_svd":
      pytest.skip("polar_svd has no eps")
    options = dict(options, eps=eps)
  rng = np.random.default_rng(1)
  x = rng.standard_normal((6, 9)).astype(np.float32)
  x[2] = 0.0  # a zero row (AOL rescales rows)
  xb = jnp.asarray(np.stack([np.zeros_like(x), x, x * 1e30, x * 1e-30]))
  out = _f64(_engine(method, **options)(xb))
  assert np.isfinite(out).all()
  np.testing.assert_array_equal(out[0], 0.0)
  # (polar_svd: the SVD's round-off, ~1e-7)
  np.testing.assert_allclose(out[1:, 2], 0.0, atol=1e-6)
  assert _rel_dist(out[2:], out[1:2]).max() <= 1e-4
  assert np.linalg.norm(out[1]) > 0.5


# --------------------------------------------------------------------- fuzzing


def _not_collapsed(engine_id, y):
  """The output's scale is the engine's, whatever the input's."""
  s = np.linalg.svd(y, compute_uv=False)
  if engine_id in ("auon", "hybrid_auon"):
    # X / ||X||_F (after one Muon step for the hybrid, which maps the
    # singular values into [0, 3.5]) rescaled by 1 / r, r in [1, cosh(1)]:
    # 1.54 for a 1 x 1 matrix, 1 + O(1 / mn) for larger ones.
    fro = np.linalg.norm(y, axis=(-2, -1))
    return (fro > 0.5).all() and (fro < 4.0).all()
  return (s[..., 0] > 0.6).all() and (s[..., 0] < 1.5).all()


@hypothesis.settings(max_examples=20, deadline=None, derandomize=True)
@hypothesis.given(
    engine_id=st.sampled_from(ENGINE_IDS),
    m=st.integers(1, 64),
    n=st.integers(1, 64),
    seed=st.integers(0, 2**16),
    log_scales=st.lists(st.floats(-20.0, 20.0), min_size=3, max_size=3),
)
def test_fuzz_shapes_and_scales(engine_id, m, n, seed, log_scales):
  """Random shapes 1..64 and scales 1e-20..1e20 (float32): never NaN/inf,
  never a collapsed output, and the unit-scale result at every scale."""
  x = np.random.default_rng(seed).standard_normal((m, n))
  scales = np.asarray([1.0] + log_scales)
  xb = jnp.asarray(((10.0**scales)[:, None, None] * x).astype(np.float32))
  out = _f64(_run_engine(engine_id, xb))
  assert np.isfinite(out).all()
  assert _not_collapsed(engine_id, out)
  assert _rel_dist(out[1:], out[:1]).max() <= 1e-4


# ------------------------------------------------- the issue's named examples


def test_issue_examples_engines():
  x = jax.random.normal(jax.random.key(0), (16, 32))
  ns, auto = _engine("newton_schulz"), _engine("auto")
  ref = np.asarray(ns(x))
  # newton_schulz(x * 1e30) was all zeros.
  np.testing.assert_allclose(ns(x * 1e30), ref, atol=1e-5)
  # A single 1e19 entry made orthogonalize NaN: the matrix is then rank one
  # to float32 precision, its polar factor the unit spike.
  spike = x.at[2, 5].set(1e19)
  out = np.asarray(auto(spike))
  assert np.isfinite(out).all()
  np.testing.assert_allclose(out, np.asarray(oo.polar_svd(spike)), atol=0.1)
  # orthogonalize(x * 1e-8) collapsed (largest singular value 0.16).
  np.testing.assert_allclose(auto(x * 1e-8), auto(x), atol=1e-4)
  # float16 8 x 16 times 100: NaN in orthogonalize, spectral and AOL.
  h = jax.random.normal(jax.random.key(1), (8, 16)) * 100
  for method, options in [("auto", {}),
                          ("newton_schulz", dict(normalization="spectral")),
                          ("newton_schulz", dict(normalization="aol")),
                          ("newton_schulz", dict(normalization="schatten4"))]:
    f = _engine(method, **options)
    got = _f64(f(h.astype(jnp.float16)))
    want = _f64(f(h))
    assert np.isfinite(got).all(), (method, options)
    assert _rel_dist(got, want) < 2e-2, (method, options)


# --------------------------------------------------------------- matrix roots


@pytest.mark.parametrize("dtype, method", [
    (dtype, method) if (dtype, method) != ("float16", "eigh")
    else pytest.param(dtype, method, marks=pytest.mark.slow)
    for dtype in ("float32", "float16")
    for method in ("eigh", "newton", "prism")
])
def test_inverse_root_does_not_depend_on_the_scale(method, dtype):
  """``inverse_root(c A) = c^{-1/4} inverse_root(A)`` for ``c = 2^{4k}``
  from the dtype's smallest normal number to its largest over ``max|A|``
  (``A = B B^T`` with small-integer ``B``, so ``c A`` is exact), in one
  batch: finite, and equal to the unit-scale root to float32 rounding.
  (bfloat16 has float32's range; the eigh method passes too, measured.)"""
  dt = DTYPES[dtype]
  fi = jnp.finfo(dt)
  b = np.random.default_rng(4).integers(-2, 3, (6, 8)).astype(np.float64)
  a = b @ b.T
  lo = int(np.ceil(np.log2(float(fi.tiny)) / 4))
  hi = int(np.floor(np.log2(float(fi.max) / np.abs(a).max()) / 4))
  ks = np.unique(np.linspace(lo, hi, 7).astype(int))
  cs = 2.0 ** (4.0 * ks)
  batch = jnp.asarray((cs[:, None, None] * a).astype(np.float32)).astype(dt)
  np.testing.assert_array_equal(_f64(batch), cs[:, None, None] * a)
  out = np.asarray(oo.inverse_root(batch, 4, method=method, eps=1e-4),
                   np.float64)
  assert np.isfinite(out).all()
  unit = out * cs[:, None, None] ** 0.25
  assert _rel_dist(unit, unit[:1]).max() <= 1e-5, (ks, _rel_dist(unit,
                                                                 unit[:1]))


# ------------------------------------------------------------------ transforms


@pytest.mark.parametrize(
    "norm", ["frobenius", "col_norm", "row_norm", "bias_rms", "spectral"]
)
def test_lmo_duals_do_not_depend_on_the_scale(norm):
  """Scion's divided duals: the same direction at every scale (bias_rms
  shrank to 0.43x at 1e-7, to ~0 at 1e-20, and was 0 above 1e19: its eps
  was absolute and |d|^2 overflowed); zeros stay zeros with eps=0."""
  rng = np.random.default_rng(2)
  w = rng.standard_normal((3, 6, 8)).astype(np.float32)
  b = rng.standard_normal((8,)).astype(np.float32)
  w[1, 2] = 0.0  # a zero row
  tx = oo.scale_by_lmo(
      {"w": norm, "b": "bias_rms" if norm != "spectral" else norm},
      eps=0.0, method="polar_svd",
  )
  update = jax.jit(lambda t: tx.update(t, tx.init(t))[0])
  ref = update({"w": jnp.asarray(w), "b": jnp.asarray(b)})
  for c in (1e-20, 1e-7, 1e20, 3e38 / 4.5):
    got = update({"w": jnp.asarray(w * np.float32(c)),
                  "b": jnp.asarray(b * np.float32(c))})
    for k in ("w", "b"):
      np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6,
                                 err_msg=f"{k} at {c}")
  zero = update({"w": jnp.zeros_like(w), "b": jnp.zeros_like(b)})
  for k in ("w", "b"):
    np.testing.assert_array_equal(zero[k], 0.0)


def test_quantile_clip_is_scale_free():
  """ROOT's threshold quantile + 1e-9 counts 1e-9 in units of max|U|: an
  absolute 1e-9 exceeded every entry of a momentum of ~1e-10 and turned the
  clipping off."""
  u = np.random.default_rng(3).standard_t(2.0, (10, 20)).astype(np.float32)
  tx = oo.clip_by_quantile(0.9)
  clip = jax.jit(lambda t: tx.update(t, tx.init(t))[0]["w"])
  ref = np.asarray(clip({"w": jnp.asarray(u)}), np.float64)
  assert np.mean(np.abs(ref) < np.abs(u)) > 0.05  # it does clip
  for k in (-100, -40, -33, 40, 100):
    c = 2.0**k
    got = clip({"w": jnp.asarray(u * np.float32(c))})
    np.testing.assert_allclose(np.asarray(got, np.float64) / c, ref,
                               rtol=1e-6, err_msg=str(c))


@pytest.mark.parametrize("form, bias_correction", [
    ("sum", False), ("ema", False), ("ema", True)])
def test_momentum_saturates_instead_of_overflowing(form, bias_correction):
  """A sum of finite gradients may exceed the dtype's range (the sum form
  grows to 20 g, optax's bias correction divides by 1 - beta^t): it
  saturates at +-finfo.max with the gradient's sign, never inf or NaN."""
  tx = oo.scale_by_momentum(0.95, form=form, bias_correction=bias_correction)
  g = jnp.asarray([[3e38, -3e38, 1.0], [-3e38, 3e38, -1.0]], jnp.float32)
  state = tx.init(g)
  for t in range(3):
    out, state = tx.update(g if t < 2 else -g, state)
    assert np.isfinite(np.asarray(out)).all()
    assert np.isfinite(np.asarray(state.mu)).all()
  big = np.asarray(out)[:, :2]
  np.testing.assert_array_equal(np.sign(big), -np.sign(np.asarray(g)[:, :2]))
  # float16 buffer with float16 gradients ~6e4 (sum form: 1.95 g = inf).
  tx = oo.scale_by_momentum(0.95, form=form, bias_correction=bias_correction)
  h = jnp.full((2, 3), 6e4, jnp.float16)
  out, state = tx.update(h, tx.init(h))
  assert out.dtype == jnp.float16
  assert np.isfinite(np.asarray(out, np.float32)).all()
  assert (np.asarray(out, np.float32) > 0).all()


# ----------------------------------------------------------------- optimizers

OPTIMIZERS = {
    "muon": oo.muon,
    "turbo_muon": oo.turbo_muon,
    "root": oo.root,
    "normuon": oo.normuon,
    "adamuon": oo.adamuon,
    "scion": oo.scion,
    "trust_region": oo.trust_region,
    "auon": oo.auon,
    "hybrid_auon": oo.hybrid_auon,
}


@functools.cache
def _optimizer(name, lr=0.02):
  tx = OPTIMIZERS[name](lr)
  return tx, jax.jit(tx.update)


def _updates(name, params, grads):
  """The updates of each step for a sequence of gradient trees."""
  tx, update = _optimizer(name)
  state = tx.init(params)
  out = []
  for g in grads:
    u, state = update(g, state, params)
    params = optax.apply_updates(params, u)
    out.append(u)
  return out, params


def _matrix_grads(shape, steps, scale=1.0, dtype=jnp.float32, seed=0):
  key = jax.random.key(seed)
  return [
      {"w": (jax.random.normal(jax.random.fold_in(key, t), shape)
             * scale).astype(dtype)}
      for t in range(steps)
  ]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@hypothesis.settings(max_examples=5, deadline=None, derandomize=True)
@hypothesis.given(log_scale=st.floats(-20.0, 20.0))
@hypothesis.example(log_scale=-9.0)
@hypothesis.example(log_scale=-7.0)
@hypothesis.example(log_scale=20.0)
def test_matrix_updates_do_not_depend_on_the_gradient_scale(name, log_scale):
  """Every optimizer's matrix step is the same for gradients c G as for G,
  c in 1e-20..1e20 (it was zero above ~1e19, NaN for turbo_muon at 1e20,
  and shrank for turbo_muon below 1e-6 and for root below ~1e-10)."""
  params = {"w": jnp.full((8, 12), 0.1, jnp.float32)}
  ref, _ = _updates(name, params, _matrix_grads((8, 12), 2))
  got, final = _updates(name, params,
                        _matrix_grads((8, 12), 2, scale=10.0**log_scale))
  assert np.isfinite(np.asarray(final["w"])).all()
  for u, r in zip(got, ref):
    np.testing.assert_allclose(u["w"], r["w"], rtol=2e-4, atol=1e-6)


def test_turbo_muon_first_step_norm_is_flat():
  """The issue's numbers: 64 x 128, update norm 0.226 / 0.093 / 0.0097 for
  gradients x1, x1e-6, x1e-7 (AOL's eps was absolute); muon down to 1e-9."""
  params = {"w": jnp.zeros((64, 128), jnp.float32)}
  for name, scales in (("turbo_muon", (1e-6, 1e-7)),
                       ("muon", (1e-6, 1e-7, 1e-9))):
    norms = [
        float(jnp.linalg.norm(
            _updates(name, params, _matrix_grads((64, 128), 1, c))[0][0]["w"]
        ))
        for c in (1.0,) + scales
    ]
    np.testing.assert_allclose(norms[1:], norms[0], rtol=1e-4)
    if name == "turbo_muon":
      assert 0.2 < norms[0] < 0.25


def test_muon_momentum_recovers_from_one_huge_gradient():
  """One gradient x1e30, then normal ones: every later update is nonzero
  (it was exactly zero) and has the norm of a normal step."""
  params = {"w": jnp.zeros((16, 32), jnp.float32)}
  grads = _matrix_grads((16, 32), 4)
  grads[0] = {"w": grads[0]["w"] * 1e30}
  ups, final = _updates("muon", params, grads)
  ref, _ = _updates("muon", params, _matrix_grads((16, 32), 1))
  ref_norm = float(jnp.linalg.norm(ref[0]["w"]))
  for u in ups:
    assert float(jnp.linalg.norm(u["w"])) == pytest.approx(ref_norm, rel=0.1)
  assert np.isfinite(np.asarray(final["w"])).all()


def test_root_with_gradients_at_the_float32_limit():
  """+-3e38 gradients: the sum-form momentum (up to 1.95 g) overflowed to
  inf and ROOT wrote NaN into the parameters. It saturates now, so the
  first step is the one of +-1 gradients and later steps stay finite."""
  key = jax.random.key(3)
  signs = [jnp.sign(jax.random.normal(jax.random.fold_in(key, t), (8, 12)))
           for t in range(3)]
  params = {"w": jnp.full((8, 12), 0.1, jnp.float32),
            "b": jnp.zeros((12,), jnp.float32)}
  big = [{"w": s * 3e38, "b": s[0] * 3e38} for s in signs]
  unit = [{"w": s, "b": s[0]} for s in signs]
  ups, final = _updates("root", params, big)
  ref, _ = _updates("root", params, unit)
  assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(final))
  np.testing.assert_allclose(ups[0]["w"], ref[0]["w"], rtol=1e-5, atol=1e-7)
  ref_norm = float(jnp.linalg.norm(ref[0]["w"]))
  for u in ups[1:]:
    assert float(jnp.linalg.norm(u["w"])) > 0.5 * ref_norm


def test_float16_params_with_gradients_of_300():
  """float16 matrices, gradients ~300 (256, so that they are the float16
  gradients ~1 scaled exactly; the Gram matrix's entries overflow float16):
  every optimizer stays finite for several steps (turbo_muon was NaN) and
  takes the steps of the gradients ~1."""
  params = {"w": jnp.full((16, 128), 0.1, jnp.float16)}
  unit_grads = _matrix_grads((16, 128), 3, 1.0, jnp.float16)
  big_grads = [{"w": g["w"] * jnp.float16(256)} for g in unit_grads]
  for name in sorted(OPTIMIZERS):
    big, final = _updates(name, params, big_grads)
    unit, _ = _updates(name, params, unit_grads)
    assert np.isfinite(np.asarray(final["w"], np.float32)).all(), name
    for u, r in zip(big, unit):
      assert _rel_dist(_f64(u["w"]), _f64(r["w"])) < 2e-3, name


@pytest.mark.parametrize("name", ["muon", "adamuon"])
def test_float16_adamw_leaves_take_finite_nonzero_steps(name):
  """float16 vectors on the AdamW branch with gradients of 300 and 1e-3:
  optax.adamw's float16 moments gave zero steps for the first (v = inf)
  and infinite ones for the second (v = 0, eps = 0 in float16)."""
  params = {"w": jnp.full((16, 32), 0.1, jnp.float16),
            "b": jnp.zeros((32,), jnp.float16)}
  b = jnp.where(jnp.arange(32) % 2 == 0, 300.0, 1e-3).astype(jnp.float16)
  grads = [{"w": g["w"], "b": b}
           for g in _matrix_grads((16, 32), 3, dtype=jnp.float16)]
  ups, final = _updates(name, params, grads)
  for u in ups:
    ub = np.asarray(u["b"], np.float32)
    assert np.isfinite(ub).all() and (ub != 0).all()
  assert all(np.isfinite(np.asarray(v, np.float32)).all()
             for v in jax.tree.leaves(final))


# ----------------------------------------------- second-order preconditioners

SECOND_ORDER = {
    "shampoo": (oo.shampoo, {}),
    "soap": (oo.soap, {}),
    "shampoo-q4-every2": (
        oo.shampoo, dict(precond_dtype="q4", precondition_every=2)
    ),
    "soap-q4-every2": (
        oo.soap,
        dict(precond_dtype="q4", precondition_every=2, precondition_warmup=0),
    ),
}
# Each leaf's gradients, as the binade of each of 4 steps: constant scales
# 2^-99..2^99 (1.6e-30..6.3e29), and jumps by 2^67 (1.5e20) up or down
# after two steps. Each is compared with the first of its group.
_SCALE_GROUPS = {
    "constant": [(k,) * 4 for k in (0, -99, -66, -33, 33, 66, 99)],
    "up": [(a, a, a + 67, a + 67) for a in (-33, -99, 32)],
    "down": [(a, a, a - 67, a - 67) for a in (34, 99, -32)],
}


def _rel_frobenius(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


@pytest.mark.parametrize("name", [
    n if "-" not in n else pytest.param(n, marks=pytest.mark.slow)
    for n in sorted(SECOND_ORDER)])
def test_second_order_updates_do_not_depend_on_the_gradient_scale(name):
  """Shampoo's and SOAP's steps for gradients 2^k G, k = -99..99, and for
  gradients that jump by 2^67 between steps, are those of G (relative
  1e-5; measured <= 1.8e-6, SOAP exactly): their statistics G G^T
  overflowed above ~1e19 (a NaN update from finite gradients) and
  underflowed below ~1e-19 (a zero update). One batch: each matrix keeps
  its own unit. Powers of two keep the gradients exact: the updates of
  16 x 24 matrices with rank-deficient statistics move by up to 5e-3
  (Shampoo) and 0.5 (SOAP's Adam in an eigenbasis of the null space, which
  eigh picks at random) under a round-off of G, at any scale."""
  factory, kwargs = SECOND_ORDER[name]
  tx = factory(0.02, **kwargs)
  leaves = [(group, i, ks) for group, rows in _SCALE_GROUPS.items()
            for i, ks in enumerate(rows)]
  names = [f"{group}{i}" for group, i, _ in leaves]
  # The reference: a second run in which every leaf has its group's first
  # scales. Leaf by leaf, so that a leaf's stochastic rounding (quantized
  # SOAP's statistics: one draw per leaf) is the same in both runs.
  scales = {n: ks for n, (_, _, ks) in zip(names, leaves)}
  ref_scales = {n: _SCALE_GROUPS[group][0]
                for n, (group, _, _) in zip(names, leaves)}
  params = {n: jnp.zeros((16, 24), jnp.float32) for n in names}
  key = jax.random.key(0)
  runs = {k: [tx.init(params), params] for k in ("scaled", "reference")}
  update = jax.jit(tx.update)
  for t in range(4):
    base = np.asarray(jax.random.normal(jax.random.fold_in(key, t), (16, 24)))
    u = {}
    for k, ks in (("scaled", scales), ("reference", ref_scales)):
      state, p = runs[k]
      g = {n: jnp.asarray((base * 2.0 ** ks[n][t]).astype(np.float32))
           for n in names}
      u[k], state = update(g, state, p)
      runs[k] = [state, optax.apply_updates(p, u[k])]
    for n in names:
      got = np.asarray(u["scaled"][n])
      assert np.isfinite(got).all(), (n, t)
      if t > 0 or name.startswith("shampoo"):  # SOAP's first step is zero
        assert np.abs(got).max() > 0, (n, t)
      err = _rel_frobenius(got, u["reference"][n])
      assert err <= 1e-5, (n, t, err)
  assert all(np.isfinite(np.asarray(x)).all()
             for x in jax.tree.leaves(runs["scaled"][0]))


@pytest.mark.parametrize("name", ["shampoo", "soap"])
def test_second_order_across_a_1e20_jump_matches_float64(name):
  """Two steps at 2^-83 (1e-25), then two at 2^-16: the statistics of the
  small steps (their squares ~1e-50 were zero in float32) are kept; and
  two at 2^83, then two at 2^16 (squares ~1e50 overflowed). Every update,
  refreshes after the jump included, is the float64 reference's (8 x 8:
  full-rank statistics, well-posed). The references see the gradients
  times 2^-+50: SOAP's adds 1e-30 I to its statistics before eigh (the
  authors' code), and their updates do not depend on the scale
  otherwise."""
  kw = dict(b1=0.9, b2=0.95, precondition_every=2, precondition_warmup=0)
  if name == "shampoo":
    tx = oo.scale_by_shampoo(eps=1e-3, graft_eps=0.0, **kw)
    refs = {k: ShampooReference((8, 8), b1=0.9, b2=0.95, eps=1e-3,
                                graft_eps=0.0, every=2) for k in ("up", "down")}
  else:
    tx = oo.scale_by_soap(eps=0.0, **kw)
    refs = {k: SoapReference((8, 8), b1=0.9, b2=0.95, eps=0.0, freq=2)
            for k in ("up", "down")}
  exps = {"up": (-83, -83, -16, -16), "down": (83, 83, 16, 16)}
  shift = {"up": 2.0**50, "down": 2.0**-50}
  params = {k: jnp.zeros((8, 8), jnp.float32) for k in refs}
  state = tx.init(params)
  update = jax.jit(tx.update)
  rng = np.random.default_rng(5)
  for t in range(4):
    base = rng.standard_normal((8, 8)).astype(np.float32)
    g = {k: base * np.float32(2.0 ** exps[k][t]) for k in refs}
    u, state = update(jax.tree.map(jnp.asarray, g), state)
    for k, ref in refs.items():
      want = ref(g[k].astype(np.float64) * shift[k])
      got = np.asarray(u[k], np.float64)
      assert np.isfinite(got).all(), (k, t)
      if name == "soap" and t == 0:
        np.testing.assert_array_equal(got, 0.0)
        continue
      assert _rel_frobenius(got, want) <= 1e-4, (k, t)
    if t == 1:  # the small steps' statistics: finite and not zero
      for field in ("left", "right", "nu"):
        x = np.asarray(getattr(state, field)["up"])
        assert np.isfinite(x).all() and np.abs(x).max() > 0, field
