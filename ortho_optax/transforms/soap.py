"""``scale_by_soap``: Adam in the eigenbasis of Shampoo's preconditioner."""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ortho_optax import checks as _checks
from ortho_optax import routing as _routing
from ortho_optax.engines import lapack as _lapack
from ortho_optax.engines import matrix_roots as _matrix_roots
from ortho_optax.parallel import sharding as _sharding
from ortho_optax.parallel import stateful as _stateful
from ortho_optax.state import quantized as _quantized
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
      ``precond_dtype`` a :class:`QuantizedStatistic`, :math:`Q_L^H L Q_L`
      in the stored basis; ``(B, 0, 0)`` for an identity side.
    right: the right statistic :math:`R`, ``(B, n, n)`` (or a
      :class:`QuantizedStatistic`).
    q_left: the eigenbasis :math:`Q_L`, ``(B, m, m)`` (quantized for a
      quantized ``precond_dtype``).
    q_right: the eigenbasis :math:`Q_R`, ``(B, n, n)``.
    scale_exponent: ``(B, 2)``, integers in float32: ``mu`` holds
      :math:`M / 2^{e_0}`, ``nu`` and the statistics (a quantized one's
      diagonal) :math:`V / 4^{e_0}`, :math:`L / 4^{e_0}`, :math:`R /
      4^{e_0}` (see Range); :math:`e_1 = e_0` (the unit of the statistics
      the bases were computed from).
  """

  count: jax.Array  # type: ignore[assignment]  # shape (), int32
  mu: optax.Updates
  nu: optax.Updates
  left: optax.Updates
  right: optax.Updates
  q_left: optax.Updates
  q_right: optax.Updates
  scale_exponent: optax.Updates


class QuantizedStatistic(NamedTuple):
  """One side's statistic with a quantized ``precond_dtype``.

  The statistic :math:`S = Q^H L Q` in the side's stored (rectified)
  eigenbasis :math:`Q`, nearly diagonal, kept as its diagonal and its
  off-diagonal normalized by the diagonal, :math:`C_{ij} = S_{ij} /
  \\sqrt{S_{ii} S_{jj}}` (:math:`|C_{ij}| \\le 1`), in 8-bit codes.

  Attributes:
    diagonal: :math:`\\mathrm{diag}(S)`, ``(B, k)`` float32 (in the units
      of ``scale_exponent``).
    correlation: :math:`C` with a zero diagonal, ``(B, k, k)``, a
      ``QuantizedArray`` of :data:`STATISTIC_FORMAT`.
  """

  diagonal: jax.Array
  correlation: Any


# Refreshes at every step over the first calls (scale_by_soap's Refresh
# schedule: the evidence).
DEFAULT_PRECONDITION_WARMUP = 100

# The off-diagonal of a quantized SOAP statistic: 8-bit codes, rounded
# stochastically (it is written every step; rounding to nearest could
# swallow the (1 - beta) G G^H of a step, or keep a decayed entry).
STATISTIC_FORMAT = _quantized.QuantFormat("q8", stochastic=True)


def scale_by_soap(
    b1: jax.typing.ArrayLike = 0.95,
    b2: jax.typing.ArrayLike = 0.95,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    shampoo_beta: jax.typing.ArrayLike | None = None,
    precondition_every: int | None = None,
    precondition_warmup: int | None = None,
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
  on, ``normalize_grads`` off; but for the refresh warm-up below
  (``precondition_warmup=0`` is the reference's schedule). The learning rate and the weight decay are
  not part of this transform (the reference decays the parameters after
  the step and skips the first call's decay; :func:`ortho_optax.soap`
  decays before, as ``optax.adamw``). Complex matrices use conjugate
  transposes and :math:`|G'|^2`.

  Refresh schedule: the bases are refreshed after each of the first
  ``precondition_warmup`` calls (100), then every ``precondition_every``-th
  (``ortho_optax.transforms.kronecker.is_refresh_step``). Early in training
  the statistics' eigenbasis turns fast (the first one comes from a single
  gradient), and a basis 10 steps old costs most of SOAP's lead there: on
  the examples' byte-level LMs (``lm``: 600 steps, ``lm_deep``: 400; lr
  0.012, seed 0; best validation loss, nats/byte; muon 1.5604 and 1.6751):

  ======================== ====== ====== ====== ====== ====== ====== ======
  warm-up (calls)          0      10     25     50     100    200    all
  ======================== ====== ====== ====== ====== ====== ====== ======
  ``lm``                   1.6368 1.5611 1.5530 1.5503 1.5478 1.5474 1.5464
  ``lm_deep``              1.7224 --     1.6556 1.6437 1.6339 1.6308 --
  ======================== ====== ====== ====== ====== ====== ====== ======

  The curve flattens at 100 (within 0.003 of 200 on both). Without the
  warm-up, refreshing more precisely did not help on ``lm`` (``eigh``
  instead of the power step: 1.6248; three power steps: 1.6361; :math:`V`
  carried over by the squared rotation instead of permuted: 1.6442); a
  shorter period did (every 2: 1.5379, 3: 1.5449, 5: 1.5687), at 2-5x the
  refreshes all along. PSGD's Kron updates its preconditioner at every
  step for a flat start too (then with a decaying probability). The
  warm-up costs 90 refreshes more than the period alone, once: on the
  GPT-like tree of ``benchmarks/step.py`` (a refresh adds 2544 GFLOP to a
  step of 1355) about 1.4% more matmul FLOPs over 10,000 steps at period
  10.

  Quantized preconditioner (``precond_dtype="q8"`` / ``"q4"``): the
  eigenbases are kept as block codes (4-bit Shampoo) and read back with
  ``bjorck_steps`` Björck steps, :math:`\hat Q`; each statistic is kept in
  its basis, :math:`S = \hat Q^H L \hat Q` (nearly diagonal), as its
  diagonal in float32 and its off-diagonal normalized by the diagonal,
  :math:`S_{ij} / \sqrt{S_{ii} S_{jj}} \in [-1, 1]`, in 8-bit codes with
  stochastic rounding (:class:`QuantizedStatistic`). Every step adds the
  gradient as the float path does, :math:`S \leftarrow \beta_s S + (1 -
  \beta_s) (\hat Q^H G)(\hat Q^H G)^H` (and likewise :math:`G \hat
  Q_R`: one product more than the float path, the other two are the
  projection's), and the refreshes are the float path's in these
  coordinates: the power step and QR of :math:`L \hat Q = \hat Q^{-H} S`,
  the new basis rounded and read back, and :math:`S` carried over to it
  exactly (:math:`W^H S W`, :math:`W = \hat Q^{-1} \hat Q'`), as are
  :math:`M` (:math:`W_L^H M W_R`) and, permuted, :math:`V`. So the
  statistics are float SOAP's up to the 8-bit rounding of their
  off-diagonals (relative error about 1e-2), whatever the rounding of the
  bases, and the bases are float SOAP's power iteration up to their own
  rounding. The preconditioner state is about 0.19x float32's with
  ``"q4"`` (0.25x with ``"q8"``): ``benchmarks/state_memory.py``.

  This differs from 4-bit Shampoo (Wang et al., 2024), which quantizes the
  eigenvectors with float32 eigenvalues, :math:`L = Q \Lambda Q^H`, and
  updates :math:`L` at its refresh interval from that step's gradient
  alone; this module did so before (Shampoo still does): SOAP then lost
  the gradients between refreshes (9 of 10 at the default period), and
  its Adam moments, tied to the basis coordinates, followed a basis
  refactored by ``eigh`` from a statistic rebuilt out of rounded
  eigenvectors. On the lm example (600 steps, lr 0.006, best validation
  loss, one seed) that cost 0.047 (q8) and 0.057 (q4) against float32;
  now q4 is +0.004 (± 0.004) behind float32 there, paired over 4 seeds,
  and +0.001 (± 0.007) at the default (0.012, with the refresh warm-up)
  (``benchmarks/results/second_order_cpu.md``). Checkpoints of quantized SOAP from before have another
  state layout (eigenvalues ``(B, k)`` in ``left`` / ``right``) and do not
  restore.

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
    precondition_warmup: the bases are refreshed after each of the first
      this many calls, before the period takes over (an int >= 0, static;
      ``None``: :data:`DEFAULT_PRECONDITION_WARMUP`; 0: the reference's
      schedule). See Refresh schedule.
    max_precond_dim: sides longer than this are not preconditioned (an int,
      static; ``None``: 10000).
    normalize_grads: divide the update by its RMS per matrix (static).
    correct_bias: Adam's bias correction (static).
    precond_dtype: storage of :math:`L, R, Q_L, Q_R`: ``None`` (float32, or
      complex64), a floating dtype, or a quantized format (``"q8"``,
      ``"q4"``, a :class:`QuantFormat`: the bases' codes, rounded to
      nearest; the statistics are then kept as above).
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
  precondition_warmup = _kron.check_every(
      DEFAULT_PRECONDITION_WARMUP if precondition_warmup is None
      else precondition_warmup,
      "precondition_warmup", low=0,
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
    left, right = s.left, s.right
    if quantized:
      left, right = _initial_statistics(left), _initial_statistics(right)
    return ScaleBySoapState(
        count=s.count,
        mu=s.mu,
        nu=s.nu,
        left=left,
        right=right,
        q_left=s.basis_left,
        q_right=s.basis_right,
        scale_exponent=s.scale_exponent,
    )

  def adam(g, gp, m, v, ql_w, qr_w, first, t):
    """Adam in the eigenbasis on the projected gradient ``gp``: the update
    and the new moments (kept on the first step)."""
    rd = _kron.real_dtype(g.dtype)
    beta1 = _momentum.hyperparameter(b1, g)
    beta2 = _momentum.hyperparameter(b2, g)
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
    return u, m_new, v_new

  def shampoo_beta_of(g):
    beta2 = _momentum.hyperparameter(b2, g)
    return (
        beta2 if shampoo_beta is None
        else _momentum.hyperparameter(shampoo_beta, g)
    )

  def to_units(ex, g, m, v, squares):
    """``g``, ``m``, ``v`` and the statistics ``squares`` in the step's unit
    ``2^e`` (M and G in 2^e, V and the statistics in 4^e), and ``e``."""
    e_old = ex[:, 0].astype(jnp.int32)
    e = _kron.unit_exponent(e_old, g, (v, *squares))
    shift = e_old - e
    m, v = _kron.ldexp(m, shift), _kron.ldexp(v, 2 * shift)
    squares = tuple(_kron.ldexp(x, 2 * shift) for x in squares)
    return _kron.ldexp(g, -e), m, v, squares, e

  def clock(g, count):
    """The statistics' decay, whether this is the first call (which only
    initializes) and Adam's step :math:`t` (from the second call)."""
    t = jnp.maximum(count - 1, 1).astype(_kron.real_dtype(g.dtype))
    return shampoo_beta_of(g), count == 1, t

  def is_refresh(first, count):
    return _kron.refresh_predicate(
        first
        | _kron.is_refresh_step(count, precondition_every, precondition_warmup)
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
      beta_s, first, t = clock(g, count)
      g, m, v, (sl, sr), e = to_units(ex, g, m, v, (sl, sr))
      ql_w, qr_w = ql.astype(g.dtype), qr.astype(g.dtype)
      gp = _kron.project(g, ql_w, qr_w)
      u, m_new, v_new = adam(g, gp, m, v, ql_w, qr_w, first, t)
      sl, sr, ql, qr, v_new, m_new = _refresh(
          g, (sl, sr), (ql, qr), v_new, m_new, beta_s,
          is_refresh(first, count), first, placement,
      )
      exps = jnp.stack([e, e], axis=-1).astype(jnp.float32)
      return u, m_new, (v_new, sl, sr, ql, qr, exps)

    def quantized_step(g, m, extras, placement, transposed, operands):
      del transposed
      (count,) = operands
      v, dl, dr, cl, cr, ql, qr, qlc, qls, qrc, qrs, ex = extras
      beta_s, first, t = clock(g, count)
      # The statistics' diagonals carry the unit (4^e); the normalized
      # off-diagonals have none.
      g, m, v, (dl, dr), e = to_units(ex, g, m, v, (dl, dr))
      ql_w, qr_w = ql.astype(g.dtype), qr.astype(g.dtype)
      # G Q_R, Q_L^H G and G' = Q_L^H G Q_R: the statistics in the stored
      # bases, S_L = Q_L^H L Q_L and S_R = Q_R^H R Q_R, take Q_L^H G G^H Q_L
      # and Q_R^H G^H G Q_R, exactly so for bases not quite orthonormal
      # (read back and rectified). The first step has no basis yet: its
      # statistics are in the identity's.
      gr = g @ qr_w if qr_w.shape[-1] else g
      gl = _kron.ht(ql_w) @ g if ql_w.shape[-1] else g
      gp = _kron.ht(ql_w) @ gr if ql_w.shape[-1] else gr
      u, m_new, v_new = adam(g, gp, m, v, ql_w, qr_w, first, t)
      stats = []
      for axis, (d, c, x) in enumerate(((dl, cl, gl), (dr, cr, gr))):
        if c.shape[-1]:
          gram = _kron.gram(jnp.where(first, g, x), axis).astype(c.dtype)
          d = (beta_s * _join(d, c) + (1 - beta_s) * gram).astype(c.dtype)
        stats.append(d)
      (sl, sr), ((qlc, qls), (qrc, qrs)), v_new, m_new = _refresh_quantized(
          tuple(stats), (ql, qr), ((qlc, qls), (qrc, qrs)), v_new, m_new,
          is_refresh(first, count), first, placement, pstorage, bjorck_steps,
      )
      (dl, cl), (dr, cr) = _split(sl), _split(sr)
      exps = jnp.stack([e, e], axis=-1).astype(jnp.float32)
      return u, m_new, (
          v_new, dl, dr, cl, cr, ql, qr, qlc, qls, qrc, qrs, exps
      )

    if quantized:
      dl, cl = _load_statistics(state.left)
      dr, cr = _load_statistics(state.right)
      # The bases' codes and scales travel with the step, which writes them
      # on refresh steps (the basis it carries the statistic over to is the
      # one read back from exactly these codes).
      codes = [
          jax.tree.map(
              lambda b, f=f: getattr(b, f), q,
              is_leaf=_storage.is_quantized_leaf,
          )
          for q in (state.q_left, state.q_right) for f in ("codes", "scales")
      ]
      updates, mu, (nu, dl, dr, cl, cr, _, _, *codes, exps) = (
          _stateful.map_matrix_groups(
              quantized_step, updates, mu,
              (nu, dl, dr, cl, cr, q_left, q_right, *codes,
               state.scale_exponent),
              dns, sharding, layouts, operands=(count,),
          )
      )
      q_left = _with_codes(state.q_left, *codes[:2])
      q_right = _with_codes(state.q_right, *codes[2:])
      left = _store_statistics(
          dl, cl, state.left, count, _storage.PRECOND_STAT_LEFT_SALT
      )
      right = _store_statistics(
          dr, cr, state.right, count, _storage.PRECOND_STAT_RIGHT_SALT
      )
    else:
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


def _is_statistic(x) -> bool:
  return isinstance(x, QuantizedStatistic)


def _with_codes(like, codes, scales):
  """The quantized bases ``like`` with new ``codes`` and ``scales``."""
  return jax.tree.map(
      lambda b, c, s: dataclasses.replace(b, codes=c, scales=s),
      like, codes, scales, is_leaf=_storage.is_quantized_leaf,
  )


def _initial_statistics(tree):
  """The zero :class:`QuantizedStatistic` of each preconditioned side
  (``tree``: :func:`kronecker.initial_state`'s eigenvalues ``(B, k)``;
  identity sides ``(B, 0, 0)`` stay)."""

  def one(x):
    if x.ndim != 2:
      return x
    zeros = jnp.zeros_like(x)[:, :, None] * jnp.zeros_like(x)[:, None, :]
    exact = dataclasses.replace(STATISTIC_FORMAT, stochastic=False)
    return QuantizedStatistic(x, _quantized.quantize(zeros, exact))

  # Built from the parameters' tree: a Flax NNX Variable around a
  # QuantizedStatistic would not survive nnx.split (storage.as_arrays).
  return jax.tree.map(one, _storage.as_arrays(tree))


def _load_statistics(tree):
  """The diagonals and the dequantized normalized off-diagonals of the
  statistics (identity sides: their ``(B, 0, 0)`` twice)."""
  diag = jax.tree.map(
      lambda s: s.diagonal if _is_statistic(s) else s, tree,
      is_leaf=_is_statistic,
  )
  corr = jax.tree.map(
      lambda s: _storage.load(s.correlation) if _is_statistic(s) else s, tree,
      is_leaf=_is_statistic,
  )
  return diag, corr


def _store_statistics(diag, corr, like, count, salt: int):
  """The statistics written back: the normalized off-diagonals in
  :data:`STATISTIC_FORMAT` (stochastic rounding keyed by ``count`` and
  ``salt``, one draw per leaf)."""
  key = _storage.rounding_key(count, salt)
  old, treedef = jax.tree.flatten(like, is_leaf=_is_statistic)
  ds, cs = treedef.flatten_up_to(diag), treedef.flatten_up_to(corr)
  out = []
  for i, (o, d, c) in enumerate(zip(old, ds, cs)):
    if _is_statistic(o):
      c = _quantized.quantize(
          c, STATISTIC_FORMAT, key=jax.random.fold_in(key, i)
      )
      out.append(QuantizedStatistic(d, c))
    else:
      out.append(d)
  return treedef.unflatten(out)


def _join(d, c):
  """:math:`S` from its diagonal ``d`` ``(B, k)`` and normalized
  off-diagonal ``c`` ``(B, k, k)``."""
  r = jnp.sqrt(jnp.maximum(d, 0))
  eye = jnp.eye(d.shape[-1], dtype=c.dtype)[None]
  return c * (r[:, :, None] * r[:, None, :]) + eye * d[:, None, :]


def _split(s):
  """``(d, c)`` of :func:`_join` from :math:`S` (identity side: ``s``
  twice); ``c`` has a zero diagonal and entries in [-1, 1]."""
  if not s.shape[-1] or s.ndim == 2:
    return s, s
  d = jnp.diagonal(s, axis1=-2, axis2=-1).real
  r = jnp.sqrt(jnp.maximum(d, 0))
  den = r[:, :, None] * r[:, None, :]
  c = jnp.where(den > 0, s / jnp.where(den > 0, den, 1), 0)
  eye = jnp.eye(d.shape[-1], dtype=bool)[None]
  return d, jnp.where(eye, 0, jnp.clip(c, -1, 1))


def _refresh_quantized(stats, bases, codes, v, m, refresh, first, placement,
                       storage, bjorck_steps):
  """:func:`_refresh` for a quantized preconditioner, in the coordinates of
  the stored bases.

  ``stats`` are the statistics in the bases ``bases`` :math:`\\hat Q` (as
  read back and rectified this step; the identity on the first step),
  :math:`S = \\hat Q^H L \\hat Q`. On ``refresh`` steps each side is
  refreshed as :func:`_refresh` refreshes the float statistic :math:`L =
  \\hat Q^{-H} S \\hat Q^{-1}`: on the first step from ``eigh`` of
  :math:`S`; later by one power step and a QR, :math:`Q =
  \\mathrm{QR}(L \\hat Q P) = \\mathrm{QR}(\\hat Q^{-H} S P)` with
  :math:`P` sorting the Rayleigh quotients :math:`\\mathrm{diag}(S)`
  descending. :math:`Q` is quantized and read back as the next steps will
  read it (:math:`\\hat Q'`), and the statistic is carried over to it,
  :math:`S \\leftarrow W^H S W` with :math:`W = \\hat Q^{-1} \\hat Q'`:
  the same :math:`L` in the new basis, so that the basis' rounding never
  enters the statistic. ``v`` is permuted by :math:`P` and ``m``, the
  projected first moment, carried over alike, :math:`W_L^H M W_R`.

  ``codes`` are the bases' ``(codes, scales)``; the new ones are rounded
  to nearest (also for a stochastic format: a basis is written once, not
  accumulated). Returns ``(stats, codes, v, m)``.
  """
  count = v.shape[0]
  work = _kron.owners(placement)
  exact = dataclasses.replace(storage, stochastic=False)

  def read_back(q):
    qa = _quantized.quantize(q, exact)
    raw = _quantized.dequantize(qa, jnp.float32)
    rect = _matrix_roots.bjorck(raw, bjorck_steps) if bjorck_steps else raw
    return qa.codes, qa.scales, rect.astype(q.dtype)

  def keep(operands):
    stats, v, m = operands
    return stats, tuple(codes), v, m

  def eigh(operands):
    stats, v, m = operands
    new_stats, new_codes = [], []
    for s, cs in zip(stats, codes):
      if s.shape[-1]:

        def factor(s):
          _, z = _kron.descending_eigh(s)
          c, sc, qh = read_back(z.astype(s.dtype))
          return _kron.ht(qh) @ s @ qh, c, sc

        s, *cs = work.to_all(count, *work.on_owners(factor, s))
      new_stats.append(s)
      new_codes.append(tuple(cs))
    # m is zero on the first step.
    return tuple(new_stats), tuple(new_codes), v, m

  def power(operands):
    stats, v, m = operands
    new_stats, new_codes = [], []
    for axis, (s, q, cs) in enumerate(zip(stats, bases, codes), start=1):
      if s.shape[-1]:

        def factor(s, q):
          d = jnp.diagonal(s, axis1=-2, axis2=-1).real
          idx = jnp.argsort(-d, axis=-1)
          p = jnp.take_along_axis(s, idx[:, None, :], axis=-1)
          lu = jax.scipy.linalg.lu_factor(q)
          p = jax.scipy.linalg.lu_solve(lu, p, trans=1)  # Q^-H S P = L Q P
          c, sc, qh = read_back(_lapack.qr_q(p / _low_rank.max_abs(p)))
          w = jax.scipy.linalg.lu_solve(lu, qh)
          return _kron.ht(w) @ s @ w, c, sc, w, idx

        s, c, sc, w, idx = work.to_all(count, *work.on_owners(factor, s, q))
        cs = (c, sc)
        v = _permute(v, idx, axis)
        m = _kron.ht(w) @ m if axis == 1 else m @ w
      new_stats.append(s)
      new_codes.append(tuple(cs))
    return tuple(new_stats), tuple(new_codes), v, m

  if not any(s.shape[-1] for s in stats):
    return stats, tuple(codes), v, m
  branches: tuple
  branch: jax.typing.ArrayLike
  if isinstance(refresh, bool):  # a benchmark's forced branch
    branches = (power if refresh else keep,)
    branch = 0
  else:
    branches = (keep, eigh, power)
    branch = jnp.where(first, 1, jnp.where(refresh, 2, 0))
  return jax.lax.switch(branch, branches, (tuple(stats), v, m))
