"""Scion: per-layer norm-constrained LMOs (uSCG and SCG), with its presets."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import optax

from ortho_optax import checks as _checks
from ortho_optax import routing as _routing
from ortho_optax.optimizers import base as _base
from ortho_optax.optimizers import trust_region as _trust_region
from ortho_optax.parallel import sharding as _sharding
from ortho_optax.transforms import lmo as _lmo
from ortho_optax.transforms import momentum as _momentum

HEAD_NAMES = frozenset({
    "head",
    "lm_head",
    "logits",
    "output_head",
    "unembed",
    "unembedding",
})

# Scion's documented layer assignments (LIONS-EPFL/scion, README and
# examples): role -> (norm, radius). Roles: "input" (embeddings; for "mlp"
# and "cnn" also the first matrix), "hidden", "output" (heads; for "mlp" and
# "cnn" also the last matrix) and "vector" (rank < 2).
SCION_PRESETS = {
    # examples/shallow-nanogpt (untied wte / lm_head).
    "gpt": {
        "input": (_lmo.LMONorm("sign", normalized=False), 1.0),
        "hidden": (_lmo.LMONorm("spectral"), 3.0),
        "output": (_lmo.LMONorm("sign"), 10.0),
        "vector": (_lmo.LMONorm("bias_rms"), 3.0),
    },
    # README, MLP.
    "mlp": {
        "input": (_lmo.LMONorm("spectral", max=True), 1.0),
        "hidden": (_lmo.LMONorm("spectral"), 1.0),
        "output": (_lmo.LMONorm("sign"), 2.0**10),
        "vector": (_lmo.LMONorm("bias_rms"), 1.0),
    },
    # README, CNN.
    "cnn": {
        "input": (_lmo.LMONorm("auto"), 8.0),
        "hidden": (_lmo.LMONorm("auto"), 8.0),
        "output": (_lmo.LMONorm("sign"), 128.0),
        "vector": (_lmo.LMONorm("bias_rms"), 8.0),
    },
}

_POSITIONAL = ("mlp", "cnn")


def _is_masked(x) -> bool:
  return x is None or isinstance(x, optax.MaskedNode)


def _role(names) -> str | None:
  if any(n in HEAD_NAMES for n in names):
    return "output"
  if any("embed" in n or n in ("wte", "wpe") for n in names):
    return "input"
  return None


def scion_norms(
    params,
    preset: str = "gpt",
    *,
    input_pattern: str | None = None,
    output_pattern: str | None = None,
):
  r"""Scion's documented per-layer norms and radii for a parameter tree.

  Each leaf gets a role and the preset's ``(norm, radius)`` for it:

  * ``"gpt"``: input ``LMONorm("sign", normalized=False)`` radius 1, hidden
    ``"spectral"`` 3, output ``"sign"`` 10, rank < 2 ``"bias_rms"`` 3;
  * ``"mlp"``: input ``LMONorm("spectral", max=True)`` 1, hidden
    ``"spectral"`` 1, output ``"sign"`` :math:`2^{10}`, rank < 2
    ``"bias_rms"`` 1;
  * ``"cnn"``: input and hidden ``"auto"`` 8, output ``"sign"`` 128,
    rank < 2 ``"bias_rms"`` 8.

  ``"gpt"`` is the shallow-nanoGPT assignment (untied ``wte`` and
  ``lm_head``; learning rates around :math:`2^{-5}` to :math:`2^{-7}`,
  ``alpha=0.1``); ``"mlp"`` and ``"cnn"`` are the README's (learning rates
  :math:`2^{-6}` with ``alpha=0.1`` and :math:`2^{-4}` with ``alpha=0.5``).
  The reference models have no rank < 2 parameters under "gpt" and "mlp";
  they get ``bias_rms`` with the hidden radius, as in Scion's CNN and DeiT
  examples.

  Roles: a path naming an output head (``head``, ``lm_head``, ``logits``,
  ``unembed``, ...) or matching ``output_pattern`` is "output"; a path
  naming an embedding (``embed``, ``wte``, ...) or matching
  ``input_pattern`` is "input". For ``"mlp"`` and ``"cnn"``, when no name
  or pattern gives the input (output) layer, it is the first (last) in tree
  order of the matrix leaves that no name placed. Rank < 2 leaves are
  always "rank < 2".

  Args:
    params: the parameter tree (arrays or ``ShapeDtypeStruct``; masked and
      ``None`` leaves get ``None``).
    preset: ``"gpt"``, ``"mlp"`` or ``"cnn"``.
    input_pattern: regex (``re.search`` on ``jax.tree_util.keystr`` of the
      path) of the input layer's leaves.
    output_pattern: regex of the output layer's leaves.

  Returns:
    ``(norms, radii)``: two trees like ``params`` of :class:`LMONorm` and
    floats, for :func:`scale_by_lmo` or :func:`scion`.

  References:
    Pethick et al., `Training Deep Learning Models with Norm-Constrained
    LMOs <https://arxiv.org/abs/2502.07529>`_, 2025
  """
  _checks.check_choice(preset, "preset", tuple(SCION_PRESETS))
  _checks.check_regex(input_pattern, "input_pattern", optional=True)
  _checks.check_regex(output_pattern, "output_pattern", optional=True)
  table = SCION_PRESETS[preset]
  leaves, treedef = jax.tree_util.tree_flatten_with_path(
      params, is_leaf=_is_masked
  )
  roles = []
  for path, x in leaves:
    if _is_masked(x):
      roles.append("masked")
      continue
    if len(getattr(x, "shape", ())) < 2:
      roles.append("vector")
      continue
    key = jax.tree_util.keystr(path)
    role = _role(_routing._path_names(path)) or "hidden"
    if output_pattern is not None and re.search(output_pattern, key):
      role = "output"
    elif input_pattern is not None and re.search(input_pattern, key):
      role = "input"
    roles.append(role)
  if preset in _POSITIONAL:
    # Only matrices that no name or pattern placed: a named head that comes
    # first in tree order ("head" < "layers") must not become the input.
    unplaced = [i for i, r in enumerate(roles) if r == "hidden"]
    has = set(roles)
    if unplaced and "input" not in has and input_pattern is None:
      roles[unplaced.pop(0)] = "input"
    if unplaced and "output" not in has and output_pattern is None:
      roles[unplaced[-1]] = "output"
  norms: list[_lmo.LMONorm | None] = []
  radii: list[float | None] = []
  for role in roles:
    if role == "masked":
      norms.append(None)
      radii.append(None)
      continue
    n, r = table[role]
    norms.append(n)
    radii.append(r)
  return (
      jax.tree_util.tree_unflatten(treedef, norms),
      jax.tree_util.tree_unflatten(treedef, radii),
  )


def _lmo_arguments(preset, norms, radii, dimension_numbers, rules):
  """``(norms, radii, dimension_numbers)`` for :func:`scale_by_lmo`: the
  preset's norms and radii unless given (radius 1 for given norms), and the
  routing that gives every leaf, embeddings and heads included, its LMO."""
  if norms is None:
    norms = lambda p: scion_norms(p, preset)[0]  # noqa: E731
    if radii is None:
      radii = lambda p: scion_norms(p, preset)[1]  # noqa: E731
  elif radii is None:
    radii = 1.0
  branch_dn = functools.partial(
      _routing.branch_dimension_numbers,
      dimension_numbers=dimension_numbers,
      rules=rules,
  )
  return norms, radii, branch_dn


@_base.document_shared_args
def scion(
    learning_rate: optax.ScalarOrSchedule,
    *,
    preset: str = "gpt", norms=None, radii=None,
    alpha: jax.typing.ArrayLike = 0.1, constrained: bool = True,
    eps: jax.typing.ArrayLike = 1e-8,
    method: str = "auto", coeffs=None, steps: int | None = None,
    normalization: str | None = None, ns_eps: float | None = None,
    compute_dtype=None,
    update_rms: float | None = None,
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
  r"""Scion: stochastic conditional gradient with per-layer norm LMOs.

  With :math:`\gamma` the learning rate, :math:`\rho` each layer's radius
  and :math:`\mathrm{dual}` its norm's dual direction
  (:func:`scale_by_lmo`):

  .. math::
    d_k = (1 - \alpha) d_{k-1} + \alpha g_k, \qquad
    x_{k+1} = (1 - \gamma) x_k - \gamma \rho\, \mathrm{dual}(d_k)
    \quad \text{(SCG, ``constrained=True``)}, \\
    x_{k+1} = x_k - \gamma \rho\, \mathrm{dual}(d_k)
    \quad \text{(uSCG, ``constrained=False``)}.

  :math:`\alpha` is the averaging weight on the new gradient ("one minus
  the usual momentum"; 1 is no averaging), without Nesterov; the buffer
  starts at zero. The constrained step is decoupled weight decay with
  coefficient 1 (``optax.add_decayed_weights(1.0)`` before
  ``scale_by_learning_rate``): the iterates started in the ball of radius
  :math:`\rho` stay there (needs :math:`\gamma \le 1`). A minimizer
  outside the ball is out of reach, for real and complex parameters alike:
  SCG approaches the minimizer over the ball instead (for
  :math:`\|X - T\|_F^2`, the target's projection on the ball; exactly with
  ``method="polar_svd"``, while Newton-Schulz's approximate polar factor
  stops short of it), and uSCG (``constrained=False``) is the
  unconstrained method. Unlike the Muon family, Scion applies an LMO to
  *every* parameter (embeddings, heads, biases), with the norms and radii
  of ``preset`` (see :func:`scion_norms`) unless ``norms`` / ``radii`` are
  given.

  :func:`scion_init` draws a model's matrices on the spheres of these
  norms (the reference's ``Scion.init()``), so SCG starts on the boundary
  of the ball its iterates stay in.

  Reference defaults (LIONS-EPFL/scion): ``alpha=0.1``, constrained;
  the reference runs Newton-Schulz with Muon's coefficients in bfloat16:

  >>> import jax.numpy as jnp
  >>> import ortho_optax
  >>> lr = 0.02
  >>> tx = ortho_optax.scion(
  ...     lr, method="newton_schulz", coeffs="muon",
  ...     normalization="frobenius", ns_eps=1e-7,
  ...     compute_dtype=jnp.bfloat16)

  Args:
    learning_rate: :math:`\gamma` (or a schedule); at most 1 when
      ``constrained``.
    preset: ``"gpt"``, ``"mlp"`` or ``"cnn"``, see :func:`scion_norms`.
    norms: ``None`` (the preset's), a norm name, :class:`LMONorm`, a tree of
      them or a callable ``params -> tree``, see :func:`scale_by_lmo`.
    radii: ``None`` (the preset's when ``norms`` is ``None``, else 1), a
      number, a tree or a callable ``params -> tree``.
    alpha: weight of the new gradient in the average, in ``(0, 1]``.
    constrained: SCG (weight decay 1) instead of uSCG.
    eps: added to the norms that divide.
    method: orthogonalization engine of the spectral norms.
    **engine: the orthogonalization arguments of ``base.ENGINE_ARGS``.
    adam_learning_rate: learning rate of the leaves that ``labels`` sends
      to AdamW (``None``: ``learning_rate``).
    **shared: the weight decay, AdamW, routing, state, sharding and
      skipping arguments of ``base.SHARED_ARGS``.
    weight_decay_mode: ``"decoupled"`` or ``"cautious"`` (decay only where
      the update and the parameter agree in sign) for ``adam_weight_decay``;
      see :func:`add_cautious_decayed_weights`. The constrained step's
      decay (coefficient 1) stays decoupled: it is what keeps the iterates
      in the norm ball.
    labels: ``None`` (every leaf gets its LMO) or a tree / callable of
      ``"orthogonalize"`` (LMO) and ``"adam"`` labels.

  Returns:
    An ``optax.GradientTransformation``.

  References:
    Pethick et al., `Training Deep Learning Models with Norm-Constrained
    LMOs <https://arxiv.org/abs/2502.07529>`_, 2025
  """
  shared = _base.shared_args(locals(), "scion")
  _trust_region.check_alpha(alpha)
  _checks.check_choice(preset, "preset", tuple(SCION_PRESETS))
  _checks.check_bool(constrained, "constrained")
  _checks.check_nonnegative(eps, "eps")
  _lmo.check_norms(norms, "norms")
  _lmo.check_radius(radii, "radii")
  engine = _base.engine_args(locals(), "ns_eps")
  if constrained and not callable(learning_rate):
    # Traced under inject_hyperparams: not checked.
    too_large = not _checks.is_traced(learning_rate) and (
        float(learning_rate) > 1.0
    )
    if too_large:
      raise ValueError(
          "`learning_rate` must be <= 1 with `constrained=True` (the SCG"
          f" step is a convex combination), got {learning_rate!r}."
      )
  norms, radii, branch_dn = _lmo_arguments(
      preset, norms, radii, dimension_numbers, rules
  )
  lmo_tx = optax.chain(
      _momentum.scale_by_average(alpha, mu_dtype=mu_dtype),
      _lmo.scale_by_lmo(
          norms,
          radius=radii,
          eps=eps,
          method=method,
          dimension_numbers=branch_dn,
          sharding=sharding,
          **engine.lmo_options(),
      ),
      *shared.rescale(),
      optax.add_decayed_weights(1.0 if constrained else 0.0),
      optax.scale_by_learning_rate(learning_rate),
  )
  if labels is None:
    def labels(params):
      return jax.tree.map(
          lambda _: _routing.MATRIX, params, is_leaf=lambda x: x is None
      )
  return shared.with_adam(lmo_tx, labels=labels)


def scion_init(
    key: jax.Array,
    params,
    *,
    preset: str = "gpt",
    norms=None,
    radii=None,
    dimension_numbers=None,
    rules: _routing.Rules = None,
):
  r"""Scion's norm-consistent initialization of a parameter tree.

  Every matrix leaf is drawn on the sphere of its layer's norm, at its
  radius: :math:`W = \rho\,\mathrm{dual}(Z)` with :math:`Z` i.i.d.
  :math:`\mathcal{N}(0, 1)` of the leaf's shape and :math:`\mathrm{dual}`
  the direction of :func:`scale_by_lmo` (computed with an exact SVD). This
  is Scion's ``init()``: ``"spectral"`` gives a Haar-orthogonal matrix
  times :math:`\rho` and the LMO's factor (:math:`\sqrt{\mathrm{fan\_out}
  /\mathrm{fan\_in}}` for hidden layers),
  ``"sign"`` random :math:`\pm\rho` (divided by fan-in when normalized),
  ``"col_norm"`` Gaussian fan-in rows of length
  :math:`\rho\sqrt{\mathrm{fan\_out}}` (divided by fan-in when
  normalized), ``"row_norm"`` Gaussian fan-out columns of length
  :math:`\rho` (divided by :math:`\sqrt{\mathrm{fan\_in}}` when
  normalized). With the preset norms an SCG run then starts on the
  boundary of the ball its iterates stay in.

  One deliberate difference: a convolution kernel (``"spectral_conv"``,
  or ``"auto"`` on rank 3+) is the polar factor of its flattened
  ``(kh kw in, out)`` view times the LMO's factor, i.e. on the sphere of
  the norm its LMO uses; Scion's ``init()`` instead makes every kernel tap
  orthogonal, which puts the kernel off that sphere.

  Leaves whose norm is ``None`` or ``"bias_rms"`` and rank < 2 leaves are
  returned unchanged. Scion initializes its ``BiasRMS`` layers to zero,
  which would switch off a normalization layer's gain; models initialize
  their biases to zero already.

  Args:
    key: a PRNG key.
    params: the parameter tree (arrays).
    preset: as in :func:`scion`, used when ``norms`` is ``None``.
    norms: as in :func:`scion` (a norm, tree or callable); ``None``: the
      preset's.
    radii: as in :func:`scion`; ``None``: the preset's (or 1 with
      ``norms``).
    dimension_numbers: as in :func:`scion`.
    rules: as in :func:`scion`.

  Returns:
    A tree like ``params`` with the new matrices (same dtypes).

  References:
    Pethick et al., `Training Deep Learning Models with Norm-Constrained
    LMOs <https://arxiv.org/abs/2502.07529>`_, 2025 (``Scion.init`` of
    LIONS-EPFL/scion)
  """
  _checks.check_prng_key(key, "key")
  _checks.check_choice(preset, "preset", tuple(SCION_PRESETS))
  _lmo.check_norms(norms, "norms")
  _lmo.check_radius(radii, "radii")
  _routing.check_dimension_numbers(dimension_numbers)
  _routing.check_rules(rules)
  norms, radii, branch_dn = _lmo_arguments(
      preset, norms, radii, dimension_numbers, rules
  )
  lmo = _lmo.scale_by_lmo(
      norms, radius=radii, method="polar_svd", dimension_numbers=branch_dn
  )
  leaves, treedef = jax.tree.flatten(params, is_leaf=_is_masked)
  keys = jax.random.split(key, max(len(leaves), 1))
  noise = jax.tree.unflatten(treedef, [
      x if _is_masked(x) else jax.random.normal(
          k, x.shape, jnp.promote_types(x.dtype, jnp.float32)
      )
      for k, x in zip(keys, leaves)
  ])
  drawn, _ = lmo.update(noise, lmo.init(noise))
  drawn_leaves = treedef.flatten_up_to(drawn)
  # A leaf whose norm is None passes through the LMO as noise: keep it.
  tree = norms(params) if callable(norms) and not isinstance(
      norms, _lmo.LMONorm) else norms
  leaf_norms = _lmo.per_leaf(tree, params, _lmo.is_norm_value)
  return jax.tree.unflatten(treedef, [
      x if _is_masked(x) or _kept(x, _lmo.as_norm(n)) else d.astype(x.dtype)
      for x, d, n in zip(leaves, drawn_leaves, leaf_norms)
  ])


def _kept(x, norm) -> bool:
  """Whether :func:`scion_init` leaves ``x`` as it is."""
  return norm is None or norm.name == "bias_rms" or jnp.ndim(x) < 2
