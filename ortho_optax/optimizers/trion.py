"""Trion: Newton-Schulz on the momentum's top DCT components."""

from __future__ import annotations

import functools

import jax
import optax

from ortho_optax import checks as _checks
from ortho_optax import routing as _routing
from ortho_optax.optimizers import base as _base
from ortho_optax.parallel import sharding as _sharding
from ortho_optax.transforms import shape as _shape
from ortho_optax.transforms import trion as _trion


def trion(
    learning_rate: optax.ScalarOrSchedule,
    *,
    rank: float | int = 0.25,
    beta: jax.typing.ArrayLike = 0.95,
    dct: str = "matmul",
    method: str = "auto",
    coeffs=None,
    steps: int | None = None,
    normalization: str | None = None,
    ns_eps: float | None = None,
    compute_dtype=None,
    shape_rule: str = "muon",
    shape_rms: float = 0.2,
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_decay_mask=None,
    weight_decay_mode: str = "decoupled",
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    adam_b1: jax.typing.ArrayLike = 0.9,
    adam_b2: jax.typing.ArrayLike = 0.95,
    adam_eps: jax.typing.ArrayLike = 1e-10,
    adam_weight_decay: jax.typing.ArrayLike = 0.0,
    labels=None,
    rules: _routing.Rules = None,
    dimension_numbers=None,
    mu_dtype=None,
    nu_dtype=None,
    sharding: str | _sharding.ShardingOptions | None = None,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformation:
  r"""Trion: DCT-projected low-rank Muon, AdamW for the rest.

  For each hidden matrix :math:`W` (oriented wide, :math:`m \le n`) with
  gradient :math:`G_t`, momentum :math:`M` and a fixed DCT basis
  :math:`K` (:func:`scale_by_trion`):

  .. math::
    B = M + G_t, \quad S = K B, \quad I = \mathrm{top}_r \|S_{k,:}\|_1,
    \quad V = K_{I,:}, \\
    M \leftarrow B - (1 - \beta) V^\top S_{I,:}, \quad
    W \leftarrow W - \eta\,(s(W)\, V^\top \mathrm{polar}(S_{I,:}) +
    \lambda W),

  with Muon's :math:`s(W) = \sqrt{\max(1, \mathrm{fan\_out} /
  \mathrm{fan\_in})}` (``shape_rule="muon"``, the reference's ``"kj"``
  scaling) and Newton-Schulz with Muon's coefficients (the reference's
  ``zeropower_via_newtonschulz5``) on the ``r x n`` projection only.
  Embeddings, heads and non-matrix leaves go to AdamW.

  Defaults follow IST-DASLab's ``Trion`` (momentum 0.95, weight decay 0,
  AdamW betas (0.9, 0.95) and epsilon 1e-10) except ``rank``, which the
  reference requires (here 1/4 of the shorter side), and the shape rule,
  which it requires too (``"kj"``, ``"none"``, ``"kimi"`` or ``"dion"``;
  here ``"muon"``, its ``"kj"``). The reference's ``lr`` default is 0.02.

  Args:
    learning_rate: learning rate (or schedule) of the matrices, and of AdamW
      unless ``adam_learning_rate`` is given.
      Recommended: ``0.04``, chosen on the tasks lm, lm_deep and digits_cnn
      (:func:`~ortho_optax.recommended_learning_rate`).
    rank: a fraction in ``(0, 1]`` of ``min(fan_in, fan_out)`` or an int
      (static).
    beta: the error-feedback momentum :math:`\mu`.
    dct: ``"matmul"`` or ``"fft"``, see :func:`scale_by_trion`.
    method: orthogonalization engine, see :func:`orthogonalize`.
    coeffs: Newton-Schulz coefficients; ``None``: Muon's.
    steps: Newton-Schulz steps; ``None`` for the table's length.
    normalization: input normalization; ``None``: the table's own.
    ns_eps: the normalization's epsilon; ``None``: the engine's (1e-7).
    compute_dtype: dtype of the orthogonalization matmuls.
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
      format (``"q8"``, ``"q4"``, ``"n4"``, a :class:`QuantFormat`).
    nu_dtype: storage of AdamW's second moment: ``None``, a
      floating dtype, or a quantized format (kept in the unsigned code of
      its width, ``"q8"`` -> ``"u8"``).
    sharding: see :func:`scale_by_trion`.
    skip_nonfinite: skip steps with non-finite gradients.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import ortho_optax
    >>> params = {"w": jnp.ones((16, 32)), "b": jnp.zeros(32)}
    >>> tx = ortho_optax.trion(0.02)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, tx.init(params), params)

  References:
    Modoranu et al., `FFT-based Dynamic Subspace Selection for Low-Rank
    Adaptive Optimization of Large Language Models
    <https://arxiv.org/abs/2505.17967>`_, 2025
  """
  _base.check_learning_rate(learning_rate)
  _base.check_nonnegative(weight_decay, "weight_decay")
  _checks.check_choice(shape_rule, "shape_rule", _shape.SHAPE_RULES)
  _checks.check_positive(shape_rms, "shape_rms")
  _base.check_mask(weight_decay_mask)
  _base.check_weight_decay_mode(weight_decay_mode)
  _base.check_engine_args(
      method=method,
      coeffs=coeffs,
      steps=steps,
      normalization=normalization,
      eps=ns_eps,
      compute_dtype=compute_dtype,
      eps_name="ns_eps",
  )
  branch_dn = functools.partial(
      _routing.branch_dimension_numbers,
      dimension_numbers=dimension_numbers,
      rules=rules,
  )
  matrix_tx = optax.chain(
      _trion.scale_by_trion(
          rank,
          beta=beta,
          dct=dct,
          method=method,
          dimension_numbers=branch_dn,
          mu_dtype=mu_dtype,
          sharding=sharding,
          **_base.engine_options(
              method,
              coeffs=coeffs,
              steps=steps,
              normalization=normalization,
              eps=ns_eps,
              compute_dtype=compute_dtype,
          ),
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
      name="trion",
  )
