"""``scale_by_soap``: Adam in the eigenbasis of Shampoo's preconditioner."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ortho_optax import checks as _checks
from ortho_optax import routing as _routing
from ortho_optax.parallel import sharding as _sharding
from ortho_optax.parallel import stateful as _stateful
from ortho_optax.state import storage as _storage
from ortho_optax.transforms import kronecker as _kron
from ortho_optax.transforms import low_rank as _low_rank
from ortho_optax.transforms import momentum as _momentum


class ScaleBySoapState(NamedTuple):
  """State of :func:`scale_by_soap`.

  Each matrix leaf is seen as ``(B, m, n)`` once reshaped through its
  dimension numbers and oriented wide (:math:`m \\le n`, transposed if
  tall); the per-matrix entries below use that layout.

  Attributes:
    count: the number of steps taken (the first only initializes).
    mu: Adam's first moment in the eigenbasis, a tree like the params
      (each matrix's projected moment in its parameter's layout).
    nu: Adam's second moment in the eigenbasis, ``(B, m, n)`` per matrix.
    left: the left statistic :math:`L`, ``(B, m, m)``; with a quantized
      ``precond_dtype`` its eigenvalues, ``(B, m)``; ``(B, 0, 0)`` for an
      identity side.
    right: the right statistic :math:`R`, ``(B, n, n)`` (or its
      eigenvalues, ``(B, n)``).
    q_left: the eigenbasis :math:`Q_L`, ``(B, m, m)`` (quantized for a
      quantized ``precond_dtype``).
    q_right: the eigenbasis :math:`Q_R`, ``(B, n, n)``.
    scale_exponent: ``(B, 2)``, integers in float32: ``mu`` holds
      :math:`M / 2^{e_0}`, ``nu`` and the dense ``left``, ``right``
      :math:`V / 4^{e_0}`, :math:`L / 4^{e_0}`, :math:`R / 4^{e_0}`; a quantized
      ``precond_dtype``'s eigenvalues are in units of :math:`4^{e_1}` (see
      Range).
  """

  count: jax.Array  # type: ignore[assignment]  # shape (), int32
  mu: optax.Updates
  nu: optax.Updates
  left: optax.Updates
  right: optax.Updates
  q_left: optax.Updates
  q_right: optax.Updates
  scale_exponent: optax.Updates


def scale_by_soap(
    b1: jax.typing.ArrayLike = 0.95,
    b2: jax.typing.ArrayLike = 0.95,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    shampoo_beta: jax.typing.ArrayLike | None = None,
    precondition_every: int | None = None,
    max_precond_dim: int | None = None,
    normalize_grads: bool = False,
    correct_bias: bool = True,
    precond_dtype=None,
    bjorck_steps: int | None = None,
    mu_dtype=None,
    nu_dtype=None,
    dimension_numbers=None,
    rules: _routing.Rules = None,
    sharding: str | _sharding.ShardingOptions | None = None,
) -> optax.GradientTransformation:
  r"""SOAP: Adam run in the eigenbasis of Shampoo's Kronecker factors.

  For each matrix :math:`G` (``m x n``) with statistics :math:`L, R` and
  their eigenbases :math:`Q_L, Q_R`, at step :math:`t` (counted from the
  second call; the first call only initializes, see below):

  .. math::
    G' = Q_L^H G Q_R, \quad
    M \leftarrow \beta_1 M + (1 - \beta_1) G', \quad
    V \leftarrow \beta_2 V + (1 - \beta_2) |G'|^2, \\
    U = \frac{\sqrt{1 - \beta_2^t}}{1 - \beta_1^t}\,
      Q_L \frac{M}{\sqrt{V} + \epsilon} Q_R^H, \\
    L \leftarrow \beta_s L + (1 - \beta_s) G G^H, \quad
    R \leftarrow \beta_s R + (1 - \beta_s) G^H G .

  Both moments live in the eigenbasis, as in the reference: when a basis
  changes, the first moment is rotated to it (:math:`M \leftarrow Q_L'^H Q_L M
  Q_R^H Q_R'`, the first moment of the original space seen in the new basis) and
  the second moment permuted (below). Keeping :math:`M` projected costs one
  projection a step fewer than projecting an original-space moment each step.
  The first call sets :math:`L, R` from its gradient, takes :math:`Q_L, Q_R`
  from ``eigh`` (eigenvalues descending) and returns a zero update, so that a
  gradient never meets a basis built from itself. Every ``precondition_every``
  steps (after the update, with the new statistics) each basis is refreshed by
  one power-iteration step and a QR: its columns are sorted by their Rayleigh
  quotients :math:`\mathrm{diag} (Q^H L Q)` (descending), :math:`V` is permuted
  alike along that side, and :math:`Q \leftarrow \mathrm{QR}(L Q)`. A side
  longer than ``max_precond_dim`` is not preconditioned (identity, as in the
  reference: the vocabulary side of an embedding). ``normalize_grads`` divides
  :math:`U` by its RMS per matrix.

  This follows the authors' ``soap.py`` (nikhilvyas/SOAP) at its defaults:
  betas (0.95, 0.95), ``shampoo_beta`` = :math:`\beta_2`, eps 1e-8,
  precondition frequency 10, ``max_precond_dim`` 10000, bias correction
  on, ``normalize_grads`` off. The learning rate and the weight decay are
  not part of this transform (the reference decays the parameters after
  the step and skips the first call's decay; :func:`ortho_optax.soap`
  decays before, as ``optax.adamw``). Complex matrices use conjugate
  transposes and :math:`|G'|^2`.

  Quantized preconditioner (``precond_dtype="q8"`` / ``"q4"``), after
  4-bit Shampoo: the state of each side is its eigenbasis as block codes
  and the eigenvalues of its statistic in float32, :math:`L =
  Q \Lambda Q^H`; no dense statistic is kept. The statistics are then
  updated at the refresh steps only (4-bit Shampoo's interval :math:`T_1`,
  here ``precondition_every``): :math:`Q` is read back and rectified by
  ``bjorck_steps`` Björck steps, :math:`L = \beta_s Q \Lambda Q^H +
  (1 - \beta_s) G G^H` is factored by ``eigh`` and :math:`V` is permuted
  to the new basis as above. On the lm example (one seed, 600 steps) this
  cost SOAP about 0.05 nats/byte against float32, q8 and q4 alike (the
  power step and QR in place of ``eigh`` did no better); Shampoo's 4-bit
  state trained as well as float32.

  Range: the update does not depend on the scale of the gradients, from
  float32's smallest normal numbers to its largest: the statistics and
  moments are kept per matrix in units of a power of two
  (``scale_exponent``; ``ortho_optax.transforms.kronecker``), so that
  neither :math:`G G^H` nor :math:`|G'|^2` overflows or underflows, and
  ``eps`` counts in units of :math:`\max \sqrt{V}` (its power of two).
  The unit stays 1 for gradients within :math:`2^{\pm 20}`, so the state
  there is the unscaled one.

  Sharding: the projections run where the arrays are; with
  ``sharding="distribute"`` the ``eigh`` and the power iteration and QR
  of each matrix run on one device (the stacks of same-shape statistics
  are split over the devices, whole matrices each; on 8 devices each
  computes 1/8 of them, ``benchmarks/sharding.py``) and the bases are
  gathered back. The statistics and bases are replicated state.

  Args:
    b1: Adam's :math:`\beta_1`.
    b2: Adam's :math:`\beta_2`.
    eps: Adam's :math:`\epsilon`, added to :math:`\sqrt{V}`, relative
      (see Range).
    shampoo_beta: :math:`\beta_s` of the statistics; ``None``: ``b2``.
    precondition_every: refresh period of the bases, an int >= 1 (static;
      ``None``: 10).
    max_precond_dim: sides longer than this are not preconditioned (an int,
      static; ``None``: 10000).
    normalize_grads: divide the update by its RMS per matrix (static).
    correct_bias: Adam's bias correction (static).
    precond_dtype: storage of :math:`L, R, Q_L, Q_R`: ``None`` (float32, or
      complex64), a floating dtype, or a quantized format (``"q8"``,
      ``"q4"``, a :class:`QuantFormat`; see above).
    bjorck_steps: Björck steps after reading back a quantized basis (an
      int, static; ``None``: 1).
    mu_dtype: storage of :math:`M` (``None``: the parameters' dtype, float32
      for float16; or a quantized format).
    nu_dtype: storage of :math:`V` (as ``mu_dtype``; a quantized format is
      kept in its unsigned code).
    dimension_numbers: as in :func:`scale_by_orthogonalization`.
    rules: routing overrides, see :func:`label_params`.
    sharding: ``None``, ``"gather"``, ``"distribute"`` or a
      :class:`ShardingOptions`.

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`ScaleBySoapState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import ortho_optax
    >>> tx = ortho_optax.scale_by_soap()
    >>> params = {"w": jnp.ones((4, 8))}
    >>> state = tx.init(params)
    >>> state.left["w"].shape, state.right["w"].shape
    ((1, 4, 4), (1, 8, 8))
    >>> g = {"w": jnp.arange(32.0).reshape(4, 8)}
    >>> updates, state = tx.update(g, state)  # the first call initializes
    >>> float(jnp.abs(updates["w"]).max())
    0.0
    >>> updates, state = tx.update(g, state)

  References:
    Vyas et al., `SOAP: Improving and Stabilizing Shampoo using Adam
    <https://arxiv.org/abs/2409.11321>`_, 2024

    Wang et al., `4-bit Shampoo for Memory-Efficient Network Training
    <https://arxiv.org/abs/2405.18144>`_, NeurIPS 2024
  """
  _momentum.check_beta(b1, "b1")
  _momentum.check_beta(b2, "b2")
  if shampoo_beta is not None:
    _momentum.check_beta(shampoo_beta, "shampoo_beta")
  if not isinstance(eps, jax.core.Tracer):
    _checks.check_nonnegative(eps, "eps")
  precondition_every = _kron.check_every(
      10 if precondition_every is None else precondition_every,
      "precondition_every",
  )
  max_precond_dim = _kron.check_max_precond_dim(
      _kron.MAX_PRECOND_DIM if max_precond_dim is None else max_precond_dim
  )
  _checks.check_bool(normalize_grads, "normalize_grads")
  _checks.check_bool(correct_bias, "correct_bias")
  bjorck_steps = _kron.check_bjorck_steps(bjorck_steps)
  pstorage = _kron.precond_storage(precond_dtype)
  quantized = _storage.is_quantized(pstorage)
  mu_storage = _low_rank.momentum_storage(mu_dtype)
  nu_storage = _storage.as_storage(nu_dtype, "nu_dtype", second_moment=True)
  sharding = _sharding.canonicalize(sharding)
  _routing.check_dimension_numbers(dimension_numbers)
  _routing.check_rules(rules)
  layouts = _sharding.Layouts()

  def init_fn(params):
    dns = _routing.resolve_dimension_numbers(params, dimension_numbers, rules)
    layouts.record(params)
    s = _kron.initial_state(
        params,
        dns,
        mu_storage=mu_storage,
        nu_storage=nu_storage,
        precond_storage=pstorage,
        max_precond_dim=max_precond_dim,
    )
    return ScaleBySoapState(
        count=s.count,
        mu=s.mu,
        nu=s.nu,
        left=s.left,
        right=s.right,
        q_left=s.basis_left,
        q_right=s.basis_right,
        scale_exponent=s.scale_exponent,
    )

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    dns = _routing.resolve_dimension_numbers(updates, dimension_numbers, rules)
    mu = _storage.load(state.mu, updates)
    nu = _storage.load(state.nu)
    q_left = _kron.load_basis(state.q_left, bjorck_steps)
    q_right = _kron.load_basis(state.q_right, bjorck_steps)

    def step(g, m, extras, placement, transposed, operands):
      del transposed
      (count,) = operands
      v, sl, sr, ql, qr, ex = extras
      rd = _kron.real_dtype(g.dtype)
      beta1 = _momentum.hyperparameter(b1, g)
      beta2 = _momentum.hyperparameter(b2, g)
      beta_s = (
          beta2 if shampoo_beta is None
          else _momentum.hyperparameter(shampoo_beta, g)
      )
      first = count == 1
      t = jnp.maximum(count - 1, 1).astype(rd)
      # Units: M in units of 2^e, V, L, R in 4^e (a quantized basis's
      # eigenvalues in 4^e_root).
      e_old, e_root = (ex[:, i].astype(jnp.int32) for i in (0, 1))
      e = _kron.unit_exponent(
          e_old, g, (v,) if quantized else (v, sl, sr)
      )
      shift = e_old - e
      m, v = _kron.ldexp(m, shift), _kron.ldexp(v, 2 * shift)
      if not quantized:
        sl, sr = _kron.ldexp(sl, 2 * shift), _kron.ldexp(sr, 2 * shift)
      g = _kron.ldexp(g, -e)
      ql_w, qr_w = ql.astype(g.dtype), qr.astype(g.dtype)
      gp = _kron.project(g, ql_w, qr_w)
      m_new = beta1 * m + (1 - beta1) * gp
      v_new = beta2 * v.astype(rd) + (1 - beta2) * jnp.abs(gp) ** 2
      rv = jnp.sqrt(v_new)
      u = _kron.project_back(
          m_new / (rv + _kron.relative_eps(eps, rv)).astype(rd), ql_w, qr_w
      )
      if correct_bias:
        u = u * (jnp.sqrt(1 - beta2**t) / (1 - beta1**t))
      if normalize_grads:
        rms = jnp.sqrt(jnp.mean(jnp.abs(u) ** 2, axis=(-2, -1), keepdims=True))
        u = u / (1e-30 + rms)
      u = jnp.where(first, 0, u)
      m_new = jnp.where(first, m, m_new)
      v_new = jnp.where(first, v.astype(rd), v_new)
      refresh = _kron.refresh_predicate(
          first | ((count - 1) % precondition_every == 0)
      )
      if quantized:
        sl, sr, ql, qr, v_new, m_new = _refresh_quantized(
            g, (sl, sr), (ql, qr), v_new, m_new, beta_s, refresh, first,
            placement, 2 * (e_root - e),
        )
        e_root = jnp.where(refresh, e, e_root)
      else:
        sl, sr, ql, qr, v_new, m_new = _refresh(
            g, (sl, sr), (ql, qr), v_new, m_new, beta_s, refresh, first,
            placement,
        )
        e_root = e
      exps = jnp.stack([e, e_root], axis=-1).astype(jnp.float32)
      return u, m_new, (v_new, sl, sr, ql, qr, exps)

    updates, mu, (nu, left, right, q_left, q_right, exps) = (
        _stateful.map_matrix_groups(
            step, updates, mu,
            (nu, state.left, state.right, q_left, q_right,
             state.scale_exponent),
            dns, sharding, layouts, operands=(count,),
        )
    )
    mu = _storage.store(
        mu, mu_storage, state.mu, count, salt=_storage.SOAP_MU_SALT
    )
    nu = _storage.store(
        nu, nu_storage, state.nu, count, salt=_storage.SOAP_NU_SALT
    )
    refresh = (count - 1) % precondition_every == 0
    q_left = _kron.store_basis(
        q_left, pstorage, state.q_left, count, _storage.PRECOND_LEFT_SALT,
        refresh,
    )
    q_right = _kron.store_basis(
        q_right, pstorage, state.q_right, count,
        _storage.PRECOND_RIGHT_SALT, refresh,
    )
    return updates, ScaleBySoapState(
        count=count, mu=mu, nu=nu, left=left, right=right,
        q_left=q_left, q_right=q_right, scale_exponent=exps,
    )

  return optax.GradientTransformation(init_fn, update_fn)


def _permute(v, idx, axis):
  """``v`` (``(B, m, n)``) with its rows (``axis=1``) or columns permuted
  by ``idx`` (``(B, k)``)."""
  shape = (idx.shape[0], -1, 1) if axis == 1 else (idx.shape[0], 1, -1)
  return jnp.take_along_axis(v, idx.reshape(shape), axis=axis)


def _rotate(m, old, new):
  """The projected first moment moved from the bases ``old`` to ``new``
  (the reference's ``project(project_back(exp_avg))`` on refresh)."""
  m = _kron.project_back(m, *(q.astype(m.dtype) for q in old))
  return _kron.project(m, *(q.astype(m.dtype) for q in new))


def _refresh(g, stats, bases, v, m, beta_s, refresh, first, placement):
  """The statistics' update and, on ``refresh`` steps, the bases' (eigh on
  the first step, power iteration and QR after, with the second moment
  permuted and the first moment rotated), float storage."""
  count = g.shape[0]
  new_stats = []
  for axis, s in enumerate(stats):
    if s.shape[-1]:
      gram = _kron.gram(g, axis).astype(s.dtype)
      s = (beta_s * s + (1 - beta_s) * gram).astype(s.dtype)
    new_stats.append(s)
  work = _kron.owners(placement)

  def keep(operands):
    del operands
    return tuple(bases), v, m

  def eigh(operands):
    stats, v, m = operands
    out = []
    for s, q in zip(stats, bases):
      if s.shape[-1]:
        q = work.on_owners(lambda s: _kron.descending_eigh(s)[1], s)
        (q,) = work.to_all(count, q.astype(s.dtype))
      out.append(q)
    return tuple(out), v, m  # m is zero on the first step

  def power(operands):
    stats, v, m = operands
    out = []
    for axis, (s, q) in enumerate(zip(stats, bases), start=1):
      if s.shape[-1]:
        q_new, idx = work.on_owners(_kron.power_qr, s, q)
        q, idx = work.to_all(count, q_new.astype(s.dtype), idx)
        v = _permute(v, idx, axis)
      out.append(q)
    return tuple(out), v, _rotate(m, bases, out)

  if not any(s.shape[-1] for s in new_stats):
    return (*new_stats, *bases, v, m)
  branches: tuple
  branch: jax.typing.ArrayLike
  if isinstance(refresh, bool):  # a benchmark's forced branch
    branches = (power if refresh else keep,)
    branch = 0
  else:
    branches = (keep, eigh, power)
    branch = jnp.where(first, 1, jnp.where(refresh, 2, 0))
  (ql, qr), v, m = jax.lax.switch(
      branch, branches, (tuple(new_stats), v, m)
  )
  return (*new_stats, ql, qr, v, m)


def _refresh_quantized(g, eigs, bases, v, m, beta_s, refresh, first,
                       placement, shift):
  """:func:`_refresh` for a quantized preconditioner: on ``refresh`` steps
  only, :math:`L = \\beta_s Q \\Lambda Q^H + (1 - \\beta_s) G G^H` is
  factored again by ``eigh`` (the stored eigenvalues first brought to the
  gradient's units, times ``2^shift``), ``v`` permuted and ``m`` rotated
  to the new basis."""
  count = g.shape[0]
  work = _kron.owners(placement)

  def keep(operands):
    del operands
    return tuple(eigs), tuple(bases), v, m

  def update(operands):
    g, v, m = operands
    new_eigs, new_bases = [], []
    for axis, (lam, q) in enumerate(zip(eigs, bases), start=1):
      if not q.shape[-1]:
        new_eigs.append(lam)
        new_bases.append(q)
        continue
      lam = _kron.ldexp(lam, shift)
      gram = _kron.gram(g, axis - 1).astype(q.dtype)

      def factor(lam, q, gram):
        s = beta_s * _kron.rebuild(lam, q) + (1 - beta_s) * gram
        lam_new, q_new = _kron.descending_eigh(s)
        return lam_new, q_new, jnp.argsort(-_kron.rayleigh(s, q), axis=-1)

      lam_new, q_new, idx = work.on_owners(factor, lam, q, gram)
      lam_new, q_new, idx = work.to_all(
          count, lam_new.astype(lam.dtype), q_new.astype(q.dtype), idx
      )
      # The first step has no old basis: nothing to permute.
      v = jnp.where(first, v, _permute(v, idx, axis))
      new_eigs.append(lam_new)
      new_bases.append(q_new)
    m = jnp.where(first, m, _rotate(m, bases, new_bases))
    return tuple(new_eigs), tuple(new_bases), v, m

  if isinstance(refresh, bool):
    (sl, sr), (ql, qr), v, m = (update if refresh else keep)((g, v, m))
  else:
    (sl, sr), (ql, qr), v, m = jax.lax.cond(
        refresh, update, keep, (g, v, m)
    )
  return sl, sr, ql, qr, v, m
