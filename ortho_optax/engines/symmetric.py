r"""Products that are Hermitian by construction, one triangle of blocks only.

Every matrix product of the Newton-Schulz engines but the last one of a step
is Hermitian: the Gram matrix :math:`A = X X^H`, its square, and in the Gram
form the products of polynomials in :math:`R = X X^H` (which commute, so
:math:`P Q = (P Q)^H`). For such a product :math:`C = P Q^H` with ``m``
rows, split the rows into ``k`` blocks :math:`P_1, \dots, P_k`; the block
:math:`C_{ij} = P_i Q_j^H` is the conjugate transpose of :math:`C_{ji}`, so
only the blocks on and above the diagonal are computed and the rest is
mirrored:
``k (k + 1) / 2`` of the ``k^2`` block products, ``(k + 1) / (2 k)`` of the
FLOPs (3/4 at ``k = 2``, 5/8 at ``k = 4``, 9/16 at ``k = 8``).

The blocked form is on by default only on backends where a benchmark showed
it faster than the plain product (:data:`SYMMETRIC_DEFAULTS`, with the
measurement next to each entry): the CPU. Elsewhere ``symmetric=None`` (the
engines' default) means plain products, and ``symmetric=True`` turns the
blocks on. The backend is :func:`jax.default_backend` when the engine is
traced (under ``jit`` too), and the FLOP model
(:func:`ortho_optax.orthogonalize_flops`) resolves the default the same
way, so that it keeps equal to the traced program's count. (Not
``jax.lax.platform_dependent``: it would trace both forms into every
program, and the jaxpr's FLOP count would no longer be that of the form
that runs.) A program traced for another backend than the default one
(``jax.jit(..., device=...)`` on a CPU device of a GPU host) gets the
default backend's choice; the results are the same to rounding either way,
and ``symmetric=True``/``False`` fixes it.

Small matrices keep the plain product: a block below :data:`MIN_BLOCK`
rows runs the matmul below the machine's rate, and assembling the blocks is
a pass over ``m^2`` entries, so the blocked form is used from
``2 * MIN_BLOCK`` rows up, with at most :data:`MAX_BLOCKS` blocks. :func:`block_sizes` is the plan and
:func:`product_flops` its cost; the engines' FLOP model
(:func:`ortho_optax.orthogonalize_flops`) uses both, and equals the
``dot_general`` FLOPs of the traced program.

XLA has no symmetric-product (``syrk``) primitive; this is plain XLA matmuls
on slices, portable to every backend. The results equal the plain product's
to rounding: the computed blocks are the same dot products, and the mirrored
ones are the conjugates of blocks that the plain product computes
separately (in exact arithmetic they are equal).

References:
  KellerJordan/modded-nanogpt, ``XXT`` / ``ba_plus_cAA`` Triton kernels
  (`PR #109 <https://github.com/KellerJordan/modded-nanogpt/pull/109>`_),
  and Megatron-LM's ``--muon-use-syrk``: the same triangle in one kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Rows per block at least. On the 2-core CPU, X X^T in blocks of ~256 rows
# took 0.64-0.75x the plain product's time at 768 x 3072, 1024 x 4096 and
# 2048 x 2048 (the FLOP ratio is 0.67-0.56); below ~256 rows the saving
# was lost in the noise of smaller matmuls.
MIN_BLOCK = 256
# More blocks save less and less ((k + 1) / (2 k) -> 1/2) while the blocks
# shrink; 8 blocks is 9/16 of the plain product.
MAX_BLOCKS = 8

# What ``symmetric=None`` means on each backend: blocked products only where
# a benchmark showed them faster than the plain product. A backend missing
# here gets plain products.
SYMMETRIC_DEFAULTS = {
    # Measured faster: on the 2-core x86 CPU (float32, jax 0.10.2), the
    # default engine took 0.81x the plain products' time at 1024 x 4096 and
    # at 2048 x 2048 for 0.71-0.73x the FLOPs, the raw engines 0.71-0.82x
    # (benchmarks/results/orthogonalize_symmetric_cpu_f32.md), and a
    # GPT-like muon step (12 x 768) 0.96x for 0.77x the FLOPs
    # (benchmarks/results/step_symmetric_cpu_f32.md).
    "cpu": True,
    # Not measured on GPU; CPU measurement 0.81x the time (above). The H200
    # tables (orthogonalize_gpu_*.md, step_gpu_*.md) predate the blocked
    # products, and XLA on GPU runs one large matmul near peak, where the
    # slices and the assembly of the triangle may cost more than the saved
    # FLOPs. benchmarks/gpu.sh prints the comparison (``triangle`` vs
    # ``plain`` rows of ``orthogonalize.py --symmetric``, the ``symmetric
    # products`` row of ``step.py``) that would turn this on.
    "gpu": False,
    # Not measured on TPU; CPU measurement 0.81x the time (above).
    "tpu": False,
}
# Platform names that jax reports for the same backend.
_BACKEND_ALIASES = {"cuda": "gpu", "rocm": "gpu"}


def default_symmetric(backend: str | None = None) -> bool:
  """What ``symmetric=None`` means on ``backend`` (:data:`SYMMETRIC_DEFAULTS`).

  Args:
    backend: a platform name (``"cpu"``, ``"gpu"``, ``"cuda"``, ``"rocm"``,
      ``"tpu"``, ...); ``None``: :func:`jax.default_backend`, read when
      this is called (at trace time inside the engines).

  Returns:
    ``True`` where the blocked products measured faster (the CPU), else
    ``False``.
  """
  if backend is None:
    backend = jax.default_backend()
  if not isinstance(backend, str):
    raise TypeError(
        f"`backend` must be None or a platform name (str), got {backend!r}."
    )
  backend = backend.lower()
  return SYMMETRIC_DEFAULTS.get(_BACKEND_ALIASES.get(backend, backend), False)


def resolve_symmetric(symmetric, backend: str | None = None) -> bool:
  """``symmetric`` checked, with ``None`` resolved for ``backend``."""
  if symmetric is None:
    return default_symmetric(backend)
  if not isinstance(symmetric, (bool, np.bool_)):
    raise TypeError(
        f"`symmetric` must be None, True or False, got {symmetric!r}."
    )
  return bool(symmetric)


def block_sizes(m: int, symmetric: bool = True) -> tuple[int, ...]:
  """The row blocks of an ``m``-row Hermitian product, ``(m,)`` for plain.

  ``k = min(MAX_BLOCKS, m // MIN_BLOCK)`` blocks of near-equal size (the
  first ``m mod k`` one row larger); fewer than two blocks, or
  ``symmetric=False``, is the plain product.
  """
  k = min(MAX_BLOCKS, m // MIN_BLOCK) if symmetric else 1
  if k < 2:
    return (m,)
  base, extra = divmod(m, k)
  return tuple(base + (i < extra) for i in range(k))


def product_flops(m: int, n: int, symmetric: bool = True) -> int:
  """Real FLOPs of the ``(m, n) x (n, m)`` Hermitian product as computed.

  Block ``(i, j)``, ``i <= j``, of ``s_i`` by ``s_j`` rows costs
  ``2 s_i s_j n``; the plain product is ``2 m^2 n``.
  """
  sizes = block_sizes(m, symmetric)
  return sum(
      2 * sizes[i] * sizes[j] * n
      for i in range(len(sizes))
      for j in range(i, len(sizes))
  )


def hermitian_product(
    p: jax.Array,
    q: jax.Array,
    matmul: Callable[[jax.Array, jax.Array], jax.Array],
    *,
    symmetric: bool = True,
    q_hermitian: bool = False,
) -> jax.Array:
  r"""``P Q^H`` over the last two axes, for a result known to be Hermitian.

  Args:
    p: array of shape ``(..., m, n)``.
    q: array of shape ``(..., m, n)``; :math:`P Q^H` must be Hermitian
      (e.g. ``q = p``, or ``p`` and ``q`` commuting Hermitian matrices,
      when :math:`P Q^H = P Q`).
    matmul: the batched product ``(a, b) -> a @ b`` of each block (it sets
      the compute and result dtypes).
    symmetric: compute one triangle of blocks (where :func:`block_sizes`
      gives more than one); ``False``: the plain product.
    q_hermitian: ``q`` is itself Hermitian (square), so :math:`P Q^H = P Q`
      is computed as ``p @ q`` (column blocks of ``q``), with no transpose:
      the plain product then is exactly the engines' former ``p @ q``.

  Returns:
    The ``(..., m, m)`` product, in ``matmul``'s result dtype.
  """
  sizes = block_sizes(p.shape[-2], symmetric)
  if len(sizes) == 1:
    return matmul(p, q if q_hermitian else jnp.swapaxes(q.conj(), -1, -2))
  bounds = np.cumsum((0,) + sizes)
  ps = [p[..., a:b, :] for a, b in zip(bounds[:-1], bounds[1:])]
  qhs = [
      q[..., :, a:b]
      if q_hermitian
      else jnp.swapaxes(q[..., a:b, :].conj(), -1, -2)
      for a, b in zip(bounds[:-1], bounds[1:])
  ]
  # Square blocks rather than row panels P_i [Q_i; ...; Q_k]^H (fewer,
  # larger matmuls): on the CPU the panels ran no faster than the plain
  # product (0.96-1.17x at 2048 x 2048), the blocks at 0.65-0.77x.
  upper = {
      (i, j): matmul(ps[i], qhs[j])
      for i in range(len(sizes))
      for j in range(i, len(sizes))
  }

  def block(i, j):
    if i <= j:
      return upper[i, j]
    return jnp.swapaxes(upper[j, i].conj(), -1, -2)

  return jnp.concatenate(
      [
          jnp.concatenate([block(i, j) for j in range(len(sizes))], axis=-1)
          for i in range(len(sizes))
      ],
      axis=-2,
  )
