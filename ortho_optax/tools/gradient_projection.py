"""Memory of protected subspaces for continual learning (GPM, ROGO bases).

Bases are built on the host in float64 NumPy, once per task; the
:func:`~ortho_optax.project_gradients` transform uses them at every step.
A basis of a leaf is an array ``(*batch, fan_in, k)`` whose columns are
orthonormal (zero columns pad a stacked layer's smaller bases), in the
input (fan-in) space of the leaf's matrix, as :mod:`ortho_optax.routing`
reshapes it (a Flax ``(in, out)`` kernel: its rows).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ortho_optax import checks as _checks


def _is_none(x) -> bool:
  return x is None


def _to_array(x: np.ndarray, dtype):
  """A JAX array, or NumPy's where JAX has no such dtype (float64 without
  ``jax_enable_x64``)."""
  if jnp.dtype(dtype).itemsize == 8 and not jax.config.read("jax_enable_x64"):
    return np.asarray(x, dtype)
  return jnp.asarray(x, dtype)


def _shape_str(shape) -> str:
  """``(*shape, k)`` as text."""
  return "(" + ", ".join([str(s) for s in shape] + ["k"]) + ")"


def conv_patches(
    x: jax.Array,
    kernel_size: tuple[int, int],
    *,
    strides: int | tuple[int, int] = 1,
    padding: str = "SAME",
) -> jax.Array:
  """The input patches of a 2-D convolution, in a Flax HWIO kernel's order.

  For ``x`` of shape ``(N, H, W, C)`` returns ``(N, H', W', kh * kw * C)``
  with features ordered ``(kh, kw, C)``, so that a Flax ``nnx.Conv`` (HWIO
  kernel ``K``, no bias) computes ``patches @ K.reshape(-1, out)``: the
  rows of a conv layer's representation matrix.

  Examples:
    >>> import jax.numpy as jnp
    >>> import ortho_optax
    >>> x = jnp.ones((2, 8, 8, 3))
    >>> ortho_optax.conv_patches(x, (3, 3)).shape
    (2, 8, 8, 27)
  """
  if getattr(x, "ndim", None) != 4:
    raise ValueError(
        f"`x` must be an NHWC batch of images (rank 4), got shape"
        f" {tuple(getattr(x, 'shape', ()))}."
    )
  pair = "a pair of ints >= 1"
  if not (isinstance(kernel_size, (tuple, list)) and len(kernel_size) == 2):
    raise TypeError(f"`kernel_size` must be {pair}, got {kernel_size!r}.")
  for k in kernel_size:
    _checks.check_int(k, "kernel_size", low=1)
  if isinstance(strides, int):
    strides = (strides, strides)
  if not (isinstance(strides, (tuple, list)) and len(strides) == 2):
    raise TypeError(f"`strides` must be an int or {pair}, got {strides!r}.")
  for k in strides:
    _checks.check_int(k, "strides", low=1)
  _checks.check_choice(padding, "padding", ("SAME", "VALID"))
  kh, kw = kernel_size
  p = jax.lax.conv_general_dilated_patches(
      x, (kh, kw), strides, padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  c = x.shape[-1]
  # XLA orders the patch features (C, kh, kw); Flax's kernel (kh, kw, C).
  p = p.reshape(*p.shape[:-1], c, kh, kw)
  p = jnp.moveaxis(p, -3, -1)
  return p.reshape(*p.shape[:-3], kh * kw * c)


def collect_representations(
    fn: Callable[[Any, Any], Any],
    model,
    inputs,
    *,
    batch_size: int | None = None,
    batch_ndim: int = 0,
):
  r"""Representation matrices of the protected layers on a task's data.

  ``fn(model, x)`` is the user's forward pass that returns, for each
  protected layer, the input of that layer: a tree (the structure of the
  bases, e.g. ``{"hidden": {"kernel": h}}``, ``None`` for unprotected
  leaves) of arrays ``(*batch, ..., fan_in)``. The first ``batch_ndim``
  axes are the layer's batch axes (stacked layers); all the others but the
  last are samples (batch, positions of a convolution, tokens), flattened.
  No hooks or interception: ``fn`` decides what a layer's input is.

  Returns GPM's representation matrices :math:`R` of shape ``(*batch,
  fan_in, n)`` (one column a sample), float32.

  Args:
    fn: ``(model, x) -> tree of layer inputs``.
    model: passed to ``fn`` (a Flax NNX module, or parameters).
    inputs: an array (or a tree of arrays with a common leading axis) of
      the task's examples; GPM uses a few hundred.
    batch_size: call ``fn`` on chunks of this many examples (``None``: all
      at once).
    batch_ndim: the number of leading batch axes of every returned array.

  Returns:
    A tree like ``fn``'s output of arrays ``(*batch, fan_in, n)``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> import ortho_optax
    >>> model = nnx.Linear(4, 3, use_bias=False, rngs=nnx.Rngs(0))
    >>> fn = lambda m, x: {"kernel": x}
    >>> reps = ortho_optax.collect_representations(fn, model, jnp.ones((10, 4)))
    >>> reps["kernel"].shape
    (4, 10)
  """
  _checks.check_callable(fn, "fn")
  _checks.check_int(batch_size, "batch_size", low=1, optional=True)
  _checks.check_int(batch_ndim, "batch_ndim", low=0)
  n = jax.tree.leaves(inputs)[0].shape[0]
  step = n if batch_size is None else batch_size
  chunks = []
  for start in range(0, n, step):
    x = jax.tree.map(lambda a, s=start: a[s : s + step], inputs)
    chunks.append(fn(model, x))

  def to_rep(*parts):
    mats = []
    for p in parts:
      p = jnp.asarray(p, jnp.float32)
      if p.ndim < batch_ndim + 1:
        raise ValueError(
            f"A layer input of shape {tuple(p.shape)} has fewer than"
            f" `batch_ndim` + 1 = {batch_ndim + 1} axes."
        )
      batch = p.shape[:batch_ndim]
      m = p.reshape(*batch, -1, p.shape[-1])
      mats.append(jnp.swapaxes(m, -1, -2))
    return jnp.concatenate(mats, axis=-1)

  return jax.tree.map(to_rep, *chunks, is_leaf=_is_none)


def _effective_columns(m: np.ndarray) -> np.ndarray:
  """The non-zero (orthonormal) columns of one basis ``(fan_in, k)``."""
  if m.shape[-1] == 0:
    return m
  keep = np.linalg.norm(m, axis=0) > 0.5
  return m[:, keep]


def _gpm_step(r: np.ndarray, m: np.ndarray, threshold: float) -> np.ndarray:
  """GPM's update of one basis ``m`` ``(d, k)`` from ``r`` ``(d, n)``."""
  total = float(np.sum(r * r))
  if total == 0.0 or m.shape[1] >= r.shape[0]:
    return m
  r_hat = r - m @ (m.T @ r)
  u, s, _ = np.linalg.svd(r_hat, full_matrices=False)
  captured = total - float(np.sum(s * s))
  energy = captured + np.cumsum(s * s)
  need = threshold * total
  if captured >= need:
    return m
  # The fewest new directions whose energy, with the basis', reaches the
  # threshold (all of them when rounding keeps it just short).
  k = int(np.searchsorted(energy, need * (1 - 1e-12))) + 1
  # Directions of the residual below 1e-6 of the representation's norm are
  # rounding (of a float32 basis, say), not data.
  rank = int(np.sum(s > 1e-6 * np.sqrt(total)))
  k = min(k, rank, r.shape[0] - m.shape[1])
  new = u[:, :k]
  # Re-orthogonalize against the basis: rounding of the SVD.
  new = new - m @ (m.T @ new)
  new, _ = np.linalg.qr(new)
  return np.concatenate([m, new], axis=1)


def _check_threshold(value, where, name="threshold"):
  try:
    _checks.check_number(value, name, low=0.0, high=1.0, low_open=True)
  except (TypeError, ValueError) as e:
    raise type(e)(f"{e} ({where.strip()})" if where else str(e)) from e
  return float(value)


def update_bases(bases, representations, threshold, *, dtype=jnp.float32):
  r"""GPM's memory update: bases that keep ``threshold`` of each layer's energy.

  For each layer with representation :math:`R` (``fan_in x n``, the
  layer's inputs on the task just learned) and stored orthonormal basis
  :math:`M` (none after the first task):

  .. math::
    \hat R = R - M M^T R, \quad \hat R = \hat U \hat\Sigma \hat V^T, \\
    k = \min\Big\{k : \|M^T R\|_F^2 + \sum_{i \le k} \hat\sigma_i^2
        \ge \epsilon_{th} \|R\|_F^2\Big\}, \quad
    M \leftarrow [M, \hat u_1, \dots, \hat u_k],

  so :math:`M` spans the directions that hold a fraction
  :math:`\epsilon_{th}` of the task's input energy (for the first task,
  the top singular vectors of :math:`R`). Nothing is added when the basis
  already holds that fraction. Computed in float64; a stacked leaf
  (``(*batch, fan_in, n)``) gets one basis per matrix, padded with zero
  columns to the largest rank.

  GPM's reference code keeps one direction fewer than this criterion after
  the first task (``np.sum(np.cumsum(ratio) < threshold)``); here the
  criterion is the paper's (Eq. 5 and 9) for every task.

  Args:
    bases: ``None`` (no task learned yet) or a tree like
      ``representations`` of bases ``(*batch, fan_in, k)`` (``None``
      leaves: none yet).
    representations: a tree of representation matrices ``(*batch, fan_in,
      n)`` (:func:`collect_representations`); ``None`` leaves are not
      protected.
    threshold: :math:`\epsilon_{th}` in ``(0, 1]``, a float or a tree (prefix)
      like ``representations`` (GPM: 0.95-0.99 by layer, or 0.97 raised by
      0.003 each task).
    dtype: dtype of the returned bases.

  Returns:
    A tree like ``representations`` of orthonormal bases ``(*batch,
    fan_in, k)``.

  Examples:
    >>> import numpy as np
    >>> import ortho_optax
    >>> r = np.diag([3.0, 1.0, 0.1]) @ np.ones((3, 5))
    >>> m = ortho_optax.update_bases(None, {"w": r}, 0.9)["w"]
    >>> m.shape
    (3, 1)

  References:
    Saha, Garg and Roy, `Gradient Projection Memory for Continual Learning
    <https://arxiv.org/abs/2103.09762>`_, ICLR 2021
  """
  dtype = _checks.check_dtype(dtype)
  reps, treedef = jax.tree_util.tree_flatten_with_path(
      representations, is_leaf=_is_none
  )
  if bases is None:
    old = [None] * len(reps)
  else:
    try:
      old = treedef.flatten_up_to(bases)
    except (ValueError, TypeError) as e:
      raise ValueError(
          "`bases` must have the structure of `representations` (None"
          f" leaves allowed): {e}"
      ) from e
  if isinstance(threshold, (int, float, np.floating, np.integer)) or (
      hasattr(threshold, "shape") and np.ndim(threshold) == 0
  ):
    thresholds = [threshold] * len(reps)
  else:
    thresholds = jax.tree_util.tree_leaves(
        jax.tree.map(
            lambda t, r: jax.tree.map(lambda _: t, r, is_leaf=_is_none),
            threshold, representations, is_leaf=_is_none,
        ),
        is_leaf=_is_none,
    )
    if len(thresholds) != len(reps):
      raise ValueError(
          "`threshold` must be a number or a (prefix) tree of"
          " `representations`."
      )
  out: list = []
  for (path, r), m, t in zip(reps, old, thresholds):
    if r is None:
      out.append(None if m is None else m)
      continue
    where = jax.tree_util.keystr(path)
    t = _check_threshold(t, f" at {where}" if where else "")
    r = np.asarray(r, np.float64)
    if r.ndim < 2:
      raise ValueError(
          f"`representations` at {where} has shape {r.shape}; expected"
          " (*batch, fan_in, n)."
      )
    batch, d = r.shape[:-2], r.shape[-2]
    if not np.all(np.isfinite(r)):
      raise ValueError(f"`representations` at {where} is not finite.")
    if m is None:
      m = np.zeros((*batch, d, 0))
    m = np.asarray(m, np.float64)
    if m.shape[:-1] != (*batch, d):
      raise ValueError(
          f"`bases` at {where} has shape {m.shape}; the representation"
          f" {r.shape} needs (*batch, fan_in, k) = {_shape_str((*batch, d))}."
      )
    nb = int(np.prod(batch))
    flat_r = r.reshape(nb, d, r.shape[-1])
    flat_m = m.reshape(nb, d, m.shape[-1])
    news = [
        _gpm_step(ri, _effective_columns(mi), t)
        for ri, mi in zip(flat_r, flat_m)
    ]
    k = max((x.shape[1] for x in news), default=0)
    stack = np.zeros((len(news), d, k))
    for i, x in enumerate(news):
      stack[i, :, : x.shape[1]] = x
    out.append(_to_array(stack.reshape(*batch, d, k), dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def relaxing_bases(bases, gradients, *, threshold=0.97, relax_threshold=0.9,
                   relaxed=None, dtype=jnp.float32):
  r"""ROGO's relaxing space: frozen directions aligned with the new task.

  For each protected layer with frozen basis :math:`M` (``fan_in x k``)
  and the current task's gradient :math:`G` of its kernel (``fan_in x
  fan_out``, e.g. on 125 examples, before or after a first epoch):

  1. :math:`U`: the fewest top left singular vectors of :math:`G` that hold
     a fraction ``threshold`` of its energy (the new task's gradient input
     space);
  2. the relaxing directions are the directions :math:`u` of
     :math:`\mathrm{span}(M)` whose alignment with that space,
     :math:`\|U^T u\|`, is at least ``relax_threshold``: the eigenvectors
     :math:`x_i` of :math:`M^T U U^T M` with eigenvalue
     :math:`\lambda_i \ge \tau^2`, mapped to :math:`M x_i`.

  ROGO's reference code finds them one at a time (the top eigenvector,
  then again in the rest of the frozen space, until the score falls below
  ``relax_threshold``); the eigenvectors of the one symmetric matrix are
  the same directions. It searches again after every epoch, in the frozen
  directions not yet relaxed, while the last search found some (and halves
  the learning rate each time): pass the previous result as ``relaxed``
  for that. Pass the result as ``relax`` to :func:`project_gradients`.

  Args:
    bases: the frozen bases (:func:`update_bases`).
    gradients: a tree like ``bases`` of the current task's gradients
      ``(*batch, fan_in, fan_out)`` of the protected leaves, reshaped as
      routing does (a Flax kernel as it is); ``None`` where unprotected.
    threshold: energy kept of the gradient (reference: 0.97 for the first
      layer, 0.99 for the others), a float or a tree like ``bases``.
    relax_threshold: the least alignment :math:`\tau` of a relaxed
      direction (reference: 0.9).
    relaxed: ``None`` or the relaxing bases found before in this task
      (a tree like ``bases``): the search is then in the rest of the frozen
      space, and the result holds the old directions first.
    dtype: dtype of the returned bases.

  Returns:
    A tree like ``bases`` of relaxing bases ``(*batch, fan_in, r)`` (``r``
    may be 0), orthonormal and inside the span of ``bases``.

  Examples:
    >>> import numpy as np
    >>> import ortho_optax
    >>> m = {"w": np.eye(4)[:, :2]}
    >>> g = {"w": np.outer([1.0, 0.0, 0.0, 0.0], [1.0, 2.0])}
    >>> s = ortho_optax.relaxing_bases(m, g)["w"]
    >>> np.round(np.abs(s.ravel()), 3).tolist()
    [1.0, 0.0, 0.0, 0.0]

  References:
    Yang, Yang, Li and Liu, `Restricted Orthogonal Gradient Projection for
    Continual Learning <https://arxiv.org/abs/2301.12131>`_, 2023
  """
  _checks.check_number(relax_threshold, "relax_threshold", low=0.0, high=1.0)
  dtype = _checks.check_dtype(dtype)
  tau2 = float(relax_threshold) ** 2
  flat, treedef = jax.tree_util.tree_flatten_with_path(bases, is_leaf=_is_none)
  try:
    grads = treedef.flatten_up_to(gradients)
  except (ValueError, TypeError) as e:
    raise ValueError(
        f"`gradients` must have the structure of `bases`: {e}"
    ) from e
  if np.ndim(threshold) == 0 and not isinstance(threshold, dict):
    thresholds = [threshold] * len(flat)
  else:
    try:
      thresholds = treedef.flatten_up_to(threshold)
    except (ValueError, TypeError) as e:
      raise ValueError(
          f"`threshold` must be a number or a tree like `bases`: {e}"
      ) from e
  if relaxed is None:
    before = [None] * len(flat)
  else:
    try:
      before = treedef.flatten_up_to(relaxed)
    except (ValueError, TypeError) as e:
      raise ValueError(
          f"`relaxed` must have the structure of `bases`: {e}"
      ) from e
  out: list = []
  for (path, m), g, t, old in zip(flat, grads, thresholds, before):
    if m is None:
      out.append(None)
      continue
    where = jax.tree_util.keystr(path)
    t = _check_threshold(t, f" at {where}" if where else "")
    m = np.asarray(m, np.float64)
    g = np.asarray(g, np.float64)
    if g.shape[:-1] != m.shape[:-1]:
      raise ValueError(
          f"`gradients` at {where} has shape {g.shape}; the basis"
          f" {m.shape} needs (*batch, {m.shape[-2]}, fan_out)."
      )
    d = m.shape[-2]
    nb = int(np.prod(m.shape[:-2]))
    flat_m = m.reshape(nb, d, m.shape[-1])
    flat_g = g.reshape(nb, d, g.shape[-1])
    if old is None:
      flat_old = np.zeros((nb, d, 0))
    else:
      old = np.asarray(old, np.float64)
      flat_old = old.reshape(nb, d, old.shape[-1])
    rel = []
    for mi, gi, oi in zip(flat_m, flat_g, flat_old):
      mi, oi = _effective_columns(mi), _effective_columns(oi)
      if oi.shape[1]:
        # The frozen directions not yet relaxed.
        rest, sv, _ = np.linalg.svd(mi - oi @ (oi.T @ mi),
                                    full_matrices=False)
        mi = rest[:, sv > 0.5]
      u, s, _ = np.linalg.svd(gi, full_matrices=False)
      energy = s * s
      if mi.shape[1] == 0 or energy.sum() == 0:
        rel.append(oi)
        continue
      cut = t * energy.sum() * (1 - 1e-12)
      r = int(np.searchsorted(np.cumsum(energy), cut)) + 1
      u = u[:, : min(r, u.shape[1])]
      b = mi.T @ u
      lam, x = np.linalg.eigh(b @ b.T)
      rel.append(np.concatenate([oi, mi @ x[:, lam >= tau2]], axis=1))
    k = max((x.shape[1] for x in rel), default=0)
    stack = np.zeros((len(rel), d, k))
    for i, x in enumerate(rel):
      stack[i, :, : x.shape[1]] = x
    out.append(_to_array(stack.reshape(*m.shape[:-1], k), dtype))
  return jax.tree_util.tree_unflatten(treedef, out)
