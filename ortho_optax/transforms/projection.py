"""Gradient projection for continual learning: GPM's and ROGO's constraints."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ortho_optax import routing as _routing

_HIGHEST = jax.lax.Precision.HIGHEST


def _path_key(path) -> tuple[str, ...]:
  """A leaf's path as names, without Flax NNX's trailing ``.value``: the
  bases of a plain dict match an ``nnx.State`` of the same names."""
  keys = []
  for k in path:
    if isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value":
      continue
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        keys.append(str(getattr(k, attr)))
        break
    else:
      keys.append(str(k))
  return tuple(keys)


def _flat_bases(tree, name: str) -> dict:
  """``{path key: (path string, array)}`` of a tree's non-None leaves."""
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    where = jax.tree_util.keystr(path)
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
      raise TypeError(
          f"`{name}` holds {type(x).__name__} at {where}; expected arrays"
          " (*batch, fan_in, k) or None."
      )
    out[_path_key(path)] = (where, x)
  return out


def _tolerance(dtype) -> float:
  return max(1e-4, 10 * float(jnp.finfo(dtype).eps))


def _check_values(name, where, m) -> None:
  """Finite, orthonormal or zero columns (concrete bases only)."""
  if isinstance(m, jax.core.Tracer):
    return
  a = np.asarray(m)
  if a.size == 0:
    return
  if not np.all(np.isfinite(a)):
    raise ValueError(f"`{name}` at {where} is not finite (NaN or inf).")
  a = a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)
  a = a.reshape(-1, *a.shape[-2:])
  gram = np.swapaxes(a.conj(), -1, -2) @ a
  diag = np.real(np.diagonal(gram, axis1=-2, axis2=-1))
  want = np.where(diag > 0.5, 1.0, 0.0)
  ideal = want[..., :, None] * np.eye(gram.shape[-1])
  err = float(np.max(np.abs(gram - ideal)))
  tol = _tolerance(m.dtype)
  if err > tol:
    raise ValueError(
        f"`{name}` at {where} does not have orthonormal columns:"
        f" max |M^T M - I| = {err:.3g} > {tol:.3g} (zero columns are"
        " allowed as padding). Build bases with `update_bases`."
    )


def _check_inside(where, s, m) -> None:
  """A relaxing basis lies in the span of the frozen basis."""
  if isinstance(s, jax.core.Tracer) or isinstance(m, jax.core.Tracer):
    return
  s64 = np.asarray(s, np.complex128 if np.iscomplexobj(s) else np.float64)
  m64 = np.asarray(m, s64.dtype)
  if s64.size == 0:
    return
  if m64.ndim == 2 and s64.ndim > 2:
    m64 = np.broadcast_to(m64, (*s64.shape[:-2], *m64.shape))
  if s64.ndim == 2 and m64.ndim > 2:
    s64 = np.broadcast_to(s64, (*m64.shape[:-2], *s64.shape))
  rest = s64 - m64 @ (np.swapaxes(m64.conj(), -1, -2) @ s64)
  err = float(np.max(np.abs(rest)))
  tol = _tolerance(s.dtype) * 10
  if err > tol:
    raise ValueError(
        f"`relax` at {where} is not inside the span of `bases` there:"
        f" max |S - M M^T S| = {err:.3g} > {tol:.3g}. Build it with"
        " `relaxing_bases(bases, ...)`."
    )


def _check_shape(name, where, m, leaf, dn) -> None:
  shape = tuple(leaf.shape)
  batch, red, _ = _routing.normalize_dimension_numbers(
      dn, len(shape), where, shape
  )
  fan_in = math.prod(shape[a] for a in red)
  batch_shape = tuple(shape[a] for a in batch)
  ok = m.ndim >= 2 and m.shape[-2] == fan_in and m.shape[:-2] in (
      (), batch_shape
  )
  if not ok:
    raise ValueError(
        f"`{name}` at {where} has shape {tuple(m.shape)}; the leaf there has"
        f" shape {shape} with dimension numbers {tuple(dn)}, so a basis is"
        f" (fan_in, k) = ({fan_in}, k) or (*batch, fan_in, k) ="
        f" ({', '.join(str(b) for b in batch_shape)}, {fan_in}, k)."
    )
  if m.shape[-1] > fan_in:
    raise ValueError(
        f"`{name}` at {where} has {m.shape[-1]} columns, more than the"
        f" fan-in {fan_in} of the leaf there."
    )
  if not jnp.issubdtype(m.dtype, jnp.inexact):
    raise TypeError(
        f"`{name}` at {where} has dtype {m.dtype}; bases are floating"
        " (float32 recommended)."
    )


def _pinv_psd(gram, eps):
  """Pseudo-inverse of Hermitian PSD matrices ``(..., r, r)``."""
  lam, v = jnp.linalg.eigh(gram)
  cut = jnp.max(lam, axis=-1, keepdims=True) * eps
  inv = jnp.where(lam > cut, 1.0 / jnp.where(lam > cut, lam, 1.0), 0.0)
  return jnp.matmul(v * inv[..., None, :].astype(v.dtype),
                    jnp.conj(jnp.swapaxes(v, -1, -2)), precision=_HIGHEST)


def _ht(x):
  return jnp.conj(jnp.swapaxes(x, -1, -2))


def _project(g, m, s=None, k=None):
  """``g - M M^H g`` (plus ROGO's restricted part) on ``(B, fan_in, out)``."""
  dtype = jnp.promote_types(g.dtype, m.dtype)
  if jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.promote_types(dtype, jnp.float32)
  g32, m32 = g.astype(dtype), m.astype(dtype)
  mm = jnp.matmul(_ht(m32), g32, precision=_HIGHEST)
  out = g32 - jnp.matmul(m32, mm, precision=_HIGHEST)
  if s is not None:
    s32, k32 = s.astype(dtype), k.astype(dtype)
    b = jnp.matmul(_ht(s32), k32, precision=_HIGHEST)  # (B, r, out)
    ur = jnp.matmul(_ht(s32), g32, precision=_HIGHEST)
    gram = jnp.matmul(b, _ht(b), precision=_HIGHEST)
    eps = 10 * float(jnp.finfo(dtype).eps)
    coef = jnp.matmul(
        jnp.matmul(ur, _ht(b), precision=_HIGHEST), _pinv_psd(gram, eps),
        precision=_HIGHEST,
    )
    a = jnp.matmul(coef, b, precision=_HIGHEST)  # rows in B's row space
    out = out + jnp.matmul(s32, a, precision=_HIGHEST)
  return out.astype(g.dtype)


def project_gradients(
    bases,
    *,
    relax=None,
    dimension_numbers=None,
    rules: _routing.Rules = None,
) -> optax.GradientTransformation:
  r"""GPM's projection: no update along the protected input directions.

  For each leaf with a basis :math:`M` (orthonormal columns in the leaf's
  fan-in space), as a matrix :math:`G` of shape ``(fan_in, fan_out)``
  (Flax's ``(in, out)`` kernel; routing's dimension numbers reshape conv
  ``HWIO`` kernels to ``(kh kw in, out)`` and keep stacked layers as a
  batch):

  .. math::
    G \leftarrow G - M M^T G,

  so that for any old input :math:`x \in \mathrm{span}(M)` the layer's
  output :math:`W^T x` does not change (this is PyTorch's
  :math:`G - G M M^T` on the transposed weight). Leaves without a basis
  pass through.

  With ``relax`` (ROGO), a relaxing basis :math:`S \subseteq
  \mathrm{span}(M)` per leaf: the update may also move in :math:`S`, but
  only by recombining what the layer already computes there, updates
  :math:`S A S^T W` (ROGO's reference code learns :math:`W S \Lambda S^T`
  with :math:`\Lambda` a ``k x k`` matrix near the identity). The update
  is projected onto that set, :math:`B = S^T W` (the current ``params``):

  .. math::
    G \leftarrow (I - M M^T) G + S S^T G\, B^+ B,

  and for an old input :math:`x` the output moves by at most
  :math:`\|S^T \Delta W\|_2 \|S^T x\| + \|\Delta W\|_2 \|(I - M M^T) x\|`.

  Composition: project the gradient before the optimizer and the final
  update after it, so that momentum, orthogonalization, error feedback and
  weight decay cannot leave the allowed subspace, and a protected direction
  gets exactly zero update (up to rounding):

  >>> import jax.numpy as jnp, optax
  >>> import ortho_optax
  >>> params = {"w": jnp.ones((4, 3))}
  >>> bases = {"w": jnp.eye(4)[:, :2]}  # protect inputs e0, e1
  >>> tx = optax.chain(ortho_optax.project_gradients(bases),
  ...                  ortho_optax.muon(0.02),
  ...                  ortho_optax.project_gradients(bases))
  >>> updates, _ = tx.update(params, tx.init(params), params)
  >>> print(jnp.abs(updates["w"][:2]).max())
  0.0

  (:func:`with_gradient_projection` builds this chain.)

  Bases are matched to the parameters by path (names and indices, without
  Flax NNX's ``.value``), so a plain dict of bases fits an ``nnx.State``.
  Biases are not protected: use bias-free layers, as GPM does, or freeze
  the biases after the first task.

  Args:
    bases: a tree of bases ``(fan_in, k)`` or ``(*batch, fan_in, k)``
      (``None`` or absent: not protected), e.g. from
      :func:`update_bases`. Checked at ``init``: the shape against the
      leaf's, finite, orthonormal columns (zero columns pad).
    relax: ``None`` (GPM) or a tree of ROGO relaxing bases, each inside the
      span of the leaf's basis (:func:`relaxing_bases`); needs ``params``
      in ``update``.
    dimension_numbers: routing of the leaves' matrices, as in
      :func:`scale_by_orthogonalization` (default: by rank, any name).
    rules: routing overrides, see :func:`label_params`.

  Returns:
    An ``optax.GradientTransformation`` with an empty state.

  References:
    Saha, Garg and Roy, `Gradient Projection Memory for Continual Learning
    <https://arxiv.org/abs/2103.09762>`_, ICLR 2021

    Yang, Yang, Li and Liu, `Restricted Orthogonal Gradient Projection for
    Continual Learning <https://arxiv.org/abs/2301.12131>`_, 2023
  """
  flat = _flat_bases(bases, "bases")
  flat_relax = {} if relax is None else _flat_bases(relax, "relax")
  for key, (where, _) in flat_relax.items():
    if key not in flat:
      raise ValueError(
          f"`relax` has a basis at {where} but `bases` has none there; a"
          " relaxing basis lies inside a frozen one."
      )
  _routing.check_dimension_numbers(dimension_numbers)
  _routing.check_rules(rules)

  def leaves_and_dns(tree):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: x is None
    )
    dns = _routing.dimension_numbers_tree(
        tree, rules=rules, dimension_numbers=dimension_numbers,
        use_names=False,
    )
    dn_leaves = treedef.flatten_up_to(dns)
    return leaves, dn_leaves, treedef

  def init_fn(params):
    leaves, dn_leaves, _ = leaves_and_dns(params)
    found = set()
    for (path, leaf), dn in zip(leaves, dn_leaves):
      key = _path_key(path)
      if key not in flat:
        continue
      found.add(key)
      where = jax.tree_util.keystr(path)
      m = flat[key][1]
      if dn is None:
        if leaf is not None and math.prod(getattr(leaf, "shape", (1,))) == 0:
          continue  # an empty leaf: nothing to project
        raise ValueError(
            f"`bases` has a basis at {where}, but the leaf there (shape"
            f" {tuple(getattr(leaf, 'shape', ()))}) is not a matrix; pass"
            " `dimension_numbers` or `rules` for it."
        )
      _check_shape("bases", where, m, leaf, dn)
      _check_values("bases", where, m)
      if key in flat_relax:
        s = flat_relax[key][1]
        _check_shape("relax", where, s, leaf, dn)
        _check_values("relax", where, s)
        _check_inside(where, s, m)
    missing = [flat[k][0] for k in flat if k not in found]
    if missing:
      raise ValueError(
          f"`bases` has bases at {missing}, which are not leaves of the"
          " parameters."
      )
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if flat_relax and params is None:
      raise ValueError(
          "project_gradients(relax=...) needs `params` in `update` (the"
          " relaxed directions recombine the current weights); call"
          " `tx.update(updates, state, params)`."
      )
    leaves, dn_leaves, treedef = leaves_and_dns(updates)
    param_leaves = (
        treedef.flatten_up_to(params) if flat_relax else [None] * len(leaves)
    )
    out = []
    for (path, g), dn, p in zip(leaves, dn_leaves, param_leaves):
      key = _path_key(path)
      if g is None or dn is None or key not in flat:
        out.append(g)
        continue
      m = flat[key][1]
      s = flat_relax[key][1] if key in flat_relax else None

      def leaf_fn(g, p, dn=dn, m=m, s=s):
        gm = _routing.to_matrix(g, dn)
        mm = m.reshape(-1, *m.shape[-2:])
        if s is None:
          return _routing.from_matrix(_project(gm, mm), dn, g.shape)
        ss = s.reshape(-1, *s.shape[-2:])
        pm = _routing.to_matrix(p, dn)
        return _routing.from_matrix(_project(gm, mm, ss, pm), dn, g.shape)

      out.append(_routing.keep_sharding(leaf_fn, g, p, like=g))
    return jax.tree_util.tree_unflatten(treedef, out), state

  return optax.GradientTransformation(init_fn, update_fn)


def with_gradient_projection(
    tx: optax.GradientTransformation,
    bases,
    *,
    relax=None,
    project_before: bool = True,
    dimension_numbers=None,
    rules: _routing.Rules = None,
) -> optax.GradientTransformation:
  r"""``optax.chain(project, tx, project)``: any optimizer, protected.

  The gradient is projected before ``tx`` (so its momenta only see allowed
  directions) and ``tx``'s final update after it (so orthogonalization,
  low-rank error feedback and weight decay cannot leave the allowed
  subspace), with :func:`project_gradients`. The state is ``tx``'s, at
  index 1 of the chain's tuple (``project_before=False``: index 0).

  Each projection of a ``(fan_in, fan_out)`` matrix with a basis of ``k``
  columns costs :math:`4\,\mathrm{fan\_in}\,k\,\mathrm{fan\_out}`
  FLOPs; on a GPT-like tree with bases of rank 1/4 the two add 10-13% to
  a muon step (``benchmarks/step.py``). ``project_before=False`` keeps only
  the projection after ``tx``: the protection is as exact at half the
  cost, but the momenta then hold the gradients' protected components, so
  the allowed part of the update is not the same.

  Args:
    tx: the optimizer (any ``GradientTransformation``).
    bases: protected bases, see :func:`project_gradients`.
    relax: ROGO relaxing bases, see :func:`project_gradients`.
    project_before: also project the gradient before ``tx``.
    dimension_numbers: routing, see :func:`project_gradients`.
    rules: routing overrides, see :func:`project_gradients`.

  Returns:
    The chained ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import ortho_optax
    >>> tx = ortho_optax.with_gradient_projection(
    ...     ortho_optax.muon(0.02), {"w": jnp.eye(4)[:, :1]})
    >>> params = {"w": jnp.ones((4, 3))}
    >>> updates, _ = tx.update(params, tx.init(params), params)
    >>> print(float(abs(updates["w"][0]).max()))
    0.0
  """
  if not isinstance(tx, optax.GradientTransformation):
    raise TypeError(
        f"`tx` must be an optax.GradientTransformation, got {tx!r}."
    )
  if not isinstance(project_before, (bool, np.bool_)):
    raise TypeError(
        f"`project_before` must be True or False, got {project_before!r}."
    )
  proj = project_gradients(
      bases, relax=relax, dimension_numbers=dimension_numbers, rules=rules
  )
  if not project_before:
    return optax.chain(tx, proj)
  return optax.chain(proj, tx, proj)
