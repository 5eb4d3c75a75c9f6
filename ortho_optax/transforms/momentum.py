"""``scale_by_momentum``: the momentum forms used by Muon-family references."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ortho_optax import checks as _checks
from ortho_optax.engines import normalization as _normalization
from ortho_optax.state import storage as _storage
from ortho_optax.transforms import structure as _structure

FORMS = ("ema", "sum")


class ScaleByMomentumState(NamedTuple):
  """State of :func:`scale_by_momentum`."""

  # Shape (), dtype int32. The field of optax's states (it hides the
  # tuple's count method, which type checkers flag).
  count: jax.Array  # type: ignore[assignment]
  mu: optax.Updates


def saturate(x: jax.Array | None, dtype=None) -> jax.Array | None:
  """``x`` cast to ``dtype`` (default its own), clipped to its finite range.

  A momentum is a sum of finite gradients, but not always a finite one: the
  sum form grows to ``1 / (1 - beta)`` times the gradient (20x for 0.95),
  and a float16 buffer holds only 65504. Saturating at
  ``+-finfo(dtype).max`` keeps the sign of every entry, and so (after an
  orthogonalization, which does not see the scale) a useful direction, where
  ``inf`` would turn the step into NaN. NaN stays NaN. Non-float leaves are
  only cast.
  """
  if x is None:
    return None
  dtype = jnp.dtype(x.dtype if dtype is None else dtype)
  if not jnp.issubdtype(dtype, jnp.inexact):
    return x.astype(dtype)
  big = jnp.finfo(dtype).max
  if jnp.iscomplexobj(x):
    return jax.lax.complex(
        jnp.clip(x.real, -big, big), jnp.clip(x.imag, -big, big)
    ).astype(dtype)
  return jnp.clip(x, -big, big).astype(dtype)


def lincomb(a, x: jax.Array, b, y: jax.Array) -> jax.Array:
  """``a x + b y`` elementwise, in at least float32, without overflowing
  where the result itself is in range.

  Each entry is computed as ``(a (x s) + b (y s)) / s`` with ``s`` the power
  of two that brings ``max(|x|, |y|)`` to ``[1, 2)``: exact scalings, so the
  result is the plain one's wherever that did not overflow (float32 sums of
  terms ~3e38 did, and ``inf - inf`` is NaN); out of range, it is ``+-inf``,
  for :func:`saturate`.
  """
  wd = _normalization.working_dtype(jnp.result_type(x, y))
  xw, yw = x.astype(wd), y.astype(wd)
  inv = _normalization.inverse_unit(
      jnp.maximum(jnp.abs(xw), jnp.abs(yw)), axis=()
  ).astype(wd)
  return (a * (xw * inv) + b * (yw * inv)) / inv


def _tree_saturate(tree, dtypes=None):
  if dtypes is None:
    return jax.tree.map(saturate, tree, is_leaf=lambda x: x is None)
  return jax.tree.map(
      lambda x, d: saturate(x, None if d is None else d.dtype),
      tree,
      dtypes,
      is_leaf=lambda x: x is None,
  )


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
  zero, which an orthogonalization or LMO removes. Entries beyond the
  dtype's finite range saturate at :math:`\pm` ``finfo.max`` rather than
  becoming ``inf`` (see :func:`saturate`), so a finite gradient near the
  dtype's limit never makes a non-finite step. ``bias_correction=True``
  (EMA only) reproduces ``optax.contrib.scale_by_muon``:
  :math:`u_t = \beta m_t / (1 - \beta^{t+1}) + (1 - \beta) g_t / (1 -
  \beta^t)`, or :math:`m_t / (1 - \beta^t)` without Nesterov.

  Args:
    beta: momentum coefficient in ``[0, 1)``.
    nesterov: whether to use the Nesterov look-ahead.
    form: ``"ema"`` or ``"sum"``.
    bias_correction: divide by :math:`1 - \beta^t` (optax's form; EMA only).
    mu_dtype: storage of the momentum buffer: ``None`` (the params'
      dtype), a floating dtype, or a quantized format (``"q8"``, ``"q4"``, ``"n4"``,
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
    # Raises for a storage that does not fit a leaf (storage.check_leaves).
    return ScaleByMomentumState(
        count=jnp.zeros([], jnp.int32),
        mu=_storage.zeros(params, storage, "mu_dtype"),
    )

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    # A quantized buffer is read back in float32 for the step only.
    prev = _storage.load(state.mu, updates)

    def combine(a, xs, b, ys):
      return jax.tree.map(
          lambda x, y: None if y is None else lincomb(a, x, b, y),
          xs,
          ys,
          is_leaf=lambda x: x is None,
      )

    def step(xs, ys):
      # beta enters as an array of the update's working dtype first, so
      # that a float and its injected array give the same bits.
      def one(x, y):
        b = hyperparameter(beta, y)
        return lincomb(b, x, (1 - b) if form == "ema" else 1.0, y)

      return jax.tree.map(
          lambda x, y: None if y is None else one(x, y),
          xs,
          ys,
          is_leaf=lambda x: x is None,
      )

    mu = step(prev, updates)
    if bias_correction:
      # optax's m_hat = m / (1 - beta^t), as one coefficient per term.
      c_t = 1 - beta**count
      if nesterov:
        c_next = 1 - beta ** optax.safe_increment(count)
        out = combine(beta / c_next, mu, (1 - beta) / c_t, updates)
      else:
        out = jax.tree.map(
            lambda m: None if m is None else m / c_t.astype(m.dtype),
            mu,
            is_leaf=lambda x: x is None,
        )
    elif nesterov:
      out = step(mu, updates)
    else:
      out = mu
    out = _tree_saturate(out, updates)
    # Saturated at the stored dtype's range (a quantized buffer keeps its
    # own scale, so float32's).
    if _storage.is_quantized(storage):
      mu = _tree_saturate(mu)
    elif storage is None:
      mu = _tree_saturate(mu, state.mu)
    else:
      mu = jax.tree.map(
          lambda x: saturate(x, storage), mu, is_leaf=lambda x: x is None
      )
    mu = _storage.store(
        mu, storage, state.mu, count, salt=_storage.MOMENTUM_SALT
    )
    return out, ScaleByMomentumState(count=count, mu=mu)

  return _structure.check_like_init(
      optax.GradientTransformation(init_fn, update_fn), "scale_by_momentum"
  )


def hyperparameter(value, like) -> jax.Array:
  """A hyperparameter as an array of ``like``'s working dtype (real, at
  least float32), before any arithmetic on it.

  ``optax.inject_hyperparams`` passes every float hyperparameter as a
  float32 array: computing ``1 - beta`` from that array and from the Python
  float ``0.95`` gives different float32 numbers (0.050000012 against
  0.05). Converting first makes the two paths compute the same bits, and
  the two weights of an average sum to exactly 1.
  """
  dtype = jnp.promote_types(like.dtype, jnp.float32)
  return jnp.asarray(value, jnp.finfo(dtype).dtype)


def _ema(g, m, decay):
  """``(1 - decay) * g + decay * m``, as ``optax.tree.update_moment``."""
  return (1 - decay) * g + decay * m


def _map(fn, updates, *trees):
  """``fn`` over the leaves of ``updates`` (``None`` leaves are kept)."""
  return jax.tree.map(
      lambda g, *r: None if g is None else fn(g, *r),
      updates,
      *trees,
      is_leaf=lambda x: x is None,
  )


def _finish(out, mu, updates, state, count, storage):
  """Casts the output to the updates' dtypes and stores ``mu``."""
  out = _map(lambda g, o: o.astype(g.dtype), updates, out)
  mu = _storage.store(
      mu, storage, state.mu, count, salt=_storage.MOMENTUM_SALT
  )
  return out, ScaleByMomentumState(count=count, mu=mu)


def scale_by_average(
    alpha: jax.typing.ArrayLike = 0.1,
    *,
    mu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
  r"""The running average of Scion and Kovalev's trust-region method.

  .. math::
    d_t = (1 - \alpha) d_{t-1} + \alpha g_t ,

  :func:`scale_by_momentum` with ``beta = 1 - alpha``, no Nesterov, written
  in terms of :math:`\alpha` so that an injected ``alpha``
  (``optax.inject_hyperparams``, a float32 array) gives the same update as
  the float: :math:`1 - (1 - \alpha)` is not :math:`\alpha` in float32,
  and Newton-Schulz amplifies such a rounding difference on rank-deficient
  momenta (3e-5 relative on all-ones gradients). Same state as
  :func:`scale_by_momentum`.

  Args:
    alpha: weight of the new gradient, in ``(0, 1]``.
    mu_dtype: storage of the average, as in :func:`scale_by_momentum`.

  Returns:
    An ``optax.GradientTransformation``.

  References:
    Pethick et al., `Training Deep Learning Models with Norm-Constrained
    LMOs <https://arxiv.org/abs/2502.07529>`_, 2025
  """
  storage = _storage.as_storage(mu_dtype, "mu_dtype")

  def init_fn(params):
    return ScaleByMomentumState(
        count=jnp.zeros([], jnp.int32),
        mu=_storage.zeros(params, storage, "mu_dtype"),
    )

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)

    def average(g, m):
      a = hyperparameter(alpha, g)
      return a * g + (1 - a) * m

    mu = _map(average, updates, _storage.load(state.mu, updates))
    return _finish(mu, mu, updates, state, count, storage)

  return _structure.check_like_init(
      optax.GradientTransformation(init_fn, update_fn), "scale_by_average"
  )
