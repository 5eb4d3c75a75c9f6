r"""Gram Newton-Schulz: the quintic iteration carried out on the Gram matrix."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from ortho_optax.engines import newton_schulz as _newton_schulz
from ortho_optax.engines import normalization as _normalization
from ortho_optax.engines.normalization import matmul

# Compute dtypes whose restarts start one step later. The restarts were
# designed for float16 (Gram-NS README): there R drifts and the high-gain
# early polynomials amplify the drift (sigma_max 3.2-14.6 without restarts
# on ill-conditioned 512 x 2048 inputs). In float32, with five steps, one
# restart before step 3 instead of step 2 has the smaller worst case: over
# Gaussian, power-law and condition-1e3 inputs from 48 x 128 to 512 x 2048,
# its distance to the exact (float64) polynomial was at most 5e-5 of the
# matrix (Frobenius), against 2.2e-4 for the restart before step 2 (which
# is closer on power-law spectra, 1e-5 against 4e-5). Copies of one matrix
# in a batch agreed to 2e-5 against up to 9e-5 (Gaussian, 17 x 19 to
# 64 x 64). It matched Dao's (2, 5) for Polar Express's eight steps (polar
# error 3e-4 at condition 1e3). Dropping the restart in float32 would save
# one X X^H and one Q X product (0.79x the FLOPs and 0.89x the time at
# 1024 x 4096). But the output then moved by up to 0.6 % of the matrix,
# batch copies disagreed by up to 2.5e-4, and eight steps lost a digit
# (3e-3). So the restart stays; ``restarts=()`` is the caller's choice.
_LATE_RESTART_DTYPES = (
    jnp.float32, jnp.float64, jnp.complex64, jnp.complex128
)


def default_restarts(steps: int, compute_dtype) -> tuple[int, ...]:
  """The restarts that ``restarts=None`` means for ``compute_dtype`` matmuls.

  * float16/bfloat16: one restart every three steps, starting before step
    2 (0-based). Five steps restart once, before the third step, as in
    Dao-AILab's default ``reset_iterations=[2]``.
  * float32 and wider: one restart every six steps, starting before step 3.
    Four to nine steps restart once, before the fourth step. This is
    measured to be as cheap as Dao's default and at least as accurate (see
    ``_LATE_RESTART_DTYPES``).
  """
  if jnp.dtype(compute_dtype) in [jnp.dtype(d) for d in _LATE_RESTART_DTYPES]:
    return tuple(range(3, steps, 6))
  return tuple(range(2, steps, 3))


def check_restarts(restarts, steps: int, compute_dtype) -> tuple[int, ...]:
  """Validates ``restarts``; ``None`` is :func:`default_restarts`."""
  if restarts is None:
    return default_restarts(steps, compute_dtype)
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
    symmetric: bool | None = None,
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
      ``[1, steps - 1]``. ``None`` is :func:`default_restarts`. For five
      steps that is ``(2,)`` when the matmuls run in float16/bfloat16 and
      ``(3,)`` in float32 or wider. ``()`` saves one ``X X^H`` and one
      ``Q X`` product (0.79x the FLOPs at ``1024 x 4096``). The price is
      that float32 round-off is amplified 3-10x: up to 0.6 % of the matrix
      on ill-conditioned inputs, while the polar error changes by under
      0.1 %. The Gram form is unstable in bfloat16; use float32 (or float16
      with restarts).
    normalization: as in :func:`newton_schulz`.
    eps: as in :func:`newton_schulz`.
    compute_dtype: as in :func:`newton_schulz`.
    symmetric: as in :func:`newton_schulz` (``None``: on where measured
      faster, the CPU): every product but the ``Q X`` ones is Hermitian
      (polynomials in :math:`R_0` commute), and is computed as one triangle
      of blocks.

  Returns:
    An array with the shape and dtype of ``x``.

  References:
    Zhang, Amsel, Chen, Dao, `Gram Newton-Schulz
    <https://dao-ailab.github.io/blog/2026/gram-newton-schulz/>`_, 2026
  """
  x, rows, input_scale, normalization, cdt = _newton_schulz.prepare(
      x, coeffs, steps, normalization, eps, compute_dtype
  )
  restarts = check_restarts(restarts, len(rows), cdt)
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
