"""Input normalizations that bring the spectrum of X into (0, 1].

Newton-Schulz only converges for singular values in (0, 1]. Each routine
here returns the rescaled matrix and, when it already formed it, the rescaled
Gram matrix ``A = X X^H`` so that the first Newton-Schulz step can reuse it
(the normalization is then "fused" into the first step and costs no matmul
with an ``(m, n)`` operand beyond the one that step needs anyway).

Every routine first divides each matrix by a power of two near its largest
magnitude (:func:`prescale`), in at least float32. The polar factor does not
depend on the input's scale, and this makes the computation not depend on it
either, over the whole finite range of the dtype: ``|X|^2`` and ``X X^H``
neither overflow (a float16 matrix of entries ~300, or a float32 one of
~1e19, gives ``inf``) nor underflow, and an ``eps`` is measured against
``max |X|`` rather than against 1 (an absolute 1e-7 shrinks the output of
an input of ~1e-7). Dividing by a power of two is exact, so at unit scale
the results are those of the unscaled computation, and ``2^k X`` gives
exactly the same output as ``X``. It is not a matmul, so the FLOP model is
unchanged.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ortho_optax.engines import symmetric as _symmetric

NORMALIZATIONS = ("frobenius", "spectral", "aol", "schatten4")

# Power iterations for the "spectral" estimate, on (A / ||A||_F)^4 applied as
# four matrix-vector products (never formed): each damps the other
# eigenvalues by (lambda_i / lambda_max)^4. Ten on A alone left sigma_max of
# a 23 x 39 Gaussian 11 % under (lambda_2 / lambda_max = 0.86), enough for
# the Newton-Schulz iteration to diverge. Each costs 4 (m, m) matrix-vector
# products, 8 m^2 FLOPs.
SPECTRAL_POWER_ITERATIONS = 10
SPECTRAL_MATVECS_PER_ITERATION = 4
# The power-iteration estimate is a lower bound of sigma_max; this factor
# leaves room for its error (capped by the Schatten-4 bound, which is exact
# for an upper bound).
SPECTRAL_SAFETY = 1.05


def spectral_estimate_flops(m: int) -> int:
  """FLOPs of the ``"spectral"`` estimate for an ``(m, n)`` input, m <= n."""
  return SPECTRAL_POWER_ITERATIONS * SPECTRAL_MATVECS_PER_ITERATION * 2 * m * m


def _frobenius(a: jax.Array) -> jax.Array:
  """``||a||_F`` over the last two axes (keepdims), without overflow when
  ``|a|^2`` exceeds the dtype's range but ``|a|`` does not."""
  amax = jnp.max(jnp.abs(a), axis=(-2, -1), keepdims=True)
  scale = jnp.where(amax > 0, amax, 1).astype(amax.dtype)
  return scale * jnp.sqrt(
      jnp.sum(jnp.abs(a / scale.astype(a.dtype)) ** 2, axis=(-2, -1),
              keepdims=True)
  )


def working_dtype(dtype) -> jnp.dtype:
  """At least float32 (complex64 for complex input)."""
  return jnp.promote_types(dtype, jnp.float32)


def _inverse_power_of_two(a: jax.Array) -> jax.Array:
  """``2^-floor(log2 a)`` for positive ``a``, built from the exponent bits.

  Exact (unlike ``exp2(-floor(log2 a))``; ``jnp.frexp`` mishandles
  subnormals) and always a normal number: the exponent is clipped to
  ``[-126, 127]`` in float32, so for ``a >= 2^127`` it is ``2^-126``.
  The result is a factor to multiply by, not a divisor: XLA may turn a
  division into a product with the reciprocal, and ``1 / 2^127`` is
  subnormal and flushed to zero. Zero and subnormal ``a`` give 1.
  """
  info = jnp.finfo(a.dtype)
  itype = {4: jnp.int32, 8: jnp.int64}[a.dtype.itemsize]
  bias = (1 << (info.nexp - 1)) - 1
  bits = jax.lax.bitcast_convert_type(a, itype)
  biased = (bits >> info.nmant) & ((1 << info.nexp) - 1)
  inverse = jnp.where(
      biased == 0, bias, jnp.clip(2 * bias - biased, 1, 2 * bias)
  )
  return jax.lax.bitcast_convert_type(
      inverse.astype(itype) << info.nmant, a.dtype
  )


def inverse_unit(x: jax.Array, axis=(-2, -1)) -> jax.Array:
  """The power of two that brings ``max|x|`` over ``axis`` into ``[1, 4)``.

  ``2^-floor(log2 max|x|)`` (keepdims, ``x``'s real dtype), except that it
  is never subnormal (so ``max|x| >= 2^127`` lands in ``[2, 4)``), and 1
  for an all-zero ``x``. ``1 / inverse_unit`` is the scale against which
  the scale-free routines measure their epsilons.
  """
  # initial=0 keeps zero-size matrices legal (their factor is 1).
  amax = jnp.max(jnp.abs(x), axis=axis, keepdims=True, initial=0.0)
  return _inverse_power_of_two(amax)


def prescale(x: jax.Array) -> jax.Array:
  r"""``x`` in at least float32, times :func:`inverse_unit` per matrix.

  Afterwards the largest magnitude of each matrix (last two axes) lies in
  ``[1, 4)`` (``[1, 2)`` below float32's top binade); an all-zero matrix
  stays zero. Multiplying by a power of two is exact. Non-finite entries
  give NaN (never a silent zero). Entries more than ``2^126`` below the
  largest become subnormal and, like subnormal inputs, are flushed to zero
  by XLA on CPU and GPU: they are below float32's resolution of the result
  anyway.

  Args:
    x: array of shape ``(..., m, n)``.

  Returns:
    The rescaled array, dtype :func:`working_dtype` of ``x``'s.
  """
  xw = x.astype(working_dtype(x.dtype))
  return xw * inverse_unit(xw).astype(xw.dtype)


def scale_free_normalize(
    x: jax.Array, axis, factor: float, eps: float
) -> jax.Array:
  """``x / (factor * ||x|| + eps * u)``, the l2 norm over ``axis`` (keepdims).

  ``u`` is ``1 /`` :func:`inverse_unit` over ``axis``, and the sum of
  squares is taken of ``x / u``: no overflow or underflow at any scale, the
  same result for ``2^k x`` as for ``x``, and ``eps`` relative to
  ``max|x|``. A zero slice gives zeros (also with ``eps = 0``). In at least
  float32.
  """
  xs = x.astype(working_dtype(x.dtype))
  xs = xs * inverse_unit(xs, axis).astype(xs.dtype)
  nrm = jnp.sqrt(jnp.sum(jnp.abs(xs) ** 2, axis=axis, keepdims=True))
  denom = nrm * factor + eps
  return xs / jnp.where(denom > 0, denom, 1).astype(xs.dtype)


def _safe_rsqrt(v: jax.Array, eps: float) -> jax.Array:
  """``1 / sqrt(max(v, eps))``, and 0 where that is 0 (a zero matrix/row).

  Multiplying a zero row by 0 rather than ``1 / sqrt(0) = inf`` keeps a
  zero input a zero output (no NaN) even with ``eps = 0``.
  """
  v = jnp.maximum(v, eps)
  return jnp.where(v > 0, jax.lax.rsqrt(jnp.where(v > 0, v, 1)), 0)


def gram(x: jax.Array, compute_dtype, *, symmetric: bool = True) -> jax.Array:
  """``A = X X^H`` over the last two axes, in ``compute_dtype``.

  One triangle of blocks when ``symmetric`` and ``x`` has enough rows
  (:mod:`ortho_optax.engines.symmetric`).
  """
  return hermitian(x, x, compute_dtype, symmetric=symmetric)


def hermitian(
    p: jax.Array,
    q: jax.Array,
    compute_dtype,
    *,
    keep_accumulator: bool = False,
    symmetric: bool = True,
    q_hermitian: bool = False,
) -> jax.Array:
  """``P Q^H`` for a Hermitian result, as :func:`matmul` computes products.

  See :func:`ortho_optax.engines.symmetric.hermitian_product`: with
  ``symmetric`` (and enough rows) only one triangle of blocks is computed.
  """
  return _symmetric.hermitian_product(
      p,
      q,
      functools.partial(
          matmul, compute_dtype=compute_dtype, keep_accumulator=keep_accumulator
      ),
      symmetric=symmetric,
      q_hermitian=q_hermitian,
  )


def matmul(
    a: jax.Array, b: jax.Array, compute_dtype, *, keep_accumulator=False
) -> jax.Array:
  """A batched matmul in ``compute_dtype``, accumulated in at least float32.

  With ``keep_accumulator=True`` the (at least float32) accumulator is
  returned instead of being rounded back to ``compute_dtype``, so that an
  epilogue such as ``b * A + c * (A @ A)`` is evaluated with unrounded
  coefficients and rounded once.
  """
  a = a.astype(compute_dtype)
  b = b.astype(compute_dtype)
  acc = working_dtype(compute_dtype)
  if acc != compute_dtype:
    out = jnp.matmul(a, b, preferred_element_type=acc)
    return out if keep_accumulator else out.astype(compute_dtype)
  return jnp.matmul(a, b)


def normalize(
    x: jax.Array,
    normalization: str,
    *,
    eps: float,
    input_scale: float,
    compute_dtype,
    symmetric: bool = True,
) -> tuple[jax.Array, jax.Array | None]:
  """Normalizes wide ``x`` (``m <= n``) so that ``sigma_max <= 1``.

  ``x`` is first divided as in :func:`prescale`, so the result does not
  depend on its scale and ``eps`` is relative to ``max |x|``: it is added
  to the Frobenius norm, or is the floor of the squared norms (AOL's row
  sums, the Schatten-4 and spectral estimates), in units of ``max |x|``
  and ``max |x|^2``. An all-zero matrix (or, for AOL, row) maps to zeros,
  with any ``eps >= 0``.

  Args:
    x: array of shape ``(..., m, n)`` with ``m <= n``.
    normalization: one of ``NORMALIZATIONS``.
    eps: added to (or used as a floor of) the norm, relative to
      ``max |x|`` (see above).
    input_scale: extra safety factor the norm is multiplied by.
    compute_dtype: the dtype of the returned matrices.
    symmetric: form the Gram matrix of the fused normalizations as one
      triangle of blocks (:func:`hermitian`).

  Returns:
    ``(x0, a0)``: the normalized matrix in ``compute_dtype`` and, for the
    fused normalizations, ``a0 = x0 x0^H``; ``None`` for ``"frobenius"``.
  """
  xw = prescale(x)
  if normalization == "frobenius":
    norm = jnp.sqrt(
        jnp.sum(jnp.abs(xw) ** 2, axis=(-2, -1), keepdims=True)
    )
    denom = norm * input_scale + eps
    denom = jnp.where(denom > 0, denom, 1).astype(denom.dtype)
    return (xw / denom).astype(compute_dtype), None

  # The Gram matrix stays in the (at least float32) accumulator: entries up
  # to n max|x|^2 would overflow float16 for n > 2^14 even after prescale.
  xc = xw.astype(compute_dtype)
  a = hermitian(
      xc, xc, compute_dtype, keep_accumulator=True, symmetric=symmetric
  ).astype(xw.dtype)
  if normalization == "aol":
    # AOL (Prach & Lampert 2022): s_i = 1 / sqrt(sum_j |A_ij|) guarantees
    # sigma_max(diag(s) X) <= 1 by a Schur test on diag(s) A diag(s).
    rowsum = jnp.sum(jnp.abs(a), axis=-1)
    s = _safe_rsqrt(rowsum, eps) / input_scale
    x0 = s[..., :, None] * xw
    a0 = s[..., :, None] * a * s[..., None, :]
  else:
    fro_a = _frobenius(a)
    if normalization == "schatten4":
      # ||X||_{S4}^2 = ||X X^H||_F >= sigma_max^2 (Gelfand bound, k = 1).
      lam = fro_a
    elif normalization == "spectral":
      lam = jnp.minimum(
          _power_lambda_max(a, fro_a) * SPECTRAL_SAFETY**2, fro_a
      )
    else:  # pragma: no cover - checked by the callers
      raise ValueError(normalization)
    s = _safe_rsqrt(lam, eps) / input_scale
    x0 = s * xw
    a0 = (s * s) * a
  return x0.astype(compute_dtype), a0.astype(compute_dtype)


def _power_lambda_max(a: jax.Array, fro_a: jax.Array) -> jax.Array:
  """Power-iteration estimate of ``lambda_max`` of PSD ``a``, shape (..., 1, 1).

  Iterates on ``b = (a / ||a||_F)^4`` (eigenvalues in [0, 1], so nothing
  overflows), applied as four products with ``a / ||a||_F``, and returns
  ``||a||_F * lambda_max(b)^(1/4)``: the fourth power widens the eigenvalue
  gaps, and the fourth root divides the estimate's relative error by four.

  ``a`` may be complex Hermitian (its real part is not enough: for complex
  ``a`` its ``lambda_max`` can be far smaller). The start vector is fixed (a
  deterministic pseudo-random draw), so the estimate is reproducible and
  jit-safe.

  Args:
    a: Hermitian PSD matrices of shape ``(..., m, m)``.
    fro_a: their Frobenius norms, shape ``(..., 1, 1)``.
  """
  m = a.shape[-1]
  real = jnp.finfo(a.dtype).dtype
  tiny = jnp.finfo(a.dtype).tiny
  a_unit = a / (fro_a + tiny).astype(a.dtype)
  v = jax.random.normal(jax.random.key(0), (m,), dtype=real).astype(a.dtype)
  v = jnp.broadcast_to(v, a.shape[:-1])
  for _ in range(SPECTRAL_POWER_ITERATIONS):
    v = v / (jnp.linalg.norm(v, axis=-1, keepdims=True) + tiny)
    for _ in range(SPECTRAL_MATVECS_PER_ITERATION):
      v = jnp.einsum("...ij,...j->...i", a_unit, v)
  # After the loop v = B v_unit, so ||v|| is the Rayleigh-type estimate.
  lam_b = jnp.linalg.norm(v, axis=-1)[..., None, None]
  return fro_a * lam_b ** (1.0 / SPECTRAL_MATVECS_PER_ITERATION)
