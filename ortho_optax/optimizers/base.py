"""What every named optimizer shares: argument checks and the Adam split."""

from __future__ import annotations

import functools
import inspect
import re
import textwrap
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ortho_optax import checks as _checks
from ortho_optax import routing as _routing
from ortho_optax.engines import coefficients as _coefficients
from ortho_optax.engines import normalization as _normalization
from ortho_optax.engines import orthogonalize as _orthogonalize
from ortho_optax.optimizers import learning_rates as _learning_rates
from ortho_optax.transforms import adam as _adam
from ortho_optax.transforms import orthogonalization as _orthogonalization
from ortho_optax.transforms import shape as _shape
from ortho_optax.transforms import structure as _structure
from ortho_optax.transforms import weight_decay as _weight_decay

# Skipping a non-finite step forever (rather than after a few tries, optax's
# default) is what "never a silent NaN parameter" means.
_NEVER_GIVE_UP = 2**31 - 1


# The Newton-Schulz engines, whose defaults the named optimizers replace.
_NEWTON_SCHULZ_METHODS = ("auto", "newton_schulz", "gram_newton_schulz")


# Muon's recipe: its coefficients, with the normalization they were designed
# for (KellerJordan/Muon, optax.contrib.muon, Scion, NorMuon, AdaMuon).
MUON_RECIPE = {"coeffs": "muon"}


def engine_options(method: str, recipe: dict | None = None, **options) -> dict:
  """The orthogonalization options of a named optimizer.

  Unset (``None``) options are dropped, except that the Newton-Schulz
  engines get an optimizer's ``recipe`` instead of :func:`orthogonalize`'s
  defaults: by default Muon's coefficients (``coeffs="muon"``, those of
  KellerJordan/Muon, optax.contrib.muon, Scion and AdaMuon) and the input
  normalization the coefficient table was designed for (Frobenius for
  ``"muon"``). ``method="auto"`` still picks the cheaper of the standard and
  the Gram form, which compute the same iteration.

  Why not the engine's more accurate default (Polar Express with Schatten-4
  normalization): on the LM example (``configs/lm.py``, 600 steps, same seed
  and learning rate 0.02) Muon with the Polar Express coefficients reached a
  validation loss 0.014 nats/byte worse than with Muon's (1.5757 vs
  1.5615, both Frobenius-normalized). A closer polar factor is not a better
  optimizer step.

  Args:
    method: the orthogonalization engine.
    recipe: defaults of the Newton-Schulz engines' options, used when
      ``coeffs`` is unset; ``None`` is :data:`MUON_RECIPE`.
    **options: engine options; ``None`` means unset.

  Returns:
    The options to pass to :func:`scale_by_orthogonalization`.
  """
  options = {k: v for k, v in options.items() if v is not None}
  if method in _NEWTON_SCHULZ_METHODS:
    if "coeffs" not in options:  # A recipe's settings go together.
      for k, v in (MUON_RECIPE if recipe is None else recipe).items():
        options.setdefault(k, v)
    if "normalization" not in options:
      table = _coefficients.get_table(options["coeffs"])
      own = table.normalization if table is not None else "frobenius"
      options["normalization"] = own
  return options


def lmo_engine_options(
    method, coeffs, steps, normalization, ns_eps, compute_dtype
) -> dict:
  """:func:`engine_options` for :func:`scale_by_lmo`, whose own ``eps`` is
  the LMOs': the engine's epsilon goes in as ``ns_eps``."""
  options = engine_options(
      method,
      coeffs=coeffs,
      steps=steps,
      normalization=normalization,
      eps=ns_eps,
      compute_dtype=compute_dtype,
  )
  if "eps" in options:
    options["ns_eps"] = options.pop("eps")
  return options


def check_learning_rate(learning_rate, name: str = "learning_rate") -> None:
  """Raises unless ``learning_rate`` is a schedule or a number >= 0."""
  if callable(learning_rate):
    return
  try:
    _checks.check_number(learning_rate, name, low=0.0)
  except TypeError as e:
    raise TypeError(
        f"`{name}` must be a finite number >= 0 or an optax schedule, got"
        f" {learning_rate!r}."
    ) from e


def check_static_steps(value, name: str) -> None:
  """Raises a clear error for a step count given as an array.

  A number of Newton-Schulz steps shapes the program, so it cannot be a
  traced value. ``optax.inject_hyperparams`` turns every numeric argument
  into an array unless it is listed in ``static_args``; the defaults
  (``None``) stay static. Other bad values are left to the engines' checks.
  """
  if isinstance(value, (jax.Array, np.ndarray)):
    raise TypeError(
        f"`{name}` must be a Python int or None, got an array {value!r}: the"
        " number of Newton-Schulz steps shapes the program and cannot be"
        " traced. Under optax.inject_hyperparams, list it in `static_args`"
        f" (static_args=({name!r},))."
    )


def check_nonnegative(value, name: str) -> None:
  """Raises unless a concrete ``value`` is >= 0 (traced values pass)."""
  _checks.check_number(value, name, low=0.0)


def check_beta(value, name: str) -> None:
  """Raises unless a concrete ``value`` is in ``[0, 1)``."""
  _checks.check_number(value, name, low=0.0, high=1.0, high_open=True)


def check_mask(mask, name: str = "weight_decay_mask") -> None:
  """Raises unless ``mask`` is None, a callable or a tree of booleans."""
  _weight_decay.check_mask(mask, name)


# How a named optimizer applies both its weight decays (the matrices'
# `weight_decay` and AdamW's `adam_weight_decay`). Every named optimizer takes
# `weight_decay_mode: str = "decoupled"`, passes it to `decayed_weights` and to
# `matrix_and_adam`, and documents it with this Args line:
#   weight_decay_mode: ``"decoupled"`` or ``"cautious"`` (decay only where
#     the update and the parameter agree in sign), for ``weight_decay`` and
#     ``adam_weight_decay``; see :func:`add_cautious_decayed_weights`.
WEIGHT_DECAY_MODES = _weight_decay.MODES


def check_weight_decay_mode(mode) -> None:
  """Raises unless ``mode`` is ``"decoupled"`` or ``"cautious"``."""
  _weight_decay.check_mode(mode)


def decayed_weights(
    weight_decay, mask=None, mode: str = "decoupled"
) -> optax.GradientTransformation:
  """A named optimizer's weight decay step in ``mode``.

  ``"decoupled"`` is ``optax.add_decayed_weights`` itself; ``"cautious"``
  is :func:`add_cautious_decayed_weights
  <ortho_optax.transforms.weight_decay.add_cautious_decayed_weights>`
  (arXiv 2510.12402), with the same state.

  Args:
    weight_decay: a number >= 0 or a schedule.
    mask: ``None``, a tree or a callable of booleans.
    mode: ``"decoupled"`` or ``"cautious"``.

  Returns:
    An ``optax.GradientTransformation``.
  """
  return _weight_decay.add_decayed_weights(weight_decay, mask, mode)


def check_engine_args(
    *,
    method,
    coeffs=None,
    steps=None,
    normalization=None,
    eps=None,
    compute_dtype=None,
    eps_name: str = "eps",
) -> None:
  """Checks a named optimizer's orthogonalization arguments under its names.

  ``eps_name`` is what the optimizer calls the engine's epsilon (``eps`` in
  :func:`muon`, ``ns_eps`` where ``eps`` is another epsilon).
  """
  _checks.check_choice(method, "method", _orthogonalize.METHODS)
  if coeffs is not None:
    _coefficients.resolve_coefficients(coeffs, (2, 3), steps)
  elif steps is not None:
    _coefficients.check_steps(steps)
  _checks.check_choice(
      normalization, "normalization", (None,) + _normalization.NORMALIZATIONS
  )
  _checks.check_number(eps, eps_name, low=0.0, optional=True)
  if compute_dtype is not None:
    _checks.check_compute_dtype(compute_dtype, jnp.float32)


class EngineArgs(NamedTuple):
  """A named optimizer's orthogonalization arguments, checked
  (:func:`engine_args`)."""

  method: str
  coeffs: object
  steps: int | None
  normalization: str | None
  eps: float | None
  compute_dtype: object

  def options(self, recipe: dict | None = None, **defaults) -> dict:
    """:func:`engine_options` of these arguments.

    Args:
      recipe: as in :func:`engine_options`.
      **defaults: values of ``steps`` or ``eps`` for when they are unset
        (a method's own, such as ROOT's five steps).

    Returns:
      The options to pass to the engine.
    """
    given = self._asdict()
    for k, v in defaults.items():
      if given[k] is None:
        given[k] = v
    method = given.pop("method")
    return engine_options(method, recipe, **given)

  def lmo_options(self) -> dict:
    """:func:`lmo_engine_options` of these arguments."""
    return lmo_engine_options(*self)


def engine_args(arguments: dict, eps_name: str = "eps") -> EngineArgs:
  """Checks a named optimizer's orthogonalization arguments.

  Call it before the body assigns other names, with ``locals()``:
  ``engine = _base.engine_args(locals(), "ns_eps")``.

  Args:
    arguments: the optimizer's arguments by name (``method``, ``coeffs``,
      ``steps``, ``normalization``, ``compute_dtype`` and ``eps_name``).
    eps_name: what the optimizer calls the engine's epsilon (``eps`` in
      :func:`muon`, ``ns_eps`` where ``eps`` is another epsilon).

  Returns:
    An :class:`EngineArgs`.
  """
  engine = EngineArgs(
      method=arguments["method"],
      coeffs=arguments["coeffs"],
      steps=arguments["steps"],
      normalization=arguments["normalization"],
      eps=arguments[eps_name],
      compute_dtype=arguments["compute_dtype"],
  )
  check_static_steps(engine.steps, "steps")
  check_engine_args(**engine._asdict(), eps_name=eps_name)
  return engine


def shape_scaling(
    shape_rule: str, shape_rms, dimension_numbers
) -> optax.GradientTransformation:
  """A named optimizer's ``shape_rule``/``shape_rms`` step, checked.

  Args:
    shape_rule: see :func:`scale_by_shape
      <ortho_optax.transforms.shape.scale_by_shape>`.
    shape_rms: target RMS of the ``"moonlight"`` rule (``None``: 0.2).
    dimension_numbers: the matrix branch's routing.

  Returns:
    The ``scale_by_shape`` transformation.
  """
  _checks.check_choice(shape_rule, "shape_rule", _shape.SHAPE_RULES)
  _checks.check_positive(shape_rms, "shape_rms", optional=True)
  return _shape.scale_by_shape(
      shape_rule,
      rms=0.2 if shape_rms is None else shape_rms,
      dimension_numbers=dimension_numbers,
  )


def matrix_and_adam(
    matrix_tx: optax.GradientTransformation,
    *,
    learning_rate: optax.ScalarOrSchedule,
    adam_learning_rate: optax.ScalarOrSchedule | None,
    adam_b1,
    adam_b2,
    adam_eps,
    adam_weight_decay,
    labels=None,
    dimension_numbers=None,
    rules: _routing.Rules = None,
    other_tx: optax.GradientTransformation | None = None,
    skip_nonfinite: bool = True,
    mu_dtype=None,
    nu_dtype=None,
    weight_decay_mode: str = "decoupled",
    name: str = "optimizer",
) -> optax.GradientTransformation:
  """Sends matrices to ``matrix_tx`` and every other leaf to AdamW.

  Leaves that are not floating or complex (integer and bool leaves such as
  step counters and masks, ``float0`` gradients) reach neither: their
  update is zero, see :func:`pass_non_float`.

  Args:
    matrix_tx: the transformation of the ``"orthogonalize"`` leaves,
      including its learning rate.
    learning_rate: the matrices' learning rate; AdamW's too unless
      ``adam_learning_rate`` is given.
    adam_learning_rate: AdamW's learning rate (``None``: ``learning_rate``).
    adam_b1: AdamW's first-moment decay.
    adam_b2: AdamW's second-moment decay.
    adam_eps: AdamW's epsilon.
    adam_weight_decay: AdamW's decoupled weight decay.
    labels: ``None`` (:func:`label_params` with ``rules`` and
      ``dimension_numbers``), or a tree / callable of ``"orthogonalize"`` and
      ``"adam"`` labels.
    dimension_numbers: optax-style routing, see :func:`label_params`.
    rules: routing overrides, see :func:`label_params`.
    other_tx: replaces AdamW for the other leaves (e.g. Scion's LMOs).
    skip_nonfinite: skip a step with a NaN or infinite gradient
      (parameters and state unchanged, see :func:`skip_nonfinite_steps`)
      instead of writing NaNs into the parameters.
    mu_dtype: storage of AdamW's first moment (as the momentum's).
    nu_dtype: storage of AdamW's second moment; a quantized format stores
      it in the unsigned code of its width (see :func:`scale_by_adam
      <ortho_optax.transforms.adam.scale_by_adam>`).
    weight_decay_mode: how AdamW applies ``adam_weight_decay``:
      ``"decoupled"`` or ``"cautious"`` (see :func:`decayed_weights`).
    name: the optimizer's name, for error messages.

  Returns:
    An ``optax.GradientTransformation``.
  """
  check_learning_rate(learning_rate)
  if adam_learning_rate is None:
    adam_learning_rate = learning_rate
  check_learning_rate(adam_learning_rate, "adam_learning_rate")
  check_beta(adam_b1, "adam_b1")
  check_beta(adam_b2, "adam_b2")
  check_nonnegative(adam_eps, "adam_eps")
  check_nonnegative(adam_weight_decay, "adam_weight_decay")
  _routing.check_labels(labels)
  _routing.check_rules(rules)
  _routing.check_dimension_numbers(dimension_numbers)
  _checks.check_bool(skip_nonfinite, "skip_nonfinite")
  check_weight_decay_mode(weight_decay_mode)
  if other_tx is None:
    # optax.adamw's chain (the same state and, for float32 parameters, the
    # same arithmetic), with the moments in their storage and the
    # arithmetic in at least float32 (see scale_by_adam).
    other_tx = optax.chain(
        _adam.scale_by_adam(
            adam_b1, adam_b2, adam_eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype
        ),
        decayed_weights(adam_weight_decay, mode=weight_decay_mode),
        optax.scale_by_learning_rate(adam_learning_rate),
    )
  if labels is None:
    def labels(params):
      return _routing.label_params(
          params, rules=rules, dimension_numbers=dimension_numbers
      )
  tx = optax.partition(
      {_routing.MATRIX: matrix_tx, _routing.OTHER: other_tx}, labels
  )
  if skip_nonfinite:
    tx = skip_nonfinite_steps(tx)
  return _structure.check_like_init(pass_non_float(tx), name)


class SharedArg(NamedTuple):
  """An argument every named optimizer takes.

  ``annotation`` is the annotation as written in the signature (a string:
  the modules use ``from __future__ import annotations``); ``doc`` is the
  text of its ``Args:`` entry, after ``name:``.
  """

  name: str
  annotation: str | None
  default: object
  doc: str


# The arguments every named optimizer shares, in signature order: they close
# each signature, keyword-only, after the method's own. Each optimizer spells
# them out (for IDEs, type checkers and `help`), checks them with
# `shared_args(locals(), name)` and gets their `Args:` lines from here through
# `@document_shared_args` (see there for why). A weight-decay default may
# differ (a method's reference value); everything else is the same across the
# family, which tests/test_shared_args.py checks.
#
# The layout of a signature: the method's own arguments several to a line,
# the orthogonalization arguments (`ENGINE_ARGS`) and `shape_rule`/`shape_rms`
# on lines of their own; then these, one a line, the same lines in every
# optimizer but for a method's own default. A reader (and a diff) sees the
# method's arguments at a glance and the shared block as one block.
SHARED_ARGS: tuple[SharedArg, ...] = (
    SharedArg(
        "update_rms",
        "float | None",
        None,
        "``None``, the method's own scale (its paper's); or the RMS to"
        " which each matrix's update is rescaled before the weight decay and"
        " the learning rate (:func:`scale_to_rms"
        " <ortho_optax.transforms.shape.scale_to_rms>`): ``0.2`` is"
        " Moonlight's match of AdamW's RMS, under which one learning rate"
        " serves every named optimizer. It replaces any per-matrix scalar"
        " the method computes (AuON's cosh-RMS factor; see the docs'"
        ' "Scale of a step").',
    ),
    SharedArg(
        "weight_decay",
        "jax.typing.ArrayLike",
        0.0,
        r"decoupled weight decay of the matrices, multiplied by the"
        r" learning rate (:math:`W \leftarrow W(1 - \eta\lambda)`).",
    ),
    SharedArg(
        "weight_decay_mask",
        None,
        None,
        "mask for the weight decay (tree or callable).",
    ),
    SharedArg(
        "weight_decay_mode",
        "str",
        "decoupled",
        '``"decoupled"`` or ``"cautious"`` (decay only where the update and'
        " the parameter agree in sign), for ``weight_decay`` and"
        " ``adam_weight_decay``; see :func:`add_cautious_decayed_weights`.",
    ),
    SharedArg(
        "adam_learning_rate",
        "optax.ScalarOrSchedule | None",
        None,
        "AdamW's learning rate; ``None``: ``learning_rate``.",
    ),
    SharedArg(
        "adam_b1", "jax.typing.ArrayLike", 0.9, r"AdamW's :math:`\beta_1`."
    ),
    SharedArg(
        "adam_b2", "jax.typing.ArrayLike", 0.95, r"AdamW's :math:`\beta_2`."
    ),
    SharedArg("adam_eps", "jax.typing.ArrayLike", 1e-8, "AdamW's epsilon."),
    SharedArg(
        "adam_weight_decay",
        "jax.typing.ArrayLike",
        0.0,
        "AdamW's weight decay.",
    ),
    SharedArg(
        "labels",
        None,
        None,
        'a tree or callable of ``"orthogonalize"``/``"adam"`` labels;'
        " ``None`` for :func:`label_params`.",
    ),
    SharedArg(
        "rules",
        "_routing.Rules",
        None,
        "routing overrides, see :func:`label_params`.",
    ),
    SharedArg(
        "dimension_numbers",
        None,
        None,
        "optax-style routing (``MuonDimensionNumbers`` tree or callable),"
        " see :func:`label_params`.",
    ),
    SharedArg(
        "mu_dtype",
        None,
        None,
        "storage of the momentum buffer and of AdamW's first moment:"
        " ``None`` (the parameters' dtype), a floating dtype, or a quantized"
        ' format (``"q8"``, ``"q4"``, ``"n4"``, a :class:`QuantFormat`).',
    ),
    SharedArg(
        "nu_dtype",
        None,
        None,
        "storage of AdamW's second moment: ``None``, a floating dtype, or a"
        " quantized format (kept in the unsigned code of its width,"
        ' ``"q8"`` -> ``"u8"``).',
    ),
    SharedArg(
        "sharding",
        "str | _sharding.ShardingOptions | None",
        None,
        "how the matrices' work is spread over devices, see"
        " :func:`scale_by_orthogonalization`.",
    ),
    SharedArg(
        "skip_nonfinite",
        "bool",
        True,
        "skip steps whose gradients are not finite instead of writing NaNs"
        " into the parameters (``optax.apply_if_finite``).",
    ),
)

SHARED_NAMES = tuple(a.name for a in SHARED_ARGS)

# The shared arguments whose default a method may set to its reference's
# value (and say so in its docstring); the others' defaults are the same in
# every named optimizer.
SHARED_HYPERPARAMETERS = (
    "weight_decay",
    "adam_b1",
    "adam_b2",
    "adam_eps",
    "adam_weight_decay",
)


class Shared:
  """A named optimizer's shared arguments, checked, and what it builds of
  them: the routing of its matrix branch, the matrices' weight decay, and
  the split between the matrices and AdamW.

  Attributes:
    name: the optimizer's name, for error messages.
    learning_rate: the matrices' learning rate.
    args: ``{name: value}`` of :data:`SHARED_ARGS` (the default where the
      optimizer does not take one, as :func:`scion` takes no
      ``weight_decay``).
  """

  def __init__(self, arguments: dict, name: str):
    self.name = name
    self.learning_rate = arguments["learning_rate"]
    self.args = {
        a.name: arguments.get(a.name, a.default) for a in SHARED_ARGS
    }
    a = self.args
    check_learning_rate(self.learning_rate)
    check_nonnegative(a["weight_decay"], "weight_decay")
    check_mask(a["weight_decay_mask"])
    check_weight_decay_mode(a["weight_decay_mode"])
    _checks.check_positive(a["update_rms"], "update_rms", optional=True)

  def __getitem__(self, name: str):
    return self.args[name]

  @property
  def branch_dimension_numbers(self):
    """The routing of the matrix branch (:func:`branch_dimension_numbers
    <ortho_optax.routing.branch_dimension_numbers>` with the optimizer's
    ``dimension_numbers`` and ``rules``)."""
    return functools.partial(
        _routing.branch_dimension_numbers,
        dimension_numbers=self.args["dimension_numbers"],
        rules=self.args["rules"],
    )

  def rescale(self) -> tuple[optax.GradientTransformation, ...]:
    """The ``update_rms`` step: ``()`` for ``None`` (the method's own
    scale, and its state unchanged), else :func:`scale_to_rms
    <ortho_optax.transforms.shape.scale_to_rms>` on the matrix branch."""
    rms = self.args["update_rms"]
    if rms is None:
      return ()
    return (
        _shape.scale_to_rms(
            rms, dimension_numbers=self.branch_dimension_numbers
        ),
    )

  def orthogonalization(
      self, engine: EngineArgs, **defaults
  ) -> optax.GradientTransformation:
    """:func:`scale_by_orthogonalization
    <ortho_optax.transforms.orthogonalization.scale_by_orthogonalization>`
    of the matrix branch, with ``engine``'s options and ``sharding``.

    Args:
      engine: the optimizer's checked :func:`engine_args`.
      **defaults: as in :meth:`EngineArgs.options` (a method's own
        ``steps`` or ``eps``).

    Returns:
      The orthogonalization step.
    """
    return _orthogonalization.scale_by_orthogonalization(
        method=engine.method,
        dimension_numbers=self.branch_dimension_numbers,
        sharding=self.args["sharding"],
        **engine.options(**defaults),
    )

  def matrix_decay(self) -> optax.GradientTransformation:
    """The matrices' weight decay: :func:`decayed_weights` of
    ``weight_decay``, ``weight_decay_mask`` and ``weight_decay_mode``."""
    a = self.args
    return decayed_weights(
        a["weight_decay"], a["weight_decay_mask"], a["weight_decay_mode"]
    )

  def chain(self, *steps) -> optax.GradientTransformation:
    """The named optimizer of the matrices' ``steps``.

    The matrices get ``optax.chain(*steps, rescale, weight decay, learning
    rate)`` (:meth:`rescale`, :meth:`matrix_decay`,
    ``optax.scale_by_learning_rate``), every other leaf AdamW
    (:meth:`with_adam`).

    Args:
      *steps: the method's transformations of the matrices' gradients,
        from the gradient to the direction of the update.

    Returns:
      The named optimizer.
    """
    return self.with_adam(
        optax.chain(
            *steps,
            *self.rescale(),
            self.matrix_decay(),
            optax.scale_by_learning_rate(self.learning_rate),
        )
    )

  def with_adam(
      self,
      matrix_tx: optax.GradientTransformation,
      other_tx: optax.GradientTransformation | None = None,
      **overrides,
  ) -> optax.GradientTransformation:
    """:func:`matrix_and_adam` of ``matrix_tx`` with the shared arguments.

    Args:
      matrix_tx: the matrices' transformation, learning rate included.
      other_tx: replaces AdamW for the other leaves.
      **overrides: shared arguments to replace (e.g. Scion's own
        ``labels``).

    Returns:
      The named optimizer.
    """
    a = {**self.args, **overrides}
    return matrix_and_adam(
        matrix_tx,
        learning_rate=self.learning_rate,
        other_tx=other_tx,
        name=self.name,
        **{
            k: a[k]
            for k in SHARED_NAMES
            if k
            not in (
                "update_rms",
                "weight_decay",
                "weight_decay_mask",
                "sharding",
            )
        },
    )


def shared_args(arguments: dict, name: str) -> Shared:
  """Checks a named optimizer's shared arguments, given its ``locals()``.

  Call it first in the optimizer's body, so that ``locals()`` holds only
  the arguments: ``shared = _base.shared_args(locals(), "muon")``.

  Args:
    arguments: the optimizer's arguments by name (``learning_rate`` and
      those of :data:`SHARED_ARGS` it takes; others are ignored).
    name: the optimizer's name, for error messages.

  Returns:
    A :class:`Shared`.
  """
  return Shared(arguments, name)


# The orthogonalization arguments (checked by `engine_args`) of the named
# optimizers that run an engine, with their `Args:` lines. Their defaults and
# the name of the engine's epsilon (`eps` in muon and root, `ns_eps` where
# `eps` is the method's own) vary, so each signature spells them out; a
# docstring's `**engine:` entry stands for the lines of those the optimizer
# takes and does not document itself (see `document_shared_args`).
ENGINE_ARGS: dict[str, str] = {
    "method": "orthogonalization engine, see :func:`orthogonalize`.",
    "coeffs": (
        "Newton-Schulz coefficients (preset name or array); ``None`` for"
        ' Muon\'s (``"muon"``).'
    ),
    "steps": "Newton-Schulz steps; ``None`` for the table's length.",
    "normalization": (
        "the engine's input normalization; ``None`` for the one the"
        ' coefficients were designed for (Frobenius for ``"muon"``).'
    ),
    "ns_eps": (
        "the engine's normalization epsilon; ``None`` for the engine's"
        " default (1e-7)."
    ),
    "compute_dtype": "dtype of the orthogonalization matmuls.",
}

# The `Args:` entries a named optimizer's docstring writes in place of the
# shared (required) and the engine's (optional) arguments' lines;
# `document_shared_args` replaces them.
SHARED_ENTRY = "**shared"
ENGINE_ENTRY = "**engine"
_ENTRY = re.compile(r"^    (\*{0,2}\w+):")


def _args_section(lines: list[str]) -> tuple[int, int]:
  """``(first, end)`` line indices of the entries of ``  Args:``."""
  start = lines.index("  Args:") + 1
  end = start
  while end < len(lines) and lines[end].strip():
    end += 1
  return start, end


def args_entries(doc: str) -> dict[str, str]:
  """``{name: text}`` of the ``Args:`` section of a named optimizer's
  (2-space indented) docstring, each text joined into one line."""
  lines = doc.splitlines()
  start, end = _args_section(lines)
  entries: dict[str, list[str]] = {}
  for line in lines[start:end]:
    m = _ENTRY.match(line)
    if m:
      entries[m.group(1)] = [line[m.end():].strip()]
    else:
      entries[list(entries)[-1]].append(line.strip())
  return {k: " ".join(v) for k, v in entries.items()}


def _wrap(text: str, indent: str = "    ") -> list[str]:
  """``text`` as lines of an ``Args:`` entry: at most 80 columns, the first
  indented by ``indent``, the others by 6 spaces."""
  return textwrap.wrap(
      text,
      80,
      initial_indent=indent,
      subsequent_indent="      ",
      break_on_hyphens=False,
      break_long_words=False,
  )


def recommendation(name: str) -> str:
  """The ``Recommended:`` sentence of a named optimizer's ``learning_rate``
  entry, from :data:`RECOMMENDED_LEARNING_RATES
  <ortho_optax.optimizers.learning_rates.RECOMMENDED_LEARNING_RATES>`.

  :func:`document_shared_args` adds it to a docstring whose
  ``learning_rate`` entry has none, so that a re-derived table needs no
  docstring edits.

  Args:
    name: a named optimizer chosen on the tasks (not ``PROVISIONAL``: a
      provisional rate's docstring says itself how it was chosen).

  Returns:
    The sentence, unwrapped.
  """
  if name in _learning_rates.PROVISIONAL:
    raise ValueError(
        f"{name}'s learning_rate entry must say how its provisional rate"
        " was chosen."
    )
  rate = _learning_rates.RECOMMENDED_LEARNING_RATES[name]
  *first, last = _learning_rates.CHOSEN_ON
  return (
      f"Recommended: ``{rate:g}``, chosen on the tasks {', '.join(first)}"
      f" and {last} (:func:`~ortho_optax.recommended_learning_rate`)."
  )


def document_shared_args(fn):
  """Puts the shared arguments' ``Args:`` lines into ``fn``'s docstring.

  The source docstring documents the optimizer's own arguments and, in
  place of the shared ones, one entry ``**shared:``. This replaces that
  entry with the lines of :data:`SHARED_ARGS` for the shared arguments
  ``fn`` takes and does not document itself (a method with something to
  add, such as Dion's right factors in ``mu_dtype``, writes its own entry),
  and orders all entries as the signature. An entry ``**engine:`` likewise
  stands for the lines of :data:`ENGINE_ARGS` (the orthogonalization
  arguments), and a ``learning_rate`` entry without a ``Recommended:``
  sentence gets :func:`recommendation`'s, from the table of recommended
  rates. ``__doc__`` (what ``help``, Sphinx's autodoc and the doctests
  read) is thus complete, while the source shows each optimizer's own
  arguments and one definition of the rest. The alternative, the lines
  repeated in every docstring and a test comparing them, kept 15 identical
  entries in 11 files in step by hand.

  Args:
    fn: a named optimizer.

  Returns:
    ``fn``, with its docstring completed.
  """
  lines = fn.__doc__.splitlines()
  start, end = _args_section(lines)
  blocks: dict[str, list[str]] = {}
  for line in lines[start:end]:
    m = _ENTRY.match(line)
    if m:
      blocks[m.group(1)] = []
    blocks[list(blocks)[-1]].append(line)
  if SHARED_ENTRY not in blocks:
    raise ValueError(f"{fn.__name__}'s Args has no {SHARED_ENTRY} entry.")
  rate = blocks.get("learning_rate", [])
  if rate and not any("Recommended:" in line for line in rate):
    rate += _wrap(recommendation(fn.__name__), "      ")
  groups = {SHARED_ENTRY: {a.name: a.doc for a in SHARED_ARGS}}
  if ENGINE_ENTRY in blocks:
    groups[ENGINE_ENTRY] = ENGINE_ARGS
  params = list(inspect.signature(fn).parameters)
  for entry, docs in groups.items():
    del blocks[entry]
    for name, doc in docs.items():
      if name in params and name not in blocks:
        blocks[name] = _wrap(f"{name}: {doc}")
  order = {p: i for i, p in enumerate(params)}
  names = sorted(blocks, key=lambda k: order.get(k.lstrip("*"), len(order)))
  entries = [line for k in names for line in blocks[k]]
  fn.__doc__ = "\n".join(lines[:start] + entries + lines[end:])
  return fn


def _is_empty(x) -> bool:
  return x is None or isinstance(x, optax.MaskedNode)


def is_float(x) -> bool:
  """Whether a leaf (array, ``ShapeDtypeStruct`` or scalar) is trainable:
  floating or complex. Integer, bool and ``float0`` leaves are not."""
  dtype = getattr(x, "dtype", None)
  if dtype is None:
    dtype = jnp.result_type(x)
  return jnp.issubdtype(dtype, jnp.inexact)


def pass_non_float(
    inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
  """Gives integer and bool leaves a zero update without showing them to
  ``inner``.

  A real parameter tree holds step counters, masks and index tables next to
  the weights (``optax.adamw`` turns them into float updates and float
  moments; ``jax.grad(..., allow_int=True)`` gives them ``float0``
  gradients). ``inner`` sees ``None`` in their place, a leaf every
  transform of the library already skips, so its state and its updates of
  the other leaves are those of the tree without them. A leaf is frozen
  when its parameter (or, without ``params``, its update) is not floating
  or complex. Its update is zero in the update's dtype, or in the
  parameter's for a ``float0`` gradient, which ``optax.apply_updates``
  cannot add.

  Args:
    inner: the transformation of the floating and complex leaves.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with ``inner``'s state.
  """
  inner = optax.with_extra_args_support(inner)

  def frozen(tree) -> list[bool]:
    leaves = jax.tree.leaves(tree, is_leaf=_is_empty)
    return [not _is_empty(x) and not is_float(x) for x in leaves]

  def drop(tree, mask):
    if tree is None:
      return None
    leaves, treedef = jax.tree.flatten(tree, is_leaf=_is_empty)
    return treedef.unflatten(
        [None if f else x for x, f in zip(leaves, mask)]
    )

  def init_fn(params):
    return inner.init(drop(params, frozen(params)))

  def update_fn(updates, state, params=None, **extra_args):
    mask = frozen(updates if params is None else params)
    if not any(mask):
      return inner.update(updates, state, params, **extra_args)
    new, state = inner.update(
        drop(updates, mask), state, drop(params, mask), **extra_args
    )
    leaves, treedef = jax.tree.flatten(updates, is_leaf=_is_empty)
    new_leaves = treedef.flatten_up_to(new)
    p_leaves = (
        [None] * len(leaves)
        if params is None
        else treedef.flatten_up_to(params)
    )
    out = [
        _zero_update(u, p) if f else n
        for u, n, p, f in zip(leaves, new_leaves, p_leaves, mask)
    ]
    return treedef.unflatten(out), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _zero_update(u, p):
  if u.dtype == jax.dtypes.float0:
    # float0 supports no arithmetic; a zero of the parameter's dtype does.
    return u if p is None else jnp.zeros_like(p)
  return jnp.zeros_like(u)


def skip_nonfinite_steps(
    inner: optax.GradientTransformation,
    max_consecutive_errors: int = _NEVER_GIVE_UP,
) -> optax.GradientTransformationExtraArgs:
  """``optax.apply_if_finite`` whose skipped step keeps every array's type.

  The same state (``optax.ApplyIfFiniteState``) and semantics: a step whose
  floating updates hold a NaN or an infinity returns zero updates and
  leaves ``inner``'s state unchanged, until more than
  ``max_consecutive_errors`` such steps in a row. optax builds the zeros of
  a skipped step from the incoming updates, outside their sharding: under
  Explicit mesh axes (sharding in types) the two ``lax.cond`` branches then
  differ in type (``float16[2,8@x,4]`` against ``float16[2,8,4]``), and so
  they do whenever ``inner`` changes an update's dtype. Here the zeros take
  the exact types (shape, dtype, sharding) of ``inner``'s updates, read from
  a trace of ``inner.update`` (``jax.eval_shape``; no computation), and the
  branch operands are passed explicitly rather than closed over.

  Args:
    inner: the transformation to guard.
    max_consecutive_errors: non-finite steps in a row that are skipped
      before one is applied (the library's default: never applied).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return optax.ApplyIfFiniteState(
        notfinite_count=jnp.zeros([], jnp.int32),
        last_finite=jnp.array(True, jnp.bool_),
        total_notfinite=jnp.zeros([], jnp.int32),
        inner_state=inner.init(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    checks = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(updates)
        if is_float(x)
    ]
    isfinite = jnp.all(jnp.stack(checks)) if checks else jnp.array(True)
    notfinite_count = jnp.where(
        isfinite,
        jnp.zeros([], jnp.int32),
        optax.safe_increment(state.notfinite_count),
    )

    def apply(operands):
      u, s, p = operands
      return inner.update(u, s, p, **extra_args)

    operands = (updates, state.inner_state, params)
    new_types = jax.eval_shape(apply, operands)

    def skip(operands):
      return jax.tree.map(jnp.zeros_like, new_types[0]), operands[1]

    new_updates, inner_state = jax.lax.cond(
        isfinite | (notfinite_count > max_consecutive_errors),
        apply,
        skip,
        operands,
    )
    return new_updates, optax.ApplyIfFiniteState(
        notfinite_count=notfinite_count,
        last_finite=isfinite,
        total_notfinite=jnp.where(
            isfinite,
            state.total_notfinite,
            optax.safe_increment(state.total_notfinite),
        ),
        inner_state=inner_state,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def variant_of(base, **defaults):
  """Gives a ``f(learning_rate, **kwargs)`` wrapper ``base``'s signature.

  ``optax.inject_hyperparams`` binds the factory's signature and calls it
  with every bound argument by keyword; a bare ``**kwargs`` would then be
  passed on as one argument named ``kwargs`` (``base() got an unexpected
  keyword argument 'kwargs'``). The decorated wrapper advertises ``base``'s
  parameters with ``defaults`` replacing some of their defaults, so
  ``inject_hyperparams`` (and ``help``) see every argument.

  Args:
    base: the optimizer the wrapper forwards to.
    **defaults: the wrapper's own defaults, by parameter name.

  Returns:
    A decorator.
  """
  sig = inspect.signature(base)
  unknown = set(defaults) - set(sig.parameters)
  if unknown:
    raise ValueError(f"{base.__name__} has no parameters {sorted(unknown)}.")
  params = [
      p.replace(default=defaults[p.name]) if p.name in defaults else p
      for p in sig.parameters.values()
  ]

  signature = sig.replace(parameters=params)

  def decorate(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      # Bound here so that a misspelt argument is reported against the
      # wrapper the user called, not against ``base``.
      try:
        signature.bind(*args, **kwargs)
      except TypeError as e:
        raise TypeError(
            f"{fn.__name__}(): {e}; its parameters are"
            f" {', '.join(signature.parameters)}."
        ) from None
      return fn(*args, **kwargs)

    setattr(wrapper, "__signature__", signature)  # noqa: B010
    return wrapper

  return decorate
