"""NorMuon: Muon with a per-output-neuron second moment."""

from __future__ import annotations

import functools

import jax
import optax

from ortho_optax import checks as _checks
from ortho_optax import routing as _routing
from ortho_optax.optimizers import base as _base
from ortho_optax.parallel import sharding as _sharding
from ortho_optax.transforms import momentum as _momentum
from ortho_optax.transforms import neuron_norm as _neuron_norm
from ortho_optax.transforms import orthogonalization as _orthogonalization
from ortho_optax.transforms import shape as _shape


def normuon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    beta: jax.typing.ArrayLike = 0.95,
    beta2: jax.typing.ArrayLike = 0.95,
    eps: jax.typing.ArrayLike = 1e-10,
    nesterov: bool = True,
    rescale: str = "frobenius",
    rms: jax.typing.ArrayLike = 0.2,
    shape_rule: str | None = None,
    method: str = "auto",
    coeffs=None,
    steps: int | None = None,
    normalization: str | None = None,
    ns_eps: float | None = None,
    compute_dtype=None,
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
  r"""NorMuon: Muon whose output neurons are normalized by a second moment.

  For each hidden matrix :math:`W` (seen as ``(fan_in, fan_out)``; each
  column is an output neuron):

  .. math::
    M_t = \beta M_{t-1} + (1 - \beta) G_t, \quad
    O_t = \mathrm{polar}(\beta M_t + (1 - \beta) G_t), \\
    v_t = \beta_2 v_{t-1} + (1 - \beta_2)\,
      \mathrm{mean}_{\mathrm{fan\_in}}(O_t \odot O_t), \quad
    \hat O_t = O_t \oslash (\sqrt{v_t} + \epsilon), \\
    \hat O_t \leftarrow \hat O_t\, \|O_t\|_F / (\|\hat O_t\|_F + \epsilon),
    \quad W_t = W_{t-1} - \eta\,(s(W)\,\hat O_t + \lambda W_{t-1}),

  with :math:`s(W) = \sqrt{\max(1, \mathrm{fan\_out}/\mathrm{fan\_in})}`:
  the reference code's Frobenius-preserving rescale and Muon's shape
  factor. ``rescale="rms"`` is the paper's rule instead,
  :math:`\hat O_t\, 0.2 \sqrt{mn} / \|\hat O_t\|_F` with no shape factor
  (update RMS 0.2, AdamW's learning rate). See
  :func:`scale_by_neuron_norm`. The second moment costs one value per
  output neuron.

  Settings that reproduce the reference step (zichongli5/NorMuon,
  ``normuon.py``; float32):

  >>> import ortho_optax
  >>> lr = 0.02
  >>> tx = ortho_optax.normuon(
  ...     lr, method="newton_schulz", coeffs="muon",
  ...     normalization="frobenius", ns_eps=1e-7)

  Reference defaults: ``lr=0.02``, ``weight_decay=0``, ``beta=beta2=0.95``.

  Args:
    learning_rate: learning rate (or schedule) of the matrices, and of AdamW
      unless ``adam_learning_rate`` is given.
      Recommended: ``0.02``, chosen on the tasks lm, lm_deep and digits_cnn
      (:func:`~ortho_optax.recommended_learning_rate`).
    beta: momentum coefficient.
    beta2: decay of the per-neuron second moment.
    eps: added to :math:`\sqrt{v}` and in the rescale (the reference
      code's 1e-10).
    nesterov: Nesterov look-ahead.
    rescale: ``"frobenius"`` (reference code) or ``"rms"`` (paper).
    rms: target RMS of ``rescale="rms"``.
    shape_rule: see :func:`scale_by_shape`; ``None``: ``"muon"`` with the
      Frobenius rescale, ``"none"`` with the RMS rescale.
    method: orthogonalization engine, see :func:`orthogonalize`.
    coeffs: Newton-Schulz coefficients; ``None`` for Muon's (``"muon"``).
    steps: Newton-Schulz steps; ``None`` for the table's length.
    normalization: the engine's input normalization; ``None`` for the one
      the coefficients were designed for (Frobenius for ``"muon"``).
    ns_eps: the engine's normalization epsilon.
    compute_dtype: dtype of the orthogonalization matmuls.
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
    sharding: see :func:`scale_by_orthogonalization`.
    skip_nonfinite: skip steps with non-finite gradients.

  Returns:
    An ``optax.GradientTransformation``.

  References:
    Li et al., `NorMuon: Making Muon more efficient and scalable
    <https://arxiv.org/abs/2510.05491>`_, 2025
  """
  _base.check_learning_rate(learning_rate)
  _base.check_static_steps(steps, "steps")
  _base.check_nonnegative(weight_decay, "weight_decay")
  _base.check_mask(weight_decay_mask)
  _base.check_weight_decay_mode(weight_decay_mode)
  _checks.check_choice(rescale, "rescale", _neuron_norm.RESCALES)
  _checks.check_choice(
      shape_rule, "shape_rule", (None,) + _shape.SHAPE_RULES
  )
  _base.check_engine_args(
      method=method,
      coeffs=coeffs,
      steps=steps,
      normalization=normalization,
      eps=ns_eps,
      compute_dtype=compute_dtype,
      eps_name="ns_eps",
  )
  if shape_rule is None:
    shape_rule = "muon" if rescale == "frobenius" else "none"
  branch_dn = functools.partial(
      _routing.branch_dimension_numbers,
      dimension_numbers=dimension_numbers,
      rules=rules,
  )
  matrix_tx = optax.chain(
      _momentum.scale_by_momentum(
          beta, nesterov=nesterov, form="ema", mu_dtype=mu_dtype
      ),
      _orthogonalization.scale_by_orthogonalization(
          method=method,
          dimension_numbers=branch_dn,
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
      _neuron_norm.scale_by_neuron_norm(
          beta2, eps, rescale=rescale, rms=rms, dimension_numbers=branch_dn
      ),
      _shape.scale_by_shape(shape_rule, dimension_numbers=branch_dn),
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
      name="normuon",
  )
