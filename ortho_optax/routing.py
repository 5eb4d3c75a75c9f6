"""Routing: which leaves are matrices, how they reshape to (batch, m, n), and back.

This is the only module that knows about conv kernels, stacked layers and
embedding/head names. Transforms call :func:`dimension_numbers_tree` to learn
which leaves are matrices, and :func:`map_matrices` / :func:`map_matrix_groups`
to work on them as ``(batch, fan_in, fan_out)`` arrays.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

MATRIX = "orthogonalize"
OTHER = "adam"

# Path components naming embeddings and output heads. Every reference keeps
# these on Adam (KellerJordan/Muon README, Moonlight, nanochat, maxtext).
EMBED_HEAD_NAMES = frozenset({
    "embed",
    "embedding",
    "embeddings",
    "wte",
    "wpe",
    "lm_head",
    "head",
    "logits",
    "unembed",
    "unembedding",
    "output_head",
})


# Leaf names that are never matrices, whatever their rank.
NON_MATRIX_NAMES = frozenset({"bias", "scale", "gain", "embedding_bias"})

# Path components of Flax attention projections whose heads are kept as
# separate axes: (in, heads, head_dim) and (heads, head_dim, out).
ATTENTION_IN_NAMES = frozenset({"query", "key", "value", "qkv"})
ATTENTION_OUT_NAMES = frozenset({"out", "o_proj", "out_proj"})


class DimensionNumbers(NamedTuple):
  """Which axes of a leaf are its matrix's fan-in and fan-out.

  All other axes are batch axes (stacked layers, heads, ...). Compatible
  with ``optax.contrib.MuonDimensionNumbers``, which has the same fields.

  Attributes:
    reduction_axis: axis or axes contracted with the input (fan-in).
    output_axis: axis or axes of the output (fan-out).
  """

  reduction_axis: Sequence[int] | int = 0
  output_axis: Sequence[int] | int = 1


class SplitDimensionNumbers(NamedTuple):
  """Dimension numbers whose matrix is split into parts along one axis.

  The leaf's axis ``split_axis`` is cut into consecutive parts of sizes
  ``split_sizes``, and each part is orthogonalized (and scaled, and
  normalized) as a matrix of its own: a fused QKV kernel ``(d, 3 * heads *
  head_dim)`` per head with ``split_sizes=(head_dim,) * (3 * heads)``, or
  per projection with ``(heads * head_dim,) * 3``; a fused gate/up kernel
  ``(d, 2 * hidden)`` per half with ``(hidden, hidden)``. The parts must
  have equal sizes: the axis becomes ``(parts, size)``, ``parts`` a batch
  axis, so every transform sees ``(batch * parts, fan_in, fan_out)``
  matrices and the parts of every layer are stacked into one batched call.
  The fan-in and fan-out (of ``scale_by_shape``, of the state shapes) are
  those of one part.

  Accepted wherever :class:`DimensionNumbers` are (``dimension_numbers=``,
  ``rules=``); the routing page of the documentation has a runnable
  example.

  Attributes:
    reduction_axis: axis or axes contracted with the input (fan-in).
    output_axis: axis or axes of the output (fan-out).
    split_axis: the axis that is cut into parts (any axis; usually one of
      the output axes).
    split_sizes: the sizes of the parts, equal, summing to the axis' length.
  """

  reduction_axis: Sequence[int] | int = 0
  output_axis: Sequence[int] | int = 1
  split_axis: int = -1
  split_sizes: Sequence[int] = ()


def _is_dimnums(x) -> bool:
  return (
      isinstance(x, tuple)
      and hasattr(x, "reduction_axis")
      and hasattr(x, "output_axis")
  )


def _axes(a) -> tuple[int, ...]:
  return (a,) if isinstance(a, int) else tuple(a)


def normalize_dimension_numbers(
    dn, ndim: int, path: str = "", shape=()
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
  """Returns ``(batch_axes, reduction_axes, output_axes)``, all non-negative."""
  red = tuple(a % ndim if -ndim <= a < ndim else a for a in _axes(dn.reduction_axis))
  out = tuple(a % ndim if -ndim <= a < ndim else a for a in _axes(dn.output_axis))
  where = f" for the leaf at {path} with shape {tuple(shape)}" if path else ""
  if not red or not out:
    raise ValueError(
        f"Dimension numbers {dn} need at least one reduction and one output"
        f" axis{where}."
    )
  for a in red + out:
    if not 0 <= a < ndim:
      raise ValueError(
          f"Dimension numbers {dn} name axis {a}, out of range for rank"
          f" {ndim}{where}."
      )
  if len(set(red + out)) != len(red + out):
    raise ValueError(f"Dimension numbers {dn} repeat an axis{where}.")
  batch = tuple(a for a in range(ndim) if a not in red + out)
  return batch, red, out


def split_of(dn) -> tuple[int | None, tuple[int, ...]]:
  """``(split_axis, split_sizes)`` of dimension numbers; ``(None, ())``
  when they do not split (:class:`DimensionNumbers`,
  ``optax.contrib.MuonDimensionNumbers``)."""
  sizes = getattr(dn, "split_sizes", None)
  if sizes is None:
    return None, ()
  return dn.split_axis, tuple(sizes)


def matrix_view(shape, dn) -> tuple[tuple[int, ...], DimensionNumbers]:
  """The shape and dimension numbers the matrices are read through.

  Without a split: ``shape`` and ``dn`` itself (axes made non-negative).
  With a :class:`SplitDimensionNumbers`, the split axis of length
  ``parts * size`` becomes two axes ``(parts, size)``: ``parts`` a batch
  axis, ``size`` in the split axis' place (fan-in, fan-out or batch). A
  leaf's ``(batch, fan_in, fan_out)`` matrices are those of
  ``x.reshape(view_shape)`` under ``view_dn``.
  """
  shape = tuple(shape)
  ndim = len(shape)
  _, red, out = normalize_dimension_numbers(dn, ndim)
  axis, sizes = split_of(dn)
  if axis is None:
    return shape, DimensionNumbers(red, out)
  if not -ndim <= axis < ndim:
    raise ValueError(
        f"`split_axis` {axis} of {dn} is out of range for a leaf of shape"
        f" {shape}."
    )
  axis %= ndim
  if sum(sizes) != shape[axis]:
    raise ValueError(
        f"`split_sizes` {sizes} of {dn} sum to {sum(sizes)}, but axis {axis}"
        f" of the leaf of shape {shape} has length {shape[axis]}."
    )
  view = shape[:axis] + (len(sizes), sizes[0]) + shape[axis + 1:]

  def moved(a):
    return a if a < axis else a + 1

  return view, DimensionNumbers(
      tuple(moved(a) for a in red), tuple(moved(a) for a in out)
  )


def fan_in_out(shape, dn) -> tuple[int, int]:
  """``(fan_in, fan_out)`` of a leaf's matrices (of one part when split)."""
  shape, dn = matrix_view(shape, dn)
  _, red, out = normalize_dimension_numbers(dn, len(shape))
  return math.prod(shape[a] for a in red), math.prod(shape[a] for a in out)


def to_matrix(x: jax.Array, dn) -> jax.Array:
  """Reshapes a leaf to ``(batch, fan_in, fan_out)``.

  With a split (:class:`SplitDimensionNumbers`) the parts are matrices of
  their own: ``batch`` counts them too (see :func:`matrix_view`).
  """
  shape, dn = matrix_view(x.shape, dn)
  if shape != tuple(x.shape):
    x = x.reshape(shape)
  batch, red, out = normalize_dimension_numbers(dn, x.ndim)
  xt = jnp.transpose(x, batch + red + out)
  b = math.prod(x.shape[a] for a in batch)
  return xt.reshape(
      b, math.prod(x.shape[a] for a in red), math.prod(x.shape[a] for a in out)
  )


def from_matrix(y: jax.Array, dn, shape) -> jax.Array:
  """Inverse of :func:`to_matrix` for a leaf of shape ``shape``."""
  leaf_shape = tuple(shape)
  shape, dn = matrix_view(leaf_shape, dn)
  batch, red, out = normalize_dimension_numbers(dn, len(shape))
  perm = batch + red + out
  yt = y.reshape(tuple(shape[a] for a in perm))
  inv = [0] * len(perm)
  for i, a in enumerate(perm):
    inv[a] = i
  x = jnp.transpose(yt, inv)
  return x if shape == leaf_shape else x.reshape(leaf_shape)


def _path_names(path) -> list[str]:
  names = []
  for k in path:
    # Flax NNX Variables add a trailing `.value` attribute to every path.
    if isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value":
      continue
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        names.append(str(getattr(k, attr)).lower())
        break
  return names


def is_embedding_or_head(path) -> bool:
  """Whether a leaf's path names an embedding table or an output head."""
  for name in _path_names(path):
    if name in EMBED_HEAD_NAMES or "embed" in name:
      return True
  return False


def default_dimension_numbers(
    path, leaf, *, use_names: bool = True
) -> DimensionNumbers | None:
  """The default routing of one leaf (``None``: not orthogonalized).

  * ``ndim < 2``, a path naming an embedding or head, or a leaf named
    ``bias``/``scale``/``gain`` (Flax attention biases are 2-D): ``None``.
  * 2-D ``(in, out)`` kernels: ``DimensionNumbers(0, 1)``.
  * 3-D: stacked layers ``(layers, in, out)``: ``DimensionNumbers(1, 2)``;
    when the path names a ``conv``, a 1-D conv kernel ``(width, in, out)``:
    ``DimensionNumbers((0, 1), 2)``; Flax attention projections
    (``query``/``key``/``value`` kernels ``(in, heads, head_dim)``:
    ``DimensionNumbers(0, (1, 2))``; ``out`` kernels ``(heads, head_dim,
    out)``: ``DimensionNumbers((0, 1), 2)``).
  * 4-D: a Flax HWIO conv kernel: ``DimensionNumbers((0, 1, 2), 3)``, i.e.
    ``(kh * kw * in, out)``.
  * 5-D and more: ``None`` (pass explicit dimension numbers).
  """
  ndim = getattr(leaf, "ndim", 0)
  if ndim < 2 or (use_names and is_embedding_or_head(path)):
    return None
  names = _path_names(path)
  if names and names[-1] in NON_MATRIX_NAMES:
    return None
  if ndim == 2:
    return DimensionNumbers(0, 1)
  if ndim == 3:
    if any("conv" in n for n in names):
      return DimensionNumbers((0, 1), 2)
    # Flax's MultiHeadAttention keeps heads as separate axes; the matrix is
    # the fused projection, as in the PyTorch references.
    if any(n in ATTENTION_IN_NAMES for n in names):
      return DimensionNumbers(0, (1, 2))
    if any(n in ATTENTION_OUT_NAMES for n in names):
      return DimensionNumbers((0, 1), 2)
    return DimensionNumbers(1, 2)
  if ndim == 4:
    return DimensionNumbers((0, 1, 2), 3)
  return None


Rules = (
    Sequence[tuple[str, Any]]
    | Callable[[str, Any], Any]
    | None
)


_ROUTING_VALUES = (
    f"{MATRIX!r}, {OTHER!r}, None or (Split)DimensionNumbers"
)


def _is_routing_value(value) -> bool:
  if value is None or _is_dimnums(value):
    return True
  return isinstance(value, str) and value in (MATRIX, OTHER)


def _is_int(a) -> bool:
  return isinstance(a, (int, np.integer)) and not isinstance(a, bool)


def _check_dimnums(dn, name: str) -> None:
  for axes in (dn.reduction_axis, dn.output_axis):
    ok = _is_int(axes)
    if not ok and isinstance(axes, Sequence) and not isinstance(axes, str):
      ok = all(_is_int(a) for a in axes)
    if not ok:
      raise TypeError(
          f"`{name}` holds {dn}, whose axes are not ints or sequences of"
          " ints."
      )
  if getattr(dn, "split_sizes", None) is None:
    return
  if not _is_int(dn.split_axis):
    raise TypeError(
        f"`{name}` holds {dn}, whose `split_axis` is not an int."
    )
  sizes = dn.split_sizes
  if (
      isinstance(sizes, (str, bytes))
      or not isinstance(sizes, Sequence)
      or not all(_is_int(s) for s in sizes)
  ):
    raise TypeError(
        f"`{name}` holds {dn}, whose `split_sizes` is not a sequence of"
        " ints."
    )
  if not sizes or any(s <= 0 for s in sizes):
    raise ValueError(
        f"`{name}` holds {dn}: `split_sizes` must be a non-empty sequence"
        f" of positive ints, got {tuple(sizes)}."
    )
  if len(set(sizes)) != 1:
    raise ValueError(
        f"`{name}` holds {dn}: the parts of `split_sizes` must have equal"
        f" sizes (they become a batch axis), got {tuple(sizes)}. Split per"
        " head instead (equal head sizes), or give the parts separate"
        " leaves."
    )


def check_rules(rules, name: str = "rules") -> None:
  """Raises unless ``rules`` is None, a callable or ``(regex, value)`` pairs."""
  if rules is None or callable(rules):
    return
  accepted = (
      "None, a callable (path, leaf) -> value, or a sequence of (regex,"
      f" value) pairs with values {_ROUTING_VALUES}"
  )
  if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
    raise TypeError(f"`{name}` must be {accepted}; got {rules!r}.")
  for rule in rules:
    if not (isinstance(rule, Sequence) and len(rule) == 2) or isinstance(
        rule, str
    ):
      raise TypeError(
          f"`{name}` must be {accepted}; got the entry {rule!r}."
      )
    pattern, value = rule
    if not isinstance(pattern, str):
      raise TypeError(
          f"`{name}` patterns must be regex strings, got {pattern!r}."
      )
    try:
      re.compile(pattern)
    except re.error as e:
      raise ValueError(
          f"`{name}` pattern {pattern!r} is not a valid regular expression"
          f" ({e})."
      ) from e
    if not _is_routing_value(value):
      raise ValueError(
          f"Unknown `{name}` value {value!r} for pattern {pattern!r};"
          f" accepted values are {_ROUTING_VALUES}."
      )
    if _is_dimnums(value):
      _check_dimnums(value, name)


def check_dimension_numbers(dimension_numbers, name="dimension_numbers"):
  """Raises unless the argument is None, a callable, or a (prefix) tree of
  DimensionNumbers and None (or ``"orthogonalize"``/``"adam"``)."""
  if dimension_numbers is None or (
      callable(dimension_numbers) and not _is_dimnums(dimension_numbers)
  ):
    return
  leaves = jax.tree_util.tree_leaves(
      dimension_numbers, is_leaf=lambda x: x is None or _is_dimnums(x)
  )
  for value in leaves:
    if not _is_routing_value(value):
      raise ValueError(
          f"Unknown `{name}` entry {value!r}; accepted values are None, a"
          f" callable params -> tree, or a (prefix) tree of"
          f" {_ROUTING_VALUES}."
      )
    if _is_dimnums(value):
      _check_dimnums(value, name)


def check_labels(labels, name: str = "labels") -> None:
  """Raises unless ``labels`` is None, a callable or a tree of labels."""
  if labels is None or callable(labels):
    return
  for value in jax.tree_util.tree_leaves(labels):
    if not (isinstance(value, str) and value in (MATRIX, OTHER)):
      raise ValueError(
          f"Unknown `{name}` entry {value!r}; accepted values are None, a"
          f" callable params -> tree, or a tree of {MATRIX!r} and {OTHER!r}."
      )


def _apply_rules(rules, path, leaf, default):
  if rules is None:
    return default
  key = jax.tree_util.keystr(path)
  if callable(rules):
    out = rules(key, leaf)
    return default if out is ... else out
  for pattern, value in rules:
    if re.search(pattern, key):
      return value
  return default


def dimension_numbers_tree(
    params,
    *,
    rules: Rules = None,
    dimension_numbers=None,
    use_names: bool = True,
):
  """A tree like ``params`` of :class:`DimensionNumbers` or ``None``.

  ``None`` marks a leaf that is not orthogonalized (it goes to Adam in the
  named optimizers).

  Args:
    params: the parameter tree (arrays or ``jax.ShapeDtypeStruct`` objects).
    rules: overrides, applied after the defaults: either a sequence of
      ``(regex, value)`` pairs matched with ``re.search`` against the leaf's
      path (``jax.tree_util.keystr``; the first match wins), or a callable
      ``(path_str, leaf) -> value`` returning ``...`` to keep the default.
      A value is ``"orthogonalize"`` (default dimension numbers for the
      rank, ``(0, 1)`` for 2-D), ``"adam"`` or ``None`` (not orthogonalized),
      or a :class:`DimensionNumbers` / ``optax.contrib.MuonDimensionNumbers``,
      or a :class:`SplitDimensionNumbers` (one matrix per part of an axis:
      a fused QKV kernel per head).
    dimension_numbers: optax-style routing, for users migrating from
      ``optax.contrib.muon``: a tree (or prefix tree) of dimension numbers
      and ``None``, or a callable ``params -> tree``. When given it replaces
      the name/rank defaults (``rules`` still apply on top).
    use_names: whether embedding/head names exclude a leaf by default
      (``False`` inside a branch that only receives matrices).

  Returns:
    The tree of dimension numbers (``None`` leaves for the other leaves).
  """
  check_rules(rules)
  check_dimension_numbers(dimension_numbers)
  if not isinstance(use_names, (bool, np.bool_)):
    raise TypeError(f"`use_names` must be True or False, got {use_names!r}.")
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(
      params, is_leaf=lambda x: x is None
  )
  if dimension_numbers is not None:
    if callable(dimension_numbers) and not _is_dimnums(dimension_numbers):
      dn_tree = dimension_numbers(params)
      check_dimension_numbers(dn_tree)
    else:
      dn_tree = dimension_numbers
    user = _broadcast_prefix(dn_tree, params)
  else:
    user = None
  out: list[Any] = []
  for i, (path, leaf) in enumerate(leaves_with_path):
    if leaf is None:
      out.append(None)
      continue
    if not _is_trainable(leaf):
      # Counters and masks are never matrices by default (nor through a
      # broadcast prefix); an explicit rule for one is an error below.
      default = None
    elif user is not None:
      default = user[i]
    else:
      default = default_dimension_numbers(path, leaf, use_names=use_names)
    value = _apply_rules(rules, path, leaf, default)
    out.append(_resolve_value(value, path, leaf))
  return jax.tree_util.tree_unflatten(treedef, out)


def _is_dn_entry(x) -> bool:
  """A leaf of a dimension-numbers tree: ``None``, ``optax.MaskedNode``
  (both: not a matrix, as in optax's ``scale_by_shape``) or dimension
  numbers."""
  return _is_masked(x) or _is_dimnums(x)


def _broadcast_prefix(prefix, params) -> list:
  """Flattens a prefix tree of dimension numbers to one entry per leaf.

  ``None`` leaves of ``params`` get an entry (as in
  :func:`dimension_numbers_tree`); its masked leaves, which have no
  children, get none.
  """
  full = jax.tree_util.tree_map(
      lambda p, x: jax.tree_util.tree_map(
          lambda _: None if _is_masked(p) else p,
          x,
          is_leaf=lambda y: y is None,
      ),
      prefix,
      params,
      is_leaf=_is_dn_entry,
  )
  return jax.tree_util.tree_leaves(
      full, is_leaf=lambda x: x is None or _is_dimnums(x)
  )


def _resolve_value(value, path, leaf):
  key = jax.tree_util.keystr(path)
  shape = tuple(getattr(leaf, "shape", ()))
  if _is_masked(value) or (isinstance(value, str) and value == OTHER):
    return None
  if value == MATRIX:
    dn = default_dimension_numbers((), leaf)
    if dn is None:
      raise ValueError(
          f"The leaf at {key} with shape {shape} was routed to"
          f" {MATRIX!r} but has rank {len(shape)}; a matrix needs rank >= 2"
          " (pass DimensionNumbers for rank >= 5)."
      )
    value = dn
  if not _is_dimnums(value):
    raise ValueError(
        f"Unknown routing value {value!r} for the leaf at {key} with shape"
        f" {shape}; accepted values are {MATRIX!r}, {OTHER!r}, None or"
        " DimensionNumbers."
    )
  if len(shape) < 2:
    raise ValueError(
        f"The leaf at {key} with shape {shape} has dimension numbers"
        f" {value} but rank {len(shape)}; a matrix needs rank >= 2."
    )
  dtype = getattr(leaf, "dtype", None)
  if not _is_trainable(leaf):
    raise ValueError(
        f"The leaf at {key} with shape {shape} has dtype {dtype}; only"
        " floating or complex leaves can be orthogonalized."
    )
  normalize_dimension_numbers(value, len(shape), key, shape)
  _check_dimnums(value, "dimension numbers")
  try:
    matrix_view(shape, value)
  except ValueError as e:
    raise ValueError(f"The leaf at {key}: {e}") from e
  if math.prod(shape) == 0:
    # An empty matrix has nothing to orthogonalize: it passes through as
    # the empty update it is.
    return None
  axis, sizes = split_of(value)
  if axis is not None:
    return SplitDimensionNumbers(
        value.reduction_axis, value.output_axis, int(axis), sizes
    )
  return DimensionNumbers(value.reduction_axis, value.output_axis)


def _is_trainable(leaf) -> bool:
  """Floating or complex: integer, bool and float0 leaves (counters,
  masks) are never matrices."""
  dtype = getattr(leaf, "dtype", None)
  return dtype is None or jnp.issubdtype(dtype, jnp.inexact)


def label_params(
    params,
    *,
    rules: Rules = None,
    dimension_numbers=None,
):
  """Labels each leaf ``"orthogonalize"`` or ``"adam"``.

  Hidden matrices (rank >= 2) are orthogonalized; rank < 2 leaves and
  leaves whose path names an embedding or an output head (``embed``,
  ``embedding``, ``wte``, ``lm_head``, ``head``, ``logits``, ``unembed``, ...)
  go to Adam. See :func:`dimension_numbers_tree` for ``rules`` and
  ``dimension_numbers``. The result is meant for ``optax.partition``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import ortho_optax
    >>> params = {"embed": jnp.zeros((10, 4)), "w": jnp.zeros((4, 4)),
    ...           "b": jnp.zeros(4)}
    >>> ortho_optax.label_params(params)
    {'b': 'adam', 'embed': 'adam', 'w': 'orthogonalize'}
  """
  dns = dimension_numbers_tree(
      params, rules=rules, dimension_numbers=dimension_numbers
  )
  return jax.tree_util.tree_map(
      lambda d: OTHER if d is None else MATRIX,
      dns,
      is_leaf=lambda x: x is None or _is_dimnums(x),
  )


def branch_dimension_numbers(params, *, dimension_numbers=None, rules=None):
  """Dimension numbers inside a branch that only receives matrix leaves.

  The leaves were already chosen (by :func:`label_params` or the user's
  labels), so names no longer exclude anything; only the rank (or the
  user's dimension numbers and rules) decide the reshaping.
  """
  return dimension_numbers_tree(
      params,
      rules=rules,
      dimension_numbers=dimension_numbers,
      use_names=False,
  )


def _is_masked(x) -> bool:
  return x is None or isinstance(x, optax.MaskedNode)


def resolve_dimension_numbers(updates, dimension_numbers, rules=None):
  """The dimension-numbers tree for ``updates`` (a tree or a callable)."""
  if callable(dimension_numbers) and not _is_dimnums(dimension_numbers):
    dimension_numbers = dimension_numbers(updates)
  if dimension_numbers is None:
    return dimension_numbers_tree(updates, rules=rules)
  if _is_dimnums(dimension_numbers):
    return jax.tree_util.tree_map(
        lambda x: dimension_numbers if _is_matrix_leaf(x) else None,
        updates,
        is_leaf=_is_masked,
    )
  return dimension_numbers_tree(
      updates, rules=rules, dimension_numbers=dimension_numbers
  )


def _is_matrix_leaf(x) -> bool:
  """Not masked, floating or complex, and not empty."""
  return (
      not _is_masked(x)
      and _is_trainable(x)
      and math.prod(getattr(x, "shape", ())) > 0
  )


def _flatten_pairs(updates, dns):
  leaves, treedef = jax.tree_util.tree_flatten(updates, is_leaf=_is_masked)
  dn_leaves = treedef.flatten_up_to(dns) if dns is not None else [None] * len(
      leaves
  )
  return leaves, dn_leaves, treedef


def map_matrices(fn, updates, dns, *others):
  """Applies ``fn(m, *other_ms) -> m`` to each matrix leaf as ``(B, in, out)``.

  Leaves whose dimension numbers are ``None`` (and masked leaves) are
  returned unchanged. ``others`` are trees with the same structure, reshaped
  the same way. Each result has its leaf's sharding (see
  :func:`keep_sharding`).
  """
  leaves, dn_leaves, treedef = _flatten_pairs(updates, dns)
  other_leaves = [treedef.flatten_up_to(o) for o in others]
  out = []
  for i, (x, dn) in enumerate(zip(leaves, dn_leaves)):
    if dn is None or _is_masked(x):
      out.append(x)
      continue

    def leaf_fn(x, *os, dn=dn):
      ms = [to_matrix(o, dn) for o in os]
      return from_matrix(fn(to_matrix(x, dn), *ms), dn, x.shape)

    out.append(keep_sharding(leaf_fn, x, *[o[i] for o in other_leaves],
                             like=x))
  return jax.tree_util.tree_unflatten(treedef, out)


def _explicit_axes(x) -> tuple[str, ...]:
  """The Explicit axes of the mesh in ``x``'s type (sharding in types)."""
  try:
    s = jax.typeof(x).sharding
  except (AttributeError, TypeError):
    return ()
  mesh = getattr(s, "mesh", None)
  if mesh is None or not mesh.axis_names:
    return ()
  return tuple(
      a
      for a, t in zip(mesh.axis_names, mesh.axis_types)
      if t == jax.sharding.AxisType.Explicit
  )


def keep_sharding(fn, *args, like):
  """``fn(*args)`` whose results have the types' shardings of ``like``.

  Per-matrix work reshapes a leaf to ``(B, fan_in, fan_out)`` and back,
  and reduces over whole matrices: under Explicit mesh axes (sharding in
  types) a reshape that merges a sharded axis, or a result whose sharding
  differs from the state it replaces, is a type error. Here ``fn`` runs
  with the Explicit axes made Auto (``jax.sharding.auto_axes``: XLA places
  the work) and its results come back with the shardings of ``like`` (an
  array, or a tuple of arrays for a tuple of results). Without Explicit
  axes this is ``fn(*args)``.
  """
  likes = like if isinstance(like, tuple) else (like,)
  axes = _explicit_axes(likes[0])
  if not axes or any(_explicit_axes(a) != axes for a in likes):
    # No Explicit axes, or a state made off the mesh (no type to keep).
    return fn(*args)
  shardings = tuple(jax.typeof(a).sharding for a in likes)
  return jax.sharding.auto_axes(
      fn,
      axes=axes,
      out_sharding=shardings if isinstance(like, tuple) else shardings[0],
  )(*args)


class MatrixGroup(NamedTuple):
  """Same-shape matrices stacked for one batched call.

  Attributes:
    stack: array of shape ``(N, m, n)`` with ``m <= n`` (tall matrices are
      transposed, which commutes with orthogonalization).
    members: for each leaf index in the group, ``(index, count, transposed)``.
  """

  stack: jax.Array
  members: tuple[tuple[int, int, bool], ...]


def group_matrices(updates, dns) -> tuple[list[MatrixGroup], Any]:
  """Stacks the matrix leaves of ``updates`` by oriented shape and dtype.

  Returns:
    ``(groups, context)``; pass both to :func:`ungroup_matrices`.
  """
  leaves, dn_leaves, treedef = _flatten_pairs(updates, dns)
  buckets: dict[tuple, list] = {}
  for i, (x, dn) in enumerate(zip(leaves, dn_leaves)):
    if dn is None or _is_masked(x):
      continue
    mat = to_matrix(x, dn)
    transposed = mat.shape[-2] > mat.shape[-1]
    if transposed:
      mat = jnp.swapaxes(mat, -1, -2)
    key = (mat.shape[-2], mat.shape[-1], jnp.dtype(mat.dtype).name)
    buckets.setdefault(key, []).append((i, mat, transposed))
  groups = []
  for key in sorted(buckets):
    items = buckets[key]
    stack = (
        items[0][1]
        if len(items) == 1
        else jnp.concatenate([m for _, m, _ in items], axis=0)
    )
    members = tuple((i, m.shape[0], t) for i, m, t in items)
    groups.append(MatrixGroup(stack, members))
  return groups, (leaves, dn_leaves, treedef)


def ungroup_matrices(stacks: Sequence[jax.Array], groups, context):
  """Scatters processed stacks back into a tree like the grouped one."""
  leaves, dn_leaves, treedef = context
  out = list(leaves)
  for stack, group in zip(stacks, groups):
    offset = 0
    for i, count, transposed in group.members:
      mat = stack[offset : offset + count]
      offset += count
      if transposed:
        mat = jnp.swapaxes(mat, -1, -2)
      out[i] = from_matrix(mat, dn_leaves[i], leaves[i].shape).astype(
          leaves[i].dtype
      )
  return jax.tree_util.tree_unflatten(treedef, out)


def map_matrix_groups(fn, updates, dns):
  """Applies batched ``fn((N, m, n)) -> (N, m, n)`` once per shape group.

  Every matrix leaf is reshaped to ``(B, fan_in, fan_out)``, oriented wide,
  and stacked with the other leaves of the same shape and dtype, so a tree
  of ``L`` identical layers costs one batched call instead of ``L``.
  """
  groups, context = group_matrices(updates, dns)
  stacks = [fn(g.stack) for g in groups]
  return ungroup_matrices(stacks, groups, context)
