"""The exact polar factor from an SVD, and orthogonality diagnostics."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ortho_optax import checks as _checks
from ortho_optax.engines import lapack as _lapack
from ortho_optax.engines import normalization as _normalization


def polar_svd(x: jax.Array) -> jax.Array:
  r"""The exact polar factor :math:`U V^H` of ``x = U \Sigma V^H``.

  Singular values below ``max(m, n) * eps * sigma_max`` (numerically zero)
  map to zero, so a rank-deficient or all-zero input gives the partial
  isometry that Newton-Schulz converges to (zeros for a zero matrix) instead
  of an arbitrary completion. Computed in at least float32 on the input
  divided by a power of two near its largest magnitude (so that the SVD
  neither overflows nor underflows at any finite scale) and returned in
  the input's dtype.

  Args:
    x: array of shape ``(..., m, n)``.

  Returns:
    An array with the shape and dtype of ``x``.
  """
  x = _checks.check_matrix(x)
  if x.size == 0:  # An empty matrix is its own (empty) polar factor.
    return x
  xw = _normalization.prescale(x)
  wd = xw.dtype
  u, s, vh = _lapack.svd(xw)
  tol = (
      max(x.shape[-2:])
      * jnp.finfo(wd).eps
      * jnp.max(s, axis=-1, keepdims=True)
  )
  keep = (s > tol).astype(u.dtype)
  return ((u * keep[..., None, :]) @ vh).astype(x.dtype)


def orthogonality_error(y: jax.Array, x: jax.Array) -> dict[str, jax.Array]:
  r"""How far ``y`` is from the polar factor of ``x``.

  Returns:
    A dict with ``"sv_min"`` and ``"sv_max"``, the extreme singular values
    of ``y``, and ``"polar_error"``, :math:`\|y - U V^H\|_F / \|U V^H\|_F`
    with :math:`U V^H` = :func:`polar_svd` of ``x``. Each has the batch
    shape of ``x``.
  """
  y = _checks.check_matrix(y, "y")
  x = _checks.check_matrix(x, "x")
  if y.shape != x.shape:
    raise ValueError(
        f"`y` and `x` must have the same shape, got {y.shape} and {x.shape}."
    )
  wd = jnp.promote_types(jnp.promote_types(x.dtype, y.dtype), jnp.float32)
  ref = polar_svd(x.astype(wd))
  y = y.astype(wd)
  s = _lapack.singular_values(y)
  num = jnp.linalg.norm(y - ref, axis=(-2, -1))
  den = jnp.linalg.norm(ref, axis=(-2, -1))
  return {
      "sv_min": jnp.min(s, axis=-1),
      "sv_max": jnp.max(s, axis=-1),
      "polar_error": num / jnp.maximum(den, jnp.finfo(den.dtype).tiny),
  }
