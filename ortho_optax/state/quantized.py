r"""Block-wise quantized arrays: 8-bit and 4-bit optimizer state.

An array is cut into blocks, each block is divided by its largest
magnitude :math:`s_b` (a float32 scale), and every entry is stored as the
index of the nearest value of a fixed code book (:mod:`~.codes`):

.. math::
  q_i = \arg\min_j |c_j - x_i / s_b|, \qquad
  \tilde x_i = c_{q_i}\, s_b .

**Which blocks.** A leaf is viewed as ``(..., m, n)``: a leaf of rank >= 2
as it is, a 1-D leaf as one column ``(m, 1)``, a scalar as ``(1, 1)``.
Blocks run along axis ``-2``, the *block axis*: the fan-in axis of Flax
and Optax kernels (``(in, out)`` dense, ``(h, w, in, out)`` conv,
``(layers, in, out)`` stacked), and the only axis of a 1-D leaf. A block
is a tile of ``L_m`` consecutive rows by ``L_n`` consecutive columns of one
matrix, with ``L_m L_n <= block_size``:

* ``m`` is split into ``k_m = ceil(m / block_size)`` runs of equal length
  ``L_m = ceil(m / k_m)`` (4-bit codes: rounded up to even);
* when ``m`` is shorter than ``block_size``, a tile spans
  ``L_n = ceil(n / k_n)`` columns, ``k_n = ceil(n / floor(block_size /
  L_m))``, so that short columns still share a scale among about
  ``block_size`` entries (``L_n = 1`` once ``m >= block_size``: a block is
  then a run of one column).

The last run of each axis is padded with zeros, so padding is less than
``k_m`` (4-bit: ``2 k_m``) rows and ``k_n`` columns. Only a matrix with a
single row (``m = 1``) pays much: 4-bit codes pad it to two rows.

**Layout.** The codes keep the leaf's rank: ``(..., k_m L_m, k_n L_n)``
uint8 for 8-bit codes and ``(..., k_m L_m / 2, k_n L_n)`` for 4-bit ones
(two codes a byte along the block axis, the even row in the low nibble);
the scales are ``(..., k_m, k_n)`` float32 (1-D leaves: ``(k_m L_m,)`` or
``(k_m L_m / 2,)`` codes and ``(k_m,)`` scales). Both therefore take the
parameter's own ``PartitionSpec``: a sharding of the leading axes splits
codes and scales exactly like the parameter, and a sharding of the last
two axes does too whenever each shard holds whole blocks (its length a
multiple of ``L_m``, resp. ``L_n``, e.g. ``m`` a power of two and 4-bit
blocks of 128); otherwise the result is the same and XLA moves the data
it needs.

**Rounding.** Each entry is first normalized, :math:`y = x / s_b`, computed
as :math:`(x\,2^{-e_1})\,(2^{-e_2} / f)` with :math:`s_b = f\,2^{e_1 +
e_2}`, :math:`f \in [1/2, 1)`, :math:`e_1 = \lfloor e / 2 \rfloor`: exact
up to the rounding of :math:`1 / f` and of the last product, for any
finite scale. Round to nearest: the code of ``y`` is the number of
midpoints :math:`t_j = (c_j + c_{j+1}) / 2` (float32) with :math:`t_j \le
y` (ties go to the larger value). It errs by at most
``Code.max_error`` times the block's scale: 0.0070 (``"q8"``), 0.1125
(``"q4"``), 0.1519 (``"n4"``), 0.0035 (``"u8"``), 0.056 (``"u4"``). Or, given a ``key``,
stochastic rounding: an entry between neighbouring values
:math:`c_j \le y < c_{j+1}` is rounded up when
:math:`u\,(c_{j+1} - c_j) < y - c_j`, :math:`u \sim U[0, 1)`: with
probability :math:`(y - c_j) / (c_{j+1} - c_j)`, so that
:math:`E[\tilde x] = x` (Gupta et al., 2015): an EMA of a quantized
momentum is then unbiased, where rounding to nearest can swallow the
:math:`(1 - \beta) g` of a step whole.

Examples:
  >>> import jax.numpy as jnp
  >>> from ortho_optax.state import quantized
  >>> x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
  >>> q = quantized.quantize(x, "q4")
  >>> q.codes.shape, q.codes.dtype, q.scales.shape, q.block
  ((2, 3), dtype('uint8'), (1, 1), (4, 3))
  >>> err = jnp.max(jnp.abs(quantized.dequantize(q) - x))
  >>> round(float(err), 4)  # max_error times the scale 1
  0.1125

References:
  Dettmers et al., `8-bit Optimizers via Block-wise Quantization
  <https://arxiv.org/abs/2110.02861>`_, ICLR 2022

  Li et al., `Memory Efficient Optimizers with 4-bit States
  <https://arxiv.org/abs/2309.01507>`_, NeurIPS 2023

  Gupta et al., `Deep Learning with Limited Numerical Precision
  <https://arxiv.org/abs/1502.02551>`_, ICML 2015
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ortho_optax import checks as _checks
from ortho_optax.state import codes as codes_lib

FORMATS = tuple(codes_lib.CODES)


@dataclasses.dataclass(frozen=True)
class QuantFormat:
  """A quantized storage format for optimizer state.

  Attributes:
    code: ``"q8"`` / ``"q4"`` (signed dynamic-exponent codes) or ``"n4"``
      (4-bit NormalFloat; all three for momenta
      and first moments) or ``"u8"`` / ``"u4"`` (unsigned codes without a
      zero, for second moments); see :mod:`ortho_optax.state.codes`.
    block_size: largest block length along the block axis; ``None`` for
      the paper's (2048 for 8-bit, 128 for "q4" and "u4", 64 for "n4").
    stochastic: stochastic rounding (an optimizer draws it from a key
      derived from its step count, :func:`~.storage.rounding_key`); round
      to nearest otherwise.
  """

  code: str = "q8"
  block_size: int | None = None
  stochastic: bool = False

  def __post_init__(self):
    if not isinstance(self.code, str) or self.code not in codes_lib.CODES:
      raise ValueError(
          f"Unknown quantized format `code` {self.code!r}; accepted values"
          f" are {FORMATS}."
      )
    if self.block_size is not None and (
        isinstance(self.block_size, bool)
        or not isinstance(self.block_size, (int, np.integer))
        or self.block_size < 1
    ):
      raise ValueError(
          f"`block_size` must be a positive integer or None, got"
          f" {self.block_size!r}."
      )
    if (
        self.block_size is not None
        and codes_lib.CODES[self.code].bits == 4
        and self.block_size % 2
    ):
      raise ValueError(
          "`block_size` of a 4-bit format must be even (two codes a byte),"
          f" got {self.block_size!r}."
      )
    if not isinstance(self.stochastic, bool):
      raise TypeError(
          f"`stochastic` must be a bool, got {self.stochastic!r}."
      )

  @property
  def book(self) -> codes_lib.Code:
    return codes_lib.CODES[self.code]

  @property
  def bits(self) -> int:
    return self.book.bits

  @property
  def max_block(self) -> int:
    """The block size in use (the paper's when ``block_size`` is None)."""
    return self.book.block_size if self.block_size is None else self.block_size


def as_format(fmt, name: str = "format") -> QuantFormat:
  """``fmt`` as a :class:`QuantFormat` (from a format name or itself).

  Raises:
    TypeError / ValueError naming ``name`` for anything else.
  """
  if isinstance(fmt, QuantFormat):
    return fmt
  if isinstance(fmt, str):
    if fmt not in codes_lib.CODES:
      raise ValueError(
          f"Unknown `{name}` {fmt!r}; accepted quantized formats are"
          f" {FORMATS} or a QuantFormat."
      )
    return QuantFormat(fmt)
  raise TypeError(
      f"`{name}` must be one of {FORMATS} or a QuantFormat, got {fmt!r}."
  )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantizedArray:
  """An array stored as block-wise codes and float32 scales.

  A pytree whose leaves are ``codes`` and ``scales``; everything else is
  static. See the module docstring for the layout.

  Attributes:
    codes: uint8 codes, ``(..., k_m L_m, k_n L_n)`` (8-bit) or
      ``(..., k_m L_m / 2, k_n L_n)`` (4-bit, two a byte).
    scales: float32 block scales (each block's largest magnitude),
      ``(..., k_m, k_n)``.
    code: the format name (``"q8"``, ``"q4"``, ``"n4"``, ``"u8"``, ``"u4"``).
    block: the block's extent ``(L_m, L_n)``.
    shape: the original shape.
    dtype: the original dtype.
  """

  codes: jax.Array
  scales: jax.Array
  code: str = dataclasses.field(metadata=dict(static=True))
  block: tuple[int, int] = dataclasses.field(metadata=dict(static=True))
  shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
  dtype: np.dtype = dataclasses.field(metadata=dict(static=True))

  @property
  def nbytes(self) -> int:
    """Bytes held: codes plus scales."""
    return _nbytes(self.codes) + _nbytes(self.scales)


def _nbytes(x) -> int:
  return math.prod(x.shape) * jnp.dtype(x.dtype).itemsize


def _split(length: int, budget: int) -> tuple[int, int]:
  """``length`` as ``k`` equal runs of at most ``budget``: ``(k, run)``."""
  if length == 0:
    return 0, 0
  k = -(-length // budget)
  return k, -(-length // k)


def _matrix_shape(shape) -> tuple[int, int]:
  """``(m, n)`` of the ``(..., m, n)`` view of ``shape``."""
  if len(shape) == 0:
    return 1, 1
  if len(shape) == 1:
    return shape[0], 1
  return shape[-2], shape[-1]


def block_layout(shape, bits: int, block_size: int):
  """Blocks of an array: ``(k_m, L_m, k_n, L_n)`` (module docstring).

  Args:
    shape: the array's shape.
    bits: bits per code (4-bit blocks have an even ``L_m``).
    block_size: the largest number of entries a block.

  Returns:
    The number of blocks and their length along the block axis, then
    along the last axis.
  """
  m, n = _matrix_shape(shape)
  per_byte = 8 // bits
  k_m, l_m = _split(m, block_size)
  l_m = -(-l_m // per_byte) * per_byte
  k_n, l_n = _split(n, max(1, block_size // max(l_m, 1)))
  return k_m, l_m, k_n, l_n


def _as_matrices(x):
  """``x`` as ``(..., m, n)``: 1-D leaves as a column, scalars ``(1, 1)``."""
  if x.ndim < 2:
    return x.reshape(-1, 1) if x.ndim == 1 else x.reshape(1, 1)
  return x


def _tiles(x, k_m, l_m, k_n, l_n):
  """``(..., k_m L_m, k_n L_n)`` as blocks ``(..., k_m, L_m, k_n, L_n)``.

  Runs of one column (``L_n = 1``) stay ``(..., k_m, L_m, n)``: XLA's CPU
  loops do not vectorize over a trailing axis of length 1 (8x slower).
  """
  *batch, _, _ = x.shape
  if l_n == 1:
    return x.reshape(*batch, k_m, l_m, k_n)
  return x.reshape(*batch, k_m, l_m, k_n, l_n)


def _check_input(x) -> jax.Array:
  if not hasattr(x, "dtype"):
    x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
        "`x` must be a real floating-point array (float32, bfloat16,"
        f" float16, ...), got dtype {x.dtype}."
    )
  return x


def quantize(x, format="q8", *, block_size=None, key=None) -> QuantizedArray:
  """Quantizes ``x`` block-wise (see the module docstring).

  Args:
    x: a real floating-point array, any shape (zero-size too).
    format: a format name (``"q8"``, ``"q4"``, ``"n4"``, ``"u8"``, ``"u4"``) or a
      :class:`QuantFormat`.
    block_size: the largest number of entries a block; ``None`` for the
      format's.
    key: a PRNG key: stochastic rounding; ``None``: round to nearest.

  Returns:
    A :class:`QuantizedArray`. Under Explicit mesh axes (sharding in
    types) its codes and scales take ``x``'s ``PartitionSpec``, axis by
    axis where their length divides evenly (replicated along the others).

  Unsigned formats store negative entries as their smallest value, and a
  block holding a NaN or an infinity gets a non-finite scale.
  """
  fmt = as_format(format)
  _checks.check_prng_key(key, "key", optional=True)
  if block_size is not None:
    fmt = dataclasses.replace(fmt, block_size=block_size)
  if fmt.stochastic and key is None:
    raise ValueError(
        "A stochastic QuantFormat needs a `key` for its rounding."
    )
  x = _check_input(x)
  book = fmt.book
  shape, dtype = tuple(x.shape), jnp.dtype(x.dtype)
  layout = block_layout(shape, book.bits, fmt.max_block)
  k_m, l_m, k_n, l_n = layout

  def core(x, key):
    mat = _as_matrices(x).astype(jnp.float32)
    *batch, m, n = mat.shape
    pad = [(0, 0)] * len(batch) + [(0, k_m * l_m - m), (0, k_n * l_n - n)]
    blocks = _tiles(jnp.pad(mat, pad), k_m, l_m, k_n, l_n)
    axes = (-2,) if l_n == 1 else (-3, -1)
    scales = jnp.max(jnp.abs(blocks), axis=axes, keepdims=True, initial=0.0)
    y = _normalize(blocks, scales)
    if key is None:
      idx = _count_at_most(_thresholds(book.values), y)
    else:
      idx = _stochastic(y, book.values, key)
    codes = _pack(idx.reshape(*batch, k_m * l_m, k_n * l_n), book.bits)
    scales = scales.reshape(*batch, k_m, k_n)
    if len(shape) < 2:
      codes, scales = codes[..., 0], scales[..., 0]
    return codes, scales

  sharding = _explicit_sharding(x)
  if sharding is None:
    codes, scales = core(x, key)
  else:
    batch = shape[:-2]
    if len(shape) < 2:
      out = [(k_m * l_m * book.bits // 8,), (k_m,)]
    else:
      out = [
          (*batch, k_m * l_m * book.bits // 8, k_n * l_n),
          (*batch, k_m, k_n),
      ]
    codes, scales = jax.sharding.auto_axes(
        core,
        axes=_explicit_axes(sharding.mesh),
        out_sharding=tuple(_like(sharding, o) for o in out),
    )(x, key)
  return QuantizedArray(
      codes, scales, book.name, (l_m, l_n), shape, dtype
  )


def dequantize(q: QuantizedArray, dtype=None, *, out_sharding=None):
  """The array a :class:`QuantizedArray` stands for.

  Args:
    q: a quantized array.
    dtype: the result's dtype; ``None`` for the original one.
    out_sharding: under Explicit mesh axes, the result's sharding (e.g. the
      parameter's); ``None`` takes the codes' ``PartitionSpec``, axis by
      axis where it divides the result's length evenly.

  Returns:
    ``values[codes] * scales`` (computed in float32), in ``q``'s original
    shape.
  """
  if not isinstance(q, QuantizedArray):
    raise TypeError(f"`q` must be a QuantizedArray, got {type(q).__name__}.")
  if dtype is not None:
    dtype = _checks.check_dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f"`dtype` must be None or a real floating dtype, got {dtype}."
      )
  if out_sharding is not None and not isinstance(
      out_sharding, (jax.sharding.NamedSharding, jax.sharding.PartitionSpec)
  ):
    raise TypeError(
        "`out_sharding` must be None, a NamedSharding or a PartitionSpec,"
        f" got {out_sharding!r}."
    )
  book = codes_lib.CODES[q.code]
  out_dtype = q.dtype if dtype is None else dtype

  def core(codes, scales):
    if len(q.shape) < 2:
      codes, scales = codes[:, None], scales[:, None]
    *batch, k_m, k_n = scales.shape
    l_m, l_n = q.block
    idx = _unpack(codes, book.bits).astype(jnp.int32)
    table = jnp.asarray(book.values)
    blocks = _tiles(jnp.take(table, idx, mode="clip"), k_m, l_m, k_n, l_n)
    if l_n == 1:
      x = blocks * scales.reshape(*batch, k_m, 1, k_n)
    else:
      x = blocks * scales.reshape(*batch, k_m, 1, k_n, 1)
    x = x.reshape(*batch, k_m * l_m, k_n * l_n)
    m, n = _matrix_shape(q.shape)
    x = x[..., :m, :n].reshape(q.shape)
    return x.astype(out_dtype)

  sharding = _explicit_sharding(q.codes) or _explicit_sharding(q.scales)
  if sharding is None and out_sharding is None:
    return core(q.codes, q.scales)
  if out_sharding is None:
    out_sharding = _like(sharding, q.shape)
  mesh = (sharding or out_sharding).mesh
  return jax.sharding.auto_axes(
      core, axes=_explicit_axes(mesh), out_sharding=out_sharding
  )(q.codes, q.scales)


def _explicit_axes(mesh) -> tuple[str, ...]:
  return tuple(
      a
      for a, t in zip(mesh.axis_names, mesh.axis_types)
      if t == jax.sharding.AxisType.Explicit
  )


def _explicit_sharding(x):
  """``x``'s ``NamedSharding`` when it splits ``x`` over Explicit axes."""
  try:
    s = jax.typeof(x).sharding
  except (AttributeError, TypeError):
    return None
  if not isinstance(s, jax.sharding.NamedSharding):
    return None
  explicit = set(_explicit_axes(s.mesh))
  used: set[str] = set()
  for entry in s.spec:
    used.update((entry,) if isinstance(entry, str) else entry or ())
  return s if used & explicit else None


def _like(sharding, shape):
  """``sharding``'s spec on ``shape``: each axis kept where it divides."""
  spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
  sizes = dict(sharding.mesh.shape)
  out = []
  for entry, length in zip(spec[: len(shape)], shape):
    names = (entry,) if isinstance(entry, str) else tuple(entry or ())
    ways = math.prod(sizes[a] for a in names)
    out.append(entry if names and length % ways == 0 else None)
  return jax.sharding.NamedSharding(
      sharding.mesh, jax.sharding.PartitionSpec(*out)
  )


def _pow2(k):
  """``2.0**k`` in float32 for integer ``k`` in ``[-126, 127]``, exactly."""
  return jax.lax.bitcast_convert_type(
      ((k + 127) << 23).astype(jnp.int32), jnp.float32
  )


def _normalize(x, scales):
  """``x / s`` as ``(x 2^-e1) (2^-e2 / f)``, ``s = f 2^(e1 + e2)``.

  ``f`` in ``[1/2, 1)`` (``frexp``), ``e1 = floor(e / 2)``: every factor is
  a normal float32 whatever the scale (a plain ``x / s`` becomes ``x *
  (1 / s)`` in XLA, and ``1 / s`` is flushed to 0 above ``2**126``), and
  the only roundings are ``1 / f`` and the last product. A zero scale
  (an all-zero block) divides by 1.
  """
  f, e = jnp.frexp(jnp.where(scales > 0, scales, 1))
  e1 = e // 2
  return (x * _pow2(-e1)) * (_pow2(e1 - e) * (1 / f))


# Buckets of |y| for the look-up: below 2**_LOG2_MIN one bucket (no code
# value or midpoint is that small), then each binade up to [1, 2) split into
# 2**mant_bits buckets of equal width, the last one open above.
_LOG2_MIN = -26


@functools.lru_cache(maxsize=None)
def _lookup(table: tuple) -> tuple[np.ndarray, np.ndarray, int]:
  """Look-up tables counting the entries of a sorted ``table`` <= ``y``.

  Buckets of ``|y|`` (and its sign) are read off the float bits of ``y``;
  each bucket holds at most one entry ``c`` of the table, so the count is
  ``base[bucket] + (y >= c)``: two small look-ups an entry instead of a
  binary search's ``log2(len(table))``.

  Returns:
    ``(base, cand, mant_bits)``: int32 counts of the entries below each
    bucket, float32 entry inside it (``+inf`` if none), and the mantissa
    bits that split a binade.
  """
  t = np.asarray(table, np.float64)
  assert np.all(np.diff(t) > 0), "entries must be distinct and sorted"
  for mant_bits in range(4, 16):
    per = 2**mant_bits
    n = (1 - _LOG2_MIN) * per + 1
    b = np.arange(1, n)
    lo = np.concatenate([
        [0.0],
        2.0 ** (_LOG2_MIN + (b - 1) // per) * (1 + ((b - 1) % per) / per),
    ])
    hi = np.append(lo[1:], np.inf)
    # y >= 0 in bucket i: y in [lo, hi); y < 0 (or -0.0): y in (-hi, -lo].
    pos_in = (t[None, :] >= lo[:, None]) & (t[None, :] < hi[:, None])
    neg_in = (t[None, :] > -hi[:, None]) & (t[None, :] <= -lo[:, None])
    if max(pos_in.sum(1).max(), neg_in.sum(1).max()) > 1:
      continue
    base = np.concatenate([
        np.sum(t[None, :] < lo[:, None], axis=1),
        np.sum(t[None, :] <= -hi[:, None], axis=1),
    ])
    cand = np.full(2 * n, np.inf)
    for half, inside in enumerate((pos_in, neg_in)):
      rows, cols = np.nonzero(inside)
      cand[half * n + rows] = t[cols]
    return base.astype(np.int32), cand.astype(np.float32), mant_bits
  raise ValueError("table entries too close for the look-up")


def _count_at_most(table: np.ndarray, y: jax.Array) -> jax.Array:
  """``#{j : table[j] <= y}`` for a sorted table of distinct float32s."""
  table = np.asarray(table, np.float32)
  if table.size < 16:
    # A short table is cheaper compared whole: XLA's CPU loops vectorize
    # comparisons, not look-ups (4-bit codes were 6x slower with them).
    return sum((y >= c).astype(jnp.int32) for c in table)
  base, cand, mant_bits = _lookup(tuple(table))
  n = base.size // 2
  bits = jax.lax.bitcast_convert_type(y, jnp.uint32)
  mag = (bits & jnp.uint32(0x7FFFFFFF)) >> (23 - mant_bits)
  bucket = mag.astype(jnp.int32) - (((127 + _LOG2_MIN) << mant_bits) - 1)
  bucket = jnp.clip(bucket, 0, n - 1) + n * (bits >> 31).astype(jnp.int32)
  above = y >= jnp.take(jnp.asarray(cand), bucket, mode="clip")
  return jnp.take(jnp.asarray(base), bucket, mode="clip") + above.astype(
      jnp.int32
  )


def _thresholds(values: np.ndarray) -> np.ndarray:
  """Midpoints between neighbouring values, float32."""
  v = values.astype(np.float32)
  return ((v[:-1] + v[1:]) / np.float32(2)).astype(np.float32)


def _stochastic(y, values, key):
  """Index of the lower or upper neighbour of ``y``, unbiased.

  Rounds up when ``u (c_hi - c_lo) < y - c_lo``, ``u ~ U[0, 1)``: with
  probability ``(y - c_lo) / (c_hi - c_lo)``.
  """
  v = np.asarray(values, np.float32)
  y = jnp.clip(y, v[0], v[-1])
  # The lower neighbour: the number of values <= y, minus one (the largest
  # value pairs with itself; a repeated smallest value is never chosen).
  lo = _count_at_most(v[1:], y)
  tv = jnp.asarray(v)
  c_lo = jnp.take(tv, lo, mode="clip")
  c_hi = jnp.take(tv, jnp.minimum(lo + 1, v.size - 1), mode="clip")
  u = jax.random.uniform(key, y.shape, jnp.float32)
  return lo + (u * (c_hi - c_lo) < y - c_lo).astype(jnp.int32)


def _pack(idx, bits):
  """Codes as uint8; 4-bit codes two a byte along the block axis."""
  idx = idx.astype(jnp.uint8)
  if bits == 8:
    return idx
  pairs = idx.reshape(*idx.shape[:-2], idx.shape[-2] // 2, 2, idx.shape[-1])
  return pairs[..., 0, :] | (pairs[..., 1, :] << 4)


def _unpack(codes, bits):
  if bits == 8:
    return codes
  lo = codes & jnp.uint8(0x0F)
  hi = codes >> 4
  pairs = jnp.stack([lo, hi], axis=-2)
  return pairs.reshape(*codes.shape[:-2], codes.shape[-2] * 2, codes.shape[-1])
