"""``scale_by_shape``: per-matrix update scaling from fan-in and fan-out."""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

from ortho_optax import checks as _checks
from ortho_optax import routing as _routing
from ortho_optax.engines import normalization as _normalization

SHAPE_RULES = ("muon", "moonlight", "spectral", "none")


def shape_factor(fan_in: int, fan_out: int, rule: str, rms=0.2):
  """The scale factor of one matrix for ``rule`` (see :func:`scale_by_shape`)."""
  if fan_in == 0 or fan_out == 0:  # An empty matrix: any factor will do.
    return 1.0
  if rule == "muon":
    return math.sqrt(max(1.0, fan_out / fan_in))
  if rule == "moonlight":
    return rms * math.sqrt(max(fan_in, fan_out))
  if rule == "spectral":
    return math.sqrt(fan_out / fan_in)
  return 1.0


def scale_by_shape(
    rule: str = "muon",
    *,
    rms=0.2,
    dimension_numbers=None,
    rules: _routing.Rules = None,
) -> optax.GradientTransformation:
  r"""Scales each matrix update by a factor of its shape.

  With ``fan_in`` and ``fan_out`` from the leaf's dimension numbers (a Flax
  ``(in, out)`` kernel; PyTorch's "rows" are ``fan_out``):

  * ``"muon"``: :math:`\sqrt{\max(1, \mathrm{fan\_out} / \mathrm{fan\_in})}`
    (KellerJordan/Muon);
  * ``"moonlight"``: :math:`\mathrm{rms} \cdot \sqrt{\max(\mathrm{fan\_in},
    \mathrm{fan\_out})}`, which gives an orthogonalized update the RMS
    ``rms`` (0.2 matches AdamW's, so Muon can reuse AdamW's learning rate);
  * ``"spectral"``: :math:`\sqrt{\mathrm{fan\_out} / \mathrm{fan\_in}}`
    (Scion, Dion's ``"spectral_norm"``);
  * ``"none"``: 1.

  Non-matrix leaves pass through unchanged.

  Args:
    rule: one of ``"muon"``, ``"moonlight"``, ``"spectral"``, ``"none"``.
    rms: target RMS of the ``"moonlight"`` rule.
    dimension_numbers: as in :func:`scale_by_orthogonalization`.
    rules: routing overrides, see :func:`label_params`.

  Returns:
    An ``optax.GradientTransformation`` with an empty state.

  References:
    Liu et al., `Muon is Scalable for LLM Training
    <https://arxiv.org/abs/2502.16982>`_, 2025

    Pethick et al., `Training Deep Learning Models with Norm-Constrained
    LMOs <https://arxiv.org/abs/2502.07529>`_, 2025
  """
  _checks.check_choice(rule, "rule", SHAPE_RULES)
  _checks.check_positive(rms, "rms")

  def scale(m):
    f = shape_factor(m.shape[-2], m.shape[-1], rule, rms)
    return (m * f).astype(m.dtype)

  return _per_matrix(scale, dimension_numbers, rules)


def _per_matrix(
    fn, dimension_numbers, rules
) -> optax.GradientTransformation:
  """A stateless transform applying ``fn`` to each routed matrix
  (``(..., fan_in, fan_out)``); other leaves pass through."""
  _routing.check_dimension_numbers(dimension_numbers)
  _routing.check_rules(rules)

  def init_fn(params):
    _routing.resolve_dimension_numbers(params, dimension_numbers, rules)
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    dns = _routing.resolve_dimension_numbers(updates, dimension_numbers, rules)
    return _routing.map_matrices(fn, updates, dns), state

  return optax.GradientTransformation(init_fn, update_fn)


def scale_to_rms(
    rms,
    *,
    dimension_numbers=None,
    rules: _routing.Rules = None,
) -> optax.GradientTransformation:
  r"""Rescales each matrix update to the RMS ``rms``.

  :math:`U \leftarrow \mathrm{rms} \cdot U / \mathrm{RMS}(U)` with
  :math:`\mathrm{RMS}(U) = \|U\|_F / \sqrt{mn}` per matrix (of a batched or
  stacked leaf too), computed in at least float32; a zero update stays
  zero. The named optimizers' ``update_rms`` (Moonlight's convention of
  matching AdamW's RMS, 0.2, applied to whatever direction a method
  produces). Non-matrix leaves pass through unchanged.

  Args:
    rms: the target RMS, > 0 (a number or a traced scalar).
    dimension_numbers: as in :func:`scale_by_orthogonalization`.
    rules: routing overrides, see :func:`label_params`.

  Returns:
    An ``optax.GradientTransformation`` with an empty state.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ortho_optax.transforms.shape import scale_to_rms
    >>> tx = scale_to_rms(0.2)
    >>> u = {"w": jnp.arange(12.0).reshape(3, 4)}
    >>> out, _ = tx.update(u, tx.init(u))
    >>> round(float(jnp.sqrt(jnp.mean(out["w"] ** 2))), 6)
    0.2
  """
  _checks.check_positive(rms, "update_rms")

  def scale(m):
    # In units of max|m| (a power of two, exact): the mean square neither
    # underflows (an update of 1e-30 would pass unscaled) nor overflows
    # (one of 1e30 would become zero).
    x = m.astype(jnp.promote_types(m.dtype, jnp.float32))
    x = x * _normalization.inverse_unit(x).astype(x.dtype)
    r = jnp.sqrt(jnp.mean(jnp.square(jnp.abs(x)), axis=(-2, -1),
                          keepdims=True))
    f = jnp.where(r > 0, rms / jnp.where(r > 0, r, 1), 1)
    return (x * f).astype(m.dtype)

  return _per_matrix(scale, dimension_numbers, rules)
