"""Init/update consistency: a changed tree is an error naming leaf and shapes.

An optimizer state is built for one tree of parameters. Updating it with
another (a transposed kernel, a reshaped bias, an added or renamed leaf)
fails deep inside some transform with a message about broadcasting or
"multiplying a sequence", or worse, routes a leaf to another branch. The
check here runs at the start of ``update`` and compares, statically:

* the updates with ``params`` (same structure, same leaf shapes);
* the state with the state that ``init`` would build for these ``params``
  (or, without ``params``, for the updates), found with ``jax.eval_shape``:
  a leaf whose shape changed, a leaf routed elsewhere, an added or a missing
  leaf all change that state's structure or shapes.

Nothing is recorded at ``init`` (the state is the optimizer's own) and
nothing runs on the device: under ``jit`` the check costs one abstract
trace of ``init`` per compilation. Only shapes are compared, never dtypes
(bfloat16 gradients for float32 parameters are fine).
"""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax

# The number of mismatched leaves a message lists.
_MAX_LISTED = 5
# The number of tree signatures whose abstract init state is kept.
_MAX_CACHED = 8

_LOCAL = threading.local()


def _is_empty(x) -> bool:
  return x is None or isinstance(x, optax.MaskedNode)


def _shape(x) -> tuple[int, ...]:
  return tuple(np.shape(x))


def _where(path) -> str:
  return jax.tree_util.keystr(path) or "<root>"


def _abstract(tree):
  """``tree`` with every array leaf replaced by its shape and dtype (and a
  concrete array's sharding, which an ``init`` may read)."""

  def spec(x):
    sharding = None
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
      sharding = x.sharding
    return jax.ShapeDtypeStruct(
        _shape(x), jnp.result_type(x), sharding=sharding
    )

  return jax.tree.map(spec, tree)


def check_like_init(
    tx: optax.GradientTransformation, name: str
) -> optax.GradientTransformationExtraArgs:
  """``tx`` whose ``update`` first checks its arguments against ``init``.

  The state and ``init`` are ``tx``'s own. A check already running further
  out (a named optimizer around its transforms) covers the whole state, so
  nested checks are skipped.

  Args:
    tx: the transformation.
    name: how the messages call it (e.g. ``"muon"``).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  inner = optax.with_extra_args_support(tx)
  # init's abstract state per tree signature: init is a pure function of
  # the shapes and dtypes, and eager updates would otherwise trace it
  # every step.
  expected_states: dict = {}

  def expected_state(ref):
    try:
      leaves, treedef = jax.tree.flatten(_abstract(ref))
    except Exception:  # pylint: disable=broad-except
      return None  # leaves that are not arrays: the update will say
    key = (treedef, tuple((x.shape, x.dtype, x.sharding) for x in leaves))
    if key not in expected_states:
      if len(expected_states) >= _MAX_CACHED:
        expected_states.clear()
      try:
        expected_states[key] = jax.eval_shape(
            tx.init, jax.tree.unflatten(treedef, leaves)
        )
      except Exception:  # pylint: disable=broad-except
        # init rejects this tree itself (or cannot run abstractly): leave
        # the error, if any, to the update.
        expected_states[key] = None
    return expected_states[key]

  def update_fn(updates, state, params=None, **extra_args):
    if getattr(_LOCAL, "inside", False):
      return inner.update(updates, state, params, **extra_args)
    check_update(expected_state, updates, state, params, name)
    _LOCAL.inside = True
    try:
      return inner.update(updates, state, params, **extra_args)
    finally:
      _LOCAL.inside = False

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def check_update(expected_state, updates, state, params, name: str) -> None:
  """Raises ``ValueError`` naming the leaves that differ from ``init``'s tree.

  Args:
    expected_state: ``params -> `` the abstract state ``init`` builds for
      them (``None``: unknown, no check).
    updates: the updates passed to ``update``.
    state: the state passed to ``update``.
    params: the params passed to ``update`` (or ``None``).
    name: the transformation's name, for the message.
  """
  if params is not None:
    _check_updates_match_params(updates, params, name)
  ref = updates if params is None else params
  expected = expected_state(ref)
  if expected is None:
    return
  lines = _state_mismatches(expected, state, ref)
  if lines:
    what = "updates" if params is None else "params"
    raise ValueError(
        f"{name}: the {what} do not match the tree the optimizer state was"
        f" initialized with: {_join(lines)}. `init` and `update` must see"
        " the same tree structure and leaf shapes; call `init` again after"
        " changing the model."
    )


def _join(lines: list[str]) -> str:
  shown = "; ".join(lines[:_MAX_LISTED])
  if len(lines) > _MAX_LISTED:
    shown += f"; and {len(lines) - _MAX_LISTED} more"
  return shown


def _check_updates_match_params(updates, params, name: str) -> None:
  """``None`` and masked leaves on either side match anything."""
  u_flat, u_def = jax.tree_util.tree_flatten_with_path(
      updates, is_leaf=_is_empty
  )
  p_flat, p_def = jax.tree_util.tree_flatten_with_path(
      params, is_leaf=_is_empty
  )
  lines = []
  if u_def == p_def:
    for (path, u), (_, p) in zip(u_flat, p_flat):
      if _is_empty(u) or _is_empty(p):
        continue
      if _shape(u) != _shape(p):
        lines.append(
            f"leaf {_where(path)} has shape {_shape(u)} in the updates and"
            f" {_shape(p)} in the params"
        )
  else:
    u_paths = {path for path, _ in u_flat}
    p_paths = {path for path, _ in p_flat}
    lines += [
        f"leaf {_where(path)} (shape {_shape(x)}) is in the updates but not"
        " in the params"
        for path, x in u_flat
        if path not in p_paths
    ]
    lines += [
        f"leaf {_where(path)} (shape {_shape(x)}) is in the params but not"
        " in the updates"
        for path, x in p_flat
        if path not in u_paths
    ]
    if not lines:
      lines.append(f"their tree structures differ: {u_def} and {p_def}")
  if lines:
    raise ValueError(
        f"{name}: the updates do not match the params: {_join(lines)}."
    )


def _match_leaf(state_path, leaf_paths: dict, max_len: int):
  """The longest leaf path of the params that ends ``state_path``."""
  for k in range(min(len(state_path), max_len), -1, -1):
    suffix = tuple(state_path[len(state_path) - k:])
    if suffix in leaf_paths:
      return suffix
  return None


def _removed_leaf(path, prefixes, leaves):
  """The params path of a state leaf whose param is gone, or None.

  Below a known params-like prefix of the state (``.mu``), the rest of the
  path; else the trailing keys of the kinds the params' paths use, from
  one of the kind of their top level (``['b']`` of ``...[0].mu['b']``).
  """
  for prefix in sorted(prefixes, key=len, reverse=True):
    if path[: len(prefix)] == prefix and len(path) > len(prefix):
      return path[len(prefix):]
  if not leaves or () in leaves:
    return None
  kinds = {type(k) for p in leaves for k in p}
  top = {type(p[0]) for p in leaves}
  start = len(path)
  while start > 0 and type(path[start - 1]) in kinds:
    start -= 1
  while start < len(path) and type(path[start]) not in top:
    start += 1
  return path[start:] or None


def _state_mismatches(expected, state, ref) -> list[str]:
  """Why ``state`` is not the state ``init`` builds for ``ref`` (shapes)."""
  exp_flat, exp_def = jax.tree_util.tree_flatten_with_path(expected)
  act_flat, act_def = jax.tree_util.tree_flatten_with_path(state)
  exp = {tuple(p): _shape(x) for p, x in exp_flat}
  act = {tuple(p): _shape(x) for p, x in act_flat}
  if exp_def == act_def and exp == act:
    return []
  leaves = {
      tuple(p): _shape(x)
      for p, x in jax.tree_util.tree_flatten_with_path(ref)[0]
  }
  max_len = max((len(p) for p in leaves), default=0)

  def match(path):
    return _match_leaf(path, leaves, max_len)

  # Where the params-like trees sit in the state (e.g. `.mu`), to name a
  # leaf that the params no longer have.
  prefixes = set()
  for path in exp:
    leaf = match(path)
    if leaf:
      prefixes.add(path[: len(path) - len(leaf)])

  init_shapes: dict = {}  # leaf path -> shapes the state had for it
  changed: dict = {}  # leaf path -> True if the state had it
  unattributed = []
  for path in list(exp) + [p for p in act if p not in exp]:
    e, a = exp.get(path), act.get(path)
    if e == a:
      continue
    leaf = match(path)
    if leaf is None and a is not None:
      leaf = _removed_leaf(path, prefixes, leaves)
    if leaf is None:
      if a is None:
        unattributed.append(
            f"the state has no leaf {_where(path)} (shape {e})"
        )
      elif e is None:
        unattributed.append(
            f"the state leaf {_where(path)} (shape {a}) has no counterpart"
        )
      else:
        unattributed.append(
            f"the state leaf {_where(path)} has shape {a} where these need"
            f" {e}"
        )
      continue
    changed.setdefault(leaf, False)
    if a is not None:
      changed[leaf] = True
      init_shapes.setdefault(leaf, []).append(a)

  lines = []
  for leaf, had in changed.items():
    now = leaves.get(leaf)
    if not had:
      lines.append(
          f"leaf {_where(leaf)} (shape {now}) is not in the tree the state"
          " was initialized with"
      )
      continue
    # A full copy of the leaf (a momentum) is the largest state leaf for
    # it; per-neuron or quantized statistics are smaller.
    then = max(init_shapes[leaf], key=lambda s: int(np.prod(s)))
    if now is None:
      lines.append(
          f"leaf {_where(leaf)} (shape {then} at init) is missing from the"
          " tree"
      )
    elif now != then:
      lines.append(
          f"leaf {_where(leaf)} has shape {now}, but the state was"
          f" initialized for shape {then}"
      )
    else:
      lines.append(
          f"leaf {_where(leaf)} (shape {now}) is routed differently than at"
          " init"
      )
  lines += unattributed
  if not lines:
    lines.append(
        f"the state's tree structure {act_def} differs from {exp_def}"
    )
  return lines
