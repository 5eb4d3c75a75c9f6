"""``clip_by_quantile``: ROOT's robust component of the momentum."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ortho_optax import _routing

# ROOT adds this to the quantile (example_train.py).
QUANTILE_OFFSET = 1e-9


def _check_q(q) -> None:
  if isinstance(q, jax.core.Tracer):
    return
  try:
    v = float(q)
  except (TypeError, ValueError) as e:
    raise TypeError(f"`q` must be a number, got {q!r}.") from e
  if not 0.0 <= v <= 1.0:
    raise ValueError(f"`q` must be in [0, 1], got {q!r}.")


def clip_by_quantile(
    q: jax.typing.ArrayLike = 0.9,
    *,
    dimension_numbers=None,
    rules: _routing.Rules = None,
) -> optax.GradientTransformation:
  r"""Clips each matrix elementwise at its ``q``-quantile of :math:`|U|`.

  ROOT's robust component: with :math:`\tau = \mathrm{quantile}_q(|U|) +
  10^{-9}` per matrix (linear interpolation, as ``numpy.quantile`` and the
  reference's ``simple_quantile``), the update becomes

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

  def init_fn(params):
    _routing.resolve_dimension_numbers(params, dimension_numbers, rules)
    return optax.EmptyState()

  def clip(m):
    wd = jnp.promote_types(m.dtype, jnp.float32)
    mw = m.astype(wd)
    tau = jnp.quantile(
        jnp.abs(mw), q, axis=(-2, -1), keepdims=True, method="linear"
    ) + QUANTILE_OFFSET
    return jnp.clip(mw, -tau, tau).astype(m.dtype)

  def update_fn(updates, state, params=None):
    del params
    dns = _routing.resolve_dimension_numbers(updates, dimension_numbers, rules)
    return _routing.map_matrices(clip, updates, dns), state

  return optax.GradientTransformation(init_fn, update_fn)
