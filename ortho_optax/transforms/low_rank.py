"""What the low-rank transforms share: the rank and the selected rows.

Dion, Dion2 and Trion keep ``rank`` directions of each matrix (a fraction of
its shorter side or a number), and Dion2 and Trion orthogonalize a few rows
picked out of a larger matrix. Where their per-matrix work runs is
``ortho_optax.parallel.stateful``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ortho_optax import checks as _checks
from ortho_optax.engines import orthogonalize as _orthogonalize
from ortho_optax.parallel import stateful as _stateful
from ortho_optax.state import storage as _storage

# The default rank rule (``rank=None``): a quarter of the short side, as
# Dion2's default and Dion's 3B runs, but at least DEFAULT_MIN_RANK
# directions, capped at the short side. Below a short side of
# 4 * DEFAULT_MIN_RANK (512) the floor keeps more than a quarter; at or below
# DEFAULT_MIN_RANK the matrix is kept at full rank. Dion's reference
# defaults to full rank, and a quarter starved the matrices of our examples
# (widths 64-128: 16-32 directions, +0.15 to +0.46 nats/byte behind Muon,
# issue 25).
DEFAULT_FRACTION = 0.25
DEFAULT_MIN_RANK = 128


def check_rank(rank, name: str = "rank") -> None:
  """Raises unless ``rank`` is None (the default rule), a fraction in
  ``(0, 1]`` or an int >= 1."""
  if rank is None:
    return
  if isinstance(rank, bool) or not isinstance(rank, (int, float)):
    raise TypeError(
        f"`{name}` must be a fraction in (0, 1] (float), a number of"
        f" directions >= 1 (int) or None (the default rule), got {rank!r}"
        + (
            ": an array is traced under optax.inject_hyperparams; list"
            f" it in `static_args` (static_args=({name!r},))."
            if hasattr(rank, "shape")
            else "."
        )
    )
  if isinstance(rank, int):
    if rank < 1:
      raise ValueError(f"`{name}` as an int must be >= 1, got {rank}.")
  elif not 0.0 < rank <= 1.0:
    raise ValueError(f"`{name}` as a float must be in (0, 1], got {rank}.")


def resolve_rank(rank, m: int, n: int) -> int:
  """The number of directions kept for an ``m x n`` matrix.

  ``None`` is the default rule: a quarter of ``min(m, n)``, rounded up,
  but at least :data:`DEFAULT_MIN_RANK` (128). A float is a fraction of
  ``min(m, n)``, rounded up (Dion's and Dion2's rule); an int is taken as
  is. Each is capped at ``min(m, n)`` and is at least 1 for a non-empty
  matrix.
  """
  short = min(m, n)
  if short == 0:
    return 0
  if rank is None:
    return min(
        short, max(DEFAULT_MIN_RANK, math.ceil(DEFAULT_FRACTION * short))
    )
  if isinstance(rank, int):
    return min(rank, short)
  return min(max(1, math.ceil(rank * short)), short)


def max_abs(x: jax.Array) -> jax.Array:
  """Per-matrix ``max |x|`` over the last two axes (keepdims), 1 where 0.

  Dividing by it brings a matrix to entries of order one, so that norms
  neither overflow (``|x|^2`` above the dtype's range) nor underflow, and
  epsilons act relative to the matrix instead of in absolute units.
  """
  s = jnp.max(jnp.abs(x), axis=(-2, -1), keepdims=True)
  return jnp.where(s > 0, s, 1).astype(s.dtype)


def momentum_storage(mu_dtype) -> _storage.Storage:
  """The storage of a low-rank transform's momentum (``mu_dtype``).

  ``None``, a floating or complex dtype (the buffer's, as given), or a
  quantized format (:mod:`ortho_optax.state.storage`).
  """
  return _storage.as_storage(mu_dtype, "mu_dtype", complex_ok=True)


def momentum_state(params, dns, storage: _storage.Storage, check=None):
  """The zero momentum in ``storage``: a tree like :func:`matrix_state`'s.

  Args:
    params: the parameters.
    dns: their dimension numbers.
    storage: from :func:`momentum_storage`.
    check: called as ``check(leaf, dn)`` on every matrix leaf (raises).
  """

  quantized = _storage.is_quantized(storage)
  # A complex storage for complex matrices only, and no real one for them.
  _storage.check_leaves(
      matrix_state(params, dns, lambda i, x, dn: x), storage, "mu_dtype"
  )

  def make(i, x, dn):
    del i
    if check is not None:
      check(x, dn)
    # A quantized buffer is made below, from the leaf itself.
    if quantized:
      return x
    return jnp.zeros_like(x, dtype=_storage.float_dtype(storage) or x.dtype)

  tree = matrix_state(params, dns, make)
  if not quantized:
    return tree
  # Quantized buffers replace whole leaves, wrappers (Flax NNX Variables)
  # included, as in every transform (see storage.zeros).
  return _storage.zeros(tree, storage, "mu_dtype")


def zero_count(params) -> jax.Array:
  """The step count at init, on the parameters' mesh if they have one.

  Replicated there from the start, so that the state ``update`` returns
  has ``init``'s types and a jitted update does not compile twice.
  """
  count = jnp.zeros([], jnp.int32)
  leaves = jax.tree.leaves(params)
  return _stateful.like_params_mesh(count, leaves[0]) if leaves else count


def float_dtype(storage: _storage.Storage):
  """The dtype a float companion of the momentum (Dion's :math:`Q`) is
  computed in: ``storage``'s, float32 beside a quantized momentum (which
  then also stores the companion), ``None`` (the params') for ``None``."""
  return jnp.float32 if _storage.is_quantized(storage) else storage


def _is_masked(x) -> bool:
  return x is None or isinstance(x, optax.MaskedNode)


def matrix_state(params, dns, make):
  """A tree like ``params``: ``make(index, leaf, dn)`` on matrices, else
  ``optax.MaskedNode()`` (``None`` leaves stay ``None``)."""
  leaves, treedef = jax.tree.flatten(params, is_leaf=_is_masked)
  dn_leaves = treedef.flatten_up_to(dns)
  out: list[Any] = []
  for i, (x, dn) in enumerate(zip(leaves, dn_leaves)):
    if x is None:
      out.append(None)
    elif _is_masked(x) or _is_masked(dn):
      out.append(optax.MaskedNode())
    else:
      out.append(make(i, x, dn))
  return jax.tree.unflatten(treedef, out)


def orthogonalizer(method: str, engine_options: dict):
  """The engine, checked now, applied to matrices scaled to order one.

  Scaling by the largest entry first leaves the polar factor alone and
  keeps the engine's normalization (and its epsilon) away from overflow and
  underflow, whatever the momentum's scale.
  """
  _checks.check_choice(method, "method", _orthogonalize.METHODS)
  jax.eval_shape(
      lambda: _orthogonalize.orthogonalize(
          jnp.zeros((2, 3)), method=method, **engine_options
      )
  )
  def engine(x):
    return _orthogonalize.orthogonalize(
        x / max_abs(x), method=method, **engine_options
    )

  return engine


def take_rows(x: jax.Array, idx: jax.Array) -> jax.Array:
  """Rows ``idx`` (``(B, k)``) of each matrix of ``x`` (``(B, m, n)``)."""
  return jnp.take_along_axis(x, idx[..., None], axis=-2)


def row_mask(idx: jax.Array, m: int, dtype) -> jax.Array:
  """``(B, m)``: 1 on the rows in ``idx`` (``(B, k)``, distinct), else 0."""
  return jnp.sum(jax.nn.one_hot(idx, m, dtype=dtype), axis=-2)
