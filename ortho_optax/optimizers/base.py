"""What every named optimizer shares: argument checks and the Adam split."""

from __future__ import annotations

import inspect

import jax
import optax

from ortho_optax import routing as _routing
from ortho_optax.engines import coefficients as _coefficients
from ortho_optax.transforms import adam as _adam

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


def check_learning_rate(learning_rate, name: str = "learning_rate") -> None:
  """Raises unless ``learning_rate`` is a schedule or a number >= 0."""
  if callable(learning_rate) or isinstance(learning_rate, jax.core.Tracer):
    return
  try:
    lr = float(learning_rate)
  except (TypeError, ValueError) as e:
    raise TypeError(
        f"`{name}` must be a number or an optax schedule, got"
        f" {learning_rate!r}."
    ) from e
  if not lr >= 0.0:
    raise ValueError(f"`{name}` must be >= 0, got {learning_rate!r}.")


def check_nonnegative(value, name: str) -> None:
  """Raises unless a concrete ``value`` is >= 0 (traced values pass)."""
  if isinstance(value, jax.core.Tracer) or callable(value):
    return
  try:
    v = float(value)
  except (TypeError, ValueError) as e:
    raise TypeError(f"`{name}` must be a number, got {value!r}.") from e
  if not v >= 0.0:
    raise ValueError(f"`{name}` must be >= 0, got {value!r}.")


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
) -> optax.GradientTransformation:
  """Sends matrices to ``matrix_tx`` and every other leaf to AdamW.

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
    skip_nonfinite: wrap the result in ``optax.apply_if_finite`` so that a
      step with a NaN or infinite gradient is skipped (parameters and state
      unchanged) instead of writing NaNs into the parameters.
    mu_dtype: storage of AdamW's first moment (as the momentum's).
    nu_dtype: storage of AdamW's second moment; a quantized format stores
      it in the unsigned code of its width (see :func:`scale_by_adam
      <ortho_optax.transforms.adam.scale_by_adam>`).

  Returns:
    An ``optax.GradientTransformation``.
  """
  check_learning_rate(learning_rate)
  if adam_learning_rate is None:
    adam_learning_rate = learning_rate
  check_learning_rate(adam_learning_rate, "adam_learning_rate")
  if other_tx is None:
    check_nonnegative(adam_weight_decay, "adam_weight_decay")
    if mu_dtype is None and nu_dtype is None:
      other_tx = optax.adamw(
          adam_learning_rate,
          b1=adam_b1,
          b2=adam_b2,
          eps=adam_eps,
          weight_decay=adam_weight_decay,
      )
    else:  # optax.adamw's chain, with the moments in their storage
      other_tx = optax.chain(
          _adam.scale_by_adam(
              adam_b1, adam_b2, adam_eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype
          ),
          optax.add_decayed_weights(adam_weight_decay),
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
    tx = optax.apply_if_finite(tx, max_consecutive_errors=_NEVER_GIVE_UP)
  return tx


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

  def decorate(fn):
    fn.__signature__ = sig.replace(parameters=params)
    return fn

  return decorate
