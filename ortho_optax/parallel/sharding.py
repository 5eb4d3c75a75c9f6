"""Sharding: where each matrix is orthogonalized when the updates are sharded.

Routing turns a tree of updates into stacks of same-shape matrices
``(N, m, n)`` (:func:`ortho_optax.routing.group_matrices`); this module
decides on which devices each stack is orthogonalized, with JAX's own SPMD
machinery (``jax.lax.with_sharding_constraint``, ``jax.sharding.auto_axes``)
under ``jax.jit``. There is no hand-written communication: every transfer is
a layout change that XLA lowers to collectives.

Strategies (``sharding=`` of :func:`scale_by_orthogonalization`):

* ``None``: leave it to XLA. Newton-Schulz runs on the updates as they are
  sharded; with matrix axes sharded, XLA inserts collectives inside every
  step, and replicated matrices are orthogonalized on every device.
* ``"gather"``: each stack is constrained to be replicated, orthogonalized
  on every device, and constrained back (Moonlight's "Distributed Muon").
  One all-gather of the updates per step; every device does all the work.
* ``"distribute"``: the stack, padded with zero matrices to a multiple of
  the device count ``W`` (zeros map to zeros), is resharded to
  ``P(axes, None, None)``: each device holds ``N / W`` whole matrices,
  orthogonalizes them, and the results go back to each parameter's own
  sharding. The Essential AI / Dion "layer sharding" scheme. Norms are
  taken on whole matrices, so the result equals the single-device one.

  When the updates' layouts are known (see below), matrices are stacked
  by shape *and* by where their rows and columns are sharded
  (:func:`matrix_spec`), and each stack moves in steps that XLA lowers to
  one collective each: ``(None, rows, cols) -> (cols, rows, None) ->
  (cols + rows, None, None)`` (two all-to-alls from a 2-D sharded matrix,
  one from an FSDP-sharded one), then a mesh axis the matrices are
  replicated over splits the stack further (a local slice) as long as
  every device still gets a real matrix; the way back retraces the steps
  (an all-gather over the replicated axes, then the all-to-alls). Two
  stacks of one shape whose layouts differ are merged when that saves
  padding. Without known layouts the stack gets the final constraint alone
  and XLA finds a path (good on 1-D meshes, worse on 2-D ones).

  Padding costs: the zero matrices travel through the all-to-alls too, so
  a stack of ``N < W`` matrices moves about ``4 / N`` times its own bytes.
  Stacks so small that gathering them moves fewer bytes
  (``N (W + 1) < 4 W``: at most 3 matrices) are gathered instead, as the
  spec of the scheme recommends. On a pod with far more devices than
  layers, restrict ``ShardingOptions(axes=...)`` to the axes that shard
  the parameters (e.g. ``"fsdp"``) so that ``W`` stays near ``N``.

A matrix too large for one device: ``ShardingOptions(max_matrix_bytes=...)``
keeps every group whose single matrix is larger than that many bytes
sharded along its long side, ``P(None, None, axes)`` in the wide
orientation, instead of gathering it: each Newton-Schulz step then
multiplies local column blocks and all-reduces the small ``m x m`` Gram
matrix (``A = X X^T``); ``B X`` needs no communication. Memory per device
is ``m n / W + O(m^2)`` instead of ``m n``, at the price of one all-reduce
of ``m^2`` elements per step (``steps * m^2`` in all, against ``m n`` for
one gather).

How the mesh is found, in order: ``ShardingOptions.mesh``; the mesh in the
updates' types (``jax.typeof(x).sharding.mesh``: always set under Explicit
axes, and under Auto axes when the jitted function's inputs are committed
to a mesh); the ambient mesh of ``jax.set_mesh``; the ``.sharding`` of
concrete (not traced) updates. With none of these and more than one
device, ``"gather"``/``"distribute"`` raise; on one device they are a
no-op.

Where the results go (the parameters' own sharding):

* Explicit mesh axes (sharding in types): each update's type names its
  sharding exactly. The whole step runs inside
  ``jax.sharding.auto_axes(..., out_sharding=<the updates' shardings>)``,
  so each result has its update's sharding, and ``None`` works too on
  matrices sharded along their matrix axes (where ``optax.contrib.muon``
  raises ``ShardingTypeError``).
* Auto mesh axes: types carry no sharding under ``jax.jit`` (their spec
  is empty whatever the arrays' placement). The layout is taken, in order,
  from ``ShardingOptions.param_shardings``; from the concrete updates'
  ``.sharding`` when called outside ``jit``; and from the parameters that
  ``init`` received (:class:`Layouts`): ``init`` usually runs outside
  ``jit`` on the placed parameters, so the transform records their
  shardings (or those of ``jax.ShapeDtypeStruct`` parameters) and
  ``update`` finds them again by the tree's structure and shapes. Results
  are constrained to that layout. Only when none of these is known (a
  jitted ``init`` on Auto axes and no ``param_shardings``) are the results
  left to XLA, whose propagation takes the layout from the consumer, e.g.
  ``optax.apply_updates(params, updates)`` with sharded params, or the
  jit's ``out_shardings``.

The shardings known this way (types, ``param_shardings``, concrete arrays,
``init``'s record) are also the layouts that "distribute" plans its steps
from. They are hints: a sharding constraint changes no value, so a stale
record (parameters moved after ``init``) costs transfers, never results.
Without any, "distribute" gets XLA's own path, fine on 1-D meshes but not
on 2-D ones (4.25x the parameters' bytes on ``benchmarks/sharding.py``'s
``fsdp x model`` mesh against 1.33x, and XLA's "Involuntary full
rematerialization" warnings).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ortho_optax import routing as _routing

STRATEGIES = (None, "gather", "distribute")


class ShardingOptions(NamedTuple):
  """How :func:`scale_by_orthogonalization` spreads its work over devices.

  ``sharding="distribute"`` is ``ShardingOptions("distribute")``.

  Attributes:
    strategy: ``None``, ``"gather"`` or ``"distribute"`` (module docstring).
    mesh: a ``jax.sharding.Mesh`` or ``AbstractMesh``; ``None`` finds it
      from the updates' types, ``jax.set_mesh``, or concrete updates.
    axes: mesh axis name(s) the stacks are spread over (``"distribute"``)
      and long sides are split over (large matrices); ``None``: every
      mesh axis that is not ``Manual``.
    max_matrix_bytes: matrices larger than this (one matrix, in bytes) are
      never gathered whole: they are orthogonalized sharded along their long
      side. ``None``: no limit.
    param_shardings: the shardings of the updates (and of the results): a
      tree like the updates, a prefix of it, or a callable
      ``updates -> tree``, of ``NamedSharding`` / ``PartitionSpec`` /
      ``None`` (unknown). Under Auto axes, needed only when ``init`` did
      not see the placed parameters (a jitted ``init``): otherwise its
      record of their shardings plans the path and pins the results.
      Under Explicit axes the types already say it.
  """

  strategy: str | None = "distribute"
  mesh: Any = None
  axes: str | Sequence[str] | None = None
  max_matrix_bytes: int | None = None
  param_shardings: Any = None


def canonicalize(sharding) -> ShardingOptions:
  """Checks ``sharding`` and returns it as :class:`ShardingOptions`."""
  if isinstance(sharding, ShardingOptions):
    options = sharding
  elif sharding is None or isinstance(sharding, str):
    options = ShardingOptions(sharding)
  else:
    raise TypeError(
        "`sharding` must be None, 'gather', 'distribute' or a"
        f" ShardingOptions, got {sharding!r}."
    )
  if options.strategy not in STRATEGIES:
    name = "strategy" if isinstance(sharding, ShardingOptions) else "sharding"
    raise ValueError(
        f"Unknown `{name}` {options.strategy!r}; accepted values are"
        f" {STRATEGIES}"
        + (", or a ShardingOptions" if name == "sharding" else "")
        + "."
    )
  limit = options.max_matrix_bytes
  if limit is not None and (
      isinstance(limit, bool) or not isinstance(limit, (int, np.integer))
  ):
    raise TypeError(
        f"`max_matrix_bytes` must be None or an int >= 0, got {limit!r}."
    )
  if limit is not None and limit < 0:
    raise ValueError(
        f"`max_matrix_bytes` must be None or an int >= 0, got {limit!r}."
    )
  axes = options.axes
  if axes is not None and not isinstance(axes, str) and not (
      isinstance(axes, Sequence) and all(isinstance(a, str) for a in axes)
  ):
    raise TypeError(
        "`axes` must be None, a mesh axis name or a sequence of them, got"
        f" {axes!r}."
    )
  if options.mesh is not None and not hasattr(options.mesh, "axis_names"):
    raise TypeError(
        f"`mesh` must be a jax.sharding.Mesh or AbstractMesh, got"
        f" {options.mesh!r}."
    )
  return options


def _type_sharding(x):
  """The ``NamedSharding`` in ``x``'s type, or ``None``."""
  try:
    s = jax.typeof(x).sharding
  except (AttributeError, TypeError):
    return None
  if isinstance(s, NamedSharding) and s.mesh.axis_names:
    return s
  return None


def _concrete_sharding(x):
  """The sharding of a concrete (not traced) array, or ``None``."""
  if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
    s = getattr(x, "sharding", None)
    if isinstance(s, NamedSharding):
      return s
  return None


def _given_sharding(x):
  """The sharding ``init`` can read off a parameter, or ``None``.

  A concrete array's ``.sharding``, a ``jax.ShapeDtypeStruct``'s, or the
  one in a traced value's type (Explicit axes).
  """
  s = _concrete_sharding(x)
  if s is None and isinstance(x, jax.ShapeDtypeStruct):
    s = x.sharding if isinstance(x.sharding, NamedSharding) else None
  if s is None:
    s = _type_sharding(x)
    if s is not None and not _explicit_axes(s.mesh):
      s = None  # Auto axes under jit: the type's spec is always empty
  return s


class Layouts:
  """The parameters' shardings as ``init`` saw them, for ``update``.

  Under ``jax.jit`` with Auto mesh axes the updates' types carry no
  sharding, yet the parameters were placed by the user before ``init``,
  which usually runs outside ``jit`` on the placed arrays. ``record``
  keeps their shardings, keyed by the tree's structure and shapes;
  ``lookup`` gives them back for an update tree of that structure. They
  are hints only: a sharding constraint never changes a value, so a stale
  record (parameters moved since ``init``) costs transfers, not results.
  """

  _KEEP = 8  # trees remembered (a transform is usually used for one)

  def __init__(self):
    self._records: dict = {}

  @staticmethod
  def _key(tree):
    leaves, treedef = jax.tree_util.tree_flatten(
        tree, is_leaf=_routing._is_masked
    )
    shapes = tuple(
        None if _routing._is_masked(x) else tuple(jnp.shape(x))
        for x in leaves
    )
    return (treedef, shapes), leaves

  def record(self, tree) -> None:
    key, leaves = self._key(tree)
    shardings = [
        None if _routing._is_masked(x) else _given_sharding(x)
        for x in leaves
    ]
    if any(s is not None for s in shardings):
      self._records.pop(key, None)
      if len(self._records) >= self._KEEP:
        self._records.pop(next(iter(self._records)))
      self._records[key] = shardings

  def lookup(self, tree):
    """Per leaf of ``tree``: the recorded sharding, or ``None``."""
    key, leaves = self._key(tree)
    return self._records.get(key, [None] * len(leaves))


def find_mesh(leaves, mesh=None):
  """The mesh the transform works on, or ``None`` (see module docstring)."""
  if mesh is not None:
    return mesh
  for x in leaves:
    s = _type_sharding(x)
    if s is not None:
      return s.mesh
  ambient = jax.sharding.get_abstract_mesh()
  if ambient.axis_names:
    return ambient
  for x in leaves:
    s = _concrete_sharding(x)
    if s is not None:
      return s.mesh
  return None


def _explicit_axes(mesh) -> tuple[str, ...]:
  return tuple(
      a
      for a, t in zip(mesh.axis_names, mesh.axis_types)
      if t == AxisType.Explicit
  )


def _work_axes(mesh, axes) -> tuple[str, ...]:
  if axes is None:
    return tuple(
        a
        for a, t in zip(mesh.axis_names, mesh.axis_types)
        if t != AxisType.Manual and mesh.shape[a] > 1
    )
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  for a in axes:
    if a not in mesh.axis_names:
      raise ValueError(
          f"Unknown mesh axis {a!r} in `axes`; the mesh has axes"
          f" {tuple(mesh.axis_names)}."
      )
  return axes


def _has_explicit(x) -> bool:
  s = _type_sharding(x)
  return s is not None and bool(_explicit_axes(s.mesh))


def _param_targets(options, updates, leaves_index, mesh):
  """Per matrix leaf: the sharding to constrain the result to, or None."""
  if options.param_shardings is None:
    return [None] * len(leaves_index)
  tree = options.param_shardings
  if callable(tree):
    tree = tree(updates)

  def is_target(s):
    return (
        s is None
        or isinstance(s, (NamedSharding, P))
        or _routing._is_masked(s)
    )

  flat = []

  def expand(s, x):
    # ``s`` covers the subtree ``x`` (a prefix tree broadcasts); masked
    # leaves of ``updates`` count as leaves, as in the caller.
    count = len(jax.tree_util.tree_leaves(x, is_leaf=_routing._is_masked))
    if _routing._is_masked(s):
      s = None
    elif isinstance(s, P):
      if mesh is None:
        raise ValueError(
            "`param_shardings` holds PartitionSpecs but no mesh was found;"
            " pass NamedShardings or ShardingOptions(mesh=...)."
        )
      s = NamedSharding(mesh, s)
    flat.extend([s] * count)

  jax.tree_util.tree_map(expand, tree, updates, is_leaf=is_target)
  return [flat[i] for i in leaves_index]


def _spec_axes(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def matrix_spec(shape, dn, spec):
  """Where a leaf's matrix ``(B, m, n)`` (wide orientation) is sharded.

  Args:
    shape: the leaf's shape.
    dn: its dimension numbers.
    spec: its ``PartitionSpec``.

  Returns:
    ``(row_axes, col_axes)``, the mesh axes sharding the rows and columns
    of the wide-oriented matrix, or ``None`` when the layout does not map
    onto ``(B, m, n)`` cleanly: a sharded batch axis (a split axis sharded
    by parts counts as one), an unconstrained entry, or a reshape merging
    two sharded axes (or a sharded axis that is not the major one of the
    merged group).
  """
  entries = list(spec) + [None] * (len(shape) - len(spec))
  if any(e is P.UNCONSTRAINED for e in entries):
    return None
  split, _ = _routing.split_of(dn)
  if split is not None:
    # The split axis is read as (parts, size): its sharding, if any, is on
    # the parts (a batch axis); a layout within a part is not clean.
    split %= len(shape)
    entries = entries[:split] + [entries[split], None] + entries[split + 1:]
  shape, dn = _routing.matrix_view(shape, dn)
  ndim = len(shape)
  axes_of = [_spec_axes(e) for e in entries]
  batch, red, out = _routing.normalize_dimension_numbers(dn, ndim)

  def merged(dims):
    sharded = [d for d in dims if axes_of[d]]
    if not sharded:
      return ()
    major = [d for d in dims if shape[d] > 1]
    if len(sharded) == 1 and major and sharded[0] == major[0]:
      return axes_of[sharded[0]]
    return None

  b, r, c = merged(batch), merged(red), merged(out)
  if b is None or r is None or c is None or b:
    return None
  if math.prod(shape[a] for a in red) > math.prod(shape[a] for a in out):
    r, c = c, r
  return r, c


def _p(*entries):
  return P(*(e if e else None for e in entries))


def _distribute_path(layout, axes, mesh, count):
  """Layouts from the stack's own to whole matrices, one all-to-all each.

  Returns the list of layouts and the axes that end up splitting the
  stack. The axes that shard the matrices must split the stack (that is
  what makes each matrix whole); a mesh axis the matrices are replicated
  over splits it too, but only while there are enough matrices for every
  device to get a real one (``count >= W``): splitting further would add
  padding, and an all-gather on the way back, to save no work.
  """
  if layout is None:
    return [_p(tuple(axes), (), ())], tuple(axes)
  rows, cols = layout
  dim0 = tuple(a for a in cols + rows if mesh.shape[a] > 1)
  width = math.prod(mesh.shape[a] for a in dim0)
  for a in axes:
    if a not in dim0 and mesh.shape[a] > 1 and count >= width * mesh.shape[a]:
      dim0 += (a,)
      width *= mesh.shape[a]
  path = [
      _p((), rows, cols),
      _p(cols, rows, ()),  # the column axes move to the stack axis
      _p(cols + rows, (), ()),  # then the row axes
      _p(dim0, (), ()),  # replicated axes split the stack: a local slice
  ]
  unique = [path[0]]
  for spec in path[1:]:
    if spec != unique[-1]:
      unique.append(spec)
  return unique, dim0


def _plan(members, layouts, strategy, axes, mesh):
  """Splits one shape's matrices into stacks: ``[(layout, members), ...]``.

  ``"gather"`` and the large-matrix path keep one stack per layout (no
  conversion). ``"distribute"`` does too unless merging saves padded
  slots (``ceil(n1 / W) + ceil(n2 / W) > ceil((n1 + n2) / W)``, e.g. the
  up and down projections of a few layers under FSDP, which are sharded
  along different sides once oriented wide); then the stack takes the
  layout of its largest part and the other matrices are resharded to it.
  With ``None`` (or no mesh) there is one stack per shape.
  """
  if strategy is None or mesh is None or not axes:
    return [(None, list(members))]
  by_layout: dict = {}
  for j in members:
    by_layout.setdefault(layouts[j], []).append(j)
  plans = list(by_layout.items())
  if strategy != "distribute" or len(plans) == 1 or None in by_layout:
    return plans

  def slots(layout, count):
    _, dim0 = _distribute_path(layout, axes, mesh, count)
    width = math.prod(mesh.shape[a] for a in dim0)
    return -(-count // width)

  apart = sum(slots(layout, len(js)) for layout, js in plans)
  target = max(plans, key=lambda p: len(p[1]))[0]
  if slots(target, len(members)) < apart:
    return [(target, list(members))]
  return plans


def _constrain(x, mesh, spec):
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def _process_stack(fn, stack, options, mesh, axes, layout):
  """Orthogonalizes one ``(N, m, n)`` stack where the strategy says.

  ``layout`` is the stack's ``(row_axes, col_axes)`` when known (see
  :func:`matrix_spec`), else ``None``.
  """
  strategy = options.strategy
  if strategy is None or mesh is None or not axes:
    return fn(stack)
  m, n = stack.shape[-2:]
  nbytes = m * n * jnp.dtype(stack.dtype).itemsize
  if options.max_matrix_bytes is not None and nbytes > options.max_matrix_bytes:
    # Too large to hold whole: split the long side, all-reduce the Gram.
    spec = _p((), (), tuple(axes))
    return _constrain(fn(_constrain(stack, mesh, spec)), mesh, spec)
  if strategy == "gather":
    spec = P()
    return _constrain(fn(_constrain(stack, mesh, spec)), mesh, spec)
  count = stack.shape[0]
  path, dim0 = _distribute_path(layout, axes, mesh, count)
  width = math.prod(mesh.shape[a] for a in dim0)
  if count * (width + 1) < 4 * width:
    # So few matrices that the padded all-to-alls (about 4 shards of one
    # matrix each way per device) would move more than gathering them.
    return _process_stack(
        fn, stack, options._replace(strategy="gather"), mesh, axes, layout
    )
  padded = -(-count // width) * width
  if padded != count:
    # Zero matrices orthogonalize to zero matrices: padding is harmless.
    stack = jnp.concatenate(
        [stack, jnp.zeros((padded - count, m, n), stack.dtype)], axis=0
    )
  for spec in path:
    stack = _constrain(stack, mesh, spec)
  out = _constrain(fn(stack), mesh, path[-1])
  for spec in reversed(path[:-1]):
    out = _constrain(out, mesh, spec)
  return out[:count]


def _same_mesh(s, mesh) -> bool:
  return (
      s is not None
      and mesh is not None
      and tuple(s.mesh.axis_names) == tuple(mesh.axis_names)
      and tuple(s.mesh.axis_sizes) == tuple(mesh.axis_sizes)
  )


def map_matrix_groups(
    fn, updates, dns, options: ShardingOptions, layouts: Layouts | None = None
):
  """Like :func:`_routing.map_matrix_groups`, placing the work by ``options``.

  Matrices are grouped by shape (as in routing) and, within a shape, by
  where their rows and columns are sharded (:func:`matrix_spec`), so each
  stack changes layout with one collective per step.

  Args:
    fn: batched ``(N, m, n) -> (N, m, n)``, applied to whole matrices.
    updates: the update tree.
    dns: its dimension-numbers tree (``None`` leaves pass through).
    options: where to run ``fn``, see :class:`ShardingOptions`.
    layouts: the parameters' shardings recorded by ``init``
      (:class:`Layouts`), used where nothing else says the layout.

  Returns:
    The tree with every matrix leaf replaced by ``fn``'s result, each with
    its update's sharding (see the module docstring for Auto mesh axes).
  """
  leaves, treedef = jax.tree_util.tree_flatten(
      updates, is_leaf=_routing._is_masked
  )
  dn_leaves = treedef.flatten_up_to(dns)
  index = [
      i
      for i, (x, dn) in enumerate(zip(leaves, dn_leaves))
      if dn is not None and not _routing._is_masked(x)
  ]
  if not index:
    return updates
  mats = [leaves[i] for i in index]
  mat_dns = [dn_leaves[i] for i in index]
  mesh = find_mesh(mats, options.mesh)
  if mesh is None and options.strategy is not None:
    if jax.device_count() > 1:
      raise ValueError(
          f"sharding={options.strategy!r} needs a mesh, and none was found:"
          " the updates' types carry none, no mesh is set with"
          " jax.set_mesh, and the updates are traced. Pass"
          " ShardingOptions(strategy, mesh=...), call under"
          " `with jax.set_mesh(mesh):`, or use Explicit mesh axes."
      )
  axes = _work_axes(mesh, options.axes) if mesh is not None else ()
  targets = _param_targets(options, updates, index, mesh)
  explicit = mesh is not None and any(_has_explicit(x) for x in mats)
  own = _type_sharding if explicit else _concrete_sharding
  known = [t if t is not None else own(x) for t, x in zip(targets, mats)]
  if layouts is not None and not explicit:
    recorded = layouts.lookup(updates)
    known = [
        NamedSharding(mesh, r.spec)
        if s is None and _same_mesh(r, mesh) else s
        for s, r in zip(known, (recorded[i] for i in index))
    ]
  specs = [
      None if s is None else matrix_spec(x.shape, dn, s.spec)
      for s, x, dn in zip(known, mats, mat_dns)
  ]

  def core(mats, inner_mesh):
    # One routing group per leaf, so that stacks can be formed here by
    # shape *and* layout.
    pieces = [
        _routing.group_matrices([x], [dn]) for x, dn in zip(mats, mat_dns)
    ]
    buckets: dict = {}
    for j, (groups, _) in enumerate(pieces):
      stack = groups[0].stack
      key = (stack.shape[-2:], jnp.dtype(stack.dtype).name)
      buckets.setdefault(key, []).append(j)
    results = [None] * len(mats)
    for key in sorted(buckets):
      for layout, members in _plan(
          buckets[key], specs, options.strategy, axes, inner_mesh
      ):
        parts = []
        for j in members:
          part = pieces[j][0][0].stack
          if layout is not None and specs[j] != layout:
            part = _constrain(part, inner_mesh, _p((), *layout))
          parts.append(part)
        stack = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
        out = _process_stack(fn, stack, options, inner_mesh, axes, layout)
        offset = 0
        for j, part in zip(members, parts):
          groups, context = pieces[j]
          count = part.shape[0]
          results[j] = _routing.ungroup_matrices(
              [out[offset : offset + count]], groups, context
          )[0]
          offset += count
    return results

  if explicit:
    explicit_axes = _explicit_axes(mesh)

    def auto_core(mats):
      # Inside auto_axes the Explicit axes are Auto: XLA places everything
      # and the results come back with ``out_sharding``.
      return core(mats, jax.sharding.get_abstract_mesh())

    out = jax.sharding.auto_axes(
        auto_core, axes=explicit_axes, out_sharding=known
    )(mats)
  else:
    out = core(mats, mesh)
    out = [
        y if s is None or mesh is None else
        jax.lax.with_sharding_constraint(y, s)
        for y, s in zip(out, known)
    ]
  for i, y in zip(index, out):
    leaves[i] = y
  return jax.tree_util.tree_unflatten(treedef, leaves)
