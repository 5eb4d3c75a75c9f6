"""AuON and Hybrid-AuON: cosh-RMS normalized momentum instead of a polar factor."""

from __future__ import annotations

import jax
import optax

from ortho_optax import checks as _checks
from ortho_optax import routing as _routing
from ortho_optax.optimizers import base as _base
from ortho_optax.parallel import sharding as _sharding
from ortho_optax.transforms import momentum as _momentum
from ortho_optax.transforms import orthogonalization as _orthogonalization


@_base.document_shared_args
def auon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    beta: jax.typing.ArrayLike = 0.95, nesterov: bool = True,
    gamma: jax.typing.ArrayLike = 1.0, hybrid_steps: int | None = None,
    eps: float | None = None,
    shape_rule: str = "muon", shape_rms: float | None = None,
    update_rms: float | None = None,
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
  r"""AuON: Nesterov momentum normalized by a cosh-RMS, in linear time.

  For each hidden matrix :math:`W` with :math:`N` entries:

  .. math::
    M_t = \beta M_{t-1} + (1 - \beta) G_t, \quad
    U_t = \beta M_t + (1 - \beta) G_t, \quad
    X_t = U_t / (\|U_t\|_F + 10^{-7}), \\
    r_t = \sqrt{\tfrac{1}{N} \textstyle\sum_{ij} \cosh(\gamma X_{t,ij})^2},
    \quad W_t = W_{t-1} - \eta\,(s(W)\, X_t / (r_t + 10^{-8})
      + \lambda W_{t-1}),

  with Muon's :math:`s(W) = \sqrt{\max(1, \mathrm{fan\_out} /
  \mathrm{fan\_in})}` (the first AuON code). Since :math:`\|X\|_F = 1`,
  :math:`1 \le r \le \sqrt{1 + \sinh^2(\gamma)/N}`: for large matrices AuON
  is Frobenius-normalized momentum (normalized SGD-M) times the shape
  factor. There is no orthogonalization (see :func:`auon_orthogonalize`).

  The paper's settings (first code, ``Auon_Adam_train.py``): :math:`\gamma
  = 1`, :math:`\beta = 0.95`, no weight decay on the AuON matrices, AdamW
  with ``adam_learning_rate = 0.1 * learning_rate`` and
  ``adam_weight_decay=0.1``; LM learning rate 0.055 (config 0.24).

  AuON trails Muon on language models, as its paper's own LM table does
  (final loss 0.43 against Muon's 0.04). On the examples' byte-level LM
  (``lm``, seven octaves of learning rate, 2 seeds;
  ``examples/results/octaves``) its best rate, 0.05, ends 0.21 nats/byte
  behind ``optax.contrib.muon`` at its own best, the default 0.025 0.34
  behind; it does not reach AdamW's best loss in 600 steps. On the deeper
  ``lm_deep`` 0.025 is its best rate (0.30 behind), and 0.05 is 0.08
  behind that on one seed and 0.44 on the other. On the digits CNN its
  best rate, 0.2, is within 0.2 points of ``optax.contrib.muon``'s best
  accuracy.

  Args:
    learning_rate: learning rate (or schedule) of the matrices, and of AdamW
      unless ``adam_learning_rate`` is given.
    beta: momentum coefficient.
    nesterov: Nesterov look-ahead.
    gamma: gain inside ``cosh`` (the paper's 1; the 2026 code's 1.5).
    hybrid_steps: Newton-Schulz steps (Muon's coefficients) on :math:`X`
      before the cosh scaling; 0 (or ``None``) is AuON, see
      :func:`hybrid_auon`.
    eps: added to the Frobenius norm (``None``: the paper's 1e-7).
    shape_rule: see :func:`scale_by_shape`.
    shape_rms: target RMS of the ``"moonlight"`` rule (``None``: 0.2).
    **shared: the weight decay, AdamW, routing, state, sharding and
      skipping arguments of ``base.SHARED_ARGS``.

  Returns:
    An ``optax.GradientTransformation``.

  References:
    Maity, `AuON: A Linear-time Alternative to Semi-Orthogonal Momentum
    Updates <https://arxiv.org/abs/2509.24320>`_, 2025
  """
  shared = _base.shared_args(locals(), "auon")
  _base.check_static_steps(hybrid_steps, "hybrid_steps")
  _base.check_nonnegative(gamma, "gamma")
  if hybrid_steps is not None:
    _checks.check_int(hybrid_steps, "hybrid_steps", low=0)
  _checks.check_number(eps, "eps", low=0.0, optional=True)
  branch_dn = shared.branch_dimension_numbers
  return shared.chain(
      _momentum.scale_by_momentum(
          beta, nesterov=nesterov, form="ema", mu_dtype=mu_dtype
      ),
      _orthogonalization.scale_by_orthogonalization(
          method="auon",
          dimension_numbers=branch_dn,
          sharding=sharding,
          gamma=gamma,
          hybrid_steps=0 if hybrid_steps is None else hybrid_steps,
          eps=1e-7 if eps is None else eps,
      ),
      _base.shape_scaling(shape_rule, shape_rms, branch_dn),
  )


@_base.variant_of(auon, hybrid_steps=None)
def hybrid_auon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    hybrid_steps: int | None = None,
    **kwargs,
) -> optax.GradientTransformation:
  r"""Hybrid-AuON: Newton-Schulz steps before AuON's cosh-RMS scaling.

  :func:`auon` with ``hybrid_steps=1``: one quintic Newton-Schulz step
  (Muon's coefficients) is applied to :math:`X_t = U_t / \|U_t\|_F` before
  :math:`r_t` is computed, as in the paper; the 2026 code's ``HybridAuON``
  uses five (``hybrid_auon(lr, hybrid_steps=5)``).

  Args:
    learning_rate: as in :func:`auon`.
      Recommended: ``0.02``, chosen on the tasks lm, lm_deep and digits_cnn
      (:func:`~ortho_optax.recommended_learning_rate`).
    hybrid_steps: Newton-Schulz steps; ``None``: the paper's 1 (a default
      that ``optax.inject_hyperparams`` leaves static).
    **kwargs: any other argument of :func:`auon`.

  Returns:
    An ``optax.GradientTransformation``.

  References:
    Maity, `AuON: A Linear-time Alternative to Semi-Orthogonal Momentum
    Updates <https://arxiv.org/abs/2509.24320>`_, 2025
  """
  return auon(
      learning_rate,
      hybrid_steps=1 if hybrid_steps is None else hybrid_steps,
      **kwargs,
  )
