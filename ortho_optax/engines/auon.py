r"""AuON: linear-time cosh-RMS normalization (and its hybrid with Newton-Schulz)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ortho_optax import checks as _checks
from ortho_optax.engines import coefficients as _coefficients
from ortho_optax.engines import newton_schulz as _newton_schulz
from ortho_optax.engines import normalization as _normalization


def auon(
    x: jax.Array,
    *,
    gamma: float = 1.0,
    hybrid_steps: int = 0,
    eps: float = 1e-7,
    symmetric: bool | None = None,
) -> jax.Array:
  r"""AuON's cosh-RMS normalization, optionally after Newton-Schulz steps.

  With :math:`N = mn` entries,

  .. math::
    X = \frac{G}{\|G\|_F + \epsilon}, \qquad
    r = \sqrt{\tfrac{1}{N} \textstyle\sum_{ij} \cosh(\gamma X_{ij})^2},
    \qquad U = \frac{X}{r + 10^{-8}} .

  ``cosh`` only sets the scalar :math:`r \in [1, \sqrt{1 + \sinh^2(\gamma)
  / N}]`; :math:`U` is a uniform rescaling of :math:`X` (no
  orthogonalization, linear time). With ``hybrid_steps > 0``, that many
  quintic Newton-Schulz steps with Muon's coefficients run on :math:`X`
  before the cosh scaling (Hybrid-AuON; the paper uses one).

  Args:
    x: array of shape ``(..., m, n)``.
    gamma: gain inside ``cosh`` (the paper's 1.0; the 2026 code uses 1.5).
    hybrid_steps: Newton-Schulz steps before the scaling (0: plain AuON).
    eps: added to the Frobenius norm, relative to ``max |G|`` (the input
      is first divided by a power of two near it); an all-zero ``G`` maps
      to zeros.
    symmetric: as in :func:`newton_schulz`, for the hybrid steps.

  Returns:
    An array with the shape and dtype of ``x``.

  References:
    Maity, `AuON: A Linear-time Alternative to Semi-Orthogonal Momentum
    Updates <https://arxiv.org/abs/2509.24320>`_, 2025
  """
  x = _checks.check_matrix(x)
  if isinstance(hybrid_steps, bool) or not isinstance(hybrid_steps, int):
    raise TypeError(f"`hybrid_steps` must be an int, got {hybrid_steps!r}.")
  if hybrid_steps < 0:
    raise ValueError(f"`hybrid_steps` must be >= 0, got {hybrid_steps}.")
  _checks.check_nonnegative(eps, "eps")
  symmetric = _newton_schulz.check_symmetric(symmetric)
  if not isinstance(gamma, jax.core.Tracer):  # may be an injected hyperparam
    _checks.check_nonnegative(gamma, "gamma")
  if x.size == 0:  # Nothing to normalize (the mean below would be NaN).
    return x
  out_dtype = x.dtype
  # Scale-free, as the formula is: eps is relative to max |G|, and |G|^2
  # neither overflows nor underflows (see _normalization.prescale).
  xw = _normalization.prescale(x)
  wd = xw.dtype
  norm = jnp.sqrt(jnp.sum(jnp.abs(xw) ** 2, axis=(-2, -1), keepdims=True))
  denom = norm + eps
  xn = xw / jnp.where(denom > 0, denom, 1).astype(wd)
  if hybrid_steps:
    transpose = xn.shape[-2] > xn.shape[-1]
    if transpose:
      xn = jnp.swapaxes(xn, -1, -2)
    rows = _coefficients.MUON_ROWS * hybrid_steps
    xn = _newton_schulz.iterate(xn, rows, wd, symmetric=symmetric)
    if transpose:
      xn = jnp.swapaxes(xn, -1, -2)
  r = jnp.sqrt(
      jnp.mean(jnp.abs(jnp.cosh(gamma * xn)) ** 2, axis=(-2, -1), keepdims=True)
  )
  return (xn / (r + 1e-8)).astype(out_dtype)

