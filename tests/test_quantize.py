"""Tests of ``ortho_optax.state``: quantized arrays vs a NumPy reference."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ortho_optax.state import codes as codes_lib
from ortho_optax.state import quantized as Q

FORMATS = ("q8", "q4", "n4", "u8", "u4")
QUANTIZE = jax.jit(Q.quantize, static_argnames=("format", "block_size"))
DEQUANTIZE = jax.jit(Q.dequantize, static_argnames=("dtype",))


def _key(seed):
  # Any key works; threefry's uniform compiles for seconds a shape on CPU.
  return jax.random.key(seed, impl="rbg")


# ------------------------------------------------------- NumPy reference


def _decade_values(bits, signed):
  """The dynamic code rebuilt from its closed form.

  Decade ``i < bits - 1`` holds ``10**(i - bits + 2) * (0.1 + (j + 1/2) *
  0.9 / n)`` for ``j < n``, ``n = 2**i`` (signed, both signs) or
  ``2**(i + 1)`` (unsigned); then 0 and 1.
  """
  out = [0.0, 1.0]
  for i in range(bits - 1):
    n = 2**i if signed else 2 ** (i + 1)
    for j in range(n):
      v = 10.0 ** (i - bits + 2) * (0.1 + (j + 0.5) * 0.9 / n)
      out += [v, -v] if signed else [v]
  return np.sort(np.array(out)).astype(np.float32)


# The 4-bit tables as printed from the 4-bit paper's code (lpmm
# create_dynamic_map(True, 3, 4) and the unsigned (False, 3, 3) with 0
# replaced by its neighbour, "DE-0").
Q4_TABLE = [
    -0.8875, -0.6625, -0.4375, -0.2125, -0.0775, -0.0325, -0.0055, 0.0,
    0.0055, 0.0325, 0.0775, 0.2125, 0.4375, 0.6625, 0.8875, 1.0,
]
U4_TABLE = [
    0.00325, 0.00325, 0.00775, 0.02125, 0.04375, 0.06625, 0.08875,
    0.15625, 0.26875, 0.38125, 0.49375, 0.60625, 0.71875, 0.83125,
    0.94375, 1.0,
]


# QLoRA's NF4 table as published (bitsandbytes' create_normal_map, float32).
NF4_TABLE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
    0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)


def _nf4_from_scipy():
  """QLoRA's construction with SciPy's normal quantiles (float64)."""
  from scipy import stats

  offset = 0.9677083
  pos = stats.norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
  neg = -stats.norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
  v = np.sort(np.concatenate([pos, [0.0], neg]))
  return (v / np.max(np.abs(v))).astype(np.float32)


def _ref_table(name):
  if name == "n4":
    return _nf4_from_scipy()
  if name == "q4":
    return np.array(Q4_TABLE, np.float32)
  if name == "u4":
    return np.array(U4_TABLE, np.float32)
  values = _decade_values(8, name == "q8")
  if name == "u8":
    values[0] = values[1]
  return values


def _ref_layout(shape, bits, block):
  if len(shape) < 2:
    m, n = (shape[0] if shape else 1), 1
  else:
    m, n = shape[-2:]
  k_m = -(-m // block) if m else 0
  l_m = -(-m // k_m) if m else 0
  if bits == 4:
    l_m += l_m % 2
  width = max(1, block // max(l_m, 1))
  k_n = -(-n // width) if n else 0
  l_n = -(-n // k_n) if n else 0
  return m, n, k_m, l_m, k_n, l_n


def _ref_blocks(x, bits, block):
  """``x`` (float32) as zero-padded blocks ``(..., k_m, L_m, k_n, L_n)``."""
  shape = x.shape
  m, n, k_m, l_m, k_n, l_n = _ref_layout(shape, bits, block)
  mat = x.reshape(*shape[:-2], m, n) if len(shape) >= 2 else x.reshape(m, n)
  padded = np.zeros(mat.shape[:-2] + (k_m * l_m, k_n * l_n), np.float32)
  padded[..., :m, :n] = mat
  return padded.reshape(*mat.shape[:-2], k_m, l_m, k_n, l_n)


def ref_normalize(blocks, scales):
  """``x / s`` as ``(x 2^-e1) (2^-e2 / f)``, ``s = f 2^(e1 + e2)`` (frexp)."""
  f, e = np.frexp(np.where(scales > 0, scales, np.float32(1)))
  e1 = e // 2
  a = np.ldexp(np.float32(1), -e1).astype(np.float32)
  b = (np.ldexp(np.float32(1), e1 - e).astype(np.float32)
       * (np.float32(1) / f)).astype(np.float32)
  return ((blocks * a).astype(np.float32) * b).astype(np.float32)


def ref_quantize(x, name, block, u=None):
  """Codes and scales of ``x``: NumPy, the format's definition.

  ``y = x / s`` (:func:`ref_normalize`) gets the number of midpoints
  (float32) ``<= y``. Stochastic rounding (``u``: uniform draws shaped like
  the blocks) takes the lower neighbour ``c_lo <= y`` and rounds up when
  ``u (c_hi - c_lo) < y - c_lo``.
  """
  values = _ref_table(name)
  bits = 4 if name.endswith("4") else 8
  x = np.asarray(x, np.float32)
  blocks = _ref_blocks(x, bits, block)
  scales = np.abs(blocks).max(axis=(-3, -1), keepdims=True, initial=0)
  y = ref_normalize(blocks, scales)
  if u is None:
    mids = ((values[:-1] + values[1:]) / np.float32(2)).astype(np.float32)
    idx = np.searchsorted(mids, y, side="right")
  else:
    y = np.clip(y, values[0], values[-1])
    lo = np.searchsorted(values[1:], y, side="right")
    hi = np.minimum(lo + 1, values.size - 1)
    c_lo, c_hi = values[lo], values[hi]
    idx = lo + (u * (c_hi - c_lo) < y - c_lo)
  idx = np.asarray(idx, np.uint8).reshape(blocks.shape)
  *batch, k_m, l_m, k_n, l_n = idx.shape
  idx = idx.reshape(*batch, k_m * l_m, k_n * l_n)
  if bits == 4:
    idx = idx[..., 0::2, :] | (idx[..., 1::2, :] << 4)
  scales = scales.reshape(*batch, k_m, k_n)
  if x.ndim < 2:
    idx, scales = idx[..., 0], scales[..., 0]
  return idx, scales


def ref_dequantize(codes, scales, name, block, shape):
  values = _ref_table(name)
  bits = 4 if name.endswith("4") else 8
  m, n, k_m, l_m, k_n, l_n = _ref_layout(shape, bits, block)
  if len(shape) < 2:
    codes, scales = codes[:, None], scales[:, None]
  if bits == 4:
    idx = np.empty(codes.shape[:-2] + (2 * codes.shape[-2], codes.shape[-1]),
                   np.uint8)
    idx[..., 0::2, :] = codes & 15
    idx[..., 1::2, :] = codes >> 4
  else:
    idx = codes
  *batch, _, _ = idx.shape
  v = values[idx].reshape(*batch, k_m, l_m, k_n, l_n)
  x = v * scales.reshape(*batch, k_m, 1, k_n, 1)
  x = x.reshape(*batch, k_m * l_m, k_n * l_n)[..., :m, :n]
  return x.reshape(shape)


# ------------------------------------------------------------ code books


@pytest.mark.parametrize("name", FORMATS)
def test_code_books_equal_the_papers(name):
  book = codes_lib.CODES[name]
  assert book.values.dtype == np.float32
  assert book.values.size == 2**book.bits
  np.testing.assert_array_equal(book.values, _ref_table(name))
  assert np.all(np.diff(book.values) >= 0)
  assert book.block_size == (
      2048 if book.bits == 8 else 64 if name == "n4" else 128)


def test_code_book_facts():
  q8 = codes_lib.CODES["q8"].values
  # bitsandbytes' signed dynamic map: 127 values a sign, 0 and 1; the
  # smallest magnitude 0.55e-6, the most negative -(1 - 0.45 / 64).
  assert np.sum(q8 < 0) == 127 and np.sum(q8 > 0) == 128
  np.testing.assert_allclose(q8[0], -(1 - 0.45 / 64), rtol=1e-7)
  np.testing.assert_allclose(np.min(np.abs(q8[q8 != 0])), 0.55e-6, rtol=1e-6)
  for name in ("u8", "u4"):
    v = codes_lib.CODES[name].values
    assert v[0] > 0 and v[0] == v[1]  # no zero point
  assert codes_lib.CODES["q4"].max_error == pytest.approx(0.1125, rel=1e-6)
  # NF4: both ends, an exact zero, QLoRA's published values to float32.
  n4 = codes_lib.CODES["n4"].values
  np.testing.assert_allclose(n4, NF4_TABLE, rtol=2e-6, atol=1e-7)
  assert n4[0] == -1 and n4[-1] == 1 and 0.0 in n4
  assert codes_lib.CODES["n4"].max_error == pytest.approx(
      (1 + NF4_TABLE[1]) / 2, rel=1e-6)  # the gap below -0.696
  assert codes_lib.CODES["q8"].max_error == pytest.approx(0.45 / 64, rel=1e-5)


# ---------------------------------------------- bit for bit, and layout


SHAPES = [
    (), (7,), (300,), (0, 5), (1, 300), (2, 1), (257, 3), (2, 3, 130, 7),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", FORMATS)
def test_bit_for_bit_with_numpy(name, shape):
  rng = np.random.default_rng(len(shape) * 31 + sum(shape))
  x = rng.standard_normal(shape).astype(np.float32)
  x *= np.exp(rng.uniform(-8, 8, shape)).astype(np.float32)
  if name.startswith("u"):
    x = np.abs(x)
  for block in (None, 64):
    q = QUANTIZE(x, name, block_size=block)
    b = block or codes_lib.CODES[name].block_size
    codes, scales = ref_quantize(x, name, b)
    assert q.codes.dtype == jnp.uint8 and q.scales.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(q.codes), codes)
    np.testing.assert_array_equal(np.asarray(q.scales), scales)
    got = DEQUANTIZE(q)
    assert got.shape == x.shape and got.dtype == x.dtype
    np.testing.assert_array_equal(
        np.asarray(got), ref_dequantize(codes, scales, name, b, x.shape)
    )


@pytest.mark.parametrize("name", ["q8", "q4", "u4"])
def test_stochastic_bit_for_bit_with_numpy(name):
  x = np.random.default_rng(3).standard_normal((2, 70, 9)).astype(np.float32)
  if name.startswith("u"):
    x = x**2
  key = _key(7)
  q = jax.jit(Q.quantize, static_argnames="format")(x, name, key=key)
  b = codes_lib.CODES[name].block_size
  blocks_shape = _ref_blocks(x, codes_lib.CODES[name].bits, b).shape
  u = np.asarray(jax.random.uniform(key, blocks_shape, jnp.float32))
  codes, scales = ref_quantize(x, name, b, u=u)
  np.testing.assert_array_equal(np.asarray(q.codes), codes)
  np.testing.assert_array_equal(np.asarray(q.scales), scales)


def test_layout():
  # A (768, 3072) kernel: 8-bit blocks of 768 rows x 2 columns, 4-bit runs
  # of 128 rows of one column (six a column).
  x = jax.ShapeDtypeStruct((768, 3072), jnp.float32)
  q8, q4 = (jax.eval_shape(lambda x, f=f: Q.quantize(x, f), x)
            for f in ("q8", "q4"))
  assert q8.block == (768, 2) and q8.scales.shape == (1, 1536)
  assert q8.codes.shape == (768, 3072)
  assert q4.block == (128, 1) and q4.scales.shape == (6, 3072)
  assert q4.codes.shape == (384, 3072)
  assert q8.nbytes == 768 * 3072 + 4 * 1536
  # Uneven columns split into equal runs: 300 = 3 x 100 (block 128).
  q = jax.eval_shape(lambda x: Q.quantize(x, "q4"), jnp.zeros((300, 4)))
  assert q.block == (100, 1) and q.scales.shape == (3, 4)
  # 1-D leaves: one column.
  q = jax.eval_shape(lambda x: Q.quantize(x, "q8"), jnp.zeros(5000))
  assert q.block == (1667, 1) and q.codes.shape == (5001,)
  assert q.scales.shape == (3,)


def test_pytree_and_jit():
  x = jnp.arange(24.0).reshape(2, 3, 4) - 11.0
  q = Q.quantize(x, "q4", block_size=4)
  leaves, treedef = jax.tree.flatten(q)
  assert len(leaves) == 2
  back = jax.tree.unflatten(treedef, leaves)
  np.testing.assert_array_equal(Q.dequantize(back), Q.dequantize(q))
  doubled = jax.jit(lambda q: jax.tree.map(lambda a: a, q))(q)
  assert doubled.code == "q4" and doubled.shape == (2, 3, 4)
  assert jax.tree.structure(doubled) == treedef


@pytest.mark.parametrize("name", FORMATS)
def test_count_at_most_equals_searchsorted(name):
  # The look-up (8-bit) and the comparisons (4-bit) count table entries <= y
  # exactly, at and next to every entry, at 0 and -0, and far outside.
  values = codes_lib.CODES[name].values
  for table in (Q._thresholds(values), values[1:]):
    table = np.asarray(table, np.float32)
    near = np.concatenate([
        table, -table,
        np.nextafter(table, np.float32(np.inf)),
        np.nextafter(table, np.float32(-np.inf)),
        -np.nextafter(table, np.float32(np.inf)),
    ])
    rng = np.random.default_rng(0)
    y = np.concatenate([
        near,
        np.float32([0.0, -0.0, 1e-30, -1e-30, 2.0**-26, 3.0, -3.0, 1e30]),
        (rng.uniform(-1.1, 1.1, 4000) * 10.0 ** rng.uniform(-9, 0, 4000)),
    ]).astype(np.float32)
    # XLA's CPU treats subnormal inputs as 0 (the next float after 0 is one).
    y = y[(y == 0) | (np.abs(y) >= np.finfo(np.float32).tiny)]
    got = jax.jit(lambda y, t=table: Q._count_at_most(t, y))(y)
    want = np.searchsorted(table, y, side="right")
    np.testing.assert_array_equal(np.asarray(got), want)


# ------------------------------------------------------ round-trip bound


def _per_entry(scales, q):
  """Block scales ``(..., k_m, k_n)`` broadcast to ``q``'s shape."""
  l_m, l_n = q.block
  s = np.asarray(scales, np.float64)
  if len(q.shape) < 2:
    return np.repeat(s, l_m)[: max(int(np.prod(q.shape)), 1)].reshape(q.shape)
  s = np.repeat(np.repeat(s, l_m, axis=-2), l_n, axis=-1)
  return s[..., : q.shape[-2], : q.shape[-1]]


def _bound(q, name):
  """``max_error * s_b`` for every entry, plus float32 rounding."""
  return (codes_lib.CODES[name].max_error + 2**-21) * _per_entry(q.scales, q)


@st.composite
def _arrays(draw):
  shape = draw(st.sampled_from([
      (0,), (0, 3), (1, 1), (1, 17), (5,), (9, 4), (33, 2), (2, 6, 5),
      (3, 1, 70), (130, 3),
  ]))
  dtype = draw(st.sampled_from([np.float32, jnp.bfloat16, np.float16]))
  seed = draw(st.integers(0, 2**31))
  lo = draw(st.integers(-30, 30))
  span = draw(st.integers(0, 8))
  rng = np.random.default_rng(seed)
  exps = rng.uniform(lo, min(30, lo + span), shape)
  if dtype is np.float16:
    exps = np.clip(exps, -4, 4)
  x = rng.standard_normal(shape) * 10.0**exps
  return np.asarray(jnp.asarray(x, dtype))


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(x=_arrays(), name=st.sampled_from(FORMATS),
                  block=st.sampled_from([None, 2, 16]))
def test_round_trip_within_format_bound(x, name, block):
  if name.startswith("u"):
    x = np.abs(x)
  q = QUANTIZE(x, name, block_size=block)
  back = DEQUANTIZE(q, jnp.float32)
  assert back.shape == x.shape
  assert DEQUANTIZE(q).dtype == x.dtype
  x64 = np.asarray(x, np.float64)
  err = np.abs(np.asarray(back, np.float64) - x64)
  assert np.all(err <= _bound(q, name)), np.max(err - _bound(q, name))
  assert np.all(np.isfinite(np.asarray(back)))
  if x.size and name.startswith("u"):  # the largest entry is exact
    assert np.max(np.asarray(back)) == np.float32(np.max(x64))


def test_extreme_range():
  big = np.float32(np.finfo(np.float32).max)
  tiny = np.float32(np.finfo(np.float32).smallest_subnormal)
  x = np.array([[big, -big / 3], [tiny, 0.0], [-tiny, 1.0]], np.float32).T
  for name in ("q8", "q4"):
    back = np.asarray(DEQUANTIZE(QUANTIZE(x, name)))
    assert np.all(np.isfinite(back))
    assert back[0, 0] == big
    np.testing.assert_array_equal(back[:, 1], [0, 0])  # 0 stays 0
  # A block of zeros is zeros (scale 0), also for codes without a zero.
  for name in FORMATS:
    np.testing.assert_array_equal(
        DEQUANTIZE(QUANTIZE(np.zeros((4, 3), np.float32), name)), 0
    )


# ------------------------------------------------- stochastic rounding


@pytest.mark.parametrize("name", ["q8", "q4", "u4"])
def test_stochastic_rounding_is_unbiased(name):
  # Hoeffding: the mean of N draws, each in [lo, hi], is within
  # gap * sqrt(log(2 / a) / (2 N)) of its expectation with probability at
  # least 1 - a; a = 1e-9 shared by all entries.
  n_draws, n = 4000, 256
  book = codes_lib.CODES[name]
  rng = np.random.default_rng(11)
  x = rng.uniform(-1, 1, (n, 1)) * 10.0 ** rng.uniform(-4, 0, (n, 1))
  x = (np.abs(x) if not book.signed else x).astype(np.float32)
  x[0, 0] = 1.0  # the block's scale: x / s = x exactly
  keys = jax.random.split(_key(0), n_draws)
  draw = jax.jit(jax.vmap(
      lambda k: Q.dequantize(Q.quantize(x, name, block_size=n, key=k))
  ))
  mean = np.mean(np.asarray(draw(keys), np.float64), axis=0)
  v = book.values.astype(np.float64)
  lo_idx = np.clip(np.searchsorted(v, x, side="right") - 1, 0, v.size - 2)
  gap = v[lo_idx + 1] - v[lo_idx]
  tol = gap * np.sqrt(np.log(2 * n / 1e-9) / (2 * n_draws)) + 1e-7
  inside = (x >= v[0]) & (x <= v[-1])
  assert np.all(np.abs(mean - x)[inside] <= tol[inside])
  # Round to nearest misses most of these tolerances (the test can fail).
  rtn = np.asarray(Q.dequantize(Q.quantize(x, name, block_size=n)))
  assert np.mean(np.abs(rtn - x)[inside] > tol[inside]) > 0.5


# -------------------------------------- a quantized EMA over 100 steps


def _ema_run(name, beta, key=None, steps=100):
  """A quantized EMA of noisy gradients and the bounds its format implies.

  Step t errs by r_t with |r_t| <= max_error * s_t (round to nearest;
  2 max_error s_t stochastically), s_t the block scale of what is
  quantized, and the error is carried on with factor beta:
  |e_t| <= sum_j beta^(t - j) |r_j|. Stochastic errors have mean 0 and
  variance <= (max_error s_j)^2, so E[e_t^2] <= sum_j beta^2(t - j)
  (max_error s_j)^2.
  """
  rng = np.random.default_rng(5)
  shape = (256, 8)
  drift = rng.standard_normal(shape).astype(np.float32)
  m = np.zeros(shape, np.float64)
  mq = Q.quantize(np.zeros(shape, np.float32), name)
  bound = np.zeros(shape)
  var = np.zeros(shape)
  step = jax.jit(
      lambda mq, g, k: Q.quantize(
          beta * Q.dequantize(mq, jnp.float32) + (1 - beta) * g, name, key=k
      )
  )
  keys = (None,) * steps if key is None else jax.random.split(key, steps)
  e = codes_lib.CODES[name].max_error * (1 if key is None else 2)
  for t in range(steps):
    g = (drift + rng.standard_normal(shape)).astype(np.float32)
    m = beta * m + (1 - beta) * g
    mq = step(mq, g, keys[t])
    s = _per_entry(mq.scales, mq)
    bound = beta * bound + (e + 1e-6) * s
    var = beta**2 * var + (codes_lib.CODES[name].max_error * s) ** 2
  err = np.asarray(DEQUANTIZE(mq, jnp.float32), np.float64) - m
  return err, bound, var


@pytest.mark.parametrize("name", ["q8", "q4"])
def test_quantized_ema_tracks_float32(name):
  beta = 0.95
  err, bound, _ = _ema_run(name, beta)
  assert np.all(np.abs(err) <= bound)
  err, bound, var = _ema_run(name, beta, key=_key(1))
  assert np.all(np.abs(err) <= bound)
  assert np.mean(err**2) <= 1.2 * np.mean(var)
  # Unbiased: the mean error is within 5 standard errors of 0.
  assert abs(np.mean(err)) <= 5 * np.sqrt(np.mean(var) / err.size)


@pytest.mark.parametrize("name", ["q8", "q4"])
def test_sharding_in_types(name):
  # Under Explicit mesh axes the codes and scales take the parameter's
  # PartitionSpec where their lengths divide (scales (1, 16): not along
  # "fsdp"), the result the parameter's, and the numbers are unchanged.
  from jax.sharding import AxisType
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  mesh = jax.make_mesh((2, 4), ("fsdp", "model"),
                       axis_types=(AxisType.Explicit,) * 2)
  for shape, spec in (((256, 128), P("fsdp", "model")),
                      ((3, 256, 64), P(None, "fsdp", "model")),
                      ((256,), P("model"))):
    host = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    x = jax.device_put(host, NamedSharding(mesh, spec))
    with jax.set_mesh(mesh):
      q = jax.jit(lambda x: Q.quantize(x, name))(x)
      back = jax.jit(Q.dequantize)(q)
    assert jax.typeof(back).sharding.spec == spec
    assert jax.typeof(q.codes).sharding.spec == spec
    ref = Q.quantize(host, name)
    np.testing.assert_array_equal(np.asarray(q.codes), np.asarray(ref.codes))
    np.testing.assert_array_equal(np.asarray(q.scales), np.asarray(ref.scales))
    np.testing.assert_array_equal(np.asarray(back), np.asarray(
        Q.dequantize(ref)))
  assert jax.typeof(q.scales).sharding.spec in (P(), P(None))


# ----------------------------------------------------------- bad input


def test_errors_name_the_argument():
  with pytest.raises(ValueError, match="format.*'int8'"):
    Q.quantize(jnp.ones(3), "int8")
  with pytest.raises(TypeError, match="format"):
    Q.quantize(jnp.ones(3), jnp.int8)
  with pytest.raises(TypeError, match="`x`.*int32"):
    Q.quantize(jnp.ones(3, jnp.int32))
  with pytest.raises(TypeError, match="`x`.*complex"):
    Q.quantize(jnp.ones(3, jnp.complex64))
  with pytest.raises(ValueError, match="block_size"):
    Q.quantize(jnp.ones(3), "q8", block_size=0)
  with pytest.raises(ValueError, match="block_size.*even"):
    Q.quantize(jnp.ones(3), "q4", block_size=5)
  with pytest.raises(ValueError, match="key"):
    Q.quantize(jnp.ones(3), Q.QuantFormat("q8", stochastic=True))
  with pytest.raises(TypeError, match="QuantizedArray"):
    Q.dequantize(jnp.ones(3))
