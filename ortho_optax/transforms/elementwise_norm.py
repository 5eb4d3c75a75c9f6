"""``scale_by_elementwise_norm``: AdaMuon's second moment with RMS matching."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ortho_optax import checks as _checks
from ortho_optax import routing as _routing
from ortho_optax.state import storage as _storage
from ortho_optax.transforms import low_rank as _low_rank
from ortho_optax.transforms import momentum as _momentum
from ortho_optax.transforms import neuron_norm as _neuron_norm
from ortho_optax.transforms import structure as _structure


class ScaleByElementwiseNormState(NamedTuple):
  """State of :func:`scale_by_elementwise_norm`.

  ``count`` is the number of updates (it draws stochastic rounding); ``nu``
  is the elementwise second moment of each matrix leaf (its shape and
  dtype); leaves that are not matrices hold ``optax.MaskedNode()``.
  """

  # The field of optax's states (it hides the tuple's count method,
  # which type checkers flag).
  count: jax.Array  # type: ignore[assignment]
  nu: optax.Updates


def scale_by_elementwise_norm(
    beta: jax.typing.ArrayLike = 0.95,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    rms: jax.typing.ArrayLike = 0.2,
    dimension_numbers=None,
    rules: _routing.Rules = None,
    nu_dtype=None,
) -> optax.GradientTransformation:
  r"""AdaMuon's elementwise second moment, then RMS matching.

  For each matrix :math:`O` (an orthogonalized update) of shape
  ``(fan_in, fan_out) = (m, n)``:

  .. math::
    v_t = \beta v_{t-1} + (1 - \beta)\, O_t \odot O_t, \qquad
    \hat O_t = O_t \oslash (\sqrt{v_t} + \epsilon), \qquad
    \hat O_t \leftarrow \hat O_t\, \frac{\mathrm{rms} \sqrt{mn}}
      {\|\hat O_t\|_F + \epsilon},

  (zero init, no bias correction), so every update has RMS ``rms`` (AdamW's
  typical 0.2, to reuse its learning rate). Leaves that are not matrices
  pass through unchanged.

  Args:
    beta: decay of the second moment in ``[0, 1)`` (AdaMuon uses the
      momentum's 0.95).
    eps: added to :math:`\sqrt{v}` and to the Frobenius norm.
    rms: the RMS of the output.
    dimension_numbers: as in :func:`scale_by_orthogonalization`.
    rules: routing overrides, see :func:`label_params`.
    nu_dtype: storage of :math:`v`: ``None`` (the parameters' dtype), a
      floating dtype, or a quantized format, kept in the unsigned code of
      its width (``"q8"`` -> ``"u8"``), stochastic rounding included.

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`ScaleByElementwiseNormState`.

  References:
    Si et al., `AdaMuon: Adaptive Muon Optimizer
    <https://arxiv.org/abs/2507.11005>`_, 2025
  """
  _momentum.check_beta(beta, "beta")
  _checks.check_nonnegative(eps, "eps")
  _checks.check_positive(rms, "rms")
  _routing.check_dimension_numbers(dimension_numbers)
  _routing.check_rules(rules)

  storage = _storage.as_storage(nu_dtype, "nu_dtype", second_moment=True)

  def init_fn(params):
    dns = _routing.resolve_dimension_numbers(params, dimension_numbers, rules)
    _storage.check_leaves(
        _neuron_norm.matrix_state(params, dns, lambda x, dn: x),
        storage, "nu_dtype", real_values=True,
    )
    # |O|^2 is real: a complex leaf's moment is real too (a complex
    # `nu_dtype` keeps it with a zero imaginary part, as optax's Adam does).
    nu = _neuron_norm.matrix_state(
        params,
        dns,
        lambda x, dn: jnp.zeros_like(x, dtype=_neuron_norm.real_dtype(x.dtype)),
    )
    return ScaleByElementwiseNormState(
        count=_low_rank.zero_count(params),
        nu=_storage.zeros(nu, storage, "nu_dtype", check=False),
    )

  def normalize(o, v):
    b = _momentum.hyperparameter(beta, o)
    v = b * v + (1 - b) * _neuron_norm.abs_sq(o)
    o_hat = o / (jnp.sqrt(v) + eps)
    target = rms * jnp.sqrt(float(o.shape[-2] * o.shape[-1]))
    return o_hat * (target / (_neuron_norm.frobenius(o_hat) + eps)), v

  def update_fn(updates, state, params=None):
    del params
    dns = _routing.resolve_dimension_numbers(updates, dimension_numbers, rules)
    count = optax.safe_increment(state.count)
    prev = _storage.load(state.nu, updates)
    updates, nu = _neuron_norm.map_with_state(normalize, updates, prev, dns)
    return updates, ScaleByElementwiseNormState(
        count=count,
        nu=_storage.store(
            nu, storage, state.nu, count, salt=_storage.ELEMENTWISE_NU_SALT
        ),
    )

  return _structure.check_like_init(
      optax.GradientTransformation(init_fn, update_fn),
      "scale_by_elementwise_norm",
  )
