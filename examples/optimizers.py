"""The examples' optimizer registry: an optimizer is chosen by name.

* ``adamw``: :func:`optax.adamw` on every parameter.
* ``optax_muon``: :func:`optax.contrib.muon`, with ``muon_weight_dimension_numbers``
  routing embeddings, heads and non-matrix leaves to its Adam branch (the
  split of the reference Muon; the same path rules as ``ortho_optax``).
* any other name: ``getattr(ortho_optax, name)``, e.g. ``muon``, ``normuon``.

Every factory is called as ``factory(learning_rate, **kwargs)``. The learning
rate schedule is applied as a multiplier on the final update, so it scales
every learning rate of the optimizer (e.g. both Muon's and its Adam branch's)
by the same warmup/decay shape.
"""

import inspect
import math
import re

import jax
import ml_collections
import optax

import ortho_optax

# Path components naming embeddings and output heads (kept on Adam).
EMBED_HEAD_NAMES = frozenset({
    "embed", "embedding", "embeddings", "wte", "wpe", "lm_head", "head",
    "logits", "unembed", "unembedding", "output_head",
})


def _path_names(path) -> list[str]:
  names = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        names.append(str(getattr(k, attr)).lower())
        break
  return names


def is_embedding_or_head(path) -> bool:
  """Whether a leaf's path names an embedding table or an output head."""
  return any(
      n in EMBED_HEAD_NAMES or "embed" in n for n in _path_names(path)
  )


def muon_dimension_numbers(params):
  """``MuonDimensionNumbers`` per leaf; ``None`` sends a leaf to Adam."""
  dn = optax.contrib.MuonDimensionNumbers

  def one(path, x):
    if x.ndim < 2 or is_embedding_or_head(path):
      return None
    if x.ndim == 2:
      return dn(reduction_axis=0, output_axis=1)
    if x.ndim == 4:  # Flax HWIO convolution kernel: (kh * kw * in, out).
      return dn(reduction_axis=(0, 1, 2), output_axis=3)
    return None

  return jax.tree_util.tree_map_with_path(one, params)


def _optax_muon(learning_rate, **kwargs):
  kwargs.setdefault("muon_weight_dimension_numbers", muon_dimension_numbers)
  return optax.contrib.muon(learning_rate, **kwargs)


_BUILTIN = {
    "adamw": optax.adamw,
    "optax_muon": _optax_muon,
}

# The ortho_optax optimizers the examples and the comparison know about.
ORTHO_OPTAX_NAMES = (
    "muon", "turbo_muon", "normuon", "adamuon", "root", "auon", "hybrid_auon",
    "scion", "trust_region", "dion", "dion2", "trion", "soap",
    "shampoo",
)


# Peak learning rates used when `optimizer.learning_rate` is None, and the
# centres of examples/compare.py's sweeps. Starting points: the published
# defaults (spec optimizers.md §13), moved where a sweep of the LM example
# (600 steps, seed 0) put the best rate at an edge: normuon 0.02 (swept
# 0.02-0.08), adamuon 0.01 (0.005-0.02: 0.01 best), scion 0.01 (0.005-0.04:
# 0.01 best), root and trust_region after a 200-step sweep.
# Across tasks (issue 16, examples/results/summary.md and defaults.md): on
# `lm` each is its optimizer's best of x{0.5, 1, 2} (4 seeds); on `lm_deep`
# (4 layers, width 64, context 128, warmup-stable-decay) and `digits_cnn`
# they were run on 2 seeds, and only the digits were swept for all of them
# (there AdamW, optax_muon, muon and root were best at x2, the sweep's
# edge; x2 was 0.114 worse for optax_muon on lm_deep). No other rate is
# measured on every task yet, so none is changed.
DEFAULT_LEARNING_RATES = {
    "adamw": 3e-3,
    "optax_muon": 0.02,
    # The library's recommendations (ortho_optax/optimizers/learning_rates.py),
    # chosen on the tasks of examples/compare.py.
    **ortho_optax.RECOMMENDED_LEARNING_RATES,
}
# The learning rate of the AdamW branch (embeddings, heads, 1-D leaves) of the
# orthogonalizing optimizers, when they take `adam_learning_rate` and the
# configuration does not set it: AdamW's own default.
DEFAULT_ADAM_LEARNING_RATE = 3e-3


def default_learning_rate(name: str) -> float:
  """The peak learning rate used for ``name`` when none is configured."""
  return DEFAULT_LEARNING_RATES.get(name, 0.02)


def resolved_learning_rate(config: ml_collections.ConfigDict) -> float:
  """``config.learning_rate``, or the default of ``config.name`` if None."""
  if config.learning_rate is None:
    return default_learning_rate(config.name)
  return config.learning_rate


_STATE_SPEC = re.compile(r"^(q8|q4|n4|u8|u4)(s?)(?:/([0-9]+))?$")


def state_format(spec):
  """A ``mu_dtype`` / ``nu_dtype`` from a configuration string.

  ``"q8"``, ``"q4"`` and dtype names pass through; ``"q4s"`` is the 4-bit
  format with stochastic rounding, ``"q4/64"`` with blocks of 64, and
  ``"q4s/64"`` both (a configuration file holds strings, not
  ``QuantFormat`` objects).
  """
  match = _STATE_SPEC.match(spec) if isinstance(spec, str) else None
  if match is None or not (match.group(2) or match.group(3)):
    return spec
  code, stochastic, block = match.groups()
  return ortho_optax.QuantFormat(
      code, int(block) if block else None, stochastic=bool(stochastic)
  )


def resolve_kwargs(name: str, kwargs) -> dict:
  """``kwargs`` plus ``adam_learning_rate`` when the factory takes it.

  State formats given as strings (``state_format``) become ``QuantFormat``.
  """
  kwargs = dict(kwargs or {})
  for key in ("mu_dtype", "nu_dtype"):
    if key in kwargs:
      kwargs[key] = state_format(kwargs[key])
  if name != "adamw" and accepts(name, "adam_learning_rate"):
    kwargs.setdefault("adam_learning_rate", DEFAULT_ADAM_LEARNING_RATE)
  return kwargs


def available(name: str) -> bool:
  """Whether ``name`` resolves to an optimizer in this installation."""
  return name in _BUILTIN or callable(getattr(ortho_optax, name, None))


def get_factory(name: str):
  """The factory ``name(learning_rate, **kwargs)`` for an optimizer name."""
  if name in _BUILTIN:
    return _BUILTIN[name]
  factory = getattr(ortho_optax, name, None)
  if not callable(factory):
    known = sorted(_BUILTIN) + [
        n for n in ORTHO_OPTAX_NAMES if callable(getattr(ortho_optax, n, None))
    ]
    raise ValueError(
        f"`optimizer.name`={name!r} is neither a built-in example optimizer"
        f" nor in this ortho_optax ({ortho_optax.__version__}); available:"
        f" {', '.join(known)}."
    )
  return factory


def accepts(name: str, kwarg: str) -> bool:
  """Whether the factory of ``name`` has a named parameter ``kwarg``."""
  factory = optax.contrib.muon if name == "optax_muon" else get_factory(name)
  return kwarg in inspect.signature(factory).parameters


def accepted_kwargs(name: str, kwargs) -> dict:
  """The items of ``kwargs`` that the factory of ``name`` accepts.

  One set of extra arguments for optimizers of different signatures: e.g.
  ``{"update_rms": 0.2, "consistent_rms": 0.2}`` gives every named
  ``ortho_optax`` optimizer Moonlight's update RMS through its
  ``update_rms``, and ``optax_muon`` the same through optax's
  ``consistent_rms``; ``adamw`` takes neither.
  """
  return {k: v for k, v in (kwargs or {}).items() if accepts(name, k)}


SCHEDULES = ("constant", "cosine", "linear", "wsd")


def lr_multiplier(
    schedule: str, total_steps: int, warmup_steps: int,
    decay_steps: int | None = None,
) -> optax.Schedule:
  """A schedule shape with peak 1: linear warmup, then ``schedule``.

  Args:
    schedule: after the warmup, ``"constant"``; ``"cosine"`` or ``"linear"``
      decay to 0 at ``total_steps``; or ``"wsd"`` (warmup-stable-decay,
      Hu et al. 2024, MiniCPM): 1 until the last ``decay_steps`` steps, then
      linearly to 0 at ``total_steps``.
    total_steps: the length of the run.
    warmup_steps: steps of linear warmup from ``1 / (warmup_steps + 1)``.
    decay_steps: the final decay of ``"wsd"`` (at most the steps after the
      warmup); ignored by the other shapes.
  """
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  after_steps = max(total_steps - warmup_steps, 1)
  if schedule == "constant":
    after = optax.constant_schedule(1.0)
  elif schedule == "cosine":
    after = optax.cosine_decay_schedule(1.0, after_steps, alpha=0.0)
  elif schedule == "linear":
    after = optax.linear_schedule(1.0, 0.0, after_steps)
  elif schedule == "wsd":
    if decay_steps is None or decay_steps < 1:
      raise ValueError(
          "`optimizer.decay_steps` must be a positive number of steps (or a"
          f" fraction of the run) for the 'wsd' schedule; got {decay_steps!r}."
      )
    decay = min(decay_steps, after_steps)
    after = optax.join_schedules(
        [optax.constant_schedule(1.0),
         optax.linear_schedule(1.0, 0.0, decay)],
        [after_steps - decay],
    )
  else:
    raise ValueError(
        f"`optimizer.schedule` must be one of {', '.join(map(repr, SCHEDULES))}"
        f"; got {schedule!r}."
    )
  if warmup_steps == 0:
    return after
  warm = optax.linear_schedule(1.0 / (warmup_steps + 1), 1.0, warmup_steps)
  return optax.join_schedules([warm, after], [warmup_steps])


def steps_of(value, total_steps: int):
  """An int number of steps, or a float fraction of ``total_steps``."""
  if isinstance(value, float):
    return int(math.ceil(value * total_steps))
  return value


def create_optimizer(
    config: ml_collections.ConfigDict, total_steps: int
) -> optax.GradientTransformation:
  """Builds the optimizer described by ``config`` (the ``optimizer`` field).

  Args:
    config: ``name``, ``learning_rate`` (``None``: the optimizer's entry in
      ``DEFAULT_LEARNING_RATES``), ``kwargs`` (passed to the factory),
      ``schedule``, ``warmup_steps`` (an int, or a float fraction of
      ``total_steps``), ``decay_steps`` (the same, for the ``"wsd"``
      schedule; 0.2 if the configuration has no such field) and
      ``grad_clip_norm`` (``0`` disables clipping).
    total_steps: the length of the run, for the schedule.

  Returns:
    ``chain(clip, factory(learning_rate, **kwargs), scale_by_schedule)``.
  """
  factory = get_factory(config.name)
  warmup = steps_of(config.warmup_steps, total_steps)
  # Configurations without the field (the digits ones) decay over 20%.
  decay = steps_of(config.get("decay_steps", 0.2), total_steps)
  parts = []
  if config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(factory(
      resolved_learning_rate(config),
      **resolve_kwargs(config.name, config.kwargs),
  ))
  parts.append(optax.scale_by_schedule(
      lr_multiplier(config.schedule, total_steps, warmup, decay)
  ))
  return optax.chain(*parts)
