"""``scale_by_dion2``: orthogonalize a selected fraction of rows only."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ortho_optax import routing as _routing
from ortho_optax.parallel import sharding as _sharding
from ortho_optax.parallel import stateful as _stateful
from ortho_optax.state import storage as _storage
from ortho_optax.transforms import low_rank as _low_rank
from ortho_optax.transforms import momentum as _momentum


class ScaleByDion2State(NamedTuple):
  """State of :func:`scale_by_dion2`.

  Attributes:
    count: the number of steps taken (the stochastic-rounding draw of a
      quantized momentum).
    mu: the error-feedback momentum, a tree like the params
      (``QuantizedArray`` leaves for a quantized ``mu_dtype``).
  """

  # Shape (), dtype int32. The field of optax's states (it hides the
  # tuple's count method, which type checkers flag).
  count: jax.Array  # type: ignore[assignment]
  mu: optax.Updates


def scale_by_dion2(
    rank: float | int | None = None,
    *,
    beta: jax.typing.ArrayLike = 0.95,
    method: str = "auto",
    dimension_numbers=None,
    rules: _routing.Rules = None,
    mu_dtype=None,
    sharding: str | _sharding.ShardingOptions | None = None,
    **engine_options,
) -> optax.GradientTransformation:
  r"""Dion2: orthogonalize the rows of largest norm, keep the rest.

  For each matrix seen as ``(fan_in, fan_out)``, with momentum :math:`M`:

  .. math::
    B = M + G, \quad
    I = \mathrm{top}_k\big(\|B_{i,:}\|_1\big), \quad
    U_{I,:} = \mathrm{polar}(B_{I,:}), \quad U_{\bar I,:} = 0, \\
    M \leftarrow B \text{ with rows } I \text{ multiplied by } \beta .

  The rows are taken along the shorter side (for a square matrix, the
  fan-out side, the reference's "rows" of a PyTorch ``(out, in)`` weight),
  ``k = rank`` of them (a fraction of ``min(fan_in, fan_out)``, rounded up,
  or an int). Only the ``k x n`` submatrix is orthogonalized, about
  ``(k / m)^2`` of Muon's Newton-Schulz FLOPs; rows not selected keep their
  momentum undecayed (error feedback) until they are.

  The shape scaling, weight decay and learning rate are not part of this
  transform; :func:`ortho_optax.dion2` chains them.

  Differences from microsoft/dion (``dion2.py``): the selected rows are
  orthogonalized in the momentum's dtype (the reference casts them to
  bfloat16 first; pass ``compute_dtype=jnp.bfloat16`` for that), after
  scaling to entries of order one (the polar factor does not change; the
  normalization's epsilon then acts relative to the matrix). Under FSDP the
  reference selects along the sharded side, per shard ("local"
  selection); here the selection is always global and along the shorter
  side, so the result does not depend on the sharding.

  Sharding: ``"distribute"`` moves each matrix's :math:`B` to one device
  (one all-to-all of the stack); that device selects and orthogonalizes,
  and only the ``k`` row indices and the ``k x n`` orthogonalized rows come
  back (an all-gather of ``k / m`` of the matrix); every device applies
  the update and the error feedback to its own shard.

  Args:
    rank: ``None`` (a quarter of ``min(fan_in, fan_out)`` but at least
      128, capped at it, see :func:`dion2`), a fraction in ``(0, 1]`` of
      ``min(fan_in, fan_out)`` (the reference's ``fraction``) or an int.
      Static.
    beta: the error-feedback decay of the selected rows (the reference's
      ``ef_decay``), in ``[0, 1)``.
    method: the orthogonalization engine, see :func:`orthogonalize`.
    dimension_numbers: as in :func:`scale_by_orthogonalization`.
    rules: routing overrides, see :func:`label_params`.
    mu_dtype: storage of the momentum: ``None`` (the params' dtype), a
      floating or complex dtype, or a quantized format (``"q8"``,
      ``"q4"``, a :class:`QuantFormat`: codes and block scales, read back
      in float32 for each step, see :mod:`ortho_optax.state.storage`).
    sharding: ``None``, ``"gather"``, ``"distribute"`` or a
      :class:`ShardingOptions`.
    **engine_options: options of the engine (``coeffs``, ``steps``,
      ``normalization``, ``eps``, ``compute_dtype``, ...).

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`ScaleByDion2State`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import ortho_optax
    >>> tx = ortho_optax.scale_by_dion2(rank=1)
    >>> params = {"w": jnp.ones((2, 8))}
    >>> g = {"w": jnp.array([[1.0] * 8, [2.0] * 8])}
    >>> updates, state = tx.update(g, tx.init(params))
    >>> bool(jnp.all(updates["w"][0] == 0))  # only the larger row moves
    True

  References:
    Ahn et al., `Dion2: A Simple Method to Shrink Matrix in Muon
    <https://arxiv.org/abs/2512.16928>`_, 2025
  """
  _low_rank.check_rank(rank)
  _momentum.check_beta(beta)
  sharding = _sharding.canonicalize(sharding)
  orthogonalize = _low_rank.orthogonalizer(method, engine_options)
  storage = _low_rank.momentum_storage(mu_dtype)
  _routing.check_dimension_numbers(dimension_numbers)
  _routing.check_rules(rules)

  # Where ``init`` saw the parameters: the layouts the work is planned
  # from under Auto mesh axes, where traced updates carry none.
  layouts = _sharding.Layouts()

  def init_fn(params):
    dns = _routing.resolve_dimension_numbers(params, dimension_numbers, rules)
    layouts.record(params)
    return ScaleByDion2State(
        count=_low_rank.zero_count(params),
        mu=_low_rank.momentum_state(params, dns, storage),
    )

  def step(g, m, extras, placement, transposed):
    del extras
    (b,) = placement.pin(m + g)
    # A square matrix that was not transposed is (fan_in, fan_out): select
    # along fan_out, as the reference does.
    flip = b.shape[-2] == b.shape[-1] and not transposed
    if flip:
      b = jnp.swapaxes(b, -1, -2)
    count, rows, cols = b.shape
    k = _low_rank.resolve_rank(rank, rows, cols)
    (owned,) = placement.to_owners(b)
    norms = jnp.sum(jnp.abs(owned), axis=-1)
    _, idx = jax.lax.top_k(norms, k)
    o = orthogonalize(_low_rank.take_rows(owned, idx))
    idx, o = placement.to_all(count, idx, o)
    mask = _low_rank.row_mask(idx, rows, jnp.finfo(b.dtype).dtype)
    m_new = b * (1 - (1 - beta) * mask)[..., None]
    u = jnp.zeros_like(b).at[jnp.arange(count)[:, None], idx].set(o)
    if flip:
      u, m_new = jnp.swapaxes(u, -1, -2), jnp.swapaxes(m_new, -1, -2)
    return u, m_new, ()

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    dns = _routing.resolve_dimension_numbers(updates, dimension_numbers, rules)
    # A quantized momentum is read back in float32 for the step only.
    mu = _storage.load(state.mu, updates)
    updates, mu, _ = _stateful.map_matrix_groups(
        step, updates, mu, (), dns, sharding, layouts
    )
    mu = _storage.store(
        mu, storage, state.mu, count, salt=_storage.DION2_SALT
    )
    return updates, ScaleByDion2State(count=count, mu=mu)

  return optax.GradientTransformation(init_fn, update_fn)
