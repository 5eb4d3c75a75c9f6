"""``scale_by_shampoo``: Kronecker-factored inverse roots, grafted onto Adam."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ortho_optax import checks as _checks
from ortho_optax import routing as _routing
from ortho_optax.engines import matrix_roots as _matrix_roots
from ortho_optax.parallel import sharding as _sharding
from ortho_optax.parallel import stateful as _stateful
from ortho_optax.state import storage as _storage
from ortho_optax.transforms import kronecker as _kron
from ortho_optax.transforms import low_rank as _low_rank
from ortho_optax.transforms import momentum as _momentum

GRAFTS = ("adam", None)

# Distributed Shampoo's `skip_preconditioning_dim_size_gt`.
MAX_PRECOND_DIM = 4096


class ScaleByShampooState(NamedTuple):
  """State of :func:`scale_by_shampoo`.

  Each matrix leaf is seen as ``(B, m, n)`` once reshaped through its
  dimension numbers and oriented wide (:math:`m \\le n`); the per-matrix
  entries use that layout, and an identity side is ``(B, 0, 0)``.

  Attributes:
    count: the number of steps taken.
    mu: the momentum of the grafted update, a tree like the params.
    nu: the graft's (Adam's) second moment, ``(B, m, n)`` per matrix.
    left: the statistic :math:`L`, ``(B, m, m)``; with a quantized
      ``precond_dtype`` its eigenvalues, ``(B, m)``.
    right: the statistic :math:`R`, ``(B, n, n)`` (or ``(B, n)``).
    root_left: :math:`L^{-1/p}`, ``(B, m, m)``; with a quantized
      ``precond_dtype`` the eigenvectors of :math:`L` as block codes.
    root_right: :math:`R^{-1/p}` (or the eigenvectors of :math:`R`).
    scale_exponent: ``(B, 2)``, integers in float32: ``nu`` and the
      dense ``left`` and ``right`` hold :math:`V / 4^{e_0}`,
      :math:`L / 4^{e_0}`, :math:`R / 4^{e_0}`; the roots (or the
      eigenvalues of a quantized ``precond_dtype``) were computed from
      statistics in units of :math:`4^{e_1}` (see Range).
  """

  count: jax.Array  # type: ignore[assignment]  # shape (), int32
  mu: optax.Updates
  nu: optax.Updates
  left: optax.Updates
  right: optax.Updates
  root_left: optax.Updates
  root_right: optax.Updates
  scale_exponent: optax.Updates


def scale_by_shampoo(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-6,
    *,
    graft: str | None = "adam",
    graft_eps: jax.typing.ArrayLike = 1e-8,
    nesterov: bool = True,
    precondition_every: int | None = None,
    precondition_warmup: int | None = None,
    start_preconditioning_step: int | None = None,
    max_precond_dim: int | None = None,
    root_method: str = "eigh",
    precond_dtype=None,
    bjorck_steps: int | None = None,
    mu_dtype=None,
    nu_dtype=None,
    dimension_numbers=None,
    rules: _routing.Rules = None,
    sharding: str | _sharding.ShardingOptions | None = None,
) -> optax.GradientTransformation:
  r"""Shampoo: :math:`L^{-1/4} G R^{-1/4}`, grafted onto Adam's layer norm.

  For each matrix :math:`G` (``m x n``) at step :math:`t`:

  .. math::
    L \leftarrow \beta_2 L + (1 - \beta_2) G G^H, \quad
    R \leftarrow \beta_2 R + (1 - \beta_2) G^H G, \\
    S = \tilde L^{-1/4} G \tilde R^{-1/4}, \quad
    V \leftarrow \beta_2 V + (1 - \beta_2) |G|^2, \quad
    A = \frac{G}{\sqrt{V / (1 - \beta_2^t)} + \epsilon_g}, \\
    U = \frac{\|A\|_F}{\|S\|_F} S, \quad
    M \leftarrow \beta_1 M + (1 - \beta_1) U, \\
    \text{out} = (1 - \beta_1) U + \beta_1 M \ (\text{Nesterov})
    \text{ or } M,

  where :math:`\tilde L^{-1/4} = (L + \epsilon \lambda_{max}(L) I)^{-1/4}` is
  recomputed from the statistics every ``precondition_every`` steps (after they
  take the step's gradient; the first step computes it) and kept in the state in
  between. This is distributed Shampoo's update (Anil et al.; google-research
  ``distributed_shampoo``): exponential moving averages of the statistics, a
  relative ``matrix_epsilon``, the direction from Shampoo and each matrix's norm
  from an Adam (RMSProp with bias correction) graft, then momentum on the
  grafted update (Nesterov by default; an average,
  ``moving_average_for_momentum=True`` there, so that the update keeps Adam's
  scale and AdamW's learning rate suits it). Before
  ``start_preconditioning_step`` the update is the graft :math:`A` itself.
  ``graft=None`` takes :math:`S` as it is (the statistics' scale cancels in
  :math:`S`: it is invariant to a scaling of :math:`G`).

  Sides above ``max_precond_dim`` are not preconditioned: with one side
  left, its root is :math:`-1/2` (:math:`p = 2`, Shampoo for the one
  Kronecker factor, :math:`L^{-1/2} G`); with none, the update is the
  graft :math:`A` (Adam's diagonal preconditioner; with ``graft=None``
  the gradient). Distributed Shampoo's default bound, 4096, is the
  default.

  With :math:`\beta_1 = \beta_2 = 0`, no graft and :math:`\epsilon \to 0`
  one step is :math:`(G G^H)^{-1/4} G (G^H G)^{-1/4} = U V^H`, Muon's
  orthogonalized update (Bernstein and Newhouse).

  Quantized preconditioner (``precond_dtype="q8"`` / ``"q4"``, 4-bit
  Shampoo): each side keeps the eigenvectors of its statistic as block
  codes and the eigenvalues in float32, :math:`L = Q \Lambda Q^H`; the
  statistics are updated at the refresh steps only (4-bit Shampoo's
  interval :math:`T_1`, here ``precondition_every``): :math:`Q` is read
  back, rectified by ``bjorck_steps`` Björck steps, :math:`L` rebuilt,
  updated and factored by ``eigh``. Each step applies
  :math:`Q (\Lambda + \epsilon\lambda_{max})^{-1/p} Q^H` from the
  rectified :math:`Q` (``root_method`` is not used).

  Range: the update does not depend on the scale of the gradients, from
  float32's smallest normal numbers to its largest: the statistics and the
  graft's second moment are kept per matrix in units of a power of two
  (``scale_exponent``; ``ortho_optax.transforms.kronecker``), so that
  neither :math:`G G^H` nor :math:`|G|^2` overflows or underflows, and
  ``graft_eps`` counts in units of :math:`\max \sqrt{V / (1 -
  \beta_2^t)}` (its power of two), as ``eps`` counts in units of
  :math:`\lambda_{max}`. The unit stays 1 for gradients within
  :math:`2^{\pm 20}`, so the state there is the unscaled one.

  Sharding: the statistics' products run where the gradient is; with
  ``sharding="distribute"`` each matrix's roots (``eigh`` or the
  ``root_method``) run on one device, the stacks of same-shape statistics
  split over the devices, and are gathered back (on 8 devices each device
  computes 1/8 of the roots; ``benchmarks/sharding.py``). The statistics
  and roots are replicated state.

  Args:
    b1: the momentum's :math:`\beta_1` (0: none).
    b2: the statistics' and the graft's :math:`\beta_2`.
    eps: the roots' epsilon, relative to the largest eigenvalue.
    graft: ``"adam"`` or ``None`` (see above; static).
    graft_eps: Adam's epsilon in the graft, relative (see Range).
    nesterov: Nesterov momentum (static).
    precondition_every: the roots' period, an int >= 1 (static; ``None``:
      10).
    precondition_warmup: the roots are also recomputed at each of the first
      this many steps (an int >= 0, static; ``None``: 0, the period
      alone). SOAP defaults to 100 (:func:`scale_by_soap`, Refresh
      schedule); Shampoo, whose roots are exact at each refresh, gained
      nothing on ``lm`` from 50 (1.5850 against 1.5843 nats/byte at 0.003,
      seed 0) and 0.014 on ``lm_deep``, less than its seeds differ by there
      (0.033).
    start_preconditioning_step: the first step (1-based) that uses the
      roots; before it, the graft (static int; ``None``: 1).
    max_precond_dim: sides above it are not preconditioned (static int;
      ``None``: 4096).
    root_method: :func:`~ortho_optax.engines.matrix_roots.inverse_root`'s
      ``method`` (static).
    precond_dtype: storage of the statistics and roots: ``None``
      (float32, or complex64), a floating dtype, or a quantized format
      (``"q8"``, ``"q4"``, a :class:`QuantFormat`; see above).
    bjorck_steps: Björck steps on quantized eigenvectors read back (static;
      ``None``: 1).
    mu_dtype: storage of the momentum (``None``: the parameters' dtype,
      float32 for float16; or a quantized format).
    nu_dtype: storage of the graft's second moment (as ``mu_dtype``).
    dimension_numbers: as in :func:`scale_by_orthogonalization`.
    rules: routing overrides, see :func:`label_params`.
    sharding: ``None``, ``"gather"``, ``"distribute"`` or a
      :class:`ShardingOptions`.

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`ScaleByShampooState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import ortho_optax
    >>> tx = ortho_optax.scale_by_shampoo(b1=0.0, b2=0.0, graft=None)
    >>> g = {"w": jnp.array([[3.0, 0.0], [0.0, 0.5]])}
    >>> state = tx.init(g)
    >>> updates, state = tx.update(g, state)
    >>> print(jnp.round(updates["w"], 4))  # the polar factor of G
    [[1. 0.]
     [0. 1.]]

  References:
    Gupta, Koren and Singer, `Shampoo: Preconditioned Stochastic Tensor
    Optimization <https://arxiv.org/abs/1802.09568>`_, 2018

    Anil et al., `Scalable Second Order Optimization for Deep Learning
    <https://arxiv.org/abs/2002.09018>`_, 2020

    Wang et al., `4-bit Shampoo for Memory-Efficient Network Training
    <https://arxiv.org/abs/2405.18144>`_, NeurIPS 2024
  """
  _momentum.check_beta(b1, "b1")
  _momentum.check_beta(b2, "b2")
  _checks.check_number(eps, "eps", low=0.0)
  _checks.check_number(graft_eps, "graft_eps", low=0.0)
  _checks.check_choice(graft, "graft", GRAFTS)
  _checks.check_bool(nesterov, "nesterov")
  precondition_every = _kron.check_every(
      10 if precondition_every is None else precondition_every,
      "precondition_every",
  )
  precondition_warmup = _kron.check_every(
      0 if precondition_warmup is None else precondition_warmup,
      "precondition_warmup", low=0,
  )
  start = _kron.check_every(
      1 if start_preconditioning_step is None else start_preconditioning_step,
      "start_preconditioning_step",
  )
  max_precond_dim = _kron.check_max_precond_dim(
      MAX_PRECOND_DIM if max_precond_dim is None else max_precond_dim
  )
  _checks.check_choice(root_method, "root_method", _matrix_roots.METHODS)
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
    return ScaleByShampooState(
        count=s.count,
        mu=s.mu,
        nu=s.nu,
        left=s.left,
        right=s.right,
        root_left=s.basis_left,
        root_right=s.basis_right,
        scale_exponent=s.scale_exponent,
    )

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    dns = _routing.resolve_dimension_numbers(updates, dimension_numbers, rules)
    mu = _storage.load(state.mu, updates)
    nu = _storage.load(state.nu)
    root_left = _kron.load_basis(state.root_left, bjorck_steps)
    root_right = _kron.load_basis(state.root_right, bjorck_steps)

    def step(g, m, extras, placement, transposed, operands):
      del transposed
      (count,) = operands
      v, sl, sr, rl, rr, ex = extras
      rd = _kron.real_dtype(g.dtype)
      beta1 = _momentum.hyperparameter(b1, g)
      beta2 = _momentum.hyperparameter(b2, g)
      refresh = _kron.refresh_predicate(
          _kron.is_refresh_step(count, precondition_every, precondition_warmup)
      )
      p = 2 * sum(1 for r in (rl, rr) if r.shape[-1])
      # Units: V, L, R in units of 4^e, the roots from statistics in units
      # of 4^e_root; the gradient in units of 2^e.
      e_old, e_root = (ex[:, i].astype(jnp.int32) for i in (0, 1))
      dense = () if quantized else (sl, sr)
      e = _kron.unit_exponent(e_old, g, (v, *dense))
      shift = 2 * (e_old - e)
      v = _kron.ldexp(v, shift)
      if not quantized:
        sl, sr = _kron.ldexp(sl, shift), _kron.ldexp(sr, shift)
      gu = _kron.ldexp(g, -e)
      if quantized:
        sl, sr, rl, rr = _refresh_quantized(
            gu, (sl, sr), (rl, rr), beta2, refresh, placement,
            2 * (e_root - e),
        )
        roots = tuple(
            _matrix_roots.root_from_eigh(lam, q, p, eps).astype(g.dtype)
            if q.shape[-1] else q
            for lam, q in ((sl, rl), (sr, rr))
        )
      else:
        sl, sr, rl, rr = _refresh(
            gu, (sl, sr), (rl, rr), beta2, refresh, placement, p
        )
        roots = (rl.astype(g.dtype), rr.astype(g.dtype))
      e_root = jnp.where(refresh, e, e_root)
      v_new = beta2 * v.astype(rd) + (1 - beta2) * jnp.abs(gu) ** 2
      t = count.astype(rd)
      rv = jnp.sqrt(v_new / (1 - beta2**t))
      a = gu / (rv + _kron.relative_eps(graft_eps, rv)).astype(rd)
      if graft is None:
        a = g
      if p:
        # L^{-1/p} G R^{-1/p}: the roots in units of 2^-e_root, G in 2^e.
        s = _kron.project_back(gu, *roots)
        if graft is not None:
          s = s * _norm_ratio(a, s)
        else:
          s = _kron.ldexp(s, e - e_root)
        u = jnp.where(count >= start, s, a)
      else:
        u = a
      m_new = beta1 * m + (1 - beta1) * u
      out = (1 - beta1) * u + beta1 * m_new if nesterov else m_new
      return out, m_new, (
          v_new, sl, sr, rl, rr,
          jnp.stack([e, e_root], axis=-1).astype(jnp.float32),
      )

    updates, mu, (nu, left, right, root_left, root_right, exps) = (
        _stateful.map_matrix_groups(
            step, updates, mu,
            (nu, state.left, state.right, root_left, root_right,
             state.scale_exponent),
            dns, sharding, layouts, operands=(count,),
        )
    )
    mu = _storage.store(
        mu, mu_storage, state.mu, count, salt=_storage.SHAMPOO_MU_SALT
    )
    nu = _storage.store(
        nu, nu_storage, state.nu, count, salt=_storage.SHAMPOO_NU_SALT
    )
    refresh = _kron.is_refresh_step(
        count, precondition_every, precondition_warmup
    )
    root_left = _kron.store_basis(
        root_left, pstorage, state.root_left, count,
        _storage.PRECOND_LEFT_SALT, refresh,
    )
    root_right = _kron.store_basis(
        root_right, pstorage, state.root_right, count,
        _storage.PRECOND_RIGHT_SALT, refresh,
    )
    return updates, ScaleByShampooState(
        count=count, mu=mu, nu=nu, left=left, right=right,
        root_left=root_left, root_right=root_right, scale_exponent=exps,
    )

  def _refresh(g, stats, roots, beta2, refresh, placement, p):
    count = g.shape[0]
    new_stats = []
    for axis, s in enumerate(stats):
      if s.shape[-1]:
        gram = _kron.gram(g, axis).astype(s.dtype)
        s = (beta2 * s + (1 - beta2) * gram).astype(s.dtype)
      new_stats.append(s)
    if not p:
      return (*new_stats, *roots)
    work = _kron.owners(placement)

    def compute(stats):
      out = []
      for s, r in zip(stats, roots):
        if s.shape[-1]:
          r_new = work.on_owners(
              lambda s: _matrix_roots.inverse_root(
                  s, p, method=root_method, eps=eps
              ),
              s,
          )
          (r,) = work.to_all(count, r_new.astype(r.dtype))
        out.append(r)
      return tuple(out)

    if isinstance(refresh, bool):  # a benchmark's forced branch
      new_roots = compute(new_stats) if refresh else tuple(roots)
    else:
      new_roots = jax.lax.cond(
          refresh, compute, lambda stats: tuple(roots), tuple(new_stats)
      )
    return (*new_stats, *new_roots)

  return optax.GradientTransformation(init_fn, update_fn)


def _norm_ratio(a: jax.Array, s: jax.Array) -> jax.Array:
  """``||a||_F / ||s||_F`` per matrix, 0 where ``s`` is zero; both brought
  to order one first, so neither norm overflows nor underflows."""
  sa, ss = _low_rank.max_abs(a), _low_rank.max_abs(s)
  na = jnp.sqrt(jnp.sum(jnp.abs(a / sa) ** 2, axis=(-2, -1), keepdims=True))
  ns = jnp.sqrt(jnp.sum(jnp.abs(s / ss) ** 2, axis=(-2, -1), keepdims=True))
  ok = ns > 0
  ratio = (na * sa) / (jnp.where(ok, ns, 1) * ss)
  return jnp.where(ok, ratio, 0).real.astype(s.real.dtype)


def _refresh_quantized(g, eigs, bases, beta2, refresh, placement, shift):
  """On ``refresh`` steps, each side's :math:`L = \\beta_2 Q \\Lambda Q^H
  + (1 - \\beta_2) G G^H` is factored again by ``eigh`` (4-bit Shampoo);
  the stored eigenvalues are first brought to the gradient's units
  (times ``2^shift``)."""
  count = g.shape[0]
  work = _kron.owners(placement)

  def keep(g):
    del g
    return (*eigs, *bases)

  def update(g):
    new_eigs, new_bases = [], []
    for axis, (lam, q) in enumerate(zip(eigs, bases)):
      if not q.shape[-1]:
        new_eigs.append(lam)
        new_bases.append(q)
        continue
      lam = _kron.ldexp(lam, shift)
      gram = _kron.gram(g, axis).astype(q.dtype)

      def factor(lam, q, gram):
        s = beta2 * _kron.rebuild(lam, q) + (1 - beta2) * gram
        return _kron.descending_eigh(s)

      lam_new, q_new = work.on_owners(factor, lam, q, gram)
      lam_new, q_new = work.to_all(
          count, lam_new.astype(lam.dtype), q_new.astype(q.dtype)
      )
      new_eigs.append(lam_new)
      new_bases.append(q_new)
    return (*new_eigs, *new_bases)

  if isinstance(refresh, bool):  # a benchmark's forced branch
    return update(g) if refresh else keep(g)
  return jax.lax.cond(refresh, update, keep, g)
