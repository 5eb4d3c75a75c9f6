"""Tests of ``ortho_optax.state.storage`` and ``transforms.adam``."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ortho_optax
from ortho_optax.state import quantized as Q
from ortho_optax.state import storage as S
from ortho_optax.transforms import adam as _adam

# ------------------------------------------------------------- as_storage


@pytest.mark.parametrize(
    "value, want",
    [
        (None, None),
        (jnp.float32, np.dtype("float32")),
        ("bfloat16", np.dtype(jnp.bfloat16)),
        (np.float16, np.dtype("float16")),
        ("q8", Q.QuantFormat("q8")),
        (Q.QuantFormat("q4", 64, True), Q.QuantFormat("q4", 64, True)),
    ],
)
def test_as_storage_accepts(value, want):
  assert S.as_storage(value, "mu_dtype") == want


def test_complex_storage_where_the_transform_keeps_it():
  assert S.as_storage(jnp.complex64, "mu_dtype") == np.dtype("complex64")
  assert S.as_storage("complex128", "nu_dtype", second_moment=True) == (
      np.dtype("complex128"))
  with pytest.raises(TypeError, match="`mu_dtype` must be None, a floating"
                     " dtype.*complex64"):
    S.as_storage(jnp.complex64, "mu_dtype", complex_ok=False)
  assert S.as_storage("q8", "mu_dtype", complex_ok=True) == Q.QuantFormat(
      "q8")
  with pytest.raises(TypeError, match="`mu_dtype` must be None, a floating"
                     " or complex dtype.*integer dtype int8"):
    S.as_storage(jnp.int8, "mu_dtype", complex_ok=True)


def test_second_moment_takes_the_unsigned_code():
  assert S.as_storage("q8", "nu_dtype", second_moment=True) == Q.QuantFormat(
      "u8"
  )
  fmt = Q.QuantFormat("q4", block_size=64, stochastic=True)
  assert S.as_storage(fmt, "nu", second_moment=True) == Q.QuantFormat(
      "u4", 64, True
  )
  assert S.as_storage("u8", "nu", second_moment=True) == Q.QuantFormat("u8")


@pytest.mark.parametrize(
    "value, error, match",
    [
        (jnp.int8, TypeError, "`mu_dtype`.*integer dtype int8.*'q8'"),
        ("int8", TypeError, "`mu_dtype`.*integer dtype int8.*'q8'"),
        ("uint8", TypeError, "`mu_dtype`.*integer dtype uint8"),
        (jnp.int32, TypeError, "`mu_dtype`.*integer dtype int32"),
        (jnp.bool_, TypeError, "`mu_dtype`.*integer dtype bool"),
        ("q16", TypeError, "`mu_dtype`.*'q16'"),
        (3, TypeError, "`mu_dtype`"),
        ("u8", ValueError, "`mu_dtype`.*unsigned"),
    ],
)
def test_as_storage_refuses(value, error, match):
  with pytest.raises(error, match=match):
    S.as_storage(value, "mu_dtype")


@pytest.mark.parametrize(
    "storage, leaf, real_values, match",
    [
        ("complex64", "float32", False, r"`mu_dtype`=complex64 is complex.*"
         r"\['a'\]\['w'\] is real \(float32\)"),
        ("complex64", "bfloat16", True, r"`mu_dtype`=complex64.*real"),
        ("float32", "complex64", False, r"`mu_dtype` float32 cannot hold the"
         r" complex leaf at \['a'\]\['w'\]"),
        ("bfloat16", "complex64", False, "cannot hold the complex leaf"),
        ("float32", "complex64", True, None),  # a real-valued moment
        ("complex64", "complex64", False, None),
        ("float32", "bfloat16", False, None),
        (None, "complex64", False, None),
    ],
)
def test_check_leaves(storage, leaf, real_values, match):
  """A complex storage only for complex leaves; a real one for complex
  leaves only when the buffer's values are real; errors name the argument
  and the leaf."""
  tree = {"a": {"w": jnp.ones((2, 3), leaf), "none": None},
          "m": optax.MaskedNode()}
  storage = S.as_storage(storage, "mu_dtype")
  if match is None:
    S.check_leaves(tree, storage, "mu_dtype", real_values=real_values)
    z = S.zeros(tree, storage, "mu_dtype", real_values=real_values)
    if storage is not None:
      assert z["a"]["w"].dtype == storage
  else:
    with pytest.raises(TypeError, match=match):
      S.zeros(tree, storage, "mu_dtype", real_values=real_values)


# ------------------------------------------------------- zeros/load/store


def test_float_storage_round_trip():
  tree = {"a": jnp.ones((3, 4), jnp.bfloat16), "b": None,
          "c": optax.MaskedNode()}
  z = S.zeros(tree, None)
  assert z["a"].dtype == jnp.bfloat16 and z["b"] is None
  assert isinstance(z["c"], optax.MaskedNode)
  z32 = S.zeros(tree, np.dtype("float32"))
  assert z32["a"].dtype == jnp.float32
  new = S.store({"a": jnp.full((3, 4), 0.3), "b": None,
                 "c": optax.MaskedNode()}, None, z)
  assert new["a"].dtype == jnp.bfloat16


def test_quantized_storage_round_trip():
  tree = {"a": jnp.ones((64, 8)), "b": jnp.ones(5), "c": optax.MaskedNode()}
  fmt = Q.QuantFormat("q8")
  z = S.zeros(tree, fmt)
  assert isinstance(z["a"], Q.QuantizedArray)
  assert isinstance(z["c"], optax.MaskedNode)
  # Only codes and scales are kept: no float copy of the moment.
  assert {x.dtype for x in jax.tree.leaves(z)} == {
      jnp.dtype(jnp.uint8), jnp.dtype(jnp.float32)}
  assert sum(x.size for x in jax.tree.leaves(z) if x.dtype == jnp.float32) < 9
  x = {"a": jnp.linspace(-1, 1, 512).reshape(64, 8), "b": jnp.arange(5.0),
       "c": optax.MaskedNode()}
  stored = S.store(x, fmt, z)
  np.testing.assert_array_equal(
      stored["a"].codes, Q.quantize(x["a"], "q8").codes
  )
  back = S.load(stored)
  assert back["a"].dtype == jnp.float32
  np.testing.assert_array_equal(back["b"], Q.dequantize(stored["b"]))


def test_stochastic_storage_draws_per_step_and_leaf():
  fmt = Q.QuantFormat("q4", stochastic=True)
  x = {"a": jnp.linspace(-1, 1, 256).reshape(128, 2) * 0.37,
       "b": jnp.linspace(-1, 1, 256).reshape(128, 2) * 0.37}
  with pytest.raises(ValueError, match="count"):
    S.store(x, fmt, x)
  one = S.store(x, fmt, x, count=jnp.int32(1))
  two = S.store(x, fmt, x, count=jnp.int32(2))
  assert not np.array_equal(one["a"].codes, two["a"].codes)
  assert not np.array_equal(one["a"].codes, one["b"].codes)
  again = S.store(x, fmt, x, count=jnp.int32(1))
  np.testing.assert_array_equal(one["a"].codes, again["a"].codes)


def test_complex_parameters_need_a_float_storage():
  with pytest.raises(TypeError, match="`nu_dtype`.*complex64"):
    S.zeros({"w": jnp.ones((4, 4), jnp.complex64)}, Q.QuantFormat("u8"),
            "nu_dtype")


# ----------------------------------------------------------------- Adam


def _grads(t, shapes):
  rng = np.random.default_rng(t)
  return {k: jnp.asarray(rng.standard_normal(s) * 10.0 ** rng.uniform(-3, 0),
                         jnp.float32) for k, s in shapes.items()}


SHAPES = {"w": (64, 48), "b": (48,), "s": ()}


def test_float_adam_equals_optax():
  params = {k: jnp.zeros(s) for k, s in SHAPES.items()}
  tx = _adam.scale_by_adam(0.9, 0.95, 1e-8, 1e-12)
  ref = optax.scale_by_adam(0.9, 0.95, 1e-8, 1e-12)
  s, rs = tx.init(params), ref.init(params)
  assert jax.tree.structure(s) == jax.tree.structure(rs)
  for t in range(4):
    g = _grads(t, SHAPES)
    u, s = jax.jit(tx.update)(g, s)
    ru, rs = jax.jit(ref.update)(g, rs)
    jax.tree.map(np.testing.assert_array_equal, (u, s), (ru, rs))


def test_bfloat16_first_moment_is_float32_arithmetic_then_rounded():
  # optax computes b1 * mu in bfloat16 when mu is stored so; here every
  # step is float32 arithmetic on the stored (bfloat16) mu, rounded once.
  b1, b2, eps, eps_root = 0.9, 0.95, 1e-8, 1e-12
  params = {k: jnp.zeros(s) for k, s in SHAPES.items()}
  tx = _adam.scale_by_adam(b1, b2, eps, eps_root, mu_dtype=jnp.bfloat16)
  s = tx.init(params)
  m = {k: np.zeros(sh, np.float32) for k, sh in SHAPES.items()}
  v = {k: np.zeros(sh, np.float32) for k, sh in SHAPES.items()}
  for t in range(1, 5):
    g = _grads(t, SHAPES)
    u, s = jax.jit(tx.update)(g, s)
    for k in SHAPES:
      gk = np.asarray(g[k], np.float32)
      m[k] = np.float32(1 - b1) * gk + np.float32(b1) * m[k]
      v[k] = np.float32(1 - b2) * gk * gk + np.float32(b2) * v[k]
      mh = m[k] / np.float32(1 - b1**t)
      vh = v[k] / np.float32(1 - b2**t)
      want = mh / (np.sqrt(vh + np.float32(eps_root)) + np.float32(eps))
      np.testing.assert_allclose(u[k], want, rtol=1e-5, atol=1e-7)
      assert s.mu[k].dtype == jnp.bfloat16
      np.testing.assert_array_equal(s.mu[k], m[k].astype(jnp.bfloat16))
      m[k] = np.asarray(s.mu[k], np.float32)  # what the next step reads


@pytest.mark.parametrize("g, ok", [(300.0, "a gradient of 300"),
                                   (1e-3, "a gradient of 1e-3")])
def test_float16_adam_takes_finite_nonzero_steps(g, ok):
  # optax's float16 Adam: v = inf (zero steps from then on) for 300, and
  # v = 0 with eps = 0 in float16 (an infinite step) for 1e-3.
  params = {"b": jnp.zeros((3,), jnp.float16)}
  tx = _adam.scale_by_adam()
  s = tx.init(params)
  assert s.mu["b"].dtype == s.nu["b"].dtype == jnp.float32
  grads = {"b": jnp.asarray([g, -g, 1.0], jnp.float16)}
  for _ in range(3):
    u, s = jax.jit(tx.update)(grads, s)
    assert u["b"].dtype == jnp.float16
    # Constant gradients: Adam's step is sign(g), to eps, every time.
    np.testing.assert_allclose(np.asarray(u["b"], np.float32),
                               [1.0, -1.0, 1.0], rtol=2e-3, err_msg=ok)
  ru, _ = optax.scale_by_adam().update(grads, optax.scale_by_adam().init(
      params))
  assert not np.isfinite(np.asarray(ru["b"], np.float32)).all() or (
      np.asarray(ru["b"], np.float32)[0] == 0)  # optax's failure, as stated


@pytest.mark.parametrize("fmt", ["q8", "q4"])
def test_quantized_adam_step_from_its_stored_state(fmt):
  """Each step is Adam on the dequantized stored moments, in NumPy."""
  b1, b2, eps = 0.9, 0.95, 1e-8
  params = {k: jnp.zeros(s) for k, s in SHAPES.items()}
  tx = _adam.scale_by_adam(b1, b2, eps, mu_dtype=fmt, nu_dtype=fmt)
  state = tx.init(params)
  assert isinstance(state, optax.ScaleByAdamState)
  assert state.nu["w"].code == "u" + fmt[1:]
  update = jax.jit(tx.update)
  for t in range(1, 5):
    g = _grads(t, SHAPES)
    m0 = jax.tree.map(np.asarray, S.load(state.mu))
    v0 = jax.tree.map(np.asarray, S.load(state.nu))
    u, state = update(g, state)
    for k in SHAPES:
      gk = np.asarray(g[k], np.float64)
      m = b1 * m0[k] + (1 - b1) * gk
      v = b2 * v0[k] + (1 - b2) * gk**2
      want = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
      np.testing.assert_allclose(u[k], want, rtol=2e-5, atol=1e-7)
      # The new state is the new moments, quantized.
      np.testing.assert_array_equal(
          state.mu[k].codes,
          Q.quantize(jnp.asarray(m, jnp.float32), fmt).codes,
      )
  assert all(x.dtype in (jnp.uint8, jnp.float32, jnp.int32)
             for x in jax.tree.leaves(state))


def test_quantized_adam_tracks_float_adam():
  # 8-bit Adam's updates stay within a few percent of float32 Adam's over
  # 30 steps; 4-bit within its coarser code (measured 0.04 and 0.39 at 20
  # steps on this stream).
  params = {"w": jnp.zeros((128, 32))}
  ref = optax.scale_by_adam(0.9, 0.95)
  errs = {}
  for fmt in ("q8", "q4"):
    tx = _adam.scale_by_adam(0.9, 0.95, mu_dtype=fmt, nu_dtype=fmt)
    s, rs = tx.init(params), ref.init(params)
    for t in range(30):
      g = {"w": jnp.asarray(np.random.default_rng(t).standard_normal((128, 32))
                            + 0.5, jnp.float32)}
      u, s = jax.jit(tx.update)(g, s)
      ru, rs = jax.jit(ref.update)(g, rs)
    errs[fmt] = float(jnp.linalg.norm(u["w"] - ru["w"])
                      / jnp.linalg.norm(ru["w"]))
  assert errs["q8"] < 0.05 and errs["q4"] < 0.5
  assert errs["q8"] < errs["q4"] / 4


def test_quantized_adam_keeps_sign_and_finiteness_of_tiny_entries():
  # An entry 1e-6 times its block's largest: its v reads back as the
  # smallest code (no zero point), so its step stays finite and bounded.
  g = jnp.zeros((128, 1)).at[0, 0].set(1.0).at[1, 0].set(1e-6)
  tx = _adam.scale_by_adam(mu_dtype="q4", nu_dtype="q4")
  s = tx.init({"w": g})
  for _ in range(3):
    u, s = tx.update({"w": g}, s)
  assert bool(jnp.all(jnp.isfinite(u["w"])))
  assert float(jnp.max(jnp.abs(u["w"]))) <= 1.0 + 1e-6


def test_public_names():
  assert ortho_optax.QuantFormat is Q.QuantFormat


def test_rounding_salts_are_distinct():
  # Two buffers with one salt would draw the same rounding bits each step.
  salts = {k: v for k, v in vars(S).items() if k.endswith("_SALT")}
  assert len(salts) == 16
  assert len(set(salts.values())) == len(salts), salts


def test_adam_gradients_beyond_the_float32_square_root():
  # optax: an entry above ~1.8e19 made v = inf and that entry's steps 0
  # from then on. Here it counts as 2^63 in the moments.
  params = {"b": jnp.zeros((3,), jnp.float32)}
  tx = _adam.scale_by_adam()
  update = jax.jit(tx.update)

  def run(first):
    s, out = tx.init(params), []
    for g in [first, [1.0, 1.0, -1e25], [1.0, 1.0, -1e25]]:
      u, s = update({"b": jnp.asarray(g, jnp.float32)}, s)
      out.append(np.asarray(u["b"]))
      assert np.isfinite(np.asarray(s.nu["b"])).all()
    return np.stack(out)

  got = run([1e30, 1.0, -1e25])
  # The spike is the spike of 2^63: later steps equal that run's exactly.
  np.testing.assert_array_equal(got, run([2.0**63, 1.0, -1e25]))
  assert np.isfinite(got).all() and (got != 0).all()
  # A gradient that stays huge takes the steps of its sign.
  np.testing.assert_allclose(got[:, 2], -1.0, rtol=1e-4)
  # Below the clip, entries are untouched: the middle entry is optax's.
  ref = optax.scale_by_adam()
  rs = ref.init(params)
  for g in [[0.0, 1.0, 0.0]] * 3:
    ru, rs = ref.update({"b": jnp.asarray(g, jnp.float32)}, rs)
  assert got[2, 1] == pytest.approx(float(ru["b"][1]), rel=1e-6)


def test_adam_integer_leaf_gets_a_zero_update_of_its_dtype():
  # The clip reads finfo of float leaves only; an integer leaf (a counter
  # next to the weights) passes through with a zero update.
  params = {"i": jnp.zeros((3,), jnp.int32), "w": jnp.zeros((3,))}
  tx = _adam.scale_by_adam()
  u, _ = tx.update({"i": jnp.ones((3,), jnp.int32), "w": jnp.ones((3,))},
                   tx.init(params))
  assert u["i"].dtype == jnp.int32
  np.testing.assert_array_equal(u["i"], 0)
  np.testing.assert_allclose(u["w"], 1.0, rtol=1e-4)
