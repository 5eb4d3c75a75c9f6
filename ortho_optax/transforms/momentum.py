"""``scale_by_momentum``: the momentum forms used by Muon-family references."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ortho_optax import checks as _checks
from ortho_optax.state import storage as _storage
from ortho_optax.transforms import structure as _structure

FORMS = ("ema", "sum")


class ScaleByMomentumState(NamedTuple):
  """State of :func:`scale_by_momentum`."""

  count: jax.Array  # shape (), dtype int32
  mu: optax.Updates


def check_beta(beta, name: str = "beta") -> None:
  """Raises unless a concrete ``beta`` lies in ``[0, 1)``.

  Traced values (under ``inject_hyperparams``) are not checked.
  """
  _checks.check_number(beta, name, low=0.0, high=1.0, high_open=True)


def scale_by_momentum(
    beta: jax.typing.ArrayLike = 0.95,
    *,
    nesterov: bool = True,
    form: str = "ema",
    bias_correction: bool = False,
    mu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
  r"""Momentum, in the forms the Muon-family references use.

  ``form="ema"`` (KellerJordan/Muon, NorMuon, AdaMuon, AuON):

  .. math::
    m_t = \beta m_{t-1} + (1 - \beta) g_t, \qquad
    u_t = \beta m_t + (1 - \beta) g_t \text{ (Nesterov) or } m_t .

  ``form="sum"`` (Moonlight, ROOT, Dion):

  .. math::
    m_t = \beta m_{t-1} + g_t, \qquad
    u_t = g_t + \beta m_t \text{ (Nesterov) or } m_t .

  The two differ by the factor :math:`1 / (1 - \beta)` once started from
  zero, which an orthogonalization or LMO removes. ``bias_correction=True``
  (EMA only) reproduces ``optax.contrib.scale_by_muon``:
  :math:`u_t = \beta m_t / (1 - \beta^{t+1}) + (1 - \beta) g_t / (1 -
  \beta^t)`, or :math:`m_t / (1 - \beta^t)` without Nesterov.

  Args:
    beta: momentum coefficient in ``[0, 1)``.
    nesterov: whether to use the Nesterov look-ahead.
    form: ``"ema"`` or ``"sum"``.
    bias_correction: divide by :math:`1 - \beta^t` (optax's form; EMA only).
    mu_dtype: storage of the momentum buffer: ``None`` (the params'
      dtype), a floating dtype, or a quantized format (``"q8"``, ``"q4"``,
      a :class:`QuantFormat`: 8 or 4 bits an entry plus a float32 scale a
      block, read back in float32 for each step). Integer dtypes are
      refused, see :mod:`ortho_optax.state.storage`.

  Returns:
    An ``optax.GradientTransformation``.

  References:
    Jordan et al., `Muon: An optimizer for hidden layers in neural networks
    <https://kellerjordan.github.io/posts/muon/>`_, 2024

    Liu et al., `Muon is Scalable for LLM Training
    <https://arxiv.org/abs/2502.16982>`_, 2025
  """
  check_beta(beta)
  _checks.check_bool(nesterov, "nesterov")
  _checks.check_choice(form, "form", FORMS)
  _checks.check_bool(bias_correction, "bias_correction")
  if bias_correction and form != "ema":
    raise ValueError(
        "`bias_correction=True` is only defined for `form='ema'`, got"
        f" form={form!r}."
    )
  storage = _storage.as_storage(mu_dtype, "mu_dtype")

  def init_fn(params):
    for path, x in jax.tree_util.tree_leaves_with_path(params):
      _checks.check_state_dtype_for(
          storage, jnp.result_type(x), "mu_dtype",
          jax.tree_util.keystr(path),
      )
    return ScaleByMomentumState(
        count=jnp.zeros([], jnp.int32),
        mu=_storage.zeros(params, storage, "mu_dtype"),
    )

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    # A quantized buffer is read back in float32 for the step only.
    prev = _storage.load(state.mu, updates)
    if form == "ema":
      mu = optax.tree.update_moment(updates, prev, beta, 1)
    else:
      mu = jax.tree.map(
          lambda g, m: None if g is None else beta * m + g,
          updates,
          prev,
          is_leaf=lambda x: x is None,
      )
    if bias_correction:
      if nesterov:
        m_hat = optax.tree.bias_correction(
            mu, beta, optax.safe_increment(count)
        )
        g_hat = optax.tree.bias_correction(updates, beta, count)
        out = jax.tree.map(
            lambda m, g: None if g is None else beta * m + (1 - beta) * g,
            m_hat,
            g_hat,
            is_leaf=lambda x: x is None,
        )
      else:
        out = optax.tree.bias_correction(mu, beta, count)
    elif nesterov:
      w = (1 - beta) if form == "ema" else 1.0
      out = jax.tree.map(
          lambda m, g: None if g is None else beta * m + w * g,
          mu,
          updates,
          is_leaf=lambda x: x is None,
      )
    else:
      out = mu
    out = jax.tree.map(
        lambda o, g: None if g is None else o.astype(g.dtype),
        out,
        updates,
        is_leaf=lambda x: x is None,
    )
    mu = _storage.store(mu, storage, state.mu, count)
    return out, ScaleByMomentumState(count=count, mu=mu)

  return _structure.check_like_init(
      optax.GradientTransformation(init_fn, update_fn), "scale_by_momentum"
  )
