"""Stateful matrix stacks: where the low-rank transforms' work runs.

Dion, Dion2 and Trion keep a momentum buffer per matrix that the step itself
edits (error feedback), so they cannot use the stateless
``sharding.map_matrix_groups``. :func:`map_matrix_groups`
here stacks the updates *and* the state of same-shape matrices, calls one
step per stack, and scatters updates and new state back, each with its
input's sharding.

Where the work runs is a :class:`Placement`: the step marks the arrays it
hands to the per-matrix work with :meth:`Placement.to_owners` and the small
results it hands back with :meth:`Placement.to_all`. With
``sharding="distribute"`` the first spreads a stack over the devices (whole
matrices per device, the Essential AI / Dion layout) and the second gathers
the results on every device; everything else runs where the arrays already
are. A step passes only low-rank factors through :meth:`Placement.to_all`
(Dion's ``P``; Dion2's selected rows; Trion's projections), so the way back
costs ``O((m + n) r)`` per matrix instead of ``m n``, and each device
rebuilds its own shard of the update and of the new momentum from the
factors.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ortho_optax import routing as _routing
from ortho_optax.parallel import sharding as _sharding


def like_params_mesh(x: jax.Array, like) -> jax.Array:
  """``x`` replicated on the mesh of ``like`` (a param leaf), if it has one.

  State created from scratch (not from the params, like Dion's random
  :math:`Q_0`) would otherwise live on the default device while the rest
  of the state lives on the params' mesh.
  """
  s = _sharding._concrete_sharding(like)
  if s is not None:
    return jax.device_put(x, NamedSharding(s.mesh, P()))
  s = _sharding._type_sharding(like)
  if s is not None:  # traced, with the mesh in its type (Explicit axes)
    return jax.sharding.reshard(x, NamedSharding(s.mesh, P()))
  return x


class Placement(NamedTuple):
  """Where the per-matrix work of a low-rank step runs (module docstring).

  Attributes:
    strategy: ``None``, ``"gather"`` or ``"distribute"``.
    mesh: the mesh, or ``None`` (then nothing is constrained).
    axes: the mesh axes the stacks are spread over.
    layout: where the rows and columns of the stack's matrices are sharded,
      ``(row_axes, col_axes)`` (see ``sharding.matrix_spec``), when every
      matrix of the stack has the same known layout; else ``None``.
    replicated: the stacks handed to :meth:`to_owners` are replicated on
      every device (per-matrix state, like Shampoo's statistics), so
      reaching the owners is a local slice and only the results travel.
  """

  strategy: str | None
  mesh: Any
  axes: tuple[str, ...]
  layout: tuple | None = None
  replicated: bool = False

  @property
  def active(self) -> bool:
    return (
        self.strategy is not None and self.mesh is not None and bool(self.axes)
    )

  def _constrain(self, x, spec):
    return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

  def pin(self, *stacks: jax.Array) -> tuple[jax.Array, ...]:
    """Keeps stacks ``(N, m, n)`` in their matrices' own layout.

    Without it, XLA may carry the layout the work asks for (see
    :meth:`to_owners`) back into the reshapes that build the stack, and
    reshuffle the updates there instead of in one collective.
    """
    if self.mesh is None or self.layout is None:
      return stacks
    spec = _sharding._p((), *self.layout)
    return tuple(self._constrain(s, spec) for s in stacks)

  def to_owners(self, *stacks: jax.Array) -> tuple[jax.Array, ...]:
    """Places stacks ``(N, m, n)`` (pinned) for the per-matrix work.

    ``"distribute"``: padded with zeros to a multiple of the number of
    devices ``W`` that split the stack and split along the stack axis, so
    each device holds whole matrices, in the steps of
    ``sharding.map_matrix_groups`` (one collective each from the stack's
    layout; a local slice for replicated matrices); so few matrices that
    the padded trip would move more than gathering them (``N (W + 1) < 4
    W``) are gathered instead. Stacks marked ``replicated`` travel no
    bytes to their owners, so they are split whenever that saves work
    (``N >= 2``: with one matrix every device would still factor one, the
    real one or a zero pad). ``"gather"``: replicated. Otherwise
    unchanged.
    """
    if not self.active:
      return stacks
    count = stacks[0].shape[0]
    split = self._split(count)
    if split is None:
      return tuple(self._constrain(s, P()) for s in stacks)
    path, width = split
    padded = -(-count // width) * width
    out = []
    for s in stacks:
      if padded != count:
        pad = jnp.zeros((padded - count,) + s.shape[1:], s.dtype)
        s = jnp.concatenate([s, pad], axis=0)
        if self.replicated:
          # Padded where it is (else XLA may shard the concatenation
          # along the rows and all-to-all it to the owners).
          s = self._constrain(s, P())
      for spec in path:
        # Stacks of vectors (eigenvalues) split along the stack axis too.
        s = self._constrain(s, P(*spec[: s.ndim]))
      out.append(s)
    return tuple(out)

  def _split(self, count: int):
    """``(path, width)`` of :meth:`to_owners` when it splits a stack of
    ``count`` matrices over ``width`` devices, else ``None``."""
    path, dim0 = _sharding._distribute_path(
        self.layout, self.axes, self.mesh, count
    )
    width = math.prod(self.mesh.shape[a] for a in dim0)
    few = count < 2 if self.replicated else count * (width + 1) < 4 * width
    if self.strategy == "gather" or few:
      return None
    return path, width

  def on_owners(self, fn: Callable, *stacks: jax.Array):
    """``fn(*stacks)`` run where :meth:`to_owners` places the stacks.

    A split stack runs in a ``shard_map`` over its stack axis, so that
    each device runs ``fn`` on its own matrices only; the results are
    all-gathered at its end, one collective each. Without it XLA keeps
    whole the work it cannot split along the stack axis (a LAPACK call,
    the per-matrix loop of ``engines.lapack``, a loop whose stopping test
    spans the stack): it gathers the padded stack and runs all of it on
    every device. ``replicated`` stacks are pinned replicated first, else
    XLA carries the owners' layout back into the products that made them
    (an all-reduce and a permute of every statistic). Returns ``fn``'s
    outputs, replicated stacks of the padded length; pass them to
    :meth:`to_all`.
    """
    split = self._split(stacks[0].shape[0]) if self.active else None
    if split is not None and self.replicated:
      # Replicated first (state is), so that XLA does not carry the
      # owners' layout back into the products that made the stacks.
      stacks = tuple(self._constrain(s, P()) for s in stacks)
    placed = self.to_owners(*stacks)
    axes = None if split is None else split[0][-1][0]  # the stack axis'
    if axes is None:  # not split (no axis splits the stack: width 1)
      return fn(*placed)
    axes = axes if isinstance(axes, tuple) else (axes,)

    def local(*xs):
      return jax.tree.map(
          lambda y: jax.lax.all_gather(y, axes, axis=0, tiled=True), fn(*xs)
      )

    # No collectives but the last (each matrix is whole), so no varying
    # axis types to check: engines' loops start from constants.
    return jax.shard_map(
        local,
        mesh=self.mesh,
        in_specs=(P(axes),) * len(placed),
        out_specs=P(),
        check_vma=False,
    )(*placed)

  def to_all(self, count: int, *stacks: jax.Array) -> tuple[jax.Array, ...]:
    """Drops the padding of :meth:`to_owners` and replicates the stacks."""
    stacks = tuple(s[:count] for s in stacks)
    if not self.active:
      return stacks
    return tuple(self._constrain(s, P()) for s in stacks)


# step(grads, momentum, extras, placement, transposed)
#   -> (updates, new momentum, new extras), on stacks (N, m, n) with m <= n
#   in the working dtype; ``extras`` are the stacked per-matrix extra states.
# ``step(g, m, extras, placement, transposed[, operands=...])``.
StepFn = Callable[..., tuple[jax.Array, jax.Array, tuple]]


def _is_masked(x) -> bool:
  return x is None or isinstance(x, optax.MaskedNode)


def working_dtype(dtype) -> jnp.dtype:
  """At least float32 (complex64 for complex leaves)."""
  return jnp.promote_types(dtype, jnp.float32)


def oriented_shape(shape, dn) -> tuple[int, int, int]:
  """``(batch, m, n)`` of a leaf's matrices once oriented wide (m <= n)."""
  fan_in, fan_out = _routing.fan_in_out(shape, dn)
  shape, dn = _routing.matrix_view(shape, dn)  # the parts of a split
  batch_axes, _, _ = _routing.normalize_dimension_numbers(dn, len(shape))
  batch = math.prod(shape[a] for a in batch_axes)
  return batch, min(fan_in, fan_out), max(fan_in, fan_out)


def _known_sharding(x):
  s = _sharding._type_sharding(x)
  return s if s is not None else _sharding._concrete_sharding(x)


def map_matrix_groups(
    step: StepFn,
    updates,
    mu,
    extras: tuple,
    dns,
    options: _sharding.ShardingOptions,
    layouts: _sharding.Layouts | None = None,
    operands=None,
):
  """Runs ``step`` once per stack of same-shape matrices, with their state.

  Every matrix leaf of ``updates`` (and its momentum in ``mu``) is reshaped
  through its dimension numbers to ``(B, fan_in, fan_out)``, transposed
  when tall, and stacked with the other leaves of the same oriented shape,
  working dtype and orientation (``step`` is told whether its matrices were
  transposed: Dion2 and Trion follow their references, whose choices
  depend on the original orientation). ``extras`` are trees like ``updates``
  holding per-matrix states of shape ``(B, ...)``; they are concatenated
  along their first axis in the same order.

  Args:
    step: the per-stack step (see :data:`StepFn`).
    updates: the update tree.
    mu: the momentum tree (like ``updates``).
    extras: a tuple of extra state trees.
    dns: the dimension-numbers tree of ``updates``.
    options: the sharding strategy; see ``ortho_optax.parallel.sharding``
      for how the mesh is found.
    layouts: the parameters' shardings recorded by ``init``
      (``sharding.Layouts``), used where nothing else says the layout.
    operands: arrays the step needs besides the stacks (a step count),
      passed to it as ``step(..., operands=operands)``. Under Explicit mesh
      axes the step runs inside ``jax.sharding.auto_axes``, where a closed
      over array of the outer (Explicit) mesh type cannot be used.

  Returns:
    ``(updates, mu, extras)`` with every matrix leaf replaced, each with its
    input's sharding; other leaves unchanged.
  """
  u_leaves, treedef = jax.tree.flatten(updates, is_leaf=_is_masked)
  dn_leaves = treedef.flatten_up_to(dns)
  mu_leaves = treedef.flatten_up_to(mu)
  ex_leaves = [treedef.flatten_up_to(e) for e in extras]
  index = [
      i
      for i, (x, dn, m) in enumerate(zip(u_leaves, dn_leaves, mu_leaves))
      if dn is not None
      and not _is_masked(x)
      and not _is_masked(dn)
      and not _is_masked(m)
  ]
  if not index:
    return updates, mu, extras
  gs = [u_leaves[i] for i in index]
  ms = [mu_leaves[i] for i in index]
  es = [[e[i] for i in index] for e in ex_leaves]
  mat_dns = [dn_leaves[i] for i in index]
  mesh = _sharding.find_mesh(gs + ms, options.mesh)
  if mesh is None and options.strategy is not None and jax.device_count() > 1:
    raise ValueError(
        f"sharding={options.strategy!r} needs a mesh, and none was found:"
        " the updates' types carry none, no mesh is set with jax.set_mesh,"
        " and the updates are traced. Pass ShardingOptions(strategy,"
        " mesh=...), call under `with jax.set_mesh(mesh):`, or use Explicit"
        " mesh axes."
    )
  axes = _sharding._work_axes(mesh, options.axes) if mesh is not None else ()
  explicit = mesh is not None and any(
      _sharding._has_explicit(x) for x in gs + ms
  )
  targets = _sharding._param_targets(options, updates, index, mesh)
  own = _sharding._type_sharding if explicit else _sharding._concrete_sharding
  known = [t if t is not None else own(x) for t, x in zip(targets, gs)]
  if layouts is not None and not explicit and mesh is not None:
    recorded = layouts.lookup(updates)
    known = [
        NamedSharding(mesh, r.spec)
        if s is None and _sharding._same_mesh(r, mesh) else s
        for s, r in zip(known, (recorded[i] for i in index))
    ]
  specs = [
      None if s is None else _sharding.matrix_spec(x.shape, dn, s.spec)
      for s, x, dn in zip(known, gs, mat_dns)
  ]

  def core(gs, ms, es, inner_mesh, ops=None):
    run = step if ops is None else functools.partial(step, operands=ops)
    buckets: dict = {}
    for j, (g, dn) in enumerate(zip(gs, mat_dns)):
      batch, m, n = oriented_shape(g.shape, dn)
      fan_in, _ = _routing.fan_in_out(g.shape, dn)
      transposed = fan_in > m
      wd = working_dtype(g.dtype)
      key = (m, n, jnp.dtype(wd).name, transposed)
      buckets.setdefault(key, []).append(j)
    us, mus_new = [None] * len(gs), [None] * len(gs)
    es_new = [[None] * len(gs) for _ in es]
    for key in sorted(buckets):
      m, n, wd, transposed = key
      members = buckets[key]
      layout = specs[members[0]]
      if any(specs[j] != layout for j in members):
        layout = None
      placement = Placement(
          options.strategy if inner_mesh is not None else None,
          inner_mesh,
          axes,
          layout,
      )

      def oriented(x, dn, wd=wd, transposed=transposed):
        x = _routing.to_matrix(x.astype(wd), dn)
        return jnp.swapaxes(x, -1, -2) if transposed else x

      g_parts = [oriented(gs[j], mat_dns[j]) for j in members]
      m_parts = [oriented(ms[j], mat_dns[j]) for j in members]
      counts = [p.shape[0] for p in g_parts]
      g_stack = jnp.concatenate(g_parts) if len(members) > 1 else g_parts[0]
      m_stack = jnp.concatenate(m_parts) if len(members) > 1 else m_parts[0]
      e_stacks = tuple(
          jnp.concatenate([e[j] for j in members])
          if len(members) > 1
          else e[members[0]]
          for e in es
      )
      if g_stack.size == 0:
        # Nothing to orthogonalize: no update, the momentum keeps the
        # gradient (there is none), extras are unchanged.
        u_stack, m_stack_new, e_new = (
            jnp.zeros_like(g_stack),
            m_stack + g_stack,
            e_stacks,
        )
      else:
        g_stack, m_stack = placement.pin(g_stack, m_stack)
        u_stack, m_stack_new, e_new = run(
            g_stack, m_stack, e_stacks, placement, transposed
        )
        u_stack, m_stack_new = placement.pin(u_stack, m_stack_new)
      offset = 0
      for j, count in zip(members, counts):
        sl = slice(offset, offset + count)
        offset += count

        def back(y, like, dn=mat_dns[j], transposed=transposed):
          if transposed:
            y = jnp.swapaxes(y, -1, -2)
          return _routing.from_matrix(y, dn, like.shape).astype(like.dtype)

        us[j] = back(u_stack[sl], gs[j])
        mus_new[j] = back(m_stack_new[sl], ms[j])
        for e_list, e_out, e_in in zip(es_new, e_new, es):
          e_list[j] = e_out[sl].astype(e_in[j].dtype)
    return us, mus_new, es_new

  if explicit:
    replicated = NamedSharding(mesh, P())

    def target(x):
      s = _sharding._type_sharding(x)
      return s if s is not None else replicated

    out_sharding = (
        [target(x) for x in gs],
        [target(x) for x in ms],
        [[target(x) for x in e] for e in es],
    )
    out = jax.sharding.auto_axes(
        lambda gs, ms, es, ops: core(
            gs, ms, es, jax.sharding.get_abstract_mesh(), ops
        ),
        axes=_sharding._explicit_axes(mesh),
        out_sharding=out_sharding,
    )(gs, ms, es, operands)
  else:
    us, mus_new, es_new = core(gs, ms, es, mesh, operands)

    def pin(ys, xs, ts=None):
      ts = ts or [None] * len(xs)
      out = []
      for y, x, t in zip(ys, xs, ts):
        s = t if t is not None else _known_sharding(x)
        out.append(
            y if s is None or mesh is None
            else jax.lax.with_sharding_constraint(y, s)
        )
      return out

    out = (
        pin(us, gs, known),
        pin(mus_new, ms, known),
        [pin(e_new, e) for e_new, e in zip(es_new, es)],
    )
  us, mus_new, es_new = out
  for k, i in enumerate(index):
    u_leaves[i] = us[k]
    mu_leaves[i] = mus_new[k]
    for e_leaves, e_new in zip(ex_leaves, es_new):
      e_leaves[i] = e_new[k]
  return (
      jax.tree.unflatten(treedef, u_leaves),
      jax.tree.unflatten(treedef, mu_leaves),
      tuple(jax.tree.unflatten(treedef, e) for e in ex_leaves),
  )
