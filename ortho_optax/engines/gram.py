r"""Gram Newton-Schulz: the quintic iteration carried out on the Gram matrix."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from ortho_optax.engines import newton_schulz as _newton_schulz
from ortho_optax.engines import normalization as _normalization
from ortho_optax.engines.normalization import matmul


def default_restarts(steps: int) -> tuple[int, ...]:
  """One restart every three steps, starting before step 2 (0-based).

  Five steps restart once, before the third step, as in Dao-AILab's default
  ``reset_iterations=[2]``.
  """
  return tuple(range(2, steps, 3))


def check_restarts(restarts, steps: int) -> tuple[int, ...]:
  if restarts is None:
    return default_restarts(steps)
  if isinstance(restarts, (int, bool)) or not isinstance(restarts, Sequence):
    raise TypeError(
        "`restarts` must be a sequence of step indices (ints) or None, got"
        f" {restarts!r}."
    )
  out = []
  for r in restarts:
    if isinstance(r, bool) or not isinstance(r, int):
      raise TypeError(f"`restarts` entries must be ints, got {r!r}.")
    if not 1 <= r < steps:
      raise ValueError(
          f"`restarts` entries must be step indices in [1, steps - 1] ="
          f" [1, {steps - 1}]; got {r}."
      )
    out.append(r)
  return tuple(sorted(set(out)))


def gram_newton_schulz(
    x: jax.Array,
    *,
    coeffs="polar_express",
    steps: int | None = None,
    restarts: Sequence[int] | None = None,
    normalization: str | None = None,
    eps: float = 1e-7,
    compute_dtype=None,
    symmetric: bool = True,
) -> jax.Array:
  r"""The Newton-Schulz polynomial of :func:`newton_schulz`, via the Gram matrix.

  Writing :math:`X_t = Q_t X_0` with :math:`Q_t` a polynomial in
  :math:`R_0 = X_0 X_0^H` and :math:`Z_t = b_t R_t + c_t R_t^2`,

  .. math::
    Q_{t+1} = Q_t Z_t + a_t Q_t, \qquad
    R_{t+1} = (a_t I + Z_t)^2 R_t ,

  so only :math:`R_0 = X_0 X_0^H` and the final :math:`Q_T X_0` touch the
  ``(m, n)`` matrix; every other product is ``(m, m)``. For ``n/m`` above
  about 1.5 this is cheaper than the standard form. A restart before step
  ``t`` materializes :math:`X_t = Q_t X_0`, recomputes :math:`R` from it and
  resets :math:`Q = I`, which stops round-off in :math:`R` from being
  amplified by the high-gain early polynomials. In exact arithmetic the
  result equals :func:`newton_schulz` with the same coefficients.

  Args:
    x: array of shape ``(..., m, n)``; leading axes are batch axes.
    coeffs: as in :func:`newton_schulz`.
    steps: as in :func:`newton_schulz`.
    restarts: 0-based step indices before which to restart, each in
      ``[1, steps - 1]``; ``None`` restarts every three steps from step 2
      (``(2,)`` for five steps). The Gram form is unstable in bfloat16;
      use float32 (or float16 with restarts).
    normalization: as in :func:`newton_schulz`.
    eps: as in :func:`newton_schulz`.
    compute_dtype: as in :func:`newton_schulz`.
    symmetric: as in :func:`newton_schulz`: every product but the
      ``Q X`` ones is Hermitian (polynomials in :math:`R_0` commute), and
      is computed as one triangle of blocks.

  Returns:
    An array with the shape and dtype of ``x``.

  References:
    Zhang, Amsel, Chen, Dao, `Gram Newton-Schulz
    <https://dao-ailab.github.io/blog/2026/gram-newton-schulz/>`_, 2026
  """
  x, rows, input_scale, normalization, cdt = _newton_schulz.prepare(
      x, coeffs, steps, normalization, eps, compute_dtype
  )
  restarts = check_restarts(restarts, len(rows))
  symmetric = _newton_schulz.check_symmetric(symmetric)
  if x.size == 0:  # An empty matrix is its own (empty) polar factor.
    return x
  transpose = x.shape[-2] > x.shape[-1]
  if transpose:
    x = jnp.swapaxes(x, -1, -2)
  out_dtype = x.dtype
  x0, r0 = _normalization.normalize(
      x,
      normalization,
      eps=eps,
      input_scale=input_scale,
      compute_dtype=cdt,
      symmetric=symmetric,
  )
  bounds = (0,) + restarts + (len(rows),)
  xs, r = x0, r0
  for start, stop in zip(bounds[:-1], bounds[1:]):
    if r is None:
      r = _normalization.gram(xs, cdt, symmetric=symmetric)
    q = _segment(r, rows[start:stop], cdt, symmetric)
    xs = matmul(q, xs, cdt)
    r = None
  if transpose:
    xs = jnp.swapaxes(xs, -1, -2)
  return xs.astype(out_dtype)


def _segment(r, rows, cdt, symmetric=True):
  """Returns ``Q`` with ``X_end = Q X_start`` for the steps in ``rows``.

  As in :func:`_newton_schulz.quintic_step`, products run in ``cdt`` and
  the elementwise epilogues in at least float32 (coefficients unrounded).
  ``R``, ``Z``, ``Q`` are polynomials in ``R_0``: Hermitian, and they
  commute, so each product below is Hermitian (``P Q = P Q^H``) and needs
  one triangle of blocks only.
  """
  wd = _normalization.working_dtype(cdt)

  def mm(p, q):
    return _normalization.hermitian(
        p, q, cdt, keep_accumulator=True, symmetric=symmetric,
        q_hermitian=True,
    )

  # Broadcast explicitly: batched R under jax_numpy_rank_promotion='raise'.
  eye = jnp.broadcast_to(jnp.eye(r.shape[-1], dtype=wd), r.shape)
  q = None
  for i, (a, b, c) in enumerate(rows):
    z = (b * r.astype(wd) + c * mm(r, r)).astype(cdt)
    # Q starts as the identity, so its first update needs no product.
    if q is None:
      q = z.astype(wd) + a * eye
    else:
      q = mm(q, z) + a * q.astype(wd)
    q = q.astype(cdt)
    if i + 1 < len(rows):
      rz = (mm(r, z) + a * r.astype(wd)).astype(cdt)
      r = (mm(z, rz) + a * rz.astype(wd)).astype(cdt)
  return q
