"""NorMuon: Muon with a per-output-neuron second moment."""

from __future__ import annotations

import jax
import optax

from ortho_optax import checks as _checks
from ortho_optax import routing as _routing
from ortho_optax.optimizers import base as _base
from ortho_optax.parallel import sharding as _sharding
from ortho_optax.transforms import momentum as _momentum
from ortho_optax.transforms import neuron_norm as _neuron_norm
from ortho_optax.transforms import shape as _shape


@_base.document_shared_args
def normuon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    beta: jax.typing.ArrayLike = 0.95, beta2: jax.typing.ArrayLike = 0.95,
    eps: jax.typing.ArrayLike = 1e-10, nesterov: bool = True,
    rescale: str = "frobenius", rms: jax.typing.ArrayLike = 0.2,
    shape_rule: str | None = None,
    method: str = "auto", coeffs=None, steps: int | None = None,
    normalization: str | None = None, ns_eps: float | None = None,
    compute_dtype=None,
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
    beta: momentum coefficient.
    beta2: decay of the per-neuron second moment.
    eps: added to :math:`\sqrt{v}` and in the rescale (the reference
      code's 1e-10).
    nesterov: Nesterov look-ahead.
    rescale: ``"frobenius"`` (reference code) or ``"rms"`` (paper).
    rms: target RMS of ``rescale="rms"``.
    shape_rule: see :func:`scale_by_shape`; ``None``: ``"muon"`` with the
      Frobenius rescale, ``"none"`` with the RMS rescale.
    **engine: the orthogonalization arguments of ``base.ENGINE_ARGS``.
    **shared: the weight decay, AdamW, routing, state, sharding and
      skipping arguments of ``base.SHARED_ARGS``.

  Returns:
    An ``optax.GradientTransformation``.

  References:
    Li et al., `NorMuon: Making Muon more efficient and scalable
    <https://arxiv.org/abs/2510.05491>`_, 2025
  """
  shared = _base.shared_args(locals(), "normuon")
  _checks.check_choice(rescale, "rescale", _neuron_norm.RESCALES)
  _checks.check_choice(
      shape_rule, "shape_rule", (None,) + _shape.SHAPE_RULES
  )
  engine = _base.engine_args(locals(), "ns_eps")
  if shape_rule is None:
    shape_rule = "muon" if rescale == "frobenius" else "none"
  branch_dn = shared.branch_dimension_numbers
  return shared.chain(
      _momentum.scale_by_momentum(
          beta, nesterov=nesterov, form="ema", mu_dtype=mu_dtype
      ),
      shared.orthogonalization(engine),
      _neuron_norm.scale_by_neuron_norm(
          beta2, eps, rescale=rescale, rms=rms, dimension_numbers=branch_dn
      ),
      _shape.scale_by_shape(shape_rule, dimension_numbers=branch_dn),
  )
