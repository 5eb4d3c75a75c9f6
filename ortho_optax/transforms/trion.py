"""``scale_by_trion``: orthogonalize the momentum's top DCT components."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ortho_optax import checks as _checks
from ortho_optax import routing as _routing
from ortho_optax.parallel import sharding as _sharding
from ortho_optax.parallel import stateful as _stateful
from ortho_optax.state import storage as _storage
from ortho_optax.transforms import low_rank as _low_rank
from ortho_optax.transforms import momentum as _momentum

DCT_METHODS = ("matmul", "fft")

# The basis rows are evaluated from integer phases k (2 j + 1) mod 4 m in
# uint32, exact while 2 m^2 < 2^32.
MAX_DCT_SIZE = 46340


class ScaleByTrionState(NamedTuple):
  """State of :func:`scale_by_trion`.

  Attributes:
    count: the number of steps taken (the stochastic-rounding draw of a
      quantized momentum).
    mu: the error-feedback momentum, a tree like the params
      (``QuantizedArray`` leaves for a quantized ``mu_dtype``).
  """

  # Shape (), dtype int32. The field of optax's states (it hides the
  # tuple's count method, which type checkers flag).
  count: jax.Array  # type: ignore[assignment]
  mu: optax.Updates


@functools.cache
def dct_matrix(m: int) -> np.ndarray:
  r"""The orthonormal DCT-II matrix, float64, shape ``(m, m)``.

  :math:`D_{kj} = c_k \cos(\pi k (2 j + 1) / (2 m))` with
  :math:`c_0 = \sqrt{1/m}` and :math:`c_k = \sqrt{2/m}` otherwise; row
  :math:`k` is the :math:`k`-th cosine, :math:`D X` the DCT-II of the
  columns of :math:`X` and :math:`D^\top` its inverse (the DCT-III). The
  reference builds the same matrix (its ``dct3_matrix``).
  """
  k = np.arange(m)[:, None]
  j = np.arange(m)[None, :]
  d = np.sqrt(2.0 / m) * np.cos(np.pi * k * (2 * j + 1) / (2 * m))
  d[0] /= np.sqrt(2.0)
  return d


def basis_rows(idx: jax.Array, m: int, second: bool, dtype) -> jax.Array:
  r"""Rows ``idx`` of :math:`D` (``second``) or of :math:`D^\top`, exactly.

  The phases are reduced modulo a full period in integers before the
  cosine, so the rows are accurate to the dtype for any size up to
  ``MAX_DCT_SIZE`` (a float32 ``cos`` of the unreduced phase, up to
  :math:`\pi m`, would lose three digits at ``m = 4096``).

  Args:
    idx: integer array ``(..., r)`` of row indices in ``[0, m)``.
    m: the basis size.
    second: rows of :math:`D` (the DCT-II cosines) if true, else of
      :math:`D^\top`.
    dtype: the real result dtype.

  Returns:
    An array ``(..., r, m)``.
  """
  k = idx.astype(jnp.uint32)[..., None]
  j = jnp.arange(m, dtype=jnp.uint32).reshape((1,) * idx.ndim + (m,))
  if second:
    phase = (k * (2 * j + 1)) % (4 * m)
    scale_at = k
  else:
    phase = (j * (2 * k + 1)) % (4 * m)
    scale_at = j
  scale = jnp.where(scale_at == 0, math.sqrt(1.0 / m), math.sqrt(2.0 / m))
  angle = phase.astype(jnp.float32) * (math.pi / (2 * m))
  return (jnp.broadcast_to(scale, angle.shape) * jnp.cos(angle)).astype(dtype)


def _dct_fft(x, second):
  # DCT-II along the rows (axis -2) is D @ x; its inverse is D^T @ x.
  fn = jax.scipy.fft.dct if second else jax.scipy.fft.idct
  if jnp.iscomplexobj(x):
    return _dct_fft(x.real, second) + 1j * _dct_fft(x.imag, second)
  return fn(x, type=2, axis=-2, norm="ortho")


def project(x: jax.Array, second: bool, dct: str) -> jax.Array:
  r""":math:`D X` (``second``) or :math:`D^\top X`, for ``x`` ``(B, m, n)``."""
  m = x.shape[-2]
  if dct == "fft":
    return _dct_fft(x, second)
  d = dct_matrix(m) if second else dct_matrix(m).T
  real = jnp.finfo(x.dtype).dtype
  return jnp.einsum("km,bmn->bkn", jnp.asarray(d, real), x)


def scale_by_trion(
    rank: float | int | None = None,
    *,
    beta: jax.typing.ArrayLike = 0.95,
    dct: str = "matmul",
    method: str = "auto",
    dimension_numbers=None,
    rules: _routing.Rules = None,
    mu_dtype=None,
    sharding: str | _sharding.ShardingOptions | None = None,
    **engine_options,
) -> optax.GradientTransformation:
  r"""Trion: orthogonalize the momentum's projection on its top DCT bases.

  For each matrix seen as ``(fan_in, fan_out)`` and oriented wide,
  :math:`G \in \mathbb{R}^{m \times n}`, :math:`m \le n`, with momentum
  :math:`M` and a fixed orthonormal DCT basis :math:`K` of
  :math:`\mathbb{R}^m` (rows :math:`K_k`):

  .. math::
    B = M + G, \quad S = K B, \quad
    I = \mathrm{top}_r\big(\|S_{k,:}\|_1\big), \quad
    V = K_{I,:} \in \mathbb{R}^{r \times m}, \\
    U = V^\top \mathrm{polar}(S_{I,:}), \quad
    M \leftarrow B - (1 - \beta) V^\top S_{I,:} .

  The basis is chosen from the momentum's energy each step (dynamic column
  selection), so no SVD or QR is needed, nothing but the indices depends
  on the step, and the cost does not depend on the rank but for the
  ``r x n`` Newton-Schulz. ``rank`` is a fraction of ``min(fan_in,
  fan_out)`` (rounded up) or an int.

  :math:`S = K B` is a matmul with the ``m x m`` DCT matrix
  (``dct="matmul"``, :math:`2 m^2 n` FLOPs) or a fast cosine transform
  (``dct="fft"``, :math:`O(m n \log m)`, Makhoul's algorithm in the paper).
  The selected basis rows are evaluated directly from their indices.

  The shape scaling, weight decay and learning rate are not part of this
  transform; :func:`ortho_optax.trion` chains them.

  Differences from IST-DASLab's reference (``trion_update``, matmul path):
  it projects the shorter side of the PyTorch ``(out, in)`` matrix with
  :math:`D` (the DCT-II, :func:`dct_matrix`) when ``out < in`` and with
  :math:`D^\top` otherwise; this transform does the same, so that
  :math:`K = D` for matrices that were transposed to be wide
  (``fan_in > fan_out``) and :math:`K = D^\top` for the others (the paper
  writes :math:`S = G Q` with :math:`Q = D^\top`). Its Makhoul (FFT) path
  uses :math:`D` for both, so ``dct="fft"`` here computes the matmul
  path's projections, not the reference's FFT path. Its Newton-Schulz runs
  in bfloat16; here in the momentum's dtype unless ``compute_dtype`` says
  otherwise, on the projection scaled to entries of order one.

  Sharding: ``"distribute"`` moves each matrix's :math:`B` to one device
  (one all-to-all of the stack); only the ``r`` indices and the two ``r x
  n`` factors :math:`S_{I,:}` and its polar factor come back, and every
  device rebuilds its shard of :math:`U` and of the momentum from them (the
  reference's DDP scheme all-gathers the same factors). The basis is
  never communicated.

  Args:
    rank: ``None`` (a quarter of ``min(fan_in, fan_out)`` but at least
      128, capped at it, see :func:`trion`), a fraction in ``(0, 1]`` of
      ``min(fan_in, fan_out)`` or an int. Static.
    beta: the error-feedback momentum :math:`\mu`, in ``[0, 1)``.
    dct: ``"matmul"`` or ``"fft"``.
    method: the orthogonalization engine, see :func:`orthogonalize`.
    dimension_numbers: as in :func:`scale_by_orthogonalization`.
    rules: routing overrides, see :func:`label_params`.
    mu_dtype: storage of the momentum: ``None`` (the params' dtype), a
      floating or complex dtype, or a quantized format (``"q8"``,
      ``"q4"``, a :class:`QuantFormat`: codes and block scales, read back
      in float32 for each step, see :mod:`ortho_optax.state.storage`).
    sharding: ``None``, ``"gather"``, ``"distribute"`` or a
      :class:`ShardingOptions`.
    **engine_options: options of the engine (``coeffs``, ``steps``,
      ``normalization``, ``eps``, ``compute_dtype``, ...).

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`ScaleByTrionState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import ortho_optax
    >>> tx = ortho_optax.scale_by_trion(rank=2)
    >>> params = {"w": jnp.ones((8, 16))}
    >>> updates, state = tx.update({"w": jnp.ones((8, 16))}, tx.init(params))
    >>> updates["w"].shape
    (8, 16)

  References:
    Modoranu et al., `FFT-based Dynamic Subspace Selection for Low-Rank
    Adaptive Optimization of Large Language Models
    <https://arxiv.org/abs/2505.17967>`_, 2025
  """
  _low_rank.check_rank(rank)
  _momentum.check_beta(beta)
  _checks.check_choice(dct, "dct", DCT_METHODS)
  sharding = _sharding.canonicalize(sharding)
  orthogonalize = _low_rank.orthogonalizer(method, engine_options)
  storage = _low_rank.momentum_storage(mu_dtype)
  _routing.check_dimension_numbers(dimension_numbers)
  _routing.check_rules(rules)

  # Where ``init`` saw the parameters: the layouts the work is planned
  # from under Auto mesh axes, where traced updates carry none.
  layouts = _sharding.Layouts()

  def init_fn(params):
    dns = _routing.resolve_dimension_numbers(params, dimension_numbers, rules)
    layouts.record(params)

    def check_size(x, dn):
      _, m, _ = _stateful.oriented_shape(x.shape, dn)
      if m > MAX_DCT_SIZE:
        raise ValueError(
            f"scale_by_trion supports matrices whose shorter side is at most"
            f" {MAX_DCT_SIZE}; got a leaf of shape {tuple(x.shape)} (shorter"
            f" side {m})."
        )

    return ScaleByTrionState(
        count=_low_rank.zero_count(params),
        mu=_low_rank.momentum_state(params, dns, storage, check_size),
    )

  def step(g, m, extras, placement, transposed):
    del extras
    (b,) = placement.pin(m + g)
    count, rows, cols = b.shape
    r = _low_rank.resolve_rank(rank, rows, cols)
    (owned,) = placement.to_owners(b)
    s_all = project(owned, transposed, dct)
    _, idx = jax.lax.top_k(jnp.sum(jnp.abs(s_all), axis=-1), r)
    s = _low_rank.take_rows(s_all, idx)
    o = orthogonalize(s)
    idx, s, o = placement.to_all(count, idx, s, o)
    v = basis_rows(idx, rows, transposed, jnp.finfo(b.dtype).dtype)
    m_new = b - (1 - beta) * jnp.einsum("brm,brn->bmn", v, s)
    u = jnp.einsum("brm,brn->bmn", v, o)
    return u, m_new, ()

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    dns = _routing.resolve_dimension_numbers(updates, dimension_numbers, rules)
    # A quantized momentum is read back in float32 for the step only.
    mu = _storage.load(state.mu, updates)
    updates, mu, _ = _stateful.map_matrix_groups(
        step, updates, mu, (), dns, sharding, layouts
    )
    mu = _storage.store(
        mu, storage, state.mu, count, salt=_storage.TRION_SALT
    )
    return updates, ScaleByTrionState(count=count, mu=mu)

  return optax.GradientTransformation(init_fn, update_fn)
