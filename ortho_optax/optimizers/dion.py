"""Dion: low-rank orthonormal updates by amortized power iteration."""

from __future__ import annotations

import functools

import jax
import optax

from ortho_optax import checks as _checks
from ortho_optax import routing as _routing
from ortho_optax.optimizers import base as _base
from ortho_optax.parallel import sharding as _sharding
from ortho_optax.transforms import dion as _dion
from ortho_optax.transforms import shape as _shape


def dion(
    learning_rate: optax.ScalarOrSchedule,
    *,
    rank: float | int = 0.25,
    beta: jax.typing.ArrayLike = 0.95,
    eps: float = 1e-8,
    seed: int = 0,
    shape_rule: str = "spectral",
    shape_rms: float = 0.2,
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_decay_mask=None,
    weight_decay_mode: str = "decoupled",
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    adam_b1: jax.typing.ArrayLike = 0.9,
    adam_b2: jax.typing.ArrayLike = 0.95,
    adam_eps: jax.typing.ArrayLike = 1e-8,
    adam_weight_decay: jax.typing.ArrayLike = 0.0,
    labels=None,
    rules: _routing.Rules = None,
    dimension_numbers=None,
    mu_dtype=None,
    nu_dtype=None,
    sharding: str | _sharding.ShardingOptions | None = None,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformation:
  r"""Dion: rank-``r`` orthonormal updates, AdamW for the rest.

  For each hidden matrix :math:`W` (oriented wide, :math:`m \le n`) with
  gradient :math:`G_t`, momentum :math:`M` and right factor :math:`Q`
  (:func:`scale_by_dion`):

  .. math::
    B = M + G_t, \quad P = \mathrm{orth}(B^\top Q), \quad R = B P, \quad
    M \leftarrow B - (1 - \beta) R P^\top, \\
    Q \leftarrow \mathrm{colnorm}(R), \quad
    W \leftarrow W - \eta\,(s(W)\, Q P^\top + \lambda W),

  with :math:`s(W) = \sqrt{\mathrm{fan\_out} / \mathrm{fan\_in}}`
  (``shape_rule="spectral"``, the reference's ``adjust_lr``). No
  Newton-Schulz: the cost is :math:`8 m n r` FLOPs of matmuls plus a QR of
  an ``n x r`` matrix, and with sharded momenta only the low-rank factors
  are communicated. Embeddings, heads and non-matrix leaves go to AdamW
  (see :func:`label_params`).

  Defaults follow microsoft/dion (:math:`\mu = 0.95`, ``eps`` 1e-8, AdamW
  betas (0.9, 0.95)) except two: ``rank=0.25`` (the reference's
  ``rank_fraction`` defaults to 1; 1/4 is the fraction the paper reports
  as matching full rank at 3B parameters, and Dion2's default), and
  ``weight_decay=0`` (the reference's 0.01; every optimizer here defaults
  to 0). The reference's ``lr`` default is 0.01.

  Args:
    learning_rate: learning rate (or schedule) of the matrices, and of AdamW
      unless ``adam_learning_rate`` is given.
      Recommended: ``0.02``, chosen on the tasks lm, lm_deep and digits_cnn
      (:func:`~ortho_optax.recommended_learning_rate`).
    rank: a fraction in ``(0, 1]`` of ``min(fan_in, fan_out)`` or an int
      (static: list it in ``static_args`` of ``optax.inject_hyperparams``).
    beta: the error-feedback momentum :math:`\mu`.
    eps: the column normalization's epsilon.
    seed: seed of the initial right factors.
    shape_rule: see :func:`scale_by_shape`.
    shape_rms: target RMS of the ``"moonlight"`` rule.
    weight_decay: decoupled weight decay, multiplied by the learning rate.
    weight_decay_mask: mask for the weight decay (tree or callable).
    weight_decay_mode: ``"decoupled"`` or ``"cautious"`` (decay only where
      the update and the parameter agree in sign), for ``weight_decay`` and
      ``adam_weight_decay``; see :func:`add_cautious_decayed_weights`.
    adam_learning_rate: AdamW's learning rate; ``None``: ``learning_rate``.
    adam_b1: AdamW's :math:`\beta_1`.
    adam_b2: AdamW's :math:`\beta_2`.
    adam_eps: AdamW's epsilon.
    adam_weight_decay: AdamW's weight decay.
    labels: as in :func:`muon`.
    rules: routing overrides, see :func:`label_params`.
    dimension_numbers: optax-style routing, see :func:`label_params`.
    mu_dtype: storage of the momentum buffer and of AdamW's first moment:
      ``None`` (the parameters' dtype), a floating dtype, or a quantized
      format (``"q8"``, ``"q4"``, ``"n4"``, a :class:`QuantFormat`). The right
      factors :math:`Q` take ``mu_dtype`` too (computed in float32
      beside a quantized one).
    nu_dtype: storage of AdamW's second moment: ``None``, a
      floating dtype, or a quantized format (kept in the unsigned code of
      its width, ``"q8"`` -> ``"u8"``).
    sharding: see :func:`scale_by_dion`.
    skip_nonfinite: skip steps with non-finite gradients.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import ortho_optax
    >>> params = {"w": jnp.ones((16, 32)), "b": jnp.zeros(32)}
    >>> tx = ortho_optax.dion(0.01, rank=0.25)
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)

  References:
    Ahn et al., `Dion: Distributed Orthonormalized Updates
    <https://arxiv.org/abs/2504.05295>`_, 2025
  """
  _base.check_learning_rate(learning_rate)
  _base.check_nonnegative(weight_decay, "weight_decay")
  _checks.check_choice(shape_rule, "shape_rule", _shape.SHAPE_RULES)
  _checks.check_positive(shape_rms, "shape_rms")
  _base.check_mask(weight_decay_mask)
  _base.check_weight_decay_mode(weight_decay_mode)
  branch_dn = functools.partial(
      _routing.branch_dimension_numbers,
      dimension_numbers=dimension_numbers,
      rules=rules,
  )
  matrix_tx = optax.chain(
      _dion.scale_by_dion(
          rank,
          beta=beta,
          eps=eps,
          seed=seed,
          mu_dtype=mu_dtype,
          dimension_numbers=branch_dn,
          sharding=sharding,
      ),
      _shape.scale_by_shape(
          shape_rule, rms=shape_rms, dimension_numbers=branch_dn
      ),
      _base.decayed_weights(
          weight_decay, weight_decay_mask, weight_decay_mode
      ),
      optax.scale_by_learning_rate(learning_rate),
  )
  return _base.matrix_and_adam(
      matrix_tx,
      learning_rate=learning_rate,
      adam_learning_rate=adam_learning_rate,
      adam_b1=adam_b1,
      adam_b2=adam_b2,
      adam_eps=adam_eps,
      adam_weight_decay=adam_weight_decay,
      weight_decay_mode=weight_decay_mode,
      labels=labels,
      dimension_numbers=dimension_numbers,
      rules=rules,
      skip_nonfinite=skip_nonfinite,
      mu_dtype=mu_dtype,
      nu_dtype=nu_dtype,
      name="dion",
  )
