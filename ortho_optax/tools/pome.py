"""POME: a data-free, Muon-style edit of a fine-tuned model's weights."""

from __future__ import annotations

import math
import numbers
from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp

from ortho_optax.engines import lapack as _lapack

_SCALES = ("mean", "rms")


def _check_args(rank_ratio, scale, alpha):
  if (
      isinstance(rank_ratio, bool)
      or not isinstance(rank_ratio, numbers.Real)
      or not 0.0 < float(rank_ratio) <= 1.0
  ):
    raise ValueError(
        f"`rank_ratio` must be a number in (0, 1]; got {rank_ratio!r}."
    )
  if scale not in _SCALES:
    raise ValueError(
        f"`scale` must be one of {', '.join(map(repr, _SCALES))}; got"
        f" {scale!r}."
    )
  if (
      isinstance(alpha, bool)
      or not isinstance(alpha, numbers.Real)
      or not math.isfinite(float(alpha))
      or float(alpha) < 0.0
  ):
    raise ValueError(
        f"`alpha` must be a finite number >= 0; got {alpha!r}."
    )


def kept_rank(rank_ratio: float, m: int, n: int) -> int:
  """``k = ceil(rank_ratio * min(m, n))``, robust to float round-off."""
  return max(1, math.ceil(round(rank_ratio * min(m, n), 9)))


def _edit_matrix(w_pre, w_ft, rank_ratio, scale, alpha):
  """POME edit of one leaf of shape ``(..., m, n)``."""
  m, n = w_pre.shape[-2:]
  k = kept_rank(rank_ratio, m, n)
  wd = jnp.promote_types(w_ft.dtype, jnp.float32)
  delta = w_ft.astype(wd) - w_pre.astype(wd)
  # Per matrix on the CPU: a batched LAPACK SVD can stall XLA's pool.
  u, s, vh = _lapack.svd(delta)
  u_k, s_k, vh_k = u[..., :, :k], s[..., :k], vh[..., :k, :]
  if scale == "mean":
    common = alpha * jnp.mean(s_k, axis=-1)
  else:  # "rms"
    common = alpha * jnp.sqrt(jnp.mean(jnp.square(s_k), axis=-1))
  delta_edit = common[..., None, None] * (u_k @ vh_k)
  return (w_pre.astype(wd) + delta_edit).astype(w_ft.dtype)


def pome(
    pretrained: Any,
    finetuned: Any,
    *,
    rank_ratio: float = 0.5,
    scale: str = "mean",
    alpha: float = 1.0,
    mask: Any | Callable[[Any], Any] | None = None,
) -> Any:
  r"""POME: Post-Optimization Model Edit by a Muon-style projection.

  Edits a fine-tuned model with no data and no training: for each matrix, the
  fine-tuning update is replaced by its top singular directions with their
  singular values equalized, as in Muon's orthogonalized update.

  Let :math:`W_{pre}` and :math:`W_{ft}` be a matrix leaf of ``pretrained`` and
  ``finetuned``, :math:`r` the ``rank_ratio`` and :math:`\alpha` ``alpha``:

  .. math::

    \begin{align*}
      \Delta &= W_{ft} - W_{pre} = U S V^\top
        \quad (\text{SVD}, S = \mathrm{diag}(\sigma_1 \ge \sigma_2 \ge \dots)) \\
      k &= \lceil r \min(m, n) \rceil \\
      s &= \alpha \, \tfrac{1}{k} \textstyle\sum_{i \le k} \sigma_i
        \quad (\texttt{scale="mean"}), \qquad
      s = \alpha \, \sqrt{\tfrac{1}{k} \textstyle\sum_{i \le k} \sigma_i^2}
        = \alpha \, \|S_k\|_2 / \sqrt{k} \quad (\texttt{scale="rms"}) \\
      W_{edit} &= W_{pre} + s \, U_k V_k^\top
    \end{align*}

  where :math:`U_k, V_k` are the first :math:`k` singular vectors: the top-k
  directions are kept with one common singular value :math:`s`, and the
  remaining ones (small singular values, treated as noise) are dropped.

  Leaves with ``ndim >= 2`` are matrices over their last two axes; leading
  axes are batch axes (stacked layers, conv taps), each slice with its own
  :math:`s`. So an ``(in, out)`` Flax kernel is edited as one matrix and an
  HWIO conv kernel ``(h, w, in, out)`` as ``h * w`` matrices ``(in, out)``.
  Other leaves (biases, norm scales, scalars) are returned as their
  fine-tuned values, untouched, as are leaves excluded by ``mask``.
  The SVD runs in at least float32; the result has the fine-tuned dtype.

  Args:
    pretrained: pytree of the parameters before fine-tuning.
    finetuned: pytree of the fine-tuned parameters: the same structure and
      the same leaf shapes as ``pretrained``.
    rank_ratio: fraction :math:`r \in (0, 1]` of each matrix's full rank
      ``min(m, n)`` to keep; ``1.0`` keeps every direction (only equalizes).
    scale: the common singular value: ``"mean"`` (the mean of the kept
      singular values) or ``"rms"`` (their root mean square, so the edit keeps
      the Frobenius norm of the rank-k truncation when ``alpha=1``).
    alpha: a non-negative multiplier of the common singular value; ``0``
      gives back ``pretrained`` for every edited leaf.
    mask: optional pytree of booleans with the structure of the parameters
      (or a prefix of it), or a callable that returns one given ``finetuned``;
      ``False`` leaves are returned fine-tuned, unedited. ``None`` edits every
      matrix leaf.

  Returns:
    A pytree with the structure of ``finetuned``: the edited parameters.

  Raises:
    ValueError: if an argument is out of range, the two trees differ in
      structure, or a leaf differs in shape.

  Examples:
    >>> import jax.numpy as jnp
    >>> import ortho_optax
    >>> pre = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    >>> ft = {"w": jnp.eye(4, 3) * jnp.array([[3.0, 2.0, 1.0]]),
    ...       "b": jnp.ones(3)}
    >>> edited = ortho_optax.pome(pre, ft, rank_ratio=0.6)  # k = ceil(1.8) = 2
    >>> jnp.linalg.svd(edited["w"], compute_uv=False).round(4)
    Array([2.5, 2.5, 0. ], dtype=float32)
    >>> edited["b"]
    Array([1., 1., 1.], dtype=float32)

  References:
    Liu et al, `POME: Post Optimization Model Edit via Muon-style Projection
    <https://arxiv.org/abs/2510.06627>`_, 2025

  .. note::
    The paper's exact defaults are **unverified** (spec ``optimizers.md``
    §12): which layers it edits (possibly only the FFN expansion layers), its
    default ratio (possibly 0.5, studied 0.25-0.75) and its scale rule. The
    defaults here (``rank_ratio=0.5``, ``scale="mean"``, ``alpha=1``, every
    matrix) follow the spec's suggested form; pass ``mask`` to restrict the
    edit, e.g. to leave embeddings and output heads fine-tuned.
  """
  _check_args(rank_ratio, scale, alpha)
  pre_leaves, pre_def = jax.tree_util.tree_flatten_with_path(pretrained)
  ft_leaves, ft_def = jax.tree_util.tree_flatten_with_path(finetuned)
  if pre_def != ft_def:
    raise ValueError(
        "`pretrained` and `finetuned` must have the same tree structure; got"
        f" {pre_def} and {ft_def}."
    )
  if mask is None:
    keep = [True] * len(ft_leaves)
  else:
    mask_tree = mask(finetuned) if callable(mask) else mask
    try:
      keep = jax.tree_util.tree_leaves(
          jax.tree_util.tree_map(
              lambda m, x: jax.tree_util.tree_map(lambda _: bool(m), x),
              mask_tree, finetuned,
          )
      )
    except ValueError as e:
      raise ValueError(
          "`mask` must be a pytree of booleans with the structure of"
          f" `finetuned` or a prefix of it: {e}"
      ) from e

  out = []
  for (path, w_pre), (_, w_ft), edit in zip(pre_leaves, ft_leaves, keep):
    shape_pre, shape_ft = jnp.shape(w_pre), jnp.shape(w_ft)
    if shape_pre != shape_ft:
      raise ValueError(
          f"`finetuned` leaf {jax.tree_util.keystr(path)} has shape"
          f" {shape_ft}, but the `pretrained` one has shape {shape_pre}."
      )
    if edit and len(shape_ft) >= 2:
      out.append(_edit_matrix(
          jnp.asarray(w_pre), jnp.asarray(w_ft), float(rank_ratio), scale,
          float(alpha),
      ))
    else:
      out.append(w_ft)
  return jax.tree_util.tree_unflatten(ft_def, out)
