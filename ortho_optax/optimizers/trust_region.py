"""Kovalev's stochastic non-Euclidean trust-region method with momentum."""

from __future__ import annotations

import jax
import optax

from ortho_optax import checks as _checks
from ortho_optax import routing as _routing
from ortho_optax.optimizers import base as _base
from ortho_optax.parallel import sharding as _sharding
from ortho_optax.transforms import lmo as _lmo
from ortho_optax.transforms import momentum as _momentum


def check_alpha(alpha, name: str = "alpha") -> None:
  """Raises unless a concrete ``alpha`` lies in ``(0, 1]``."""
  _checks.check_number(alpha, name, low=0.0, high=1.0, low_open=True)


def _unit_norms(norm):
  """Strings become the plain norms' unit balls; LMONorms are kept."""
  if callable(norm) and not isinstance(norm, _lmo.LMONorm):
    return lambda params: _unit_norms(norm(params))

  def convert(n):
    if isinstance(n, str):
      _checks.check_choice(n, "norm", _lmo.NORMS)
      return _lmo.LMONorm(n, unit=True)
    return _lmo.as_norm(n)

  return jax.tree.map(convert, norm, is_leaf=_lmo.is_norm_value)


@_base.document_shared_args
def trust_region(
    learning_rate: optax.ScalarOrSchedule,
    *,
    norm="spectral", alpha: jax.typing.ArrayLike = 0.1,
    eps: jax.typing.ArrayLike = 1e-8,
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
  r"""Stochastic non-Euclidean trust-region gradient method with momentum.

  Kovalev's Algorithm 1 with the trust-region radius :math:`\eta` (the
  learning rate), momentum accumulated on raw gradients *before* the
  linear minimization oracle, and decoupled weight decay :math:`\lambda`:

  .. math::
    m_{k+1} = (1 - \alpha) m_k + \alpha g_k, \qquad
    x_{k+1} = \arg\min_{\|x - (1 - \eta\lambda) x_k\| \le \eta}
      \langle m_{k+1}, x \rangle
      = (1 - \eta\lambda) x_k - \eta\, \mathrm{dual}(m_{k+1}) .

  ``norm="spectral"`` (:math:`\mathrm{dual}(m) = U V^T`) is Muon without
  Nesterov (:math:`\alpha = 1 - \beta`; EMA and sum momentum give the same
  direction); ``"frobenius"`` (:math:`m / \|m\|_F`) is normalized SGD with
  momentum; ``"sign"`` (:math:`\mathrm{sign}(m)`, the :math:`\ell_\infty`
  ball) is signSGD with momentum (Signum). Here these names mean the plain
  norms' unit balls (``LMONorm(name, unit=True)``); pass :class:`LMONorm`
  objects, or a tree of them, for Scion's scaled norms or per-layer choices
  (the max of per-layer norms has the product of the per-layer balls as its
  ball, so each layer gets its own step).

  **Weight decay is a shift of the trust-region centre** from :math:`x_k`
  to :math:`(1 - \eta\lambda) x_k`: exactly decoupled weight decay
  multiplied by the step size, ``optax.add_decayed_weights(weight_decay)``
  before ``scale_by_learning_rate``. If :math:`\|x_0\| \le 1/\lambda` the
  iterates stay in that ball. Scion's constrained SCG step
  :math:`x \leftarrow (1 - \gamma) x - \gamma \rho\, \mathrm{dual}(d)` is
  the same algebra with weight decay 1 (see :func:`scion`).

  The momentum starts at zero, as in every code (the theory starts at
  :math:`m_0 = g_0`). Leaves that are not hidden matrices go to AdamW, as
  in :func:`muon`, unless ``labels`` says otherwise.

  Args:
    learning_rate: the trust-region radius :math:`\eta` (or a schedule).
    norm: ``"spectral"``, ``"frobenius"``, ``"sign"`` (or another norm of
      :func:`scale_by_lmo`, as its unit ball), an :class:`LMONorm`, a
      (prefix) tree of them or a callable ``params -> tree``.
    alpha: the momentum's weight on the new gradient, in ``(0, 1]``
      (1: no momentum).
    weight_decay: decoupled weight decay :math:`\lambda` (trust-region
      centre shift), multiplied by the learning rate.
    **shared: the weight decay, AdamW, routing, state, sharding and
      skipping arguments of ``base.SHARED_ARGS``.
    eps: added to the norms that divide.
    method: orthogonalization engine of the spectral norm.
    **engine: the orthogonalization arguments of ``base.ENGINE_ARGS``.

  Returns:
    An ``optax.GradientTransformation``.

  References:
    Kovalev, `Understanding Gradient Orthogonalization for Deep Learning
    via Non-Euclidean Trust-Region Optimization
    <https://arxiv.org/abs/2503.12645>`_, 2025
  """
  shared = _base.shared_args(locals(), "trust_region")
  check_alpha(alpha)
  _lmo.check_norms(norm, "norm")
  _checks.check_nonnegative(eps, "eps")
  engine = _base.engine_args(locals(), "ns_eps")
  branch_dn = shared.branch_dimension_numbers
  return shared.chain(
      _momentum.scale_by_average(alpha, mu_dtype=mu_dtype),
      _lmo.scale_by_lmo(
          _unit_norms(norm),
          eps=eps,
          method=method,
          dimension_numbers=branch_dn,
          sharding=sharding,
          **engine.lmo_options(),
      ),
  )
