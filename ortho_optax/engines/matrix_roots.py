r"""Matrix functions of symmetric positive semi-definite matrices.

Shampoo's preconditioner is :math:`A^{-1/p}` of a statistic
:math:`A = \sum G G^T` (``p = 4`` for a matrix's two sides), SOAP's is the
eigenbasis of :math:`A`, and 4-bit Shampoo rebuilds :math:`A^{-1/p}` from a
quantized eigenvector matrix rectified by Björck steps. This module holds
those pieces as pure functions on arrays of shape ``(..., n, n)``; the
transforms of :mod:`ortho_optax.transforms.shampoo` and
:mod:`ortho_optax.transforms.soap` call them per routed matrix.

Every function first brings the matrix to unit scale by a power of two (exact
in binary floating point), so its result for ``c * a`` is
``c^{-1/p}`` times its result for ``a`` for every ``c`` over the dtype's
range, and the epsilon is relative: :math:`\epsilon\,\lambda_{max}(A)`, as
distributed Shampoo's ``matrix_epsilon``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ortho_optax import checks as _checks
from ortho_optax.engines import lapack as _lapack
from ortho_optax.engines import normalization as _normalization
from ortho_optax.engines import prism as _prism
from ortho_optax.engines import symmetric as _symmetric

# The methods of :func:`inverse_root`.
METHODS = ("eigh", "newton", "prism")
# Spectrum bounds of the matmul methods' starting matrix.
BOUNDS = ("power", "frobenius")
# Power iterations for lambda_max (distributed Shampoo's default count).
DEFAULT_POWER_ITERATIONS = 100
# Stopping tolerance on ||M - I||_F / sqrt(n) (distributed Shampoo: 1e-6 on
# max |M - I|).
DEFAULT_TOL = 1e-6
# Matmuls in full float32: a TPU's default (bfloat16 passes) or a GPU's
# TF32 would resolve the small eigenvalues to ~1e-3 of the largest, far
# above the epsilon (distributed Shampoo passes HIGHEST as well).
PRECISION = jax.lax.Precision.HIGHEST
# An iterate whose residual grows past this factor of the last one is
# rejected and the iteration stops (distributed Shampoo's guard: the
# residual may grow a little before it falls).
GROWTH_GUARD = 1.2

# Chunks of the inner dimension of the coupled iterations' M update
# (:func:`_chunked_product`).
INNER_CHUNKS = 4
# The first steps of the coupled iterations that take the careful update
# (``_coupled_newton``'s ``update``): the rounding of the later ones, with
# M's small eigenvalues grown, costs little (measured below 7e-5 from the
# fourth step on).
CAREFUL_STEPS = 3

# Distributed Shampoo's default ``matrix_epsilon`` (relative to the largest
# eigenvalue in our convention).
DEFAULT_EPS = 1e-6


def check_square(a, name: str = "a") -> jax.Array:
  """Checks that ``a`` is a floating array of shape ``(..., n, n)``."""
  a = _checks.check_matrix(a, name)
  if a.shape[-1] != a.shape[-2]:
    raise ValueError(
        f"`{name}` must be square, shape (..., n, n); got shape"
        f" {tuple(a.shape)}."
    )
  return a


def check_power(p, name: str = "p") -> int:
  """Checks the root's order: a Python int >= 1."""
  return _checks.check_int(p, name, low=1)


def symmetrize(a: jax.Array) -> jax.Array:
  """``(a + a^H) / 2``: removes the round-off asymmetry of a product."""
  return (a + jnp.swapaxes(a, -1, -2).conj()) / 2


def eigh(a: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Eigenvalues (ascending) and eigenvectors of each symmetric matrix.

  ``jnp.linalg.eigh`` on the symmetrized matrix, one matrix at a time on the
  CPU (see :mod:`ortho_optax.engines.lapack`: batched LAPACK kernels can
  stall XLA's CPU thread pool).
  """
  return _lapack.per_matrix(jnp.linalg.eigh, symmetrize(a))


def root_from_eigh(
    eigenvalues: jax.Array,
    eigenvectors: jax.Array,
    p: int,
    eps: jax.typing.ArrayLike = DEFAULT_EPS,
    *,
    symmetric: bool = True,
) -> jax.Array:
  r""":math:`U\,\mathrm{diag}((\lambda + \epsilon\lambda_{max})^{-1/p})\,U^H`.

  Negative eigenvalues (round-off of a PSD matrix) are clipped to zero
  before the epsilon is added. A zero matrix (:math:`\lambda_{max} = 0`)
  maps to zeros rather than to an infinity: its preconditioned update is
  zero either way, and a zero keeps NaNs out of a step.

  Args:
    eigenvalues: ``(..., n)``, in at least float32.
    eigenvectors: ``(..., n, n)``, columns are eigenvectors.
    p: the root's order.
    eps: the epsilon, relative to the largest eigenvalue.
    symmetric: form the Hermitian product :math:`(U D) U^H` as one
      triangle of blocks (:mod:`ortho_optax.engines.symmetric`, from 512
      rows); ``False``: the plain product.

  Returns:
    An array of shape ``(..., n, n)`` with the eigenvectors' dtype.
  """
  lam = jnp.maximum(eigenvalues, 0)
  lam_max = jnp.max(lam, axis=-1, keepdims=True, initial=0.0)
  shifted = lam + eps * lam_max
  inv = jnp.where(
      shifted > 0, jnp.where(shifted > 0, shifted, 1) ** (-1.0 / p), 0
  )
  scaled = eigenvectors * inv[..., None, :].astype(eigenvectors.dtype)
  return _hermitian(scaled, eigenvectors, symmetric)


def _hermitian(p, q, symmetric, q_hermitian=False):
  """``P Q^H`` (``P Q`` if ``q_hermitian``) for a Hermitian result, in
  full precision (:data:`PRECISION`), one triangle of blocks when
  ``symmetric``."""
  return _symmetric.hermitian_product(
      p, q, functools.partial(jnp.matmul, precision=PRECISION),
      symmetric=symmetric, q_hermitian=q_hermitian,
  )


def _unit_scale(a: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``a`` in at least float32 times the power of two ``s`` that brings
  ``max|a|`` into ``[1, 4)``, and ``s``."""
  aw = a.astype(_normalization.working_dtype(a.dtype))
  s = _normalization.inverse_unit(aw).astype(aw.dtype)
  return aw * s, s


def inverse_root(
    a: jax.Array,
    p: int,
    *,
    method: str = "eigh",
    eps: jax.typing.ArrayLike = DEFAULT_EPS,
    steps: int | None = None,
    tol: float = DEFAULT_TOL,
    bound: str = "power",
    power_iterations: int = DEFAULT_POWER_ITERATIONS,
    sketch_size: int = _prism.DEFAULT_SKETCH_SIZE,
    seed: int = 0,
    symmetric: bool = True,
) -> jax.Array:
  r"""The inverse ``p``-th root :math:`(A + \epsilon\lambda_{max} I)^{-1/p}`.

  ``a`` is symmetric (Hermitian) positive semi-definite, as Shampoo's
  statistics are. The result for ``c * a`` is :math:`c^{-1/p}` times that
  for ``a`` (exactly so for powers of two): ``a`` is brought to unit scale
  by a power of two first, and the root is scaled back in at least
  float32. An all-zero matrix maps to zeros.

  Methods:

  * ``"eigh"``: the reference, :math:`U (\Lambda + \epsilon\lambda_{max}
    I)^{-1/p} U^H` from an eigendecomposition.
  * ``"newton"``: the coupled Newton iteration (Guo and Higham 2006; the
    one distributed Shampoo runs in float32), matmul only. With
    :math:`A_\epsilon = A + \epsilon\hat\lambda I` and a bound
    :math:`c \ge \lambda_{max}(A_\epsilon)`,

    .. math::
      X_0 = c^{-1/p} I,\quad M_0 = A_\epsilon / c,\quad
      T_k = I + \alpha (I - M_k),\quad
      X_{k+1} = X_k T_k,\quad M_{k+1} = T_k^p M_k

    with :math:`\alpha = 1/p`; :math:`M_k = X_k^p A_\epsilon \to I` and
    :math:`X_k \to A_\epsilon^{-1/p}`. Every product is of commuting
    Hermitian matrices, so it is Hermitian and formed as one triangle of
    blocks (``symmetric``).
  * ``"prism"``: the same iteration with :math:`\alpha \in [1/p, 1]`
    refitted at every step to the spectrum of :math:`R_k = I - M_k` by
    PRISM's sketched least squares (:mod:`ortho_optax.engines.prism`):
    small eigenvalues grow by up to :math:`2^p` per step instead of
    :math:`(1 + 1/p)^p < e`, so it needs about half the steps.

  The matmul methods estimate :math:`\hat\lambda \approx \lambda_{max}`
  by ``power_iterations`` power iterations (matrix-vector products,
  ``2 n^2`` FLOPs each; :math:`\|A v\|` for the last unit vector ``v``,
  which lies in :math:`[v^H A v, \lambda_{max}]`), since the epsilon is
  relative to it, and by default (``bound="power"``) also take
  :math:`c = \hat\lambda (1 + \epsilon)`: the tightest bound at hand, so
  the fewest steps (the iteration converges for :math:`\lambda(M_0) \in
  (0, p + 1)`, which an estimate a few percent low keeps).
  ``bound="frobenius"`` takes distributed Shampoo's and PRISM's
  :math:`c = 2 \|A_\epsilon\|_F / (p + 1)`, a guaranteed bound that is
  up to :math:`\sqrt{n}` too large for a flat spectrum.

  They run a fixed number of steps (a ``lax.scan``), each matrix freezing
  once :math:`\|M - I\|_F / \sqrt{n} \le` ``tol`` or when its residual
  grows past 1.2x the last one (distributed Shampoo's guard), rather
  than a ``while_loop``: the cost is then static (the FLOP model below
  equals the traced program's) and a batch sharded over devices needs no
  collective to agree on a stopping step. The default ``steps`` suffice
  for eigenvalues down to :math:`\epsilon\lambda_{max}`
  (:func:`default_steps`). They need :math:`A_\epsilon` positive
  definite: with ``eps=0`` a singular ``a`` gives large finite entries,
  not the zeros ``"eigh"`` gives its null space.

  Every matmul of this module runs at ``precision=HIGHEST`` (full float32
  on a TPU or a GPU, whose defaults are bfloat16 passes or TF32).

  Accuracy in float32: float32 resolves the eigenvalues of
  :math:`A_\epsilon` to about :math:`u\lambda_{max}` (:math:`u = 6 \cdot
  10^{-8}`), so the inverse root of one near :math:`\epsilon\lambda_{max}`
  is uncertain by up to about :math:`u / (p \epsilon)`. Measured against
  float64 (32 x 32, log-uniform spectra, ``p = 4``): with ``eps=1e-6``
  (condition number of :math:`A_\epsilon` up to :math:`10^6`) ``newton``
  and ``prism`` are within 2.2e-4 up to a condition number of 1e6 of ``a``
  and 6.2e-4 at 1e8 (up to 6.7e-4 on other draws; rounding
  :math:`A_\epsilon` to float32 alone costs 2.8e-4); with ``eps=1e-5``
  within 8.1e-5 at every condition number (float32 ``eigh``: 2.4e-2 and
  4.8e-3). Most of the error is the rounding of the first products
  :math:`T^p M`, while :math:`M`'s smallest eigenvalues are still near
  :math:`\epsilon`: each product takes its exact part :math:`\tau M` (a
  power of two :math:`\tau`) out of the matmul, runs the inner dimension
  in chunks summed pairwise, and :math:`M_0` is never formed (see
  ``update`` in the source), at the same FLOPs (before: 1.8e-3 and 1.2e-3
  at 1e8), in the first :data:`CAREFUL_STEPS` steps only, where the
  error arises: on the CPU (two 1024 x 1024 Wishart matrices) ``newton``
  takes 1.05 s against 0.79 s before, ``prism`` 0.69 s against 0.47 s
  (every step careful: 2.2 s and 1.1 s).

  Args:
    a: array of shape ``(..., n, n)``; leading axes are batch axes.
    p: the root's order, a positive int (4 for Shampoo's two-sided
      preconditioner of a matrix).
    method: ``"eigh"``, ``"newton"`` or ``"prism"``.
    eps: regularization relative to the largest eigenvalue (distributed
      Shampoo's ``matrix_epsilon``); may be traced
      (``optax.inject_hyperparams``).
    steps: the matmul methods' number of steps; ``None``:
      :func:`default_steps` (for a traced ``eps``, that of float32's
      resolution, :math:`2^{-24}`).
    tol: the matmul methods' stopping tolerance on
      :math:`\|M - I\|_F / \sqrt{n}`.
    bound: ``"power"`` or ``"frobenius"``, the matmul methods' :math:`c`.
    power_iterations: power iterations for :math:`\hat\lambda`.
    sketch_size: ``"prism"``'s sketch columns.
    seed: ``"prism"``'s sketch seed (the result is a deterministic
      function of ``a`` and ``seed``).
    symmetric: Hermitian products as one triangle of blocks.

  Returns:
    An array of the shape of ``a`` in at least float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ortho_optax.engines.matrix_roots import inverse_root
    >>> a = jnp.diag(jnp.array([16.0, 1.0]))
    >>> print(jnp.round(inverse_root(a, 4, eps=0.0), 4))
    [[0.5 0. ]
     [0.  1. ]]
    >>> for method in ("newton", "prism"):
    ...   print(method, jnp.round(inverse_root(a, 4, method=method), 4))
    newton [[0.5 0. ]
     [0.  1. ]]
    prism [[0.5 0. ]
     [0.  1. ]]

  References:
    Gupta, Koren and Singer, `Shampoo: Preconditioned Stochastic Tensor
    Optimization <https://arxiv.org/abs/1802.09568>`_, 2018

    Anil et al., `Scalable Second Order Optimization for Deep Learning
    <https://arxiv.org/abs/2002.09018>`_, 2020

    Guo and Higham, `A Schur-Newton method for the matrix p'th root and
    its inverse <https://doi.org/10.1137/050643374>`_, SIAM J. Matrix
    Anal. Appl., 2006

    Yang, Wang, Balabanov, Erichson and Mahoney, `PRISM: Distribution-free
    Adaptive Computation of Matrix Functions for Accelerating Neural
    Network Training <https://arxiv.org/abs/2601.22137>`_, 2026
  """
  a = check_square(a)
  p = check_power(p)
  _checks.check_choice(method, "method", METHODS)
  _checks.check_number(eps, "eps", low=0.0)
  steps = _checks.check_int(steps, "steps", low=1, optional=True)
  _checks.check_number(tol, "tol", low=0.0)
  _checks.check_choice(bound, "bound", BOUNDS)
  power_iterations = _checks.check_int(
      power_iterations, "power_iterations", low=0
  )
  sketch_size = _prism.check_sketch_size(sketch_size)
  seed = _prism.check_seed(seed)
  symmetric = _checks.check_bool(symmetric, "symmetric")
  scaled, s = _unit_scale(a)
  if method == "eigh":
    lam, u = eigh(scaled)
    root = root_from_eigh(lam, u, p, eps, symmetric=symmetric)
  else:
    traced = _checks.is_traced(eps)  # inject_hyperparams under jit
    if steps is None:  # a traced eps may be tiny: float32's floor
      concrete = 0.0 if traced else float(eps)  # type: ignore[arg-type]
      steps = default_steps(p, concrete, method)
    root = _coupled_newton(
        symmetrize(scaled), p, method=method, eps=eps, steps=steps,
        tol=float(tol), bound=bound, power_iterations=power_iterations,
        sketch_size=sketch_size, seed=seed, symmetric=symmetric,
    )
  # (s a)^{-1/p} = s^{-1/p} a^{-1/p}, so a^{-1/p} = s^{1/p} (s a)^{-1/p}.
  return root * (s ** (1.0 / p)).astype(root.dtype)


def default_steps(p: int, eps: float = DEFAULT_EPS, method: str = "newton"):
  r"""Steps that take an eigenvalue :math:`\epsilon\lambda_{max}` of
  :math:`M_0` to 1 within float32's resolution.

  A small eigenvalue ``m`` of :math:`M` grows per step by
  :math:`(1 + 1/p)^p \in [2, e)` under Newton's coefficient and by up to
  :math:`2^p` under PRISM's; then the convergence is quadratic. Newton's
  count is the scalar iteration's from :math:`\max(\epsilon, 2^{-24})`
  plus one; PRISM's is :math:`\lceil \log_{2^p}(1 / \epsilon) \rceil + 6`
  (measured on log-uniform spectra, condition numbers 1 to 1e8).
  """
  p = check_power(p)
  _checks.check_choice(method, "method", ("newton", "prism"))
  floor = max(float(eps), 2.0**-24)
  if method == "prism":
    return math.ceil(math.log(1 / floor) / (p * math.log(2))) + 6
  m, k = floor / (1 + floor), 0
  while abs(1 - m) > 2.0**-24 and k < 1000:
    m *= (1 + (1 - m) / p) ** p
    k += 1
  return k + 1


def _lambda_max(a: jax.Array, iterations: int) -> jax.Array:
  """Power-iteration estimate of the largest eigenvalue, ``(..., 1, 1)``.

  ``||A v||`` for the unit vector ``v`` after ``iterations`` steps from a
  fixed pseudo-random start: between the Rayleigh quotient and
  :math:`\\lambda_{max}`. Zero for a zero matrix.
  """
  n = a.shape[-1]
  real = jnp.finfo(a.dtype).dtype
  v = jax.random.normal(jax.random.key(0), (n,), dtype=real)
  v = jnp.broadcast_to((v / jnp.linalg.norm(v)).astype(a.dtype), a.shape[:-1])

  def matvec(v):
    return jnp.einsum("...ij,...j->...i", a, v, precision=PRECISION)

  def body(_, v):
    w = matvec(v)
    nrm = jnp.linalg.norm(w, axis=-1, keepdims=True)
    return w / jnp.where(nrm > 0, nrm, 1).astype(w.dtype)

  v = jax.lax.fori_loop(0, iterations, body, v)
  return jnp.linalg.norm(matvec(v), axis=-1)[..., None, None].astype(real)


def _power_products(p: int) -> int:
  """Products binary powering forms for ``T^p``."""
  return p.bit_length() - 1 + bin(p).count("1") - 1


def _coupled_newton(
    a, p, *, method, eps, steps, tol, bound, power_iterations, sketch_size,
    seed, symmetric,
):
  """The coupled iteration on unit-scaled Hermitian ``a`` (see
  :func:`inverse_root`)."""
  n = a.shape[-1]
  dt = a.dtype
  real = jnp.finfo(dt).dtype
  if n == 0:
    return a
  eye = jnp.broadcast_to(jnp.eye(n, dtype=dt), a.shape)
  if bound == "power" or _checks.is_traced(eps) or eps > 0:
    lam = _lambda_max(a, power_iterations)
  else:
    lam = jnp.zeros(a.shape[:-2] + (1, 1), real)
  shift = eps * lam
  if bound == "power":
    c = lam + shift
  else:
    areg = a + shift.astype(dt) * eye
    fro = jnp.sqrt(jnp.sum(jnp.abs(areg) ** 2, axis=(-2, -1), keepdims=True))
    c = fro.astype(real) * (2.0 / (p + 1))
  pos = c > 0
  c = jnp.where(pos, c, 1)
  # M = beta B + gamma I; M_0 = a / c + (shift / c) I stays unformed
  # until the first product (see update).
  b, beta, gamma = a, 1 / c, shift / c
  x = eye * jnp.where(pos, c ** (-1.0 / p), 0).astype(dt)

  def herm(u, v):  # u v for commuting Hermitian u, v: Hermitian
    return _hermitian(u, v, symmetric, q_hermitian=True)

  def power(t):
    result, base, e = None, t, p
    while e:
      if e & 1:
        result = base if result is None else herm(result, base)
      e >>= 1
      if e:
        base = herm(base, base)
    return result

  def residual(m):
    r = jnp.sqrt(jnp.sum(jnp.abs(m - eye) ** 2, axis=(-2, -1)))
    return r.astype(real) / math.sqrt(n)

  def factor(m, t):
    """``T = I + alpha R`` and ``update``'s ``tau`` for it."""
    r = eye - m
    if method == "newton":
      return eye + r / p, _split_scalar(1.0 / p, p)
    s = _prism.sketch(seed, t, n, sketch_size, dt)
    z = _prism.residual_powers(r, s, p + 1, precision=PRECISION)
    # h(r) = 1 - (1 - r)(1 + alpha r)^p = r - sum_j C(p, j) alpha^j
    # (r^j - r^{j+1}).
    pieces = [z[1]] + [
        -math.comb(p, j) * (z[j] - z[j + 1]) for j in range(1, p + 1)
    ]
    alpha = _prism.fit_alpha(pieces, 1.0 / p, 1.0)[..., None, None]
    return eye + alpha.astype(dt) * r, _split_scalar(alpha, p)

  def update(b, beta, gamma, t_k, tau):
    """``T^p M`` for ``M = beta B + gamma I``, as ``beta (tau B + (T^p -
    tau I) B) + gamma T^p``.

    The product's rounding error is about ``u |T^p| |M|`` in every
    direction (``u`` the unit roundoff), also in those of M's smallest
    eigenvalues, which only grow by ``(1 + alpha)^p``: Newton's first
    step's error there is as large as that of rounding ``A`` to float32 a
    few times over. ``T^p``'s eigenvalues run from about 1 (where ``M``
    has converged) to ``(1 + alpha)^p``; the power of two ``tau`` nearest
    the middle takes the part ``tau B`` (exact) out of the product, whose
    other factor's norm falls to about half the range. ``M_0`` is kept as
    ``a / c + (shift / c) I`` (``beta``, ``gamma``) until this first
    product: formed, it would be rounded once more. The matmul's inner
    dimension runs in :data:`INNER_CHUNKS` chunks, summed pairwise
    (:func:`_chunked_product`).
    """
    tp = power(t_k)
    prod = tau * b + _chunked_product(tp - tau * eye, b, symmetric)
    return symmetrize(beta * prod + gamma * tp)

  def accept(x, x_new, m_new, err, active):
    """The step's ``x`` and ``M`` where it lowered the residual (at most
    GROWTH_GUARD times higher), and which matrices go on."""
    err_new = residual(m_new)
    ok = active & jnp.isfinite(err_new) & (err_new < GROWTH_GUARD * err)
    keep = ok[..., None, None]
    x = jnp.where(keep, x_new, x)
    err = jnp.where(ok, err_new, err)
    return x, keep, err, ok & (err_new > tol)

  def careful_body(carry, t):
    x, b, beta, gamma, err, active = carry
    m = b * beta.astype(dt) + gamma.astype(dt) * eye
    t_k, tau = factor(m, t)
    m_new = update(b, beta.astype(dt), gamma.astype(dt), t_k, tau.astype(dt))
    x, keep, err, active = accept(x, herm(x, t_k), m_new, err, active)
    b = jnp.where(keep, m_new, b)
    beta = jnp.where(keep, 1, beta)
    gamma = jnp.where(keep, 0, gamma)
    return (x, b, beta, gamma, err, active), None

  def plain_body(carry, t):
    x, m, err, active = carry
    t_k, _ = factor(m, t)
    m_new = symmetrize(herm(power(t_k), m))
    x, keep, err, active = accept(x, herm(x, t_k), m_new, err, active)
    return (x, jnp.where(keep, m_new, m), err, active), None

  err = residual(b * beta.astype(dt) + gamma.astype(dt) * eye)
  active = pos[..., 0, 0] & (err > tol)
  # The careful update only where it pays (see update): in the first
  # CAREFUL_STEPS steps; the later ones take the plain product, as fast as
  # before it.
  first = min(CAREFUL_STEPS, steps - 1)
  carry = (x, b, beta, gamma, err, active)
  if first:
    carry, _ = jax.lax.scan(careful_body, carry, jnp.arange(first))
  x, b, beta, gamma, err, active = carry
  m = b * beta.astype(dt) + gamma.astype(dt) * eye
  if steps - 1 > first:
    (x, m, err, active), _ = jax.lax.scan(
        plain_body, (x, m, err, active), jnp.arange(first, steps - 1)
    )
  # The last step needs no new M.
  x = jnp.where(
      active[..., None, None], herm(x, factor(m, steps - 1)[0]), x
  )
  return symmetrize(x)


def _chunked_product(u, v, symmetric):
  """``u v`` for Hermitian ``v`` and a Hermitian result, the inner
  dimension in :data:`INNER_CHUNKS` chunks whose products are summed
  pairwise.

  A float32 matmul that accumulates over the inner dimension in sequence
  (XLA's CPU dot) has a rounding error growing with its length; in
  chunks, most of it is summed in a tree. The FLOPs are those of the one
  product (:func:`ortho_optax.engines.symmetric.product_flops` is linear
  in the inner dimension), each chunk's product formed as one triangle of
  blocks when ``symmetric`` (the chunks' products are not Hermitian, but
  mirroring a triangle is linear, so their mirrored sum is the Hermitian
  sum's). At 32 x 32 (log-uniform spectrum, condition number 1e8,
  ``eps=1e-6``) the coupled iterations' largest error falls from 1.1e-3
  to 7e-4.
  """
  n = u.shape[-1]
  k = max(min(INNER_CHUNKS, n), 1)
  base, extra = divmod(n, k)
  bounds = np.cumsum([0] + [base + (i < extra) for i in range(k)])
  parts = [
      # u[:, a:b] v[a:b, :] = u[:, a:b] (v[:, a:b])^H for Hermitian v.
      _hermitian(u[..., :, a:b], v[..., :, a:b], symmetric)
      for a, b in zip(bounds[:-1], bounds[1:])
  ]
  while len(parts) > 1:
    parts = [
        parts[i] + parts[i + 1] if i + 1 < len(parts) else parts[i]
        for i in range(0, len(parts), 2)
    ]
  return parts[0]


def _split_scalar(alpha, p):
  """The power of two nearest ``(1 + (1 + alpha)^p) / 2`` (the middle of
  ``t^p``'s range ``[1, (1 + alpha)^p]``), exact (``ldexp``); ``alpha`` a
  Python float or an array."""
  mid = (1 + (1 + alpha) ** p) / 2
  if isinstance(mid, float):
    return jnp.asarray(2.0 ** round(math.log2(mid)))
  k = jnp.round(jnp.log2(mid)).astype(jnp.int32)
  return jnp.ldexp(jnp.ones_like(mid), k)


def inverse_root_flops(
    shape: Sequence[int],
    method: str = "eigh",
    *,
    p: int = 4,
    eps: float = DEFAULT_EPS,
    steps: int | None = None,
    bound: str = "power",
    power_iterations: int = DEFAULT_POWER_ITERATIONS,
    sketch_size: int = _prism.DEFAULT_SKETCH_SIZE,
    symmetric: bool = True,
    dtype=jnp.float32,
    **unused_options,
) -> int:
  r"""Matmul FLOPs of ``inverse_root(a, p, method=method, ...)``.

  With ``H = product_flops(n, n, symmetric)`` the cost of one Hermitian
  ``n x n`` product (:func:`ortho_optax.engines.symmetric.product_flops`:
  ``2 n^3``, or ``(k + 1) / (2 k)`` of it in ``k`` row blocks from 512
  rows) and ``B`` the batch size:

  * ``"eigh"``: ``B H`` for :math:`(U D) U^H` (the eigendecomposition is
    not a matmul and is not counted);
  * ``"newton"``: ``B [(power_iterations + 1) 2 n^2 + (steps - 1) (P + 2)
    H + H]``: the power iteration, then per step ``P`` products for
    :math:`T^p` (binary powering: 2 for ``p = 4``), one for
    :math:`T^p M` and one for :math:`X T`, the last step :math:`X T` only;
  * ``"prism"``: ``"newton"``'s plus ``B steps (p + 1) 2 n^2 s`` for the
    sketches :math:`R^i S^T`.

  Complex inputs cost four times as much. These equal the ``dot_general``
  FLOPs counted from the traced program (:func:`count_matmul_flops`).

  Args:
    shape: the input's shape ``(..., n, n)``.
    method: as in :func:`inverse_root`.
    p: the root's order.
    eps: as in :func:`inverse_root` (sets the default ``steps``).
    steps: as in :func:`inverse_root`.
    bound: as in :func:`inverse_root`.
    power_iterations: as in :func:`inverse_root`.
    sketch_size: as in :func:`inverse_root`.
    symmetric: as in :func:`inverse_root`.
    dtype: the input's dtype.
    **unused_options: other options of :func:`inverse_root` (``tol``,
      ``seed``), which do not change the cost.

  Returns:
    The FLOP count, a Python int.

  Examples:
    >>> from ortho_optax.engines.matrix_roots import inverse_root_flops
    >>> inverse_root_flops((64, 64), "newton", steps=20)
    41197568
  """
  _checks.check_choice(method, "method", METHODS)
  shape = _checks.check_shape(shape)
  if len(shape) < 2 or shape[-1] != shape[-2]:
    raise ValueError(f"`shape` must be (..., n, n), got {tuple(shape)}.")
  p = check_power(p)
  _checks.check_choice(bound, "bound", BOUNDS)
  dtype = _checks.check_dtype(dtype)
  _checks.check_number(eps, "eps", low=0.0)
  steps = _checks.check_int(steps, "steps", low=1, optional=True)
  power_iterations = _checks.check_int(
      power_iterations, "power_iterations", low=0
  )
  sketch_size = _checks.check_int(sketch_size, "sketch_size", low=1)
  symmetric = _checks.check_bool(symmetric, "symmetric")
  unknown = sorted(set(unused_options) - {"tol", "seed"})
  if unknown:
    raise TypeError(
        f"`unused_options`: unknown option(s) {unknown} of inverse_root;"
        " the others are tol and seed."
    )
  batch = math.prod(shape[:-2])
  n = shape[-1]
  herm = _symmetric.product_flops(n, n, symmetric)
  scale = 4 if jnp.issubdtype(dtype, jnp.complexfloating) else 1
  if method == "eigh" or n == 0:
    return scale * batch * herm
  if steps is None:
    steps = default_steps(p, eps, method)
  flops = ((steps - 1) * (_power_products(p) + 2) + 1) * herm
  if bound == "power" or eps > 0:
    flops += (power_iterations + 1) * 2 * n * n
  if method == "prism":
    flops += steps * _prism.sketch_flops(n, p + 1, sketch_size)
  return scale * batch * flops


def bjorck(u: jax.Array, steps: int = 1) -> jax.Array:
  r"""Björck orthonormalization: ``steps`` times :math:`U \leftarrow
  U (3 I - U^H U) / 2`.

  A first-order polar step: it restores orthonormal columns to a nearly
  orthonormal ``U`` (a dequantized eigenvector matrix), the error
  :math:`\|U^H U - I\|` falling quadratically while it is below 1. In at
  least float32.

  Args:
    u: array of shape ``(..., m, n)`` with ``m >= n``, close to having
      orthonormal columns.
    steps: the number of steps, an int >= 0.

  Returns:
    ``u`` after the steps, in at least float32.

  References:
    Björck and Bowie, `An iterative algorithm for computing the best
    estimate of an orthogonal matrix <https://doi.org/10.1137/0708036>`_,
    SIAM J. Numer. Anal., 1971

    Wang et al., `4-bit Shampoo for Memory-Efficient Network Training
    <https://arxiv.org/abs/2405.18144>`_, NeurIPS 2024
  """
  u = _checks.check_matrix(u, "u")
  steps = _checks.check_int(steps, "steps", low=0)
  u = u.astype(_normalization.working_dtype(u.dtype))
  for _ in range(steps):
    g = jnp.swapaxes(u, -1, -2).conj() @ u
    u = 1.5 * u - 0.5 * (u @ g)
  return u
