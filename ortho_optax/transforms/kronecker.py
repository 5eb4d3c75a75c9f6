"""What Shampoo and SOAP share: Kronecker-factor statistics per matrix.

Both keep, for each routed matrix oriented wide (``(B, m, n)``, ``m <= n``,
see ``ortho_optax.parallel.stateful``), a left statistic
:math:`L \\in \\mathbb{R}^{m \\times m}` and a right one
:math:`R \\in \\mathbb{R}^{n \\times n}`, and a matrix function of each (an
inverse root, an eigenbasis). A side longer than ``max_precond_dim`` keeps
no statistic: its state is an empty ``(B, 0, 0)`` array and it is
preconditioned by the identity. Orienting does not change either method:
transposing a matrix swaps :math:`L` and :math:`R`.

The preconditioner's storage (``precond_dtype``) is ``None`` (float32, or
complex64 for complex parameters), a floating dtype, or a quantized format
(``"q8"``, ``"q4"``, a :class:`~ortho_optax.QuantFormat`): then the
eigenvector matrices are kept as block codes (the eigenvalues in float32)
and rectified by Björck steps after they are read back (4-bit Shampoo).

Units: the statistics and moments are squares and sums of the gradient, so
float32 holds them only for gradients between about 1e-19 and 1e19. Each
matrix keeps them in units of a power of two, :math:`2^{e}` for the
gradient and :math:`2^{2e}` for the squares, with the integer exponents in
the state (:func:`unit_exponent`, :func:`ldexp`): :math:`e` stays 0 while
the gradient and the statistics lie within :data:`UNIT_BAND` binades of
one (so the state at usual scales is the unscaled one, bit for bit), and
moves to the gradient's (or the statistics') binade when they leave it, the
stored values rescaled by the exact power of two. The inverse roots and
eigenvalues computed at a refresh keep the exponent they were computed in.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ortho_optax import checks as _checks
from ortho_optax.engines import lapack as _lapack
from ortho_optax.engines import matrix_roots as _matrix_roots
from ortho_optax.engines import symmetric as _symmetric
from ortho_optax.parallel import stateful as _stateful
from ortho_optax.state import storage as _storage
from ortho_optax.transforms import low_rank as _low_rank

# The state's unit moves when the gradient or the statistics leave this many
# binades around it: squares then stay within 2^(+-2 UNIT_BAND) (times the
# side length), far from float32's range 2^(+-126).
UNIT_BAND = 20
# The exponent of a zero matrix (below every real one).
NO_EXPONENT = -(1 << 20)

# SOAP's reference default: sides above it (vocabulary sides) get the
# identity.
MAX_PRECOND_DIM = 10000


def is_refresh_step(count, every: int, warmup: int = 0):
  """Whether the call ``count`` (1-based; traced) refreshes the
  preconditioner: each of the first ``warmup`` calls, then every
  ``every``-th call from the first on (``(count - 1) % every == 0``)."""
  return ((count - 1) % every == 0) | (count <= warmup)


def check_max_precond_dim(value, name: str = "max_precond_dim") -> int:
  """A side bound: a Python int >= 0 (0: no side is preconditioned)."""
  return check_every(value, name, low=0)


def check_bjorck_steps(value) -> int:
  """Björck steps: ``None`` (1) or a Python int >= 0."""
  return check_every(1 if value is None else value, "bjorck_steps", low=0)


def check_every(value, name: str, low: int = 1) -> int:
  """A structural int (a period in steps, a size): a Python int >=
  ``low``, not an array (it shapes the program)."""
  if isinstance(value, jax.Array):
    raise TypeError(
        f"`{name}` must be a Python int >= {low}, got an array {value!r}: it"
        " shapes the program. Under optax.inject_hyperparams, list it in"
        f" `static_args` (static_args=({name!r},))."
    )
  return _checks.check_int(value, name, low=low)


def precond_storage(precond_dtype) -> _storage.Storage:
  """The storage of the preconditioner state (module docstring)."""
  return _storage.as_storage(precond_dtype, "precond_dtype", complex_ok=True)


def sides(m: int, n: int, max_precond_dim: int) -> tuple[int, int]:
  """The sizes of the left and right statistics (0: identity side)."""
  return (
      m if m <= max_precond_dim else 0,
      n if n <= max_precond_dim else 0,
  )


def precond_dtype_of(storage: _storage.Storage, dtype) -> jnp.dtype:
  """The dtype the preconditioner is computed and (unquantized) stored in:
  float32 (complex64 for complex parameters) unless a float storage is
  given."""
  if storage is not None and not _storage.is_quantized(storage):
    return jnp.dtype(_storage.float_dtype(storage))
  return jnp.promote_types(dtype, jnp.float32)


def real_dtype(dtype) -> jnp.dtype:
  """The real dtype of the same width (float32 for complex64)."""
  return jnp.finfo(dtype).dtype


def default_moment_dtype(dtype) -> jnp.dtype:
  """A moment's default dtype: the parameter's, float32 for float16 (whose
  range holds neither the squares of small gradients nor of large ones)."""
  return jnp.float32 if jnp.dtype(dtype) == jnp.float16 else jnp.dtype(dtype)


def _wide_real(dtype) -> jnp.dtype:
  """The real dtype of ``dtype`` at least as wide as float32."""
  return jnp.promote_types(real_dtype(dtype), jnp.float32)


def exponent(x: jax.Array) -> jax.Array:
  """``floor(log2 max|x|)`` of each ``x[i]`` (all axes but the first), int32
  ``(B,)``, read off the exponent bits (exact); :data:`NO_EXPONENT` where
  ``x[i]`` is zero (or subnormal, or empty)."""
  flat = jnp.abs(x).reshape(x.shape[0], -1).astype(_wide_real(x.dtype))
  amax = jnp.max(flat, axis=-1, initial=0.0)
  info = jnp.finfo(amax.dtype)
  itype = {4: jnp.int32, 8: jnp.int64}[amax.dtype.itemsize]
  bias = (1 << (info.nexp - 1)) - 1
  bits = jax.lax.bitcast_convert_type(amax, itype)
  biased = ((bits >> info.nmant) & ((1 << info.nexp) - 1)).astype(jnp.int32)
  return jnp.where(biased == 0, NO_EXPONENT, biased - bias)


def _pow2(k: jax.Array, dtype) -> jax.Array:
  """``2^k`` in ``dtype`` (real, float32 or wider) for ints ``k`` within its
  normal range, built from the exponent bits."""
  info = jnp.finfo(dtype)
  itype = {4: jnp.int32, 8: jnp.int64}[jnp.dtype(dtype).itemsize]
  bias = (1 << (info.nexp - 1)) - 1
  return jax.lax.bitcast_convert_type(
      (k.astype(itype) + bias) << info.nmant, dtype
  )


def ldexp(x: jax.Array, k: jax.Array) -> jax.Array:
  """``x[i] * 2^k[i]`` (``k`` int ``(B,)``), in ``x``'s dtype.

  Exact unless the result leaves the dtype's normal range (then zero or
  infinite, as the product would be): three products by powers of two
  within the normal range (so ``|k|`` up to about 380 in float32), never
  one by a subnormal factor (flushed to zero by XLA on CPU and GPU).
  """
  wd = _wide_real(x.dtype)
  info = jnp.finfo(wd)
  lo, hi = info.minexp, info.maxexp - 1
  k = k.reshape(k.shape + (1,) * (x.ndim - 1))
  y = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  for _ in range(3):
    part = jnp.clip(k, lo, hi)
    k = k - part
    y = y * _pow2(part, wd)
  return y.astype(x.dtype)


def unit_exponent(e: jax.Array, g: jax.Array, squares=()) -> jax.Array:
  """The new unit exponent of each matrix's state (module docstring).

  ``e`` ``(B,)``: the current one; ``g``: the real gradients ``(B, m, n)``;
  ``squares``: stacks stored in units of ``2^{2e}`` (second moments,
  statistics). The unit follows the larger of the gradient's binade and
  the square root of the largest stored square, once that is more than
  :data:`UNIT_BAND` binades away from ``e``; all-zero inputs keep ``e``.
  """
  target = exponent(g)
  for sq in squares:
    h = exponent(sq)
    target = jnp.maximum(
        target, jnp.where(h == NO_EXPONENT, NO_EXPONENT, e + h // 2)
    )
  move = (target != NO_EXPONENT) & (jnp.abs(target - e) > UNIT_BAND)
  return jnp.where(move, target, e)


def relative_eps(eps, x: jax.Array) -> jax.Array:
  """``eps`` in units of ``max|x[i]|`` (its power of two, ``(B, 1, 1)``;
  ``eps`` itself for a zero ``x[i]``): an Adam epsilon added to
  :math:`\\sqrt{V}` acts the same at every scale of the gradient."""
  k = exponent(x)
  k = jnp.where(k == NO_EXPONENT, 0, k)
  return eps * _pow2(k, _wide_real(x.dtype))[:, None, None]


def ht(x: jax.Array) -> jax.Array:
  """The conjugate transpose of each matrix."""
  return jnp.swapaxes(x, -1, -2).conj()


def gram(g: jax.Array, side: int) -> jax.Array:
  """:math:`G G^H` (``side`` 0) or :math:`G^H G` (``side`` 1) of each
  ``(B, m, n)`` matrix, one triangle of blocks computed
  (:mod:`ortho_optax.engines.symmetric`)."""
  x = g if side == 0 else ht(g)
  return _symmetric.hermitian_product(x, x, jnp.matmul)


def rebuild(lam: jax.Array, q: jax.Array) -> jax.Array:
  """:math:`Q \\mathrm{diag}(\\lambda) Q^H` (``lam`` ``(B, k)``)."""
  return (q * lam[:, None, :].astype(q.dtype)) @ ht(q)


# Benchmarks only (benchmarks/step.py): ``True`` / ``False`` traces every
# step as a refresh step / as a step between refreshes, without the
# ``lax.cond`` (whose FLOPs count as its costlier branch), so that the FLOPs
# of each kind of step can be counted. ``None``: the real, traced choice.
FORCE_REFRESH = None


def refresh_predicate(traced):
  """``traced``, or the benchmarks' forced value (:data:`FORCE_REFRESH`)."""
  return traced if FORCE_REFRESH is None else FORCE_REFRESH


def project(x: jax.Array, ql: jax.Array, qr: jax.Array) -> jax.Array:
  """:math:`Q_L^H X Q_R` (an empty side is the identity)."""
  if ql.shape[-1]:
    x = ht(ql) @ x
  if qr.shape[-1]:
    x = x @ qr
  return x


def project_back(x: jax.Array, ql: jax.Array, qr: jax.Array) -> jax.Array:
  """:math:`Q_L X Q_R^H` (an empty side is the identity)."""
  if ql.shape[-1]:
    x = ql @ x
  if qr.shape[-1]:
    x = x @ ht(qr)
  return x


def descending_eigh(s: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Eigenvalues (descending, real) and eigenvectors of each Hermitian
  ``s``, brought to order one first (the basis does not depend on the
  scale; the eigenvalues are scaled back)."""
  scale = _low_rank.max_abs(s)
  lam, q = _matrix_roots.eigh(s / scale)
  lam = jnp.flip(lam, axis=-1) * scale[..., 0].real.astype(lam.dtype)
  return lam, jnp.flip(q, axis=-1)


def rayleigh(s: jax.Array, q: jax.Array) -> jax.Array:
  """:math:`\\mathrm{diag}(Q^H S Q)`, real, per matrix."""
  return jnp.einsum("bij,bik,bkj->bj", q.conj(), s, q).real


def power_qr(s: jax.Array, q: jax.Array) -> tuple[jax.Array, jax.Array]:
  """SOAP's refresh of an eigenbasis ``q`` of ``s``: the columns sorted by
  their Rayleigh quotients (descending), one power-iteration step and a
  Householder QR. Returns the new basis and the sorting permutation
  (``(B, k)``).

  One product :math:`S Q` serves both: the Rayleigh quotients are
  :math:`\\mathrm{diag}(Q^H (S Q))`, and sorting the columns of :math:`Q`
  sorts those of :math:`S Q` alike.
  """
  p = s @ q
  est = jnp.sum(q.conj() * p, axis=-2).real
  idx = jnp.argsort(-est, axis=-1)
  p = jnp.take_along_axis(p, idx[:, None, :], axis=-1)
  # The product is brought to order one: the QR does not see the scale.
  return _lapack.qr_q(p / _low_rank.max_abs(p)), idx


def empty_side(batch: int, dtype) -> jax.Array:
  """The state of an identity side."""
  return jnp.zeros((batch, 0, 0), dtype)


def matrix_state(params, dns, make):
  """:func:`ortho_optax.transforms.low_rank.matrix_state`: ``make(index,
  leaf, dn)`` on matrix leaves, ``optax.MaskedNode()`` elsewhere."""
  return _low_rank.matrix_state(params, dns, make)


def owners(placement):
  """The placement of per-matrix square stacks: whole matrices per device
  under ``sharding="distribute"`` (their layout is not the gradient's).
  The statistics and bases are replicated state, so the stacks are split
  even when they hold fewer matrices than devices: the factorizations are
  the work, and only their results are gathered back."""
  return placement._replace(layout=None, replicated=True)


def store_basis(
    tree, storage: _storage.Storage, like, count, salt: int, refresh=None
):
  """Eigenvector stacks in ``storage`` (quantized: block codes).

  A quantized basis is written only on ``refresh`` steps (a traced bool;
  ``None``: always): in between, the codes of ``like`` are kept as they
  are, so that the basis read back and rectified each step is never
  quantized again (round-off would accumulate).
  """
  if not _storage.is_quantized(storage):
    return tree
  # Codes replace whole leaves, wrappers (Flax NNX Variables) included: a
  # wrapped QuantizedArray would not survive nnx.split (storage.as_arrays).
  new = _storage.store(
      _storage.as_arrays(tree), storage, like, count, salt=salt
  )
  if refresh is None or like is None:
    return new
  return jax.tree.map(lambda n, o: jnp.where(refresh, n, o), new, like)


def load_basis(tree, bjorck_steps: int):
  """Eigenvector stacks read back: quantized ones dequantized to float32
  and rectified by ``bjorck_steps`` Björck steps (4-bit Shampoo); float
  ones as they are."""

  def one(b):
    if not isinstance(b, optax.MaskedNode) and _storage.is_quantized_leaf(b):
      u = _storage.load(b)
      return _matrix_roots.bjorck(u, bjorck_steps) if u.size else u
    return b

  return jax.tree.map(
      one, tree, is_leaf=lambda x: _storage.is_quantized_leaf(x)
  )


class InitialState(NamedTuple):
  """The state both transforms start from (:func:`initial_state`)."""

  count: jax.Array  # type: ignore[assignment]
  mu: optax.Updates
  nu: optax.Updates
  left: optax.Updates
  right: optax.Updates
  basis_left: optax.Updates
  basis_right: optax.Updates
  scale_exponent: optax.Updates


def initial_state(
    params,
    dns,
    *,
    mu_storage: _storage.Storage,
    nu_storage: _storage.Storage,
    precond_storage: _storage.Storage,
    max_precond_dim: int,
) -> InitialState:
  """Zero state of Shampoo and SOAP for the matrix leaves of ``params``.

  Per matrix (oriented wide, ``(B, m, n)``): the first moment (in
  ``mu_storage``; float32 at least by default), the second moment
  ``(B, m, n)`` (real), the statistics ``(B, k, k)`` of each side kept
  (``(B, 0, 0)`` for an identity side), and a matrix function of each side
  (Shampoo's inverse roots, SOAP's eigenbases). With a quantized
  ``precond_storage`` the statistics are kept as their eigenvalues
  ``(B, k)`` and the matrix functions as block codes. The unit exponents
  ``(B, 2)`` (integers in float32; module docstring): that of the moments
  and (dense) statistics, and that of the matrix functions' statistics
  (the inverse roots, the stored eigenvalues) at their last refresh.

  Raises:
    TypeError: a quantized ``precond_storage`` and a complex parameter.
  """
  quantized = _storage.is_quantized(precond_storage)

  def nu(i, x, dn):
    del i
    batch, m, n = _stateful.oriented_shape(x.shape, dn)
    dtype = real_dtype(default_moment_dtype(x.dtype))
    if nu_storage is not None and not _storage.is_quantized(nu_storage):
      dtype = jnp.dtype(_storage.float_dtype(nu_storage))
    return _stateful.like_params_mesh(jnp.zeros((batch, m, n), dtype), x)

  def side(which, function):
    def make(i, x, dn):
      del i
      if quantized and not jnp.issubdtype(x.dtype, jnp.floating):
        code = getattr(precond_storage, "code", precond_storage)
        raise TypeError(
            f"`precond_dtype`={code!r} quantizes real matrices only; a"
            f" parameter has dtype {x.dtype}."
        )
      batch, m, n = _stateful.oriented_shape(x.shape, dn)
      k = sides(m, n, max_precond_dim)[which]
      dtype = precond_dtype_of(precond_storage, x.dtype)
      if quantized and not function:
        shape = (batch, k) if k else (batch, 0, 0)
        return _stateful.like_params_mesh(jnp.zeros(shape, jnp.float32), x)
      return _stateful.like_params_mesh(jnp.zeros((batch, k, k), dtype), x)

    return make

  def exponents(i, x, dn):
    del i
    batch, _, _ = _stateful.oriented_shape(x.shape, dn)
    # float32 (integers, exact): optax.tree.map_params maps the per-matrix
    # states, and integer state is left to counters.
    return _stateful.like_params_mesh(jnp.zeros((batch, 2), jnp.float32), x)

  count = _low_rank.zero_count(params)
  mu = _low_rank.momentum_state(params, dns, mu_storage)
  if mu_storage is None:
    mu = jax.tree.map(lambda x: x.astype(default_moment_dtype(x.dtype)), mu)
  nu_tree = matrix_state(params, dns, nu)
  if _storage.is_quantized(nu_storage):
    nu_tree = _storage.zeros(nu_tree, nu_storage, "nu_dtype")
  basis_left = matrix_state(params, dns, side(0, True))
  basis_right = matrix_state(params, dns, side(1, True))
  if quantized:
    basis_left = store_basis(basis_left, precond_storage, None, count, 0)
    basis_right = store_basis(basis_right, precond_storage, None, count, 0)
  return InitialState(
      count=count,
      mu=mu,
      nu=nu_tree,
      left=matrix_state(params, dns, side(0, False)),
      right=matrix_state(params, dns, side(1, False)),
      basis_left=basis_left,
      basis_right=basis_right,
      scale_exponent=matrix_state(params, dns, exponents),
  )
