r"""Batched LAPACK factorizations that cannot stall XLA's CPU thread pool.

On the CPU, ``jnp.linalg.qr`` and ``jnp.linalg.svd`` of a batch of matrices
are LAPACK kernels that split the batch over XLA's intra-op thread pool
and block one pool thread until the pieces are done. When two such kernels
run at once (two independent matrix groups of one optimizer step), each
blocks a pool thread while its pieces wait for one: with as many kernels
as pool threads (two on a 2-core machine) the step never finishes, and
with fewer it runs 10-100x slower than the sum of its matrices (measured
with jaxlib 0.10 on 2 cores: a Dion step on a 4-block, width-256 tree
stalled for minutes; the same step with these functions takes 50 ms).

So on the CPU these functions factor one matrix at a time, in a loop
(``jax.lax.map``), each a single LAPACK call that runs on its caller's
thread; other platforms (cuSOLVER, TPU) keep the batched call, which is
what they are fast at. The results are those of ``jnp.linalg``: the same
kernels on the same matrices.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp


def per_matrix(fn: Callable, x: jax.Array):
  """``fn`` on each ``(m, n)`` matrix of ``x`` (``(..., m, n)``).

  ``fn`` maps one matrix to an array or a tuple of arrays; the results get
  ``x``'s batch shape in front. On the CPU the matrices are factored one
  after another; elsewhere ``fn`` is called on the whole batch (it must
  then accept leading batch axes, as ``jnp.linalg`` functions do).
  """
  batch = x.shape[:-2]
  count = math.prod(batch)
  if not batch or count == 0:
    return fn(x)
  if count == 1:
    # One matrix: a plain call, without the kernel's batch loop.
    out = fn(x.reshape(x.shape[-2:]))
    return jax.tree.map(lambda y: y.reshape(batch + y.shape), out)
  flat = x.reshape((count,) + x.shape[-2:])
  out = jax.lax.platform_dependent(
      flat, cpu=lambda a: jax.lax.map(fn, a), default=fn
  )
  return jax.tree.map(lambda y: y.reshape(batch + y.shape[1:]), out)


def qr_q(x: jax.Array) -> jax.Array:
  """The reduced ``Q`` of a Householder QR of each matrix of ``x``.

  ``jnp.linalg.qr(x)[0]``, one matrix at a time on the CPU (see the module
  docstring).
  """
  return per_matrix(lambda a: jnp.linalg.qr(a)[0], x)


def svd(x: jax.Array):
  """``jnp.linalg.svd(x, full_matrices=False)``, per matrix on the CPU."""
  return per_matrix(lambda a: jnp.linalg.svd(a, full_matrices=False), x)


def singular_values(x: jax.Array) -> jax.Array:
  """``jnp.linalg.svd(x, compute_uv=False)``, per matrix on the CPU."""
  return per_matrix(lambda a: jnp.linalg.svd(a, compute_uv=False), x)
