"""ROOT: Muon on the quantile-clipped momentum, with shape-keyed coefficients."""

from __future__ import annotations

import jax
import optax

from ortho_optax import routing as _routing
from ortho_optax.optimizers import base as _base
from ortho_optax.parallel import sharding as _sharding
from ortho_optax.transforms import momentum as _momentum
from ortho_optax.transforms import quantile_clip as _quantile_clip


@_base.document_shared_args
def root(
    learning_rate: optax.ScalarOrSchedule,
    *,
    beta: jax.typing.ArrayLike = 0.95, nesterov: bool = True,
    q: jax.typing.ArrayLike = 0.9,
    method: str = "auto", coeffs="root", steps: int | None = None,
    normalization: str | None = "frobenius", eps: float | None = None,
    compute_dtype=None,
    shape_rule: str = "moonlight", shape_rms: float | None = None,
    update_rms: float | None = None,
    weight_decay: jax.typing.ArrayLike = 0.1,
    weight_decay_mask=None,
    weight_decay_mode: str = "decoupled",
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    adam_b1: jax.typing.ArrayLike = 0.9,
    adam_b2: jax.typing.ArrayLike = 0.95,
    adam_eps: jax.typing.ArrayLike = 1e-8,
    adam_weight_decay: jax.typing.ArrayLike = 0.1,
    labels=None,
    rules: _routing.Rules = None,
    dimension_numbers=None,
    mu_dtype=None,
    nu_dtype=None,
    sharding: str | _sharding.ShardingOptions | None = None,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformation:
  r"""ROOT: robust orthogonalized optimizer.

  For each hidden matrix :math:`W` of shape ``(A, B)``, with sum-form
  Nesterov momentum:

  .. math::
    M_t = \mu M_{t-1} + G_t, \quad U_t = G_t + \mu M_t, \quad
    \tau_t = \mathrm{quantile}_{0.9}(|U_t|) + 10^{-9} u_t, \\
    B_t = \mathrm{clip}(U_t, -\tau_t, \tau_t), \quad
    O_t = \mathrm{NS}_5(B_t), \\
    W_t = W_{t-1}(1 - \eta\lambda) - \eta\, 0.2 \sqrt{\max(A, B)}\, O_t .

  :math:`B_t = U_t - T_\tau[U_t]` is the momentum minus its soft-thresholded
  outliers (see :func:`clip_by_quantile`; :math:`u_t` is the power of two
  just below :math:`\max|U_t|`, so the reference's offset at unit scale
  and the same step at every scale); the Newton-Schulz step uses
  ROOT's shape-keyed ("AdaNewton") coefficients, the ``"root"`` preset
  (Muon's for shapes outside its table), with Frobenius pre-normalization
  (eps 1e-7), through whichever of the standard and the Gram form costs
  fewer FLOPs for the shape (``method="auto"``, as :func:`muon`: the same
  polynomial either way, so ROOT's orthogonalization costs what Muon's
  does); the shape factor is Moonlight's, so AdamW's learning rate and
  weight decay are reused, and AdamW gets the same learning rate and
  weight decay (0.1), betas (0.9, 0.95).

  The defaults are the reference's (huawei-noah/noah-research,
  ``ROOT/examples/example_train.py``): ``weight_decay=0.1`` for both
  branches, :math:`\mu = 0.95`, 5 steps; its learning rate is ``1e-3``
  (cosine schedule with warmup).

  Args:
    learning_rate: learning rate (or schedule) of the matrices, and of AdamW
      unless ``adam_learning_rate`` is given (the reference's ``1e-3``).
    beta: momentum coefficient :math:`\mu`.
    nesterov: Nesterov look-ahead.
    q: the clipping quantile.
    method: orthogonalization engine, see :func:`orthogonalize`
      (``"auto"``: the cheaper of the standard and the Gram form).
    coeffs: Newton-Schulz coefficients (ROOT's shape-keyed table).
    steps: Newton-Schulz steps; ``None``: ROOT's 5.
    normalization: the engine's input normalization.
    eps: the engine's normalization epsilon (``None``: ROOT's 1e-7).
    **engine: the orthogonalization arguments of ``base.ENGINE_ARGS``.
    shape_rule: see :func:`scale_by_shape` (Moonlight's rule).
    shape_rms: target RMS of the ``"moonlight"`` rule (``None``: 0.2).
    **shared: the weight decay, AdamW, routing, state, sharding and
      skipping arguments of ``base.SHARED_ARGS``.
    adam_weight_decay: AdamW's weight decay (the reference's 0.1).

  Returns:
    An ``optax.GradientTransformation``.

  References:
    He et al., `ROOT: Robust Orthogonalized Optimizer for Neural Network
    Training <https://arxiv.org/abs/2511.20626>`_, 2025
  """
  shared = _base.shared_args(locals(), "root")
  engine = _base.engine_args(locals())
  branch_dn = shared.branch_dimension_numbers
  return shared.chain(
      _momentum.scale_by_momentum(
          beta, nesterov=nesterov, form="sum", mu_dtype=mu_dtype
      ),
      _quantile_clip.clip_by_quantile(q, dimension_numbers=branch_dn),
      shared.orthogonalization(engine, steps=5, eps=1e-7),
      _base.shape_scaling(shape_rule, shape_rms, branch_dn),
  )
