"""``scale_by_dion``: Dion's amortized low-rank orthonormal update."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ortho_optax import checks as _checks
from ortho_optax import routing as _routing
from ortho_optax.engines import lapack as _lapack
from ortho_optax.parallel import sharding as _sharding
from ortho_optax.parallel import stateful as _stateful
from ortho_optax.state import storage as _storage
from ortho_optax.transforms import low_rank as _low_rank
from ortho_optax.transforms import momentum as _momentum


class ScaleByDionState(NamedTuple):
  """State of :func:`scale_by_dion`.

  Attributes:
    count: the number of steps taken (the stochastic-rounding draw of a
      quantized momentum).
    mu: the momentum (error-feedback) buffer, a tree like the params
      (``QuantizedArray`` leaves for a quantized ``mu_dtype``).
    q: for each matrix leaf, the right factors :math:`Q` of its matrices,
      shaped ``(batch, short side, rank)``: one ``short x rank`` factor per
      matrix once reshaped to ``(batch, fan_in, fan_out)``
      (``QuantizedArray`` leaves for a quantized ``mu_dtype``).
  """

  # Shape (), dtype int32. The field of optax's states (it hides the
  # tuple's count method, which type checkers flag).
  count: jax.Array  # type: ignore[assignment]
  mu: optax.Updates
  q: optax.Updates


def orthonormalize(p: jax.Array) -> jax.Array:
  """An orthonormal basis of the columns of each ``(..., n, r)`` matrix.

  Householder QR (the reference's choice for square and wide ``P``; for
  tall ``P`` it uses a randomized Cholesky QR, which spans the same space
  up to column signs, and the Dion update is invariant to those). Unlike
  Cholesky QR, Householder QR returns orthonormal columns for a
  rank-deficient ``P`` too. The input is scaled to entries of order one
  first, which the basis does not depend on, so that no norm inside the
  factorization overflows or underflows. On the CPU the matrices are
  factored one at a time (:mod:`~ortho_optax.engines.lapack`: a batched
  LAPACK QR can stall XLA's thread pool).
  """
  return _lapack.qr_q(p / _low_rank.max_abs(p))


def column_normalize(r: jax.Array, eps) -> jax.Array:
  r""":math:`R_{:j} / (\|R_{:j}\| + \epsilon \max|R|)` per matrix.

  The reference adds ``eps`` to the column norm in absolute units, which
  makes the factor shrink with the momentum's scale once norms fall near
  ``eps``; here ``eps`` is relative to the matrix's largest entry (the
  results agree to ``eps`` at the reference's scales).
  """
  rh = r / _low_rank.max_abs(r)
  norms = jnp.sqrt(jnp.sum(jnp.abs(rh) ** 2, axis=-2, keepdims=True))
  return rh / (norms + eps)


def scale_by_dion(
    rank: float | int | None = None,
    *,
    beta: jax.typing.ArrayLike = 0.95,
    eps: float = 1e-8,
    seed: int = 0,
    mu_dtype=None,
    dimension_numbers=None,
    rules: _routing.Rules = None,
    sharding: str | _sharding.ShardingOptions | None = None,
) -> optax.GradientTransformation:
  r"""Dion: one power-iteration step against a persistent right factor.

  For each matrix seen as ``(fan_in, fan_out)`` and oriented wide,
  :math:`G \in \mathbb{R}^{m \times n}` with :math:`m \le n`, with momentum
  :math:`M` and right factor :math:`Q \in \mathbb{R}^{m \times r}`:

  .. math::
    B = M + G, \quad P = \mathrm{orth}(B^\top Q), \quad R = B P, \\
    M \leftarrow B - (1 - \beta) R P^\top, \quad
    Q \leftarrow R_{:j} / \|R_{:j}\| \text{ per column}, \quad
    U = Q P^\top .

  This is the reference's update written for its transposed matrix
  :math:`B^\top` (microsoft/dion orients every matrix tall and keeps
  :math:`Q` on the short side, as here). :math:`P` has orthonormal columns
  and :math:`Q` unit columns, so :math:`U` has rank :math:`r` and singular
  values near 1 on the directions the power iteration has found; the part
  of the momentum not captured is kept (error feedback) and decays only
  through the :math:`(1 - \beta)` term. ``rank`` is a fraction of
  ``min(fan_in, fan_out)`` (rounded up) or a number of directions.
  :math:`Q_0` is standard normal, drawn from ``seed``.

  The shape scaling, weight decay and learning rate are not part of this
  transform; :func:`ortho_optax.dion` chains them (Dion scales by
  :math:`\sqrt{\mathrm{fan\_out} / \mathrm{fan\_in}}`).

  Differences from microsoft/dion (``dion.py``): ``P`` is orthonormalized
  with Householder QR for every shape (the reference uses a randomized
  Cholesky QR for tall ``P``, with the same span up to column signs,
  which cancel in :math:`U` and :math:`R P^\top`; Householder QR also
  handles a rank-deficient ``P``); the column normalization's ``eps`` is
  relative to the largest entry of :math:`R` (see
  :func:`column_normalize`); a matrix whose :math:`B` is all zeros keeps
  its :math:`Q` (column-normalized) and gets a zero update, as in the
  reference. Complex matrices use conjugate transposes.

  Sharding: the matmuls run where the momentum lives, so with the momentum
  sharded only the low-rank factors :math:`B^\top Q` (``n x r``) and
  :math:`B P` (``m x r``) cross devices, never the matrix (Dion's
  distributed scheme). ``sharding="distribute"`` also spreads the QR of
  the stacked ``P`` over the devices (each orthonormalizes whole factors,
  results all-gathered); ``"gather"`` runs every QR on every device.

  Args:
    rank: ``None`` (a quarter of ``min(fan_in, fan_out)`` but at least
      128, capped at it, see :func:`dion`), a fraction in ``(0, 1]`` of
      ``min(fan_in, fan_out)`` or an int. Static (pass a number in
      ``static_args`` of ``optax.inject_hyperparams``).
    beta: the error-feedback momentum :math:`\mu` of the paper, in
      ``[0, 1)``.
    eps: the column normalization's epsilon (relative, see above).
    seed: seed of :math:`Q_0`.
    mu_dtype: storage of the momentum: ``None`` (the params' dtype), a
      floating or complex dtype, or a quantized format (``"q8"``,
      ``"q4"``, a :class:`QuantFormat`: the momentum is kept as codes and
      block scales, read back in float32 for each step and written again,
      see :mod:`ortho_optax.state.storage`). :math:`Q` (``n x r``, small)
      is stored in ``mu_dtype`` too (a quantized :math:`Q` is read back in
      float32 for the step: its columns are renormalized every step, so
      its rounding does not accumulate).
    dimension_numbers: as in :func:`scale_by_orthogonalization`.
    rules: routing overrides, see :func:`label_params`.
    sharding: ``None``, ``"gather"``, ``"distribute"`` or a
      :class:`ShardingOptions` (see above).

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`ScaleByDionState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import ortho_optax
    >>> tx = ortho_optax.scale_by_dion(rank=2)
    >>> params = {"w": jnp.ones((4, 8))}
    >>> state = tx.init(params)
    >>> state.q["w"].shape  # (batch, min(4, 8), rank)
    (1, 4, 2)
    >>> updates, state = tx.update({"w": jnp.eye(4, 8)}, state)

  References:
    Ahn et al., `Dion: Distributed Orthonormalized Updates
    <https://arxiv.org/abs/2504.05295>`_, 2025
  """
  _low_rank.check_rank(rank)
  _momentum.check_beta(beta)
  if not isinstance(eps, jax.core.Tracer):
    _checks.check_nonnegative(eps, "eps")
  sharding = _sharding.canonicalize(sharding)
  storage = _low_rank.momentum_storage(mu_dtype)
  q_dtype = _low_rank.float_dtype(storage)
  _routing.check_dimension_numbers(dimension_numbers)
  _routing.check_rules(rules)
  _checks.check_int(seed, "seed")
  key = jax.random.key(seed)

  # Where ``init`` saw the parameters: the layouts the work is planned
  # from under Auto mesh axes, where traced updates carry none.
  layouts = _sharding.Layouts()

  def init_fn(params):
    dns = _routing.resolve_dimension_numbers(params, dimension_numbers, rules)
    layouts.record(params)

    def right_factor(i, x, dn):
      batch, m, n = _stateful.oriented_shape(x.shape, dn)
      r = _low_rank.resolve_rank(rank, m, n)
      dtype = q_dtype or x.dtype
      # Drawn in float32 whatever the dtype, so that Q_0 is the same
      # draw (rounded) for every dtype.
      q = jax.random.normal(
          jax.random.fold_in(key, i), (batch, m, r), jnp.float32
      )
      return _stateful.like_params_mesh(q.astype(dtype), x)

    count = _low_rank.zero_count(params)
    q = _low_rank.matrix_state(params, dns, right_factor)
    if _storage.is_quantized(storage):
      # Q (n x r per matrix) is stored like the momentum: with a float32
      # Q, 8-bit state would be 0.32x Dion's float32 state, not 0.25x.
      q = _storage.store(
          _storage.as_arrays(q), storage, None, count,
          salt=_storage.DION_Q_SALT,
      )
    return ScaleByDionState(
        count=count,
        mu=_low_rank.momentum_state(params, dns, storage),
        q=q,
    )

  def step(g, m, extras, placement, transposed):
    del transposed
    (q,) = extras
    q = q.astype(g.dtype)
    (b,) = placement.pin(m + g)
    count = b.shape[0]
    p = jnp.einsum("bmn,bmr->bnr", b.conj(), q)
    # P = B^T Q is sharded like B's columns (its rows), once the partial
    # sums over B's sharded rows are reduced: pinned there, so that only
    # the factor moves to the owners (left free, XLA may move B instead).
    layout = placement.layout
    factors = placement._replace(
        layout=None if layout is None else (layout[1], ())
    )
    (p,) = factors.pin(p)
    # On the owners, each device its own matrices' QRs (XLA would run the
    # per-matrix LAPACK loop whole on every device).
    (p,) = factors.to_all(count, factors.on_owners(orthonormalize, p))
    r = jnp.einsum("bmn,bnr->bmr", b, p)
    # An all-zero B has no column space (the QR returns an arbitrary
    # basis): zero update and unchanged Q, the reference's rule.
    zero = jnp.all(b == 0, axis=(-2, -1), keepdims=True)
    p = jnp.where(zero, 0, p)
    r = jnp.where(zero, q, r)
    m_new = b - (1 - beta) * jnp.einsum("bmr,bnr->bmn", r, p.conj())
    q_new = column_normalize(r, eps)
    u = jnp.einsum("bmr,bnr->bmn", q_new, p.conj())
    return u, m_new, (q_new,)

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    dns = _routing.resolve_dimension_numbers(updates, dimension_numbers, rules)
    # A quantized momentum is read back in float32 for the step only.
    mu = _storage.load(state.mu, updates)
    q = _storage.load(state.q)
    updates, mu, (q,) = _stateful.map_matrix_groups(
        step, updates, mu, (q,), dns, sharding, layouts
    )
    mu = _storage.store(
        mu, storage, state.mu, count, salt=_storage.DION_SALT
    )
    if _storage.is_quantized(storage):
      q = _storage.store(q, storage, state.q, count, salt=_storage.DION_Q_SALT)
    return updates, ScaleByDionState(count=count, mu=mu, q=q)

  return optax.GradientTransformation(init_fn, update_fn)
