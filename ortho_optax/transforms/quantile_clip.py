"""``clip_by_quantile``: ROOT's robust component of the momentum."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from ortho_optax import checks as _checks
from ortho_optax import routing as _routing
from ortho_optax.engines import normalization as _normalization

# ROOT adds this to the quantile (example_train.py), so that a matrix whose
# q-quantile is 0 (mostly zeros) is not clipped to zero. Here it counts in
# units of max|U| (its power of two, see normalization.inverse_unit): the
# reference's 1e-9 at unit scale, but an absolute 1e-9 would exceed every
# entry of a momentum of ~1e-10 and turn off the clipping.
QUANTILE_OFFSET = 1e-9


def _check_q(q) -> None:
  _checks.check_number(q, "q", low=0.0, high=1.0)


def _order_statistic(bits: jax.Array, k: jax.Array) -> jax.Array:
  """The ``k``-th smallest (0-based) entry of each row of ``bits``.

  ``bits`` are non-negative floats viewed as integers, whose order is the
  floats' order; bisection on the integer value needs one counting pass per
  bit instead of a sort.
  """
  lo = jnp.zeros(bits.shape[:-1], bits.dtype)
  hi = jnp.max(bits, axis=-1)

  def bisect(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    enough = jnp.sum(bits <= mid[..., None], axis=-1) >= k + 1
    return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

  steps = 8 * bits.dtype.itemsize
  return jax.lax.fori_loop(0, steps, bisect, (lo, hi))[1]


def quantile_of_magnitudes(x: jax.Array, q: jax.typing.ArrayLike) -> jax.Array:
  r"""``numpy.quantile(abs(x), q, axis=-1)`` (linear), without sorting.

  With :math:`p = q (n - 1)`, :math:`k = \lfloor p \rfloor`: :math:`x_{(k)}
  + (p - k)(x_{(k+1)} - x_{(k)})`, the order statistics found by bisection
  on the float bit patterns (exact, 32 counting passes in float32). For
  twelve 768 x 3072 matrices this is 16x faster than ``jnp.quantile``'s
  sort on 2 CPU cores and 7x on an H200 (``benchmarks/quantile.py``). A
  traced ``q`` (``optax.inject_hyperparams``) places
  the interpolation in float32, as ``jnp.quantile`` does.

  Args:
    x: a floating array; the quantile is taken over its last axis.
    q: the quantile in ``[0, 1]``.

  Returns:
    The quantile of ``|x|`` for each row, shape ``x.shape[:-1]``.
  """
  a = jnp.abs(x)
  n = a.shape[-1]
  itype = {4: jnp.int32, 8: jnp.int64}[a.dtype.itemsize]
  bits = jax.lax.bitcast_convert_type(a, itype)
  if isinstance(q, jax.core.Tracer):
    pos = jnp.asarray(q, a.dtype) * (n - 1)
    k = jnp.clip(jnp.floor(pos).astype(itype), 0, n - 1)
    frac = pos - k.astype(a.dtype)
  else:  # In float64: q (n - 1) in float32 misplaces the interpolation.
    pos = float(q) * (n - 1)
    k = jnp.asarray(min(max(math.floor(pos), 0), n - 1), itype)
    frac = jnp.asarray(pos - math.floor(pos), a.dtype)
  low = _order_statistic(bits, k)
  ties = jnp.sum(bits <= low[..., None], axis=-1)
  above = jnp.where(bits > low[..., None], bits, jnp.iinfo(itype).max)
  high = jnp.where((ties >= k + 2) | (k >= n - 1), low,
                   jnp.min(above, axis=-1))
  low = jax.lax.bitcast_convert_type(low, a.dtype)
  high = jax.lax.bitcast_convert_type(high, a.dtype)
  return low + frac * (high - low)


def clip_by_quantile(
    q: jax.typing.ArrayLike = 0.9,
    *,
    dimension_numbers=None,
    rules: _routing.Rules = None,
) -> optax.GradientTransformation:
  r"""Clips each matrix elementwise at its ``q``-quantile of :math:`|U|`.

  ROOT's robust component: with :math:`\tau = \mathrm{quantile}_q(|U|) +
  10^{-9} u` per matrix (linear interpolation, as ``numpy.quantile`` and the
  reference's ``simple_quantile``; :math:`u` the power of two with
  :math:`u \le \max|U| < 2u`, so the reference's :math:`10^{-9}` at unit
  scale and the same clipping at any scale), the update becomes

  .. math::
    B = U - \mathrm{sign}(U) \max(|U| - \tau, 0) = \mathrm{clip}(U, -\tau,
    \tau),

  the momentum minus its soft-thresholded outliers, so about a fraction
  :math:`1 - q` of the entries are clipped. Stacked matrices (batch axes)
  each get their own quantile. Leaves that are not matrices pass through.

  Args:
    q: the quantile in ``[0, 1]`` (ROOT's 0.9).
    dimension_numbers: as in :func:`scale_by_orthogonalization`.
    rules: routing overrides, see :func:`label_params`.

  Returns:
    An ``optax.GradientTransformation`` with an empty state.

  References:
    He et al., `ROOT: Robust Orthogonalized Optimizer for Neural Network
    Training <https://arxiv.org/abs/2511.20626>`_, 2025
  """
  _check_q(q)
  _routing.check_dimension_numbers(dimension_numbers)
  _routing.check_rules(rules)

  def init_fn(params):
    _routing.resolve_dimension_numbers(params, dimension_numbers, rules)
    return optax.EmptyState()

  def clip(m):
    wd = jnp.promote_types(m.dtype, jnp.float32)
    mw = m.astype(wd)
    flat = mw.reshape(mw.shape[:-2] + (-1,))
    # Floored at the smallest normal: a subnormal offset is flushed to 0.
    offset = jnp.maximum(
        QUANTILE_OFFSET / _normalization.inverse_unit(mw), jnp.finfo(wd).tiny
    )
    tau = quantile_of_magnitudes(flat, q)[..., None, None] + offset
    return jnp.clip(mw, -tau, tau).astype(m.dtype)

  def update_fn(updates, state, params=None):
    del params
    dns = _routing.resolve_dimension_numbers(updates, dimension_numbers, rules)
    return _routing.map_matrices(clip, updates, dns), state

  return optax.GradientTransformation(init_fn, update_fn)
