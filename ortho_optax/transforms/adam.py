r"""``scale_by_adam``: Adam's moments, stored as floats or quantized."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ortho_optax.state import storage as _storage


def scale_by_adam(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    *,
    mu_dtype=None,
    nu_dtype=None,
) -> optax.GradientTransformation:
  r"""Adam's scaling, with its moments in any storage.

  .. math::
    m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \quad
    u_t = \frac{m_t / (1 - \beta_1^t)}
      {\sqrt{v_t / (1 - \beta_2^t) + \epsilon_{root}} + \epsilon},

  exactly ``optax.scale_by_adam`` (same state, ``optax.ScaleByAdamState``)
  when both moments are floats and the parameters float32 or wider. The
  arithmetic runs in at least float32. Half-precision parameters keep their
  updates' dtype, and float16 ones keep their moments in float32 by
  default: float16's range holds :math:`g^2` only for
  :math:`2.4 \cdot 10^{-4} < |g| < 256`, and optax's float16 Adam
  turns a gradient of 300 into zero steps from then on and one of 1e-3
  into an infinite step. A quantized ``mu_dtype`` / ``nu_dtype``
  (``"q8"``, ``"q4"``, ``"n4"``, a :class:`~ortho_optax.QuantFormat`) keeps that
  moment as block-wise codes between steps: it is read back in float32,
  updated and written again (8-bit: Dettmers et al., 2022; 4-bit: Li et
  al., 2023). The second moment uses the unsigned code of the same width
  (``"q8"`` stores ``v`` as ``"u8"``), which has no zero: a ``v`` rounded
  to 0 would turn the step into :math:`m / \epsilon`.

  Range: gradient entries are clipped to :math:`\pm 2^{63}` (9.2e18 in
  float32) before they enter the moments, so that :math:`g^2` and
  :math:`v` stay finite. In optax an entry above about 1.8e19 makes
  :math:`v` infinite, and that entry's updates are zero from then on.
  Smaller entries are not touched. Above the clip, a one-off spike
  counts as :math:`2^{63}` in the moments (the next steps are as small as
  Adam's after any spike that large). Gradients that stay that large take
  the steps of their signs.

  Args:
    b1: first-moment decay.
    b2: second-moment decay.
    eps: added to :math:`\sqrt{\hat v}`.
    eps_root: added to :math:`\hat v` inside the square root.
    mu_dtype: storage of :math:`m` (``None``: the parameters' dtype, but
      float32 for float16 parameters).
    nu_dtype: storage of :math:`v` (``None``: the parameters' dtype, but
      float32 for float16 parameters).

  Returns:
    An ``optax.GradientTransformation`` whose state is an
    ``optax.ScaleByAdamState``.

  References:
    Kingma and Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2014

    Dettmers et al., `8-bit Optimizers via Block-wise Quantization
    <https://arxiv.org/abs/2110.02861>`_, ICLR 2022

    Li et al., `Memory Efficient Optimizers with 4-bit States
    <https://arxiv.org/abs/2309.01507>`_, NeurIPS 2023
  """
  mu_storage = _storage.as_storage(mu_dtype, "mu_dtype")
  nu_storage = _storage.as_storage(nu_dtype, "nu_dtype", second_moment=True)

  def init_fn(params):
    return optax.ScaleByAdamState(
        count=jnp.zeros([], jnp.int32),
        mu=_zeros(params, mu_storage, "mu_dtype"),
        nu=_zeros(params, nu_storage, "nu_dtype", real_values=True),
    )

  def update_fn(updates, state, params=None):
    del params
    count_inc = optax.safe_increment(state.count)
    # In at least float32: in float16, g^2 overflows above 256 (v = inf, the
    # step 0 from then on) and underflows below 2.4e-4 (v = 0, eps = 1e-8
    # is 0 too, the step m / 0 = inf).
    wide = jax.tree.map(
        lambda g: None if g is None else _saturate(
            g.astype(_working_dtype(g.dtype))
        ),
        updates, is_leaf=lambda x: x is None,
    )
    mu = optax.tree.update_moment(
        wide, _widen(_storage.load(state.mu)), b1, 1
    )
    nu = optax.tree.update_moment_per_elem_norm(
        wide, _widen(_storage.load(state.nu)), b2, 2
    )
    mu_hat = optax.tree.bias_correction(mu, b1, count_inc)
    nu_hat = optax.tree.bias_correction(nu, b2, count_inc)
    updates = jax.tree.map(
        lambda m, v, g: None if m is None else (
            m / (jnp.sqrt(v + eps_root) + eps)
        ).astype(g.dtype),  # a float32 buffer read back keeps bf16 updates
        mu_hat,
        nu_hat,
        updates,
        is_leaf=lambda x: x is None,
    )
    mu = _storage.store(
        mu, mu_storage, state.mu, count_inc, salt=_storage.ADAM_MU_SALT
    )
    nu = _storage.store(
        nu, nu_storage, state.nu, count_inc, salt=_storage.ADAM_NU_SALT
    )
    return updates, optax.ScaleByAdamState(count=count_inc, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def _working_dtype(dtype):
  """At least float32 (complex64 for complex) for floating dtypes."""
  if jnp.issubdtype(dtype, jnp.inexact):
    return jnp.promote_types(dtype, jnp.float32)
  return dtype


def _saturate(g):
  """``g`` with each entry (each part, if complex) clipped to ``2^(e/2-1)``.

  ``2^e`` bounds the dtype's finite numbers, so ``g^2``, and with it
  ``v``, stays finite: float32 clips at ``2^63`` (9.2e18). Without the
  clip an entry above about 1.8e19 made ``v`` infinite and that entry's
  steps zero from then on. Smaller entries are unchanged. Non-float
  leaves pass through as they did before the clip.
  """
  if not jnp.issubdtype(g.dtype, jnp.inexact):
    return g
  limit = 2.0 ** (jnp.finfo(g.dtype).maxexp // 2 - 1)
  if jnp.issubdtype(g.dtype, jnp.complexfloating):
    part = limit / 2

    def clip(x):
      return jax.lax.complex(jnp.clip(x.real, -part, part),
                             jnp.clip(x.imag, -part, part))
  else:
    part = limit

    def clip(x):
      return jnp.clip(x, -limit, limit)

  # Behind a cond, the usual case passes ``g`` on untouched, so XLA fuses
  # the moments as it does optax's (a fused clip moved them by an ulp).
  big = jnp.any(jnp.abs(g.real) > part)
  if jnp.issubdtype(g.dtype, jnp.complexfloating):
    big = big | jnp.any(jnp.abs(g.imag) > part)
  return jax.lax.cond(big, clip, lambda x: x, g)


def _widen(tree):
  return jax.tree.map(
      lambda x: None if x is None else x.astype(_working_dtype(x.dtype)),
      tree, is_leaf=lambda x: x is None,
  )


def _zeros(params, storage, name, real_values=False):
  """Zero moments; a float16 parameter's default storage is float32.

  float16 holds neither Adam's second moment of gradients above about 256
  nor below about 2.4e-4, so its moments are kept in float32 unless a
  storage is given (bfloat16 has float32's range and keeps its own dtype,
  as in optax).
  """
  if storage is None:
    params = jax.tree.map(
        lambda x: x.astype(jnp.float32)
        if getattr(x, "dtype", None) == jnp.float16 else x,
        params,
    )
  return _storage.zeros(params, storage, name, real_values=real_values)
