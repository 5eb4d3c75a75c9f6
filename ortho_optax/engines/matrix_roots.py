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

import jax
import jax.numpy as jnp

from ortho_optax import checks as _checks
from ortho_optax.engines import lapack as _lapack
from ortho_optax.engines import normalization as _normalization

# The methods of :func:`inverse_root`.
METHODS = ("eigh",)

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
    eps: float = DEFAULT_EPS,
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
  return scaled @ jnp.swapaxes(eigenvectors, -1, -2).conj()


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
    eps: float = DEFAULT_EPS,
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

  Args:
    a: array of shape ``(..., n, n)``; leading axes are batch axes.
    p: the root's order, a positive int (4 for Shampoo's two-sided
      preconditioner of a matrix).
    method: ``"eigh"``.
    eps: regularization relative to the largest eigenvalue (distributed
      Shampoo's ``matrix_epsilon``).

  Returns:
    An array of the shape of ``a`` in at least float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ortho_optax.engines.matrix_roots import inverse_root
    >>> a = jnp.diag(jnp.array([16.0, 1.0]))
    >>> print(jnp.round(inverse_root(a, 4, eps=0.0), 4))
    [[0.5 0. ]
     [0.  1. ]]

  References:
    Gupta, Koren and Singer, `Shampoo: Preconditioned Stochastic Tensor
    Optimization <https://arxiv.org/abs/1802.09568>`_, 2018

    Anil et al., `Scalable Second Order Optimization for Deep Learning
    <https://arxiv.org/abs/2002.09018>`_, 2020
  """
  a = check_square(a)
  p = check_power(p)
  _checks.check_choice(method, "method", METHODS)
  _checks.check_number(eps, "eps", low=0.0)
  scaled, s = _unit_scale(a)
  lam, u = eigh(scaled)
  root = root_from_eigh(lam, u, p, eps)
  # (s a)^{-1/p} = s^{-1/p} a^{-1/p}, so a^{-1/p} = s^{1/p} (s a)^{-1/p}.
  return root * (s ** (1.0 / p)).astype(root.dtype)


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
