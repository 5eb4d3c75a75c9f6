r"""Cautious weight decay: decay only where it pushes as the update does."""

from __future__ import annotations

from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ortho_optax import checks as _checks

# How a named optimizer applies its weight decays (`weight_decay_mode`).
MODES = ("decoupled", "cautious")


def check_mode(mode, name: str = "weight_decay_mode") -> str:
  """Raises unless ``mode`` is one of :data:`MODES`."""
  _checks.check_choice(mode, name, MODES)
  return mode


def check_mask(mask, name: str = "mask") -> None:
  """Raises unless ``mask`` is None, a callable or a tree of booleans."""
  if mask is None or callable(mask):
    return
  for leaf in jax.tree.leaves(mask):
    dtype = getattr(leaf, "dtype", None)
    if isinstance(leaf, (bool, np.bool_)) or (
        dtype is not None and jnp.dtype(dtype) == jnp.bool_
    ):
      continue
    raise TypeError(
        f"`{name}` must be None, a callable params -> tree of booleans, or a"
        f" (prefix) tree of booleans; got the leaf {leaf!r}."
    )


def agrees(u: jax.Array, p: jax.Array) -> jax.Array:
  r"""The mask :math:`\mathbb{I}(u \odot p \ge 0)` of cautious weight decay.

  For real leaves it compares signs (exact: a product of two small
  bfloat16 numbers would underflow to 0 and count as agreeing); a zero
  update or parameter agrees. For complex leaves it is
  :math:`\mathrm{Re}(\bar u\, p) \ge 0`, in at least float32: the decay
  :math:`\lambda p` and the step :math:`u` do not point against each other.

  Args:
    u: the optimizer's update (before the learning rate).
    p: the parameter, of ``u``'s shape.

  Returns:
    A boolean array of ``u``'s shape.
  """
  if jnp.iscomplexobj(u) or jnp.iscomplexobj(p):
    dtype = jnp.promote_types(jnp.result_type(u, p), jnp.complex64)
    return jnp.real(jnp.conj(u.astype(dtype)) * p.astype(dtype)) >= 0
  return jnp.sign(u) * jnp.sign(p).astype(jnp.sign(u).dtype) >= 0


def add_cautious_decayed_weights(
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformation:
  r"""Adds :math:`\lambda p` where the update and the parameter agree in sign.

  Cautious weight decay (CWD) replaces the decoupled step
  :math:`x_{t+1} = x_t - \eta_t (u_t + \lambda x_t)` by

  .. math::
    x_{t+1} = x_t - \eta_t \left(u_t + \lambda\,
      \mathbb{I}(u_t \odot x_t \ge 0) \odot x_t\right),

  entrywise, with :math:`u_t` the optimizer's update *before* the learning
  rate :math:`\eta_t > 0` (so the mask does not depend on it). The decay
  acts only on the entries where it and the step both move the parameter
  toward zero; elsewhere the step is left alone. For complex leaves the
  indicator is :math:`\mathrm{Re}(\bar u_t x_t) \ge 0` (see :func:`agrees`).

  A drop-in for ``optax.add_decayed_weights``: the same arguments, placed
  at the same point of a chain (after the update's scaling, before
  ``optax.scale_by_learning_rate``), and the same state, so that a
  checkpoint of one restores into the other. ``weight_decay`` may be a
  schedule (evaluated at the transform's own step count, as optax does) or,
  under ``optax.inject_hyperparams``, an array.

  Args:
    weight_decay: :math:`\lambda`, a number >= 0 or a schedule.
    mask: a tree like (or a prefix of) the parameters, or a callable
      ``params -> tree``, of booleans: ``True`` where the decay applies.

  Returns:
    An ``optax.GradientTransformation`` (``optax.masked`` when ``mask`` is
    given).

  Examples:
    >>> import jax.numpy as jnp
    >>> import ortho_optax
    >>> tx = ortho_optax.add_cautious_decayed_weights(0.5)
    >>> params = jnp.array([1.0, 1.0, -2.0])
    >>> updates = jnp.array([0.1, -0.1, -0.1])
    >>> new, _ = tx.update(updates, tx.init(params), params)
    >>> print(new)
    [ 0.6 -0.1 -1.1]

  References:
    Chen et al., `Cautious Weight Decay <https://arxiv.org/abs/2510.12402>`_,
    2025
  """
  if not callable(weight_decay):
    _checks.check_number(weight_decay, "weight_decay", low=0.0)
  check_mask(mask)
  # optax's own state (EmptyState, or a step count for a schedule).
  decoupled = optax.add_decayed_weights(weight_decay)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
          "add_cautious_decayed_weights needs the parameters: call"
          " `update(updates, state, params)`."
      )
    if callable(weight_decay):
      new_state = type(state)(optax.safe_increment(state.count))
      s = weight_decay(state.count)
    else:
      new_state = state
      s = weight_decay
    if isinstance(s, (int, float)) and s == 0.0:
      return updates, new_state

    def one(u, p):
      decay = (s * p).astype(u.dtype)
      return u + jnp.where(agrees(u, p), decay, jnp.zeros_like(decay))

    updates = jax.tree.map(
        lambda u, p: None if u is None else one(u, p),
        updates,
        params,
        is_leaf=lambda x: x is None,
    )
    return updates, new_state

  tx = optax.GradientTransformation(decoupled.init, update_fn)
  if mask is not None:
    return optax.masked(tx, mask)
  return tx


def add_decayed_weights(
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any | Callable[[optax.Params], Any] | None = None,
    mode: str = "decoupled",
) -> optax.GradientTransformation:
  """``optax.add_decayed_weights`` (``mode="decoupled"``) or
  :func:`add_cautious_decayed_weights` (``mode="cautious"``).

  Args:
    weight_decay: a number >= 0 or a schedule.
    mask: as in ``optax.add_decayed_weights``.
    mode: ``"decoupled"`` or ``"cautious"``.

  Returns:
    An ``optax.GradientTransformation``; both modes have the same state.
  """
  check_mode(mode)
  if mode == "cautious":
    return add_cautious_decayed_weights(weight_decay, mask)
  return optax.add_decayed_weights(weight_decay, mask)
