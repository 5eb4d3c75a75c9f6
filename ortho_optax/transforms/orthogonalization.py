"""``scale_by_orthogonalization``: the polar-factor step as an Optax transform."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from ortho_optax import checks as _checks
from ortho_optax import routing as _routing
from ortho_optax.engines import orthogonalize as _orthogonalize
from ortho_optax.parallel import sharding as _sharding


def scale_by_orthogonalization(
    *,
    method: str = "auto",
    dimension_numbers=None,
    rules: _routing.Rules = None,
    sharding: str | _sharding.ShardingOptions | None = None,
    **engine_options,
) -> optax.GradientTransformation:
  r"""Replaces each matrix update by (an approximation of) its polar factor.

  For a matrix leaf :math:`G = U \Sigma V^H` the update becomes
  :math:`U V^H` (as computed by :func:`orthogonalize`). Leaves are reshaped
  to ``(batch, fan_in, fan_out)`` through their dimension numbers (conv
  kernels ``HWIO -> (kh*kw*in, out)``, leading stacked-layer axes are batch
  axes), tall matrices are transposed, and leaves of the same shape are
  stacked and orthogonalized in one batched call. Leaves that are not
  matrices (``None`` dimension numbers, masked leaves) pass through
  unchanged; in the named optimizers they never reach this transform.

  Args:
    method: the engine, see :func:`orthogonalize`.
    dimension_numbers: ``None`` (route by rank and name, see
      :func:`label_params`), one :class:`DimensionNumbers` for every leaf,
      a tree of them (``None`` leaves pass through), or a callable
      ``params -> tree``. ``optax.contrib.MuonDimensionNumbers`` works too.
    rules: routing overrides, see :func:`label_params`.
    sharding: where the matrices are orthogonalized across devices:
      ``None`` (leave it to XLA), ``"gather"`` (each matrix gathered whole
      and orthogonalized on every device), ``"distribute"`` (same-shape
      matrices stacked and spread over the devices, each device
      orthogonalizing whole matrices, results returned to each parameter's
      sharding), or a :class:`ShardingOptions` (mesh, axes, a size limit
      for matrices too large for one device, target shardings). Every
      strategy gives the single-device result; see
      :mod:`ortho_optax.parallel.sharding` for the costs and how the mesh is
      found.
    **engine_options: options of the engine (``coeffs``, ``steps``,
      ``normalization``, ``eps``, ``compute_dtype``, ``restarts``, ...).

  Returns:
    An ``optax.GradientTransformation`` with an empty state.

  References:
    Jordan et al., `Muon: An optimizer for hidden layers in neural networks
    <https://kellerjordan.github.io/posts/muon/>`_, 2024
  """
  _checks.check_choice(method, "method", _orthogonalize.METHODS)
  _routing.check_dimension_numbers(dimension_numbers)
  _routing.check_rules(rules)
  sharding = _sharding.canonicalize(sharding)
  # Surface bad engine options now rather than at the first update.
  jax.eval_shape(
      lambda: _orthogonalize.orthogonalize(
          jnp.zeros((2, 3)), method, **engine_options
      )
  )
  engine = functools.partial(
      _orthogonalize.orthogonalize, method=method, **engine_options
  )

  # Where ``init`` saw the parameters: the layouts "distribute" plans from
  # when ``update`` runs under jit with Auto mesh axes (types say nothing).
  layouts = _sharding.Layouts()

  def init_fn(params):
    # Resolve the routing once so a leaf that cannot be handled fails here.
    _routing.resolve_dimension_numbers(params, dimension_numbers, rules)
    if sharding.strategy is not None:
      layouts.record(params)
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    dns = _routing.resolve_dimension_numbers(updates, dimension_numbers, rules)
    updates = _sharding.map_matrix_groups(
        engine, updates, dns, sharding, layouts
    )
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)
