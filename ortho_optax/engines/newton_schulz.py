r"""The quintic Newton-Schulz iteration for the polar factor."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ortho_optax import checks as _checks
from ortho_optax.engines import coefficients as _coefficients
from ortho_optax.engines import normalization as _normalization
from ortho_optax.engines import symmetric as _symmetric
from ortho_optax.engines.normalization import matmul


def newton_schulz(
    x: jax.Array,
    *,
    coeffs="polar_express",
    steps: int | None = None,
    normalization: str | None = None,
    eps: float = 1e-7,
    compute_dtype=None,
    symmetric: bool | None = None,
) -> jax.Array:
  r"""Approximates the polar factor :math:`U V^H` of ``x`` by Newton-Schulz.

  With :math:`X_0 = M / (s\,\|M\|)` (``s`` the preset's safety factor) and
  per-step coefficients :math:`(a_t, b_t, c_t)`,

  .. math::
    A_t = X_t X_t^H, \qquad
    X_{t+1} = a_t X_t + (b_t A_t + c_t A_t^2) X_t ,

  which applies the odd quintic :math:`p_t(\sigma) = a_t\sigma + b_t\sigma^3
  + c_t\sigma^5` to every singular value and leaves the singular vectors
  alone. The iteration runs on the wide orientation (the input is
  transposed when ``m > n``) so that :math:`A_t` is the small Gram matrix.

  Args:
    x: array of shape ``(..., m, n)``; leading axes are batch axes.
    coeffs: a preset name (``"muon"``/``"standard"``, ``"dion"``,
      ``"polar_express"``, ``"polar_express_paper"``, ``"turbo"``,
      ``"root"``) or an array of shape ``(3,)`` or ``(k, 3)``. Rows are used
      in order and the last row is repeated when ``steps > k``.
    steps: number of steps; defaults to the table's length (5 for a single
      row).
    normalization: ``"frobenius"``, ``"spectral"`` (a power-iteration
      estimate of :math:`\sigma_{max}`, not an SVD), ``"aol"`` (Turbo-Muon's
      row rescaling, fused into the first step) or ``"schatten4"``
      (:math:`\|X X^H\|_F^{1/2}`, fused into the first step). ``None`` uses
      the preset's own (``"aol"`` for ``"turbo"``, else ``"frobenius"``).
    eps: added to the norm (or used as its floor), relative to ``max |x|``:
      the input is first divided by a power of two near its largest
      magnitude, so the result does not depend on its scale anywhere in
      the dtype's finite range (see :mod:`ortho_optax._normalization`). A
      zero matrix maps to zeros, for any ``eps >= 0``.
    compute_dtype: dtype of the matmuls (e.g. ``jnp.bfloat16``); the
      normalization always runs in at least float32. ``None``: the input's.
    symmetric: compute the Hermitian products :math:`A_t` and
      :math:`A_t^2` as one triangle of row blocks for matrices of at least
      512 rows (:mod:`ortho_optax.engines.symmetric`; 5/8 of their FLOPs
      at 1024 rows); the result equals the plain products' to rounding.
      ``False``: plain products. ``None``: on where a benchmark measured
      the blocks faster (the CPU), plain products on other backends
      (:data:`ortho_optax.engines.symmetric.SYMMETRIC_DEFAULTS`).

  Returns:
    An array with the shape and dtype of ``x``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import ortho_optax
    >>> g = jax.random.normal(jax.random.key(0), (64, 128))
    >>> o = ortho_optax.newton_schulz(g)
    >>> s = jnp.linalg.svd(o, compute_uv=False)
    >>> bool(0.7 < s.min() and s.max() < 1.2)
    True

  References:
    Jordan et al., `Muon: An optimizer for hidden layers in neural networks
    <https://kellerjordan.github.io/posts/muon/>`_, 2024

    Amsel et al., `The Polar Express: Optimal Matrix Sign Methods and Their
    Application to the Muon Algorithm <https://arxiv.org/abs/2505.16932>`_,
    2025

    Boissin et al., `Turbo-Muon: Accelerating Orthogonality-Based
    Optimization with Pre-Conditioning <https://arxiv.org/abs/2512.04632>`_,
    2025

    Grishina et al., `Accelerating Newton-Schulz Iteration for Orthogonalization
    via Chebyshev-type Polynomials <https://arxiv.org/abs/2506.10935>`_, 2025
  """
  x, rows, input_scale, normalization, cdt = prepare(
      x, coeffs, steps, normalization, eps, compute_dtype
  )
  symmetric = check_symmetric(symmetric)
  if x.size == 0:  # An empty matrix is its own (empty) polar factor.
    return x
  transpose = x.shape[-2] > x.shape[-1]
  if transpose:
    x = jnp.swapaxes(x, -1, -2)
  out_dtype = x.dtype
  x0, a0 = _normalization.normalize(
      x,
      normalization,
      eps=eps,
      input_scale=input_scale,
      compute_dtype=cdt,
      symmetric=symmetric,
  )
  y = iterate(x0, rows, cdt, a0=a0, symmetric=symmetric)
  if transpose:
    y = jnp.swapaxes(y, -1, -2)
  return y.astype(out_dtype)


def prepare(x, coeffs, steps, normalization, eps, compute_dtype):
  """Validates the common engine arguments; returns the static plan."""
  x = _checks.check_matrix(x)
  table = _coefficients.get_table(coeffs)
  if normalization is None:
    normalization = table.normalization if table is not None else "frobenius"
  _checks.check_choice(
      normalization, "normalization", _normalization.NORMALIZATIONS
  )
  _checks.check_nonnegative(eps, "eps")
  rows, input_scale = _coefficients.resolve_coefficients(
      coeffs, x.shape, steps
  )
  cdt = _checks.check_compute_dtype(compute_dtype, x.dtype)
  return x, rows, input_scale, normalization, cdt


def check_symmetric(symmetric) -> bool:
  """``symmetric`` checked; ``None`` is the backend's default, read now
  (at trace time), see :func:`ortho_optax.engines.symmetric.default_symmetric`."""
  return _symmetric.resolve_symmetric(symmetric)


def quintic_step(x, a, row, compute_dtype, *, symmetric: bool = True):
  """``a_t X + (b_t A + c_t A^2) X`` given ``A = X X^H``.

  The matmuls run in ``compute_dtype``; the elementwise epilogues run in at
  least float32, so the coefficients are not rounded to a half-precision
  ``compute_dtype`` (bfloat16 would turn Muon's 3.4445 into 3.4375). The
  result is in that working dtype; the caller casts it back.
  """
  ca, cb, cc = row
  wd = _normalization.working_dtype(compute_dtype)
  # A is Hermitian, so A A = A A^H: one triangle of blocks.
  aa = _normalization.hermitian(
      a, a, compute_dtype, keep_accumulator=True, symmetric=symmetric,
      q_hermitian=True,
  )
  b = (cb * a.astype(wd) + cc * aa).astype(compute_dtype)
  return ca * x.astype(wd) + matmul(b, x, compute_dtype, keep_accumulator=True)


def iterate(x0, rows, compute_dtype, *, a0=None, symmetric: bool = True):
  """Runs the quintic steps on normalized wide ``x0``.

  The first step may reuse a Gram matrix ``a0`` formed by a fused
  normalization; the remaining steps run in a ``lax.scan`` over the rows,
  which keeps the program small and the peak memory at one step's worth.
  """
  if a0 is None:
    a0 = _normalization.gram(x0, compute_dtype, symmetric=symmetric)
  x = quintic_step(
      x0, a0, rows[0], compute_dtype, symmetric=symmetric
  ).astype(compute_dtype)
  rest = rows[1:]
  if not rest:
    return x
  # Coefficients in the (at least float32) epilogue dtype, not rounded to
  # a half-precision compute_dtype.
  real = jnp.finfo(_normalization.working_dtype(compute_dtype)).dtype
  table = jnp.asarray(np.asarray(rest), dtype=real)

  def body(x, row):
    a = _normalization.gram(x, compute_dtype, symmetric=symmetric)
    x = quintic_step(
        x, a, (row[0], row[1], row[2]), compute_dtype, symmetric=symmetric
    )
    return x.astype(compute_dtype), None

  x, _ = jax.lax.scan(body, x, table)
  return x
