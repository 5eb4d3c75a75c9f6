"""The shardings of an optimizer's state, from the parameters' shardings."""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ortho_optax import routing as _routing


def _strip(spec: P) -> P:
  """``spec`` without trailing ``None``s, as ``jit`` returns on Auto axes."""
  entries = list(spec)
  while entries and entries[-1] is None:
    entries.pop()
  return P(*entries)


def _leaf_sharding(path, x, s):
  if not (hasattr(x, "shape") and hasattr(x, "dtype")):
    raise TypeError(
        "`params` must be a tree of arrays or jax.ShapeDtypeStructs; the leaf"
        f" at {jax.tree_util.keystr(path)} is {x!r}."
    )
  if s is None:
    s = getattr(x, "sharding", None)
  if not isinstance(s, NamedSharding):
    raise TypeError(
        "`param_shardings` must give a jax.sharding.NamedSharding for every"
        f" parameter; the parameter at {jax.tree_util.keystr(path)} (shape"
        f" {tuple(x.shape)}) has {s!r}."
    )
  return s


def state_shardings(
    tx: Any, params: Any, param_shardings: Any = None
) -> Any:
  r"""The ``NamedSharding`` of every array of ``tx.init(params)``'s state.

  For ``jax.jit(tx.init, out_shardings=...)``, for a training step's
  ``in_shardings``/``out_shardings``, and for restoring a checkpointed state
  onto a mesh (Orbax's ``ShapeDtypeStruct`` targets). Works for any
  ``optax`` transformation: momenta and moments follow their parameter,
  counters are replicated, quantized states (``mu_dtype="q8"``: codes and
  block scales) and the low-rank factors of ``dion``, ``dion2`` and
  ``trion`` get the layout their ``init`` gives them.

  The state is traced abstractly (``jax.eval_shape``, nothing is computed
  or allocated) with the parameters on the mesh's Explicit-axes twin, where
  every array's sharding is part of its type, so the result is exactly the
  sharding a jitted step gives the state on Explicit axes; on Auto axes it
  is what ``jax.jit`` infers for the state after a step started from it
  (the specs without trailing ``None``\ s, as ``jit`` returns them, so a
  second step does not compile again). As a side effect the
  transformation's ``init`` sees the parameters' layouts, as it does when
  it runs on placed parameters (see :class:`ShardingOptions`).

  Args:
    tx: an ``optax.GradientTransformation`` (or anything with ``init``).
    params: the parameter tree: arrays or ``jax.ShapeDtypeStruct``\ s (only
      shapes and dtypes are read, and the shardings if
      ``param_shardings`` is ``None``).
    param_shardings: a ``NamedSharding`` per parameter, a tree of the
      structure of ``params``; ``None``: each parameter's ``.sharding``.
      All on one mesh.

  Returns:
    A tree of the structure of ``tx.init(params)`` with a ``NamedSharding``
    on that mesh in place of every array (``optax.MaskedNode`` and empty
    states stay as they are).

  Raises:
    TypeError: ``tx`` without ``init``, a parameter that is not an array,
      or one without a ``NamedSharding``.
    ValueError: ``param_shardings`` not of the structure of ``params``,
      shardings on different meshes, or no array parameter.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import ortho_optax
    >>> from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    >>> mesh = jax.make_mesh((jax.device_count(),), ("fsdp",),
    ...                      axis_types=(AxisType.Auto,))
    >>> params = {"w": jax.ShapeDtypeStruct((64, 32), jnp.float32),
    ...           "b": jax.ShapeDtypeStruct((32,), jnp.float32)}
    >>> shardings = {"w": NamedSharding(mesh, P("fsdp")),
    ...              "b": NamedSharding(mesh, P())}
    >>> tx = ortho_optax.muon(0.02)
    >>> out = ortho_optax.state_shardings(tx, params, shardings)
    >>> [s.spec for s in jax.tree.leaves(out)]  # counters, moments, momentum
    [P(), P(), P(), P(), P(), P(), P(), P('fsdp',)]
  """
  if not callable(getattr(tx, "init", None)):
    raise TypeError(
        "`tx` must be an optax.GradientTransformation (an object with an"
        f" `init` method); got {tx!r}."
    )
  if param_shardings is None:
    param_shardings = jax.tree.map(lambda x: None, params)
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(
      params, is_leaf=_routing._is_masked
  )
  try:
    given = treedef.flatten_up_to(param_shardings)
  except (ValueError, TypeError) as e:
    raise ValueError(
        "`param_shardings` must be a tree of the structure of `params` (a"
        f" NamedSharding per parameter): {e}"
    ) from None
  shardings = [
      None if _routing._is_masked(x) else _leaf_sharding(path, x, s)
      for (path, x), s in zip(paths_leaves, given, strict=True)
  ]
  meshes = {s.mesh for s in shardings if s is not None}
  if len(meshes) > 1:
    raise ValueError(
        "`param_shardings` must all be on one mesh; got"
        f" {len(meshes)}: {sorted(map(str, meshes))}."
    )
  if not meshes:
    raise ValueError(
        "`params` holds no array, so no mesh to place the state on."
    )
  (mesh,) = meshes
  explicit = mesh.update(
      axis_types=(AxisType.Explicit,) * len(mesh.axis_names)
  )
  abstract = [
      x if s is None else jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=NamedSharding(explicit, s.spec)
      )
      for (_, x), s in zip(paths_leaves, shardings)
  ]
  with jax.set_mesh(explicit):
    state = jax.eval_shape(
        tx.init, jax.tree_util.tree_unflatten(treedef, abstract)
    )
  keep_full = mesh.are_all_axes_explicit

  def place(x):
    s = getattr(x, "sharding", None)
    spec = s.spec if isinstance(s, NamedSharding) else P()
    return NamedSharding(mesh, spec if keep_full else _strip(spec))

  return jax.tree.map(place, state)
