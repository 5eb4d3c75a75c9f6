r"""PRISM: Newton-Schulz-type steps whose coefficient is fitted each step.

A Newton-Schulz-type iteration drives a residual :math:`R` to zero by a
polynomial step whose coefficients are usually fixed in advance (Newton's,
or a table such as Polar Express's, designed for a worst-case spectrum).
PRISM (Yang, Wang, Balabanov, Erichson and Mahoney, arXiv 2601.22137)
keeps the step's form but refits one coefficient :math:`\alpha` at every
step to the spectrum at hand: the residual after the step is a polynomial
:math:`h(R; \alpha) = \sum_j \alpha^j h_j(R)`, and :math:`\alpha` minimizes
its sketched squared Frobenius norm

.. math::
  L(\alpha) = \|h(R; \alpha)\, S^T\|_F^2
  = \sum_{j,k} \alpha^{j+k} \langle h_j(R) S^T, h_k(R) S^T \rangle

over an interval :math:`[\alpha_{lo}, \alpha_{hi}]` that contains the
classical coefficient. :math:`S^T` is an ``n x s`` Gaussian sketch, so the
fit costs the ``deg h`` products :math:`R^i S^T` (``2 n^2 s`` FLOPs each)
and no spectral bound or singular-value estimate.

Two iterations use it here:

* the polar factor (:func:`prism`, ``orthogonalize(method="prism")``):
  :math:`X \leftarrow (I + R/2 + \alpha R^2) X` with :math:`R = I - X X^H`,
  :math:`\alpha \in [3/8, 29/20]` (the paper's :math:`g_2`; ``3/8`` is the
  Taylor coefficient of :math:`(1 - r)^{-1/2}`). In terms of :math:`A = X
  X^H` this is the quintic Newton-Schulz step with coefficients
  :math:`(3/2 + \alpha, -(1/2 + 2\alpha), \alpha)`, so a step costs what a
  Polar Express step costs, plus the sketch.
* the coupled Newton iteration for :math:`A^{-1/p}`
  (:func:`ortho_optax.engines.matrix_roots.inverse_root`, ``method=
  "prism"``): :math:`M \leftarrow (I + \alpha R)^p M`, :math:`R = I - M`,
  :math:`\alpha \in [1/p, 1]` (``1/p`` is Newton's).

What the paper leaves open and is chosen here: the sketch is ``s = 8``
Gaussian columns (``sketch_size``), drawn afresh each step from a key
derived from ``seed`` (deterministic, no global state); the quartic (polar)
or degree-``2p`` (root) loss is minimized on a grid of 33 points followed
by two safeguarded Newton steps on :math:`L'`, all elementwise (no matmul).

References:
  Yang, Wang, Balabanov, Erichson and Mahoney, `PRISM: Distribution-free
  Adaptive Computation of Matrix Functions for Accelerating Neural Network
  Training <https://arxiv.org/abs/2601.22137>`_, 2026
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ortho_optax import checks as _checks
from ortho_optax.engines import newton_schulz as _newton_schulz
from ortho_optax.engines import normalization as _normalization

# Columns of the Gaussian sketch S^T.
DEFAULT_SKETCH_SIZE = 8
# The polar step's coefficient range (the paper's g_2 = I + R/2 + alpha R^2).
POLAR_ALPHA_RANGE = (3.0 / 8.0, 29.0 / 20.0)
# Grid points of the coefficient fit, then safeguarded Newton steps.
_GRID = 33
_NEWTON_STEPS = 2
# Degree of the polar step's residual h(r) in r.
POLAR_RESIDUAL_DEGREE = 5
DEFAULT_STEPS = 5


def sketch(seed: int, step, n: int, size: int, dtype) -> jax.Array:
  """The ``(n, size)`` Gaussian sketch :math:`S^T` of step ``step``."""
  key = jax.random.fold_in(jax.random.key(seed), step)
  real = jnp.finfo(dtype).dtype
  return jax.random.normal(key, (n, size), dtype=real).astype(dtype)


def residual_powers(
    r: jax.Array, s: jax.Array, degree: int, precision=None
) -> list:
  """``[S^T, R S^T, ..., R^degree S^T]``, each ``(..., n, size)``.

  ``degree`` products of ``R`` with an ``n x size`` matrix, in ``r``'s
  dtype (``2 n^2 size`` FLOPs each) and ``precision``.
  """
  z = [jnp.broadcast_to(s, r.shape[:-2] + s.shape)]
  for _ in range(degree):
    z.append(jnp.matmul(r, z[-1], precision=precision))
  return z


def fit_alpha(h: list, low: float, high: float) -> jax.Array:
  r"""The :math:`\alpha \in [low, high]` that minimizes
  :math:`\|\sum_j \alpha^j H_j\|_F^2`, per matrix.

  Args:
    h: the sketched pieces :math:`H_j = h_j(R) S^T`, each ``(..., n, s)``.
    low: the interval's lower end.
    high: the interval's upper end.

  Returns:
    :math:`\alpha` of shape ``(...)``, real, in at least float32.
  """
  k = len(h)
  real = jnp.finfo(_normalization.working_dtype(h[0].dtype)).dtype

  def inner(a, b):  # Re <a, b>, elementwise (not a matmul)
    return jnp.sum(jnp.real(jnp.conj(a) * b), axis=(-2, -1)).astype(real)

  gram = {(i, j): inner(h[i], h[j]) for i in range(k) for j in range(i, k)}
  degree = 2 * (k - 1)
  coeffs: list = [0.0] * (degree + 1)
  for (i, j), g in gram.items():
    coeffs[i + j] = coeffs[i + j] + (g if i == j else 2 * g)
  # Scale-free: divide by the largest coefficient (the loss can be ~1e-30
  # near convergence, its coefficients far apart).
  big = jnp.max(jnp.abs(jnp.stack(coeffs, axis=-1)), axis=-1)
  big = jnp.where(big > 0, big, 1)
  coeffs = [c / big for c in coeffs]

  def poly(cs, a):  # Horner, ascending coefficients
    out = jnp.zeros_like(a) + cs[-1][..., None]
    for c in cs[-2::-1]:
      out = out * a + c[..., None]
    return out

  d1 = [(i + 1) * c for i, c in enumerate(coeffs[1:])]
  d2 = [(i + 1) * c for i, c in enumerate(d1[1:])]
  grid = jnp.linspace(low, high, _GRID, dtype=real)
  grid = jnp.broadcast_to(grid, coeffs[0].shape + (_GRID,))
  values = poly(coeffs, grid)
  best = jnp.argmin(values, axis=-1)
  alpha = jnp.take_along_axis(grid, best[..., None], axis=-1)
  value = jnp.take_along_axis(values, best[..., None], axis=-1)
  for _ in range(_NEWTON_STEPS):
    g1, g2 = poly(d1, alpha), poly(d2, alpha)
    step = jnp.where(g2 > 0, g1 / jnp.where(g2 > 0, g2, 1), 0)
    cand = jnp.clip(alpha - step, low, high)
    cval = poly(coeffs, cand)
    better = cval < value
    alpha = jnp.where(better, cand, alpha)
    value = jnp.where(better, cval, value)
  return alpha[..., 0]


def polar_pieces(r: jax.Array, s: jax.Array) -> list:
  r"""Sketched pieces of the polar step's residual, :math:`h = h_0 +
  \alpha h_1 + \alpha^2 h_2`.

  With :math:`g = 1 + r/2 + \alpha r^2` and :math:`\sigma^2 = 1 - r`, the
  new residual is :math:`1 - (1 - r) g^2`:
  :math:`h_0 = (3 r^2 + r^3) / 4`, :math:`h_1 = -2 r^2 + r^3 + r^4`,
  :math:`h_2 = r^5 - r^4`.
  """
  z = residual_powers(r, s, POLAR_RESIDUAL_DEGREE)
  return [
      0.75 * z[2] + 0.25 * z[3],
      -2.0 * z[2] + z[3] + z[4],
      z[5] - z[4],
  ]


def check_sketch_size(sketch_size) -> int:
  return _checks.check_int(sketch_size, "sketch_size", low=1)


def check_seed(seed) -> int:
  return _checks.check_int(seed, "seed", low=0)


def prism(
    x: jax.Array,
    *,
    steps: int = DEFAULT_STEPS,
    normalization: str = "schatten4",
    eps: float = 1e-7,
    compute_dtype=None,
    symmetric: bool = True,
    sketch_size: int = DEFAULT_SKETCH_SIZE,
    seed: int = 0,
) -> jax.Array:
  r"""The polar factor :math:`U V^H` by PRISM's fitted quintic steps.

  With :math:`X_0 = M / \|M\|` and per step

  .. math::
    A = X X^H,\quad R = I - A,\quad
    X \leftarrow (I + R/2 + \alpha R^2)\, X
    = (3/2 + \alpha) X - (1/2 + 2\alpha) A X + \alpha A^2 X,

  :math:`\alpha \in [3/8, 29/20]` minimizing the sketched Frobenius norm of
  the next residual (see the module docstring). The step applies the odd
  quintic :math:`p(\sigma) = \sigma (1 + r/2 + \alpha r^2)`, :math:`r = 1 -
  \sigma^2`, to every singular value; its coefficients adapt to where the
  singular values are, instead of being fixed for a worst case. It runs on
  the wide orientation, and costs a Newton-Schulz step
  (:func:`ortho_optax.engines.newton_schulz.quintic_step`) plus
  ``5 * 2 m^2 s`` FLOPs for the sketch.

  Args:
    x: array of shape ``(..., m, n)``; leading axes are batch axes.
    steps: the number of steps.
    normalization: as in :func:`ortho_optax.newton_schulz`;
      ``"schatten4"`` (the default) is the tightest free bound.
    eps: added to the norm, relative to ``max |x|``.
    compute_dtype: dtype of the step's matmuls (the sketch and the fit run
      in at least float32); ``None``: the input's.
    symmetric: Hermitian products as one triangle of blocks
      (:mod:`ortho_optax.engines.symmetric`).
    sketch_size: columns of the Gaussian sketch.
    seed: the sketch's seed; the result is a deterministic function of
      ``x`` and ``seed``.

  Returns:
    An array with the shape and dtype of ``x``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from ortho_optax.engines.prism import prism
    >>> g = jax.random.normal(jax.random.key(0), (64, 128))
    >>> s = jnp.linalg.svd(prism(g, steps=8), compute_uv=False)
    >>> bool(jnp.abs(s - 1).max() < 1e-3)
    True

  References:
    Yang, Wang, Balabanov, Erichson and Mahoney, `PRISM: Distribution-free
    Adaptive Computation of Matrix Functions for Accelerating Neural
    Network Training <https://arxiv.org/abs/2601.22137>`_, 2026
  """
  x = _checks.check_matrix(x)
  steps = _checks.check_int(steps, "steps", low=1)
  _checks.check_choice(
      normalization, "normalization", _normalization.NORMALIZATIONS
  )
  _checks.check_nonnegative(eps, "eps")
  cdt = _checks.check_compute_dtype(compute_dtype, x.dtype)
  symmetric = _newton_schulz.check_symmetric(symmetric)
  sketch_size = check_sketch_size(sketch_size)
  seed = check_seed(seed)
  if x.size == 0:
    return x
  transpose = x.shape[-2] > x.shape[-1]
  if transpose:
    x = jnp.swapaxes(x, -1, -2)
  out_dtype = x.dtype
  m = x.shape[-2]
  x0, a0 = _normalization.normalize(
      x, normalization, eps=eps, input_scale=1.0, compute_dtype=cdt,
      symmetric=symmetric,
  )
  wd = _normalization.working_dtype(cdt)
  eye = jnp.broadcast_to(jnp.eye(m, dtype=wd), x.shape[:-1] + (m,))
  low, high = POLAR_ALPHA_RANGE

  def step(x, a, t):
    r = eye - a.astype(wd)
    s = sketch(seed, t, m, sketch_size, wd)
    alpha = fit_alpha(polar_pieces(r, s), low, high)[..., None, None]
    row = (1.5 + alpha, -(0.5 + 2.0 * alpha), alpha)
    return _newton_schulz.quintic_step(
        x, a, row, cdt, symmetric=symmetric
    ).astype(cdt)

  if a0 is None:
    a0 = _normalization.gram(x0, cdt, symmetric=symmetric)
  y = step(x0, a0, 0)
  if steps > 1:

    def body(y, t):
      a = _normalization.gram(y, cdt, symmetric=symmetric)
      return step(y, a, t), None

    y, _ = jax.lax.scan(body, y, jnp.arange(1, steps))
  if transpose:
    y = jnp.swapaxes(y, -1, -2)
  return y.astype(out_dtype)


def sketch_flops(n: int, degree: int, sketch_size: int) -> int:
  """FLOPs of ``residual_powers`` for one ``n x n`` residual."""
  return degree * 2 * n * n * sketch_size
