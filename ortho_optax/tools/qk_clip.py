"""QK-Clip (MuonClip): per-head query/key rescaling after an update."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ortho_optax import checks as _checks


def _key_name(k) -> str | int | None:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return getattr(k, attr)
  return None


def _names(path) -> tuple:
  """Path as a tuple of keys, without a trailing Flax ``.value``."""
  names = tuple(_key_name(k) for k in path)
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and (
      names[-1] == "value"
  ):
    names = names[:-1]
  return names


def qk_clip(
    params,
    max_logits,
    *,
    tau: jax.typing.ArrayLike = 100.0,
    alpha: jax.typing.ArrayLike = 0.5,
    query_key: str = "query",
    key_key: str = "key",
):
  r"""MuonClip's QK-Clip: rescales the query and key heads whose logits grow.

  Not a gradient transformation: call it on the parameters after each
  optimizer step, with the largest pre-softmax attention logit of every
  head recorded in that step's forward pass (including the
  :math:`1/\sqrt{d}` scale). For each head :math:`h` with
  :math:`S^h_{\max} > \tau`, with :math:`\gamma_h = \tau / S^h_{\max}`:

  .. math::
    W_q^h \leftarrow \gamma_h^{\alpha} W_q^h, \qquad
    W_k^h \leftarrow \gamma_h^{1 - \alpha} W_k^h,

  so that head's logits :math:`q^h \cdot k^h` shrink by :math:`\gamma_h`
  and its maximum on the same batch becomes exactly :math:`\tau`. Other
  heads, the values and the output projection are untouched. Biases of
  the query and key projections are scaled with their kernels (so
  :math:`q^h` and :math:`k^h` scale exactly).

  Layout (Flax ``nnx.MultiHeadAttention`` / ``linen.MultiHeadDotProductAttention``):
  an attention module is a subtree with children ``query_key`` and
  ``key_key``; their kernels are ``(..., in, heads, head_dim)`` and biases
  ``(..., heads, head_dim)``, where ``...`` are stacked-layer axes.
  ``max_logits`` mirrors ``params`` down to the attention modules: at each
  module's path an array of shape ``(..., heads)``. Modules missing from
  ``max_logits`` are left unchanged. Query and key must have the same
  number of heads (multi-head attention; GQA and MLA's shared rotary key
  are not handled).

  Args:
    params: the parameter tree (a dict, ``nnx.State``, ...).
    max_logits: a tree of per-head maximum logits, see above.
    tau: the logit cap (Kimi K2: 100).
    alpha: the share of the scaling given to the queries (0.5: both by
      :math:`\sqrt{\gamma_h}`).
    query_key: the name of the query projection in a module.
    key_key: the name of the key projection.

  Returns:
    A tree like ``params`` with the clipped heads rescaled.

  Examples:
    >>> import jax.numpy as jnp
    >>> import ortho_optax
    >>> params = {"attn": {"query": {"kernel": jnp.ones((4, 2, 3))},
    ...                    "key": {"kernel": jnp.ones((4, 2, 3))}}}
    >>> new = ortho_optax.qk_clip(params, {"attn": jnp.array([400.0, 50.0])})
    >>> print(new["attn"]["query"]["kernel"][0, :, 0])
    [0.5 1. ]

  References:
    Kimi Team, `Kimi K2: Open Agentic Intelligence
    <https://arxiv.org/abs/2507.20534>`_, 2025
  """
  _checks.check_positive(tau, "tau")
  _checks.check_number(alpha, "alpha", low=0.0, high=1.0)
  _checks.check_str(query_key, "query_key")
  _checks.check_str(key_key, "key_key")
  if query_key == key_key:
    raise ValueError(
        f"`query_key` and `key_key` must differ, both are {query_key!r}."
    )
  logits = {
      _names(p): s
      for p, s in jax.tree_util.tree_leaves_with_path(max_logits)
  }
  used = set()

  def clip(path, x):
    names = _names(path)
    for i in range(len(names) - 1, -1, -1):
      if names[i] in (query_key, key_key):
        break
    else:
      return x
    module = names[:i]
    if module not in logits:
      return x
    used.add(module)
    s = jnp.asarray(logits[module])
    where = jax.tree_util.keystr(path)
    extra = x.ndim - s.ndim
    if extra not in (1, 2) or x.shape[: s.ndim - 1] != s.shape[:-1] or (
        x.shape[s.ndim - 1 + extra - 1] != s.shape[-1]
    ):
      raise ValueError(
          f"The leaf at {where} with shape {tuple(x.shape)} does not match"
          f" `max_logits` of shape {tuple(s.shape)}: expected a kernel"
          " (..., in, heads, head_dim) or a bias (..., heads, head_dim) with"
          " max_logits (..., heads)."
      )
    sw = s.astype(jnp.promote_types(x.dtype, jnp.float32))
    gamma = jnp.where(sw > tau, tau / sw, 1.0)
    power = alpha if names[i] == query_key else 1.0 - alpha
    factor = gamma**power
    factor = factor[..., None]  # head_dim
    if extra == 2:
      factor = factor[..., None, :, :]  # in
    return (x * factor).astype(x.dtype)

  out = jax.tree_util.tree_map_with_path(clip, params)
  missing = set(logits) - used
  if missing:
    names = sorted(str(m) for m in missing)
    raise ValueError(
        f"`max_logits` names modules {names} that have no {query_key!r} or"
        f" {key_key!r} leaves in params."
    )
  return out
