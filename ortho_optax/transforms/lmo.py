"""``scale_by_lmo``: the dual-norm (LMO) direction of each leaf, Scion-style."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ortho_optax import checks as _checks
from ortho_optax import routing as _routing
from ortho_optax.engines import normalization as _normalization
from ortho_optax.engines import orthogonalize as _orthogonalize
from ortho_optax.parallel import sharding as _sharding
from ortho_optax.transforms import orthogonalization as _orthogonalization

NORMS = (
    "spectral",
    "spectral_conv",
    "frobenius",
    "sign",
    "col_norm",
    "row_norm",
    "bias_rms",
    "auto",
)

# Scion's defaults of the `normalized` flag (LIONS-EPFL/scion, scion.py).
_NORMALIZED_DEFAULT = {"spectral": True, "col_norm": False, "row_norm": True,
                       "sign": True}


@dataclasses.dataclass(frozen=True)
class LMONorm:
  r"""One layer's norm for :func:`scale_by_lmo`, with Scion's options.

  A plain string ``name`` means ``LMONorm(name)``, i.e. Scion's defaults.

  Attributes:
    name: one of ``"spectral"``, ``"spectral_conv"``, ``"frobenius"``,
      ``"sign"``, ``"col_norm"``, ``"row_norm"``, ``"bias_rms"``, ``"auto"``.
    normalized: Scion's ``normalized`` flag; ``None`` takes Scion's default
      for the norm (``True`` for spectral, row_norm and sign, ``False`` for
      col_norm).
    max: Scion's ``Spectral(max=True)``: the spectral scale becomes
      ``max(1, s)`` (Scion's input layer).
    unit: the dual of the plain norm's unit ball, without Scion's dimension
      factors: spectral and spectral_conv give :math:`U V^T`, sign gives
      :math:`\mathrm{sign}(d)`, col_norm and row_norm unit-l2 rows or
      columns (Kovalev's trust-region method).
  """

  name: str
  normalized: bool | None = None
  max: bool = False
  unit: bool = False

  def __post_init__(self):
    _checks.check_choice(self.name, "name", NORMS)
    if self.normalized is not None:
      _checks.check_bool(self.normalized, "normalized")
    _checks.check_bool(self.max, "max")
    _checks.check_bool(self.unit, "unit")

  def is_normalized(self, kind: str) -> bool:
    """The ``normalized`` flag for the concrete norm ``kind``."""
    if self.normalized is None:
      return _NORMALIZED_DEFAULT.get(kind, False)
    return bool(self.normalized)


def as_norm(value, name: str = "norm") -> LMONorm | None:
  """A string, :class:`LMONorm` or ``None`` (leaf left unchanged)."""
  if value is None or isinstance(value, LMONorm):
    return value
  if isinstance(value, str):
    _checks.check_choice(value, name, NORMS)
    return LMONorm(value)
  raise ValueError(
      f"Unknown `{name}` {value!r}; accepted values are {NORMS}, an LMONorm"
      " or None."
  )


def is_norm_value(x) -> bool:
  return x is None or isinstance(x, (str, LMONorm))


def _is_masked(x) -> bool:
  return x is None or isinstance(x, optax.MaskedNode)


def per_leaf(prefix, updates, is_value: Callable[[Any], bool]) -> list:
  """One entry of the prefix tree ``prefix`` per leaf of ``updates``."""
  full = jax.tree.map(
      lambda p, sub: jax.tree.map(lambda _: p, sub, is_leaf=_is_masked),
      prefix,
      updates,
      is_leaf=is_value,
  )
  return jax.tree.leaves(full, is_leaf=is_value)


def resolve_norm(leaf, dn, norm: LMONorm) -> str:
  """The concrete norm name of ``"auto"`` for this leaf."""
  if norm.name != "auto":
    return norm.name
  ndim = jnp.ndim(leaf)
  if ndim < 2:
    return "bias_rms"
  if ndim == 2:
    return "spectral"
  return "spectral_conv"


def _conv_geometry(shape, dn) -> tuple[int, int]:
  """``(in_channels, spatial size)`` of a leaf: the last fan-in axis is the
  input channels, the other fan-in axes are the kernel's spatial axes."""
  shape, dn = _routing.matrix_view(shape, dn)  # one part of a split
  _, red, _ = _routing.normalize_dimension_numbers(dn, len(shape))
  in_ch = shape[red[-1]]
  return in_ch, math.prod(shape[a] for a in red[:-1])


def _abs_sq(x):
  """``|x|^2``: the norms below are those of complex leaves too (``x * x``
  would leave the imaginary part's scale out)."""
  return jnp.real(x * jnp.conj(x))


def _dual(m, kind, norm: LMONorm, fan_in, fan_out, conv, eps):
  """The dual direction of a ``(B, fan_in, fan_out)`` view (polar done)."""
  normalized = norm.is_normalized(kind) and not norm.unit
  if kind == "spectral":
    if norm.unit:
      s = 1.0
    else:
      s = math.sqrt(fan_out / fan_in) if normalized else math.sqrt(fan_out)
      if norm.max:
        s = max(1.0, s)
    return m * s
  if kind == "spectral_conv":
    in_ch, spatial = conv
    s = 1.0 if norm.unit else math.sqrt(fan_out / in_ch) / spatial
    return m * s
  # The divided norms are scale-free (eps relative to max|d|, no overflow
  # of |d|^2): see normalization.scale_free_normalize.
  if kind == "frobenius":
    return _normalization.scale_free_normalize(m, (-2, -1), 1.0, eps)
  if kind == "sign":
    return jnp.sign(m) / fan_in if normalized else jnp.sign(m)
  if kind == "col_norm":
    # Scion's ColNorm normalizes each PyTorch column (one input index over
    # all outputs): here each fan-in row, over the fan-out axis.
    factor = 1.0 if norm.unit else 1.0 / math.sqrt(fan_out)
    if normalized:
      factor = factor * fan_in
    return _normalization.scale_free_normalize(m, -1, factor, eps)
  if kind == "row_norm":
    # Scion's RowNorm normalizes each output neuron over its inputs: here
    # each fan-out column, over the fan-in axis.
    factor = math.sqrt(fan_in) if normalized else 1.0
    return _normalization.scale_free_normalize(m, -2, factor, eps)
  raise AssertionError(kind)


def _bias_rms(x, eps):
  """Scion's BiasRMS on the raw leaf: RMS over axis 0."""
  if x.ndim == 0:
    return _normalization.scale_free_normalize(x, (), 1.0, eps)
  # max(.., 1): a zero-size leaf has nothing to normalize (no 1/0).
  return _normalization.scale_free_normalize(
      x, 0, 1.0 / math.sqrt(max(x.shape[0], 1)), eps
  )


def _leaf_dual(x, o, *, dn, norm, kind, eps, radius):
  """``radius`` times the dual direction of one leaf ``x`` (``o``: its
  polar factor, used by the spectral norms)."""
  wd = jnp.promote_types(x.dtype, jnp.float32)
  if kind == "bias_rms":
    y = _bias_rms(x.astype(wd), eps)
  elif dn is None:
    # A 1 x size matrix: its polar factor is d / ||d||_2.
    m = x.astype(wd).reshape(1, 1, -1)
    if kind in ("spectral", "spectral_conv"):
      m = _normalization.scale_free_normalize(m, None, 1.0, eps)
    y = _dual(m, kind, norm, 1, m.shape[-1], (1, 1), eps).reshape(x.shape)
  else:
    src = o if kind in ("spectral", "spectral_conv") else x
    m = _routing.to_matrix(src.astype(wd), dn)
    conv = _conv_geometry(x.shape, dn)
    y = _routing.from_matrix(
        _dual(m, kind, norm, m.shape[-2], m.shape[-1], conv, eps),
        dn,
        x.shape,
    )
  return (y * radius).astype(x.dtype)


def check_norms(norm, name: str = "norm") -> None:
  """Raises unless ``norm`` is a norm, a (prefix) tree of them or callable."""
  if callable(norm) and not isinstance(norm, LMONorm):
    return
  for value in jax.tree.leaves(norm, is_leaf=is_norm_value):
    as_norm(value, name)


def check_radius(radius, name: str = "radius") -> None:
  """Raises unless ``radius`` is a number >= 0, a tree of them or callable."""
  if callable(radius):
    return
  for r in jax.tree.leaves(radius):
    _checks.check_nonnegative(r, name)


def scale_by_lmo(
    norm,
    *,
    radius=1.0,
    eps: jax.typing.ArrayLike = 1e-8,
    method: str = "auto",
    dimension_numbers=None,
    rules: _routing.Rules = None,
    sharding: str | _sharding.ShardingOptions | None = None,
    ns_eps: float | None = None,
    **engine_options,
) -> optax.GradientTransformation:
  r"""The dual-norm direction of each leaf, times its radius.

  For a leaf with (momentum) gradient :math:`d` and norm :math:`\|\cdot\|`
  the update is :math:`\rho \cdot \mathrm{dual}(d)` with
  :math:`\mathrm{dual}(d) = \arg\max_{\|x\| \le 1} \langle d, x \rangle`,
  the positive "dualized" direction: ``optax.scale_by_learning_rate``
  later subtracts it, so the step is the LMO :math:`-\rho\,
  \mathrm{dual}(d)`. Scale invariance :math:`\mathrm{dual}(c d) =
  \mathrm{dual}(d)` (:math:`c > 0`) holds up to ``eps``.

  Norms, with Scion's exact scalings translated to the ``(in, out)``
  layout (:math:`G` seen as ``(fan_in, fan_out)`` through its dimension
  numbers; PyTorch's "rows" are fan-out):

  * ``"spectral"``: :math:`s\,U V^T` (:math:`d = U \Sigma V^T`, computed
    by :func:`orthogonalize`), :math:`s = \sqrt{\mathrm{fan\_out} /
    \mathrm{fan\_in}}` (``normalized``, default) or
    :math:`\sqrt{\mathrm{fan\_out}}`; ``max=True``: :math:`\max(1, s)`.
  * ``"spectral_conv"``: the polar factor of the ``(kh kw in, out)`` view
    times :math:`\sqrt{\mathrm{out}/\mathrm{in}} / (k_h k_w)` (``in`` is
    the last fan-in axis, the others are spatial).
  * ``"frobenius"``: :math:`d / (\|d\|_F + \epsilon)` per matrix.
  * ``"sign"``: :math:`\mathrm{sign}(d)`, divided by fan-in when
    ``normalized`` (default).
  * ``"col_norm"``: each fan-in row scaled to l2 norm
    :math:`\sqrt{\mathrm{fan\_out}}` (Scion's ColNorm; divided by fan-in
    when ``normalized``). For an embedding table ``(vocab, dim)`` this is
    Scion's ``ColNorm(transpose=True)``: Flax tables are already
    ``(in, out)``.
  * ``"row_norm"``: each fan-out column scaled to unit l2 norm (Scion's
    RowNorm; divided by :math:`\sqrt{\mathrm{fan\_in}}` when
    ``normalized``, default).
  * ``"bias_rms"``: :math:`d / (\mathrm{RMS}(d) + \epsilon)` with the RMS
    over axis 0 of the leaf, as Scion's code.
  * ``"auto"``: rank 0/1 ``"bias_rms"``, rank 2 ``"spectral"``, rank 3
    and more ``"spectral_conv"`` (a stacked ``(layers, in, out)`` leaf has
    no spatial axes, so this is ``"spectral"`` per layer).

  A leaf without dimension numbers (rank < 2, or not routed as a matrix)
  is seen as a ``1 x size`` matrix (a bias maps the constant input 1):
  ``"spectral"`` then gives :math:`\sqrt{\mathrm{size}}\, d / \|d\|_2`.
  ``LMONorm(name, unit=True)`` drops Scion's dimension factors (the plain
  norm's unit ball).

  Args:
    norm: a norm name, an :class:`LMONorm`, a (prefix) tree of them (``None``
      leaves pass through unchanged) or a callable ``params -> tree``.
    radius: the radius :math:`\rho`: a number, a (prefix) tree of numbers
      or a callable ``params -> tree``.
    eps: added to the norms that divide (Scion's 1e-8), relative to the
      largest magnitude of what each divides (so a leaf gets the same
      direction at every scale; a zero leaf, row or column stays zero).
    method: orthogonalization engine of the spectral norms, see
      :func:`orthogonalize`.
    dimension_numbers: as in :func:`scale_by_orthogonalization`, except
      that ``None`` routes by rank only (embedding and head names do not
      exclude a leaf: every leaf gets its LMO).
    rules: routing overrides, see :func:`label_params`.
    sharding: as in :func:`scale_by_orthogonalization`.
    ns_eps: the engine's normalization epsilon (its ``eps``; ``eps`` here
      is the LMOs'); ``None`` for the engine's default.
    **engine_options: options of the engine (``coeffs``, ``steps``, ...).

  Returns:
    An ``optax.GradientTransformation`` with an empty state.

  References:
    Pethick et al., `Training Deep Learning Models with Norm-Constrained
    LMOs <https://arxiv.org/abs/2502.07529>`_, 2025

    Kovalev, `Understanding Gradient Orthogonalization for Deep Learning
    via Non-Euclidean Trust-Region Optimization
    <https://arxiv.org/abs/2503.12645>`_, 2025
  """
  check_norms(norm)
  check_radius(radius)
  _checks.check_nonnegative(eps, "eps")
  _checks.check_choice(method, "method", _orthogonalize.METHODS)
  _routing.check_dimension_numbers(dimension_numbers)
  _routing.check_rules(rules)
  if ns_eps is not None:
    engine_options["eps"] = _checks.check_nonnegative(ns_eps, "ns_eps")

  def plan(updates):
    """Per leaf: ``(leaf, dn, norm, kind)`` (``kind`` None: unchanged)."""
    if dimension_numbers is None:
      # Every leaf gets an LMO: embeddings and heads are matrices too.
      dns = _routing.branch_dimension_numbers(updates, rules=rules)
    else:
      dns = _routing.resolve_dimension_numbers(
          updates, dimension_numbers, rules
      )
    leaves, treedef = jax.tree.flatten(updates, is_leaf=_is_masked)
    dn_leaves = treedef.flatten_up_to(dns)
    tree = norm(updates) if callable(norm) and not isinstance(
        norm, LMONorm
    ) else norm
    norms = [as_norm(n) for n in per_leaf(tree, updates, is_norm_value)]
    out: list[tuple[Any, Any, LMONorm | None, str | None]] = []
    for x, dn, n in zip(leaves, dn_leaves, norms):
      if _is_masked(x) or n is None:
        out.append((x, None, None, None))
        continue
      dn = None if _is_masked(dn) else dn
      out.append((x, dn, n, resolve_norm(x, dn, n)))
    return out, treedef

  def spectral_dns(updates):
    items, treedef = plan(updates)
    return jax.tree.unflatten(
        treedef,
        [
            dn if kind in ("spectral", "spectral_conv") else None
            for _, dn, _, kind in items
        ],
    )

  polar = _orthogonalization.scale_by_orthogonalization(
      method=method,
      dimension_numbers=spectral_dns,
      sharding=sharding,
      **engine_options,
  )

  def init_fn(params):
    plan(params)
    polar.init(params)  # records the parameters' layouts for "distribute"
    if callable(radius):
      check_radius(radius(params))
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    items, treedef = plan(updates)
    ortho, _ = polar.update(updates, optax.EmptyState())
    ortho_leaves = treedef.flatten_up_to(ortho)
    radii = per_leaf(
        radius(updates) if callable(radius) else radius,
        updates,
        lambda r: r is None,
    )
    out = []
    for (x, dn, n, kind), o, r in zip(items, ortho_leaves, radii):
      if kind is None:
        out.append(x)
        continue
      out.append(_routing.keep_sharding(
          functools.partial(
              _leaf_dual, dn=dn, norm=n, kind=kind, eps=eps,
              radius=1.0 if r is None else r,
          ),
          x,
          o,
          like=x,
      ))
    return jax.tree.unflatten(treedef, out), state

  return optax.GradientTransformation(init_fn, update_fn)
