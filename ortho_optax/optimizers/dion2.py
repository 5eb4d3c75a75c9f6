"""Dion2: Muon on a selected fraction of each matrix's rows."""

from __future__ import annotations

import functools

import jax
import optax

from ortho_optax import checks as _checks
from ortho_optax import routing as _routing
from ortho_optax.optimizers import base as _base
from ortho_optax.parallel import sharding as _sharding
from ortho_optax.transforms import dion2 as _dion2
from ortho_optax.transforms import shape as _shape

# Dion2's Newton-Schulz (microsoft/dion `polar_express`): the 5-row Polar
# Express table with its 1.02 safety factor, Frobenius normalization, and
# the optimizer's epsilon 1e-8.
DION2_RECIPE = {"coeffs": "polar_express"}
DION2_NS_EPS = 1e-8


def dion2(
    learning_rate: optax.ScalarOrSchedule,
    *,
    rank: float | int = 0.25,
    beta: jax.typing.ArrayLike = 0.95,
    method: str = "auto",
    coeffs=None,
    steps: int | None = None,
    normalization: str | None = None,
    ns_eps: float | None = None,
    compute_dtype=None,
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
  r"""Dion2: orthogonalize the rows of largest norm, AdamW for the rest.

  For each hidden matrix :math:`W` with gradient :math:`G_t` and momentum
  :math:`M` (:func:`scale_by_dion2`), rows taken along the shorter side:

  .. math::
    B = M + G_t, \quad I = \mathrm{top}_k \|B_{i,:}\|_1, \quad
    M_{I,:} \leftarrow \beta B_{I,:}, \quad M_{\bar I,:} \leftarrow
    B_{\bar I,:}, \\
    W \leftarrow W - \eta\,(s(W)\, U + \lambda W), \quad
    U_{I,:} = \mathrm{polar}(B_{I,:}), \quad U_{\bar I,:} = 0,

  with :math:`s(W) = \sqrt{\mathrm{fan\_out} / \mathrm{fan\_in}}`
  (``shape_rule="spectral"``, the reference's ``adjust_lr``) and ``k =
  rank`` rows (a fraction of the shorter side, or an int). Only a ``k x n``
  matrix enters Newton-Schulz: with ``rank=0.25`` about 1/16 of Muon's
  FLOPs. Embeddings, heads and non-matrix leaves go to AdamW.

  Defaults follow microsoft/dion's ``Dion2`` (``fraction`` 0.25,
  ``ef_decay`` 0.95, Polar Express with epsilon 1e-8, AdamW betas (0.9,
  0.95)) except ``weight_decay=0`` (the reference's 0.01) and the
  orthogonalization's precision (see :func:`scale_by_dion2`). The
  reference's ``lr`` default is 0.01. The paper also studies random row
  selection; the reference code (and this optimizer) select by norm.

  Args:
    learning_rate: learning rate (or schedule) of the matrices, and of AdamW
      unless ``adam_learning_rate`` is given.
      Recommended: ``0.04``, chosen on the tasks lm, lm_deep and digits_cnn
      (:func:`~ortho_optax.recommended_learning_rate`).
    rank: a fraction in ``(0, 1]`` of ``min(fan_in, fan_out)`` or an int
      (static).
    beta: the error-feedback decay of the selected rows (``ef_decay``).
    method: orthogonalization engine, see :func:`orthogonalize`.
    coeffs: Newton-Schulz coefficients; ``None``: ``"polar_express"``.
    steps: Newton-Schulz steps; ``None`` for the table's length.
    normalization: input normalization; ``None``: the table's own.
    ns_eps: the normalization's epsilon; ``None``: 1e-8.
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
    sharding: see :func:`scale_by_dion2`.
    skip_nonfinite: skip steps with non-finite gradients.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import ortho_optax
    >>> params = {"w": jnp.ones((16, 32)), "b": jnp.zeros(32)}
    >>> tx = ortho_optax.dion2(0.01)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, tx.init(params), params)

  References:
    Ahn et al., `Dion2: A Simple Method to Shrink Matrix in Muon
    <https://arxiv.org/abs/2512.16928>`_, 2025
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
      _dion2.scale_by_dion2(
          rank,
          beta=beta,
          method=method,
          dimension_numbers=branch_dn,
          mu_dtype=mu_dtype,
          sharding=sharding,
          **_base.engine_options(
              method,
              DION2_RECIPE,
              coeffs=coeffs,
              steps=steps,
              normalization=normalization,
              eps=DION2_NS_EPS if ns_eps is None else ns_eps,
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
      name="dion2",
  )
