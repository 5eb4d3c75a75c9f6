"""``scale_by_neuron_norm``: NorMuon's per-output-neuron second moment."""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ortho_optax import checks as _checks
from ortho_optax import routing as _routing
from ortho_optax.parallel import stateful as _stateful
from ortho_optax.transforms import momentum as _momentum
from ortho_optax.transforms import structure as _structure

RESCALES = ("frobenius", "rms")


class ScaleByNeuronNormState(NamedTuple):
  """State of :func:`scale_by_neuron_norm`.

  ``nu`` holds, for each matrix leaf, one value per output neuron: an array
  shaped like the leaf with its fan-in axes reduced to size 1 (``(1, out)``
  for an ``(in, out)`` kernel, ``(layers, 1, out)`` for stacked layers).
  Leaves that are not matrices hold ``optax.MaskedNode()``.
  """

  nu: optax.Updates


def _is_masked(x) -> bool:
  return x is None or isinstance(x, optax.MaskedNode)


def reduced_shape(shape, dn) -> tuple[int, ...]:
  """``shape`` with the fan-in (reduction) axes of ``dn`` set to 1.

  A split fan-in axis (:class:`ortho_optax.SplitDimensionNumbers`) keeps
  one entry per part: each part is a matrix with its own neurons.
  """
  view, vdn = _routing.matrix_view(shape, dn)
  _, red, _ = _routing.normalize_dimension_numbers(vdn, len(view))
  reduced = [1 if a in red else s for a, s in enumerate(view)]
  axis, _ = _routing.split_of(dn)
  if axis is None:
    return tuple(reduced)
  a = axis % len(shape)
  return tuple(reduced[:a] + [reduced[a] * reduced[a + 1]] + reduced[a + 2:])


def state_dimension_numbers(shape, dn):
  """The dimension numbers of the state of :func:`reduced_shape`: ``dn``,
  with a split fan-in axis cut into parts of size 1."""
  axis, sizes = _routing.split_of(dn)
  if axis is None:
    return dn
  _, red, _ = _routing.normalize_dimension_numbers(dn, len(shape))
  if axis % len(shape) not in red:
    return dn
  return dn._replace(split_sizes=(1,) * len(sizes))


def matrix_state(params, dns, make):
  """A tree like ``params``: ``make(leaf, dn)`` on matrices, else masked."""
  leaves, treedef = jax.tree.flatten(params, is_leaf=_is_masked)
  dn_leaves = treedef.flatten_up_to(dns)
  out: list[Any] = []
  for x, dn in zip(leaves, dn_leaves):
    if x is None:
      out.append(None)
    elif _is_masked(x) or _is_masked(dn):
      out.append(optax.MaskedNode())
    else:
      out.append(make(x, dn))
  return jax.tree.unflatten(treedef, out)


def map_with_state(fn, updates, nu, dns):
  """Applies ``fn(m, nu_m) -> (m, nu_m)`` on ``(B, in, out)`` views."""
  leaves, treedef = jax.tree.flatten(updates, is_leaf=_is_masked)
  dn_leaves = treedef.flatten_up_to(dns)
  nu_leaves = treedef.flatten_up_to(nu)
  out, new_nu = [], []
  for x, dn, v in zip(leaves, dn_leaves, nu_leaves):
    if _is_masked(x) or _is_masked(dn) or _is_masked(v):
      out.append(x)
      new_nu.append(v)
      continue

    def leaf_fn(x, v, dn=dn):
      wd = jnp.promote_types(x.dtype, jnp.float32)
      # A per-neuron state (reduced_shape) or a per-element one (x.shape).
      vdn = dn if v.shape == x.shape else state_dimension_numbers(x.shape, dn)
      y, v_new = fn(
          _routing.to_matrix(x.astype(wd), dn),
          _routing.to_matrix(v.astype(real_dtype(wd)), vdn),
      )
      return (
          _routing.from_matrix(y, dn, x.shape).astype(x.dtype),
          _routing.from_matrix(v_new, vdn, v.shape).astype(v.dtype),
      )

    # The state keeps its own sharding (replicated: one value per neuron).
    y, v_new = _routing.keep_sharding(leaf_fn, x, v, like=(x, v))
    out.append(y)
    v_new = _replicated_on_auto_mesh(v_new, x)
    new_nu.append(v_new)
  return jax.tree.unflatten(treedef, out), jax.tree.unflatten(treedef, new_nu)


def _replicated_on_auto_mesh(v_new, x):
  """``v_new`` constrained replicated where the update ``x`` is on Auto axes.

  Under Explicit axes :func:`routing.keep_sharding` keeps the state's type;
  on Auto axes XLA would split the new state along the update's sharded
  output axis, so the state's sharding would change after the first step
  (a second compilation of the step) and differ from
  :func:`ortho_optax.state_shardings`.
  """
  s = getattr(jax.typeof(x), "sharding", None)
  mesh = getattr(s, "mesh", None)
  if mesh is None or not mesh.axis_names or mesh.are_all_axes_explicit:
    return v_new
  return jax.lax.with_sharding_constraint(
      v_new, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  )


def abs_sq(x):
  """``|x|^2`` elementwise, real (``x * x`` for real ``x``)."""
  return jnp.real(x * jnp.conj(x))


def real_dtype(dtype) -> jnp.dtype:
  """The dtype of ``|x|`` for ``x`` of ``dtype`` (float32 for complex64)."""
  return jnp.finfo(dtype).dtype


def frobenius(m):
  """Per-matrix Frobenius norm of a ``(B, m, n)`` stack, kept ``(B, 1, 1)``."""
  return jnp.sqrt(jnp.sum(abs_sq(m), axis=(-2, -1), keepdims=True))


def scale_by_neuron_norm(
    beta2: jax.typing.ArrayLike = 0.95,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    rescale: str = "frobenius",
    rms: jax.typing.ArrayLike = 0.2,
    dimension_numbers=None,
    rules: _routing.Rules = None,
) -> optax.GradientTransformation:
  r"""NorMuon's per-neuron normalization of an orthogonalized update.

  For each matrix :math:`O` seen as ``(fan_in, fan_out)`` (so each column
  is one output neuron; PyTorch's rows):

  .. math::
    v_t = \beta_2 v_{t-1} + (1 - \beta_2)\,
      \mathrm{mean}_{\mathrm{fan\_in}}(O_t \odot O_t), \qquad
    \hat O_t = O_t \oslash (\sqrt{v_t} + \epsilon),

  one :math:`v` per output column (zero init, no bias correction), then
  the rescale:

  * ``"frobenius"`` (the reference code): :math:`\hat O_t \|O_t\|_F /
    (\|\hat O_t\|_F + \epsilon)`, which keeps the Frobenius norm of the
    orthogonalized update;
  * ``"rms"`` (the paper): :math:`\hat O_t\, \mathrm{rms}
    \sqrt{mn} / (\|\hat O_t\|_F + \epsilon)`, an update of RMS ``rms``.

  Leaves that are not matrices pass through unchanged.

  Args:
    beta2: decay of the second moment, in ``[0, 1)``.
    eps: added to :math:`\sqrt{v}` and to the norm of the rescale.
    rescale: ``"frobenius"`` or ``"rms"``.
    rms: target RMS of ``rescale="rms"``.
    dimension_numbers: as in :func:`scale_by_orthogonalization`.
    rules: routing overrides, see :func:`label_params`.

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`ScaleByNeuronNormState`.

  References:
    Li et al., `NorMuon: Making Muon more efficient and scalable
    <https://arxiv.org/abs/2510.05491>`_, 2025
  """
  _momentum.check_beta(beta2, "beta2")
  _checks.check_choice(rescale, "rescale", RESCALES)
  _checks.check_nonnegative(eps, "eps")
  _checks.check_positive(rms, "rms")
  _routing.check_dimension_numbers(dimension_numbers)
  _routing.check_rules(rules)

  def init_fn(params):
    dns = _routing.resolve_dimension_numbers(params, dimension_numbers, rules)
    return ScaleByNeuronNormState(
        nu=matrix_state(
            params,
            dns,
            # Replicated on the parameters' mesh, where they have one.
            lambda x, dn: _stateful.like_params_mesh(
                jnp.zeros(reduced_shape(x.shape, dn), real_dtype(x.dtype)), x
            ),
        )
    )

  def normalize(o, v):
    b2 = _momentum.hyperparameter(beta2, o)
    v = b2 * v + (1 - b2) * jnp.mean(abs_sq(o), axis=-2, keepdims=True)
    o_hat = o / (jnp.sqrt(v) + eps)
    if rescale == "frobenius":
      target = frobenius(o)
    else:
      target = rms * jnp.sqrt(float(o.shape[-2] * o.shape[-1]))
    return o_hat * (target / (frobenius(o_hat) + eps)), v

  def update_fn(updates, state, params=None):
    del params
    dns = _routing.resolve_dimension_numbers(updates, dimension_numbers, rules)
    updates, nu = map_with_state(normalize, updates, state.nu, dns)
    return updates, ScaleByNeuronNormState(nu=nu)

  return _structure.check_like_init(
      optax.GradientTransformation(init_fn, update_fn), "scale_by_neuron_norm"
  )
