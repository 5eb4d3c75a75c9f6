"""One entry point over the orthogonalization engines, and their FLOP model."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from ortho_optax import checks as _checks
from ortho_optax.engines import auon as _auon
from ortho_optax.engines import coefficients as _coefficients
from ortho_optax.engines import gram as _gram
from ortho_optax.engines import newton_schulz as _newton_schulz
from ortho_optax.engines import normalization as _normalization
from ortho_optax.engines import polar as _polar
from ortho_optax.engines import prism as _prism
from ortho_optax.engines import symmetric as _symmetric

METHODS = (
    "auto", "newton_schulz", "gram_newton_schulz", "polar_svd", "auon",
    "prism",
)

_ENGINES = {
    "newton_schulz": _newton_schulz.newton_schulz,
    "gram_newton_schulz": _gram.gram_newton_schulz,
    "polar_svd": _polar.polar_svd,
    "auon": _auon.auon,
    "prism": _prism.prism,
}

# Half-precision Gram iterations amplify round-off in R (Gram-NS README and
# the spec's measurements: unstable in bfloat16), so "auto" only picks the
# Gram form when the matmuls run in at least float32.
_GRAM_SAFE_DTYPES = (jnp.float32, jnp.float64, jnp.complex64, jnp.complex128)

# "auto" picks the form with fewer FLOPs, on every backend: where it was
# measured, fewer FLOPs was also less time, on the CPU and on the GPU.
# * 2-core x86 CPU, float32 (benchmarks/results/orthogonalize_cpu_f32.md):
#   the Gram form took 0.62x the standard form's time at 1024 x 4096 and
#   0.73x at 512 x 2048, where it is chosen, and 1.2x at 512 x 512, where
#   it is not.
# * NVIDIA H200, float32 (benchmarks/results/orthogonalize_gpu_f32.md):
#   0.81x at 1024 x 4096 (chosen), 1.19x at 4096 x 4096 (not chosen).
# * TPU: not measured; the same FLOP rule applies.


def orthogonalize(x: jax.Array, method: str = "auto", **options) -> jax.Array:
  r"""Maps ``x`` to (an approximation of) its polar factor :math:`U V^H`.

  ``method="auto"`` runs the Polar Express polynomial (5 steps, Schatten-4
  normalization with safety factor 1.02, unless ``options`` say otherwise;
  see :func:`auto_defaults`)
  through whichever of :func:`newton_schulz` and :func:`gram_newton_schulz`
  costs fewer FLOPs for the shape (see :func:`orthogonalize_flops`): both
  apply the same polynomial, so the choice changes the cost, not the
  result. With ``T`` steps on a wide ``m x n`` matrix (``alpha = n / m``)
  the standard form costs ``T (4 alpha + 2) m^3`` and the Gram form about
  ``(8 alpha + 28) m^3`` for five steps with one restart, so the Gram form
  is chosen from ``alpha`` of about 1.5 up (0.67x the FLOPs at
  ``alpha = 4``). It is never chosen for matmuls in bfloat16/float16, where
  it is unstable. In both forms every product that is Hermitian by
  construction is computed as one triangle of row blocks for matrices of at
  least 512 rows (``symmetric=True``, :mod:`ortho_optax.engines.symmetric`),
  which the FLOP model counts as well; by default (``symmetric=None``) only
  on the backends where that measured faster (the CPU), plain products
  elsewhere.

  Every engine first multiplies each matrix by the power of two that brings
  its largest magnitude near 1, in at least float32, so that
  ``orthogonalize(c * x)`` is ``orthogonalize(x)`` for every ``c`` from the
  smallest normal number to ``finfo.max / max|x|`` (exactly so for powers
  of two), nothing overflows or underflows, and ``eps`` is relative to
  ``max|x|``. An all-zero matrix maps to zeros.

  Args:
    x: array of shape ``(..., m, n)``; leading axes are batch axes.
    method: ``"auto"``, ``"newton_schulz"``, ``"gram_newton_schulz"``,
      ``"polar_svd"``, ``"auon"`` or ``"prism"`` (PRISM's per-step fitted
      quintic, :func:`ortho_optax.engines.prism.prism`).
    **options: keyword arguments of the chosen engine (for ``"auto"``: those
      of :func:`newton_schulz`, plus ``restarts`` for the Gram form).

  Returns:
    An array with the shape and dtype of ``x``.
  """
  _checks.check_choice(method, "method", METHODS)
  if method == "auto":
    x = _checks.check_matrix(x)
    options = auto_defaults(options)
    # The backend's default, resolved once: the FLOP comparison below and
    # the engine then agree on it.
    options["symmetric"] = _symmetric.resolve_symmetric(
        options.get("symmetric")
    )
    method = select_method(x.shape, x.dtype, **options)
    if method == "newton_schulz":
      options = {k: v for k, v in options.items() if k != "restarts"}
  return _ENGINES[method](x, **options)


def auto_defaults(options: dict) -> dict:
  r"""Fills in the defaults of ``method="auto"``.

  Polar Express coefficients with the Schatten-4 normalization
  :math:`\|X X^H\|_F^{1/2}`: an upper bound of :math:`\sigma_{max}` (so as
  safe as Frobenius) that is tighter, and free, because the first step's
  Gram matrix is reused. It is not applied to presets designed for another
  normalization (``"turbo"`` keeps AOL).
  """
  options = dict(options)
  coeffs = options.setdefault("coeffs", "polar_express")
  table = _coefficients.get_table(coeffs)
  if options.get("normalization") is None:
    own = table.normalization if table is not None else "frobenius"
    options["normalization"] = "schatten4" if own == "frobenius" else own
  return options


def select_method(
    shape: Sequence[int],
    dtype=jnp.float32,
    *,
    backend: str | None = None,
    **options,
) -> str:
  """The engine ``orthogonalize(method="auto")`` uses for this shape.

  The one with fewer FLOPs (:func:`orthogonalize_flops`, with the products
  that ``symmetric`` gives on ``backend``: ``None`` is
  :func:`jax.default_backend`), never the Gram form for half-precision
  matmuls.
  """
  options = dict(options)
  options["symmetric"] = _symmetric.resolve_symmetric(
      options.get("symmetric"), backend
  )
  shape = _checks.check_shape(shape)
  dtype = _checks.check_dtype(dtype)
  if len(shape) < 2:
    raise ValueError(
        f"`shape` must have rank >= 2, got {tuple(shape)}."
    )
  cdt = _checks.check_compute_dtype(options.get("compute_dtype"), dtype)
  ns_opts = {k: v for k, v in options.items() if k != "restarts"}
  ns = orthogonalize_flops(shape, "newton_schulz", **ns_opts)
  if cdt not in [jnp.dtype(d) for d in _GRAM_SAFE_DTYPES]:
    return "newton_schulz"
  gram = orthogonalize_flops(shape, "gram_newton_schulz", **options)
  return "gram_newton_schulz" if gram < ns else "newton_schulz"


def orthogonalize_flops(
    shape: Sequence[int],
    method: str = "auto",
    *,
    dtype=jnp.float32,
    backend: str | None = None,
    **options,
) -> int:
  r"""Matmul FLOPs of ``orthogonalize(x, method, **options)``.

  With ``m <= n`` the sides after orientation and ``B`` the batch size:

  * ``newton_schulz``: ``B T (4 m^2 n + 2 m^3)`` (Gram, square, product with
    X per step), plus ``10 * 4 * 2 m^2`` for the ``"spectral"`` power
    iteration;
  * ``gram_newton_schulz``: ``B [2 m^2 n (1 + 2 restarts + 1 ...)]``: one
    ``X X^H`` and one ``Q X`` per segment, and ``4 L - 3`` products of
    ``m x m`` matrices (``2 m^3`` each) for a segment of ``L`` steps (the
    restarts of :func:`ortho_optax.engines.gram.default_restarts` by
    default);
  * ``auon``: ``hybrid_steps`` standard steps;
  * ``polar_svd``: the ``U V^H`` product, ``2 m^2 n`` (the SVD is not a
    matmul and is not counted).

  With ``symmetric=True`` (the default on the CPU, see ``backend``) every
  Hermitian product (``X X^H``,
  ``A^2``, the Gram form's ``m x m`` products, the normalizations' Gram
  matrix) of an ``m``-row matrix split into ``k`` row blocks costs
  ``(k + 1) / (2 k)`` of the above (its blocks on and above the diagonal;
  :func:`ortho_optax.engines.symmetric.product_flops`, ``k = 1`` below 512
  rows); the products with ``X`` keep their cost. At ``1024 x 4096`` (Gram
  form, ``k = 4``) that is 0.725x, at ``2048 x 2048`` (``k = 8``) 0.708x.

  Complex inputs cost four times as much. These numbers equal the
  ``dot_general`` FLOPs counted from the traced program
  (:func:`count_matmul_flops`), which the tests check.

  Args:
    shape: the input's shape ``(..., m, n)``.
    method: as in :func:`orthogonalize`.
    dtype: the input's dtype, which ``"auto"`` takes into account (it never
      picks the Gram form for half-precision matmuls).
    backend: the platform whose default ``symmetric=None`` means
      (:func:`ortho_optax.engines.symmetric.default_symmetric`: blocked
      products on the CPU, plain ones on GPU and TPU); ``None``:
      :func:`jax.default_backend`, as the engines read it when traced.
    **options: the engine's options (``coeffs``, ``steps``, ``restarts``,
      ``normalization``, ``hybrid_steps``, ...); others are ignored.

  Returns:
    The FLOP count, a Python int.
  """
  _checks.check_choice(method, "method", METHODS)
  shape = _checks.check_shape(shape)
  dtype = _checks.check_dtype(dtype)
  if len(shape) < 2:
    raise ValueError(f"`shape` must have rank >= 2, got {shape}.")
  flops = _real_flops(shape, method, dtype, backend, options)
  # A complex product is four real ones (count_matmul_flops counts so).
  return 4 * flops if jnp.issubdtype(dtype, jnp.complexfloating) else flops


def _real_flops(shape, method, dtype, backend, options) -> int:
  """:func:`orthogonalize_flops` of the real arithmetic."""
  options = dict(options)
  options["symmetric"] = _symmetric.resolve_symmetric(
      options.get("symmetric"), backend
  )
  if method == "auto":
    options = auto_defaults(options)
    method = select_method(shape, dtype, **options)
  batch = math.prod(shape[:-2])
  m, n = sorted(shape[-2:])
  symmetric = options["symmetric"]

  def herm(k):  # one m x m Hermitian product with inner dimension k
    return _symmetric.product_flops(m, k, symmetric)

  if method == "polar_svd":
    return batch * 2 * m * m * n
  step = herm(n) + herm(m) + 2 * m * m * n  # X X^H, A^2, B X
  if method == "auon":
    return batch * options.get("hybrid_steps", 0) * step
  if method == "prism":
    normalization = options.get("normalization") or "schatten4"
    extra = 0
    if normalization == "spectral":
      extra = _normalization.spectral_estimate_flops(m)
    steps = options.get("steps") or _prism.DEFAULT_STEPS
    sketch = _prism.sketch_flops(
        m, _prism.POLAR_RESIDUAL_DEGREE,
        options.get("sketch_size", _prism.DEFAULT_SKETCH_SIZE),
    )
    return batch * (steps * (step + sketch) + extra)
  rows, _ = _coefficients.resolve_coefficients(
      options.get("coeffs", "polar_express"), shape, options.get("steps")
  )
  steps = len(rows)
  table = _coefficients.get_table(options.get("coeffs", "polar_express"))
  normalization = options.get("normalization") or (
      table.normalization if table is not None else "frobenius"
  )
  extra = 0
  if normalization == "spectral":
    extra = _normalization.spectral_estimate_flops(m)
  if method == "newton_schulz":
    return batch * (steps * step + extra)
  cdt = _checks.check_compute_dtype(options.get("compute_dtype"), dtype)
  restarts = _gram.check_restarts(options.get("restarts"), steps, cdt)
  bounds = (0,) + restarts + (steps,)
  lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
  segments = len(lengths)
  # One X X^H and one Q X per segment; 4 L - 3 Hermitian m x m products for
  # a segment of L steps.
  mmn = segments * (herm(n) + 2 * m * m * n)
  mmm = sum(4 * length - 3 for length in lengths) * herm(m)
  return batch * (mmn + mmm + extra)
