"""The named optimizers' recommended learning rates, chosen over three tasks.

A learning rate is the one number of an optimizer that a user must give;
:data:`RECOMMENDED_LEARNING_RATES` is where to start. Each was chosen by
``examples/compare.py`` over the three tasks of :data:`CHOSEN_ON`, which
differ in model, depth, context and schedule:

* ``lm``: a 2-layer byte-level transformer LM, width 128, context 64, 600
  steps of a cosine schedule;
* ``lm_deep``: 4 layers, width 64, context 128, 400 steps of
  warmup-stable-decay;
* ``digits_cnn``: a CNN on scikit-learn's 8x8 digits, 300 steps of a
  cosine schedule without warmup or clipping.

Every optimizer ran at 0.5x, 1x and 2x a starting rate on each task; the
rate recommended has the best mean, over the tasks, of the paired
difference in best validation (test) loss to ``optax.contrib.muon`` at its
own default, seed by seed (``compare.recommend_defaults``; the table is in
the README, "Learning-rate defaults over the tasks").

The numbers carry across shapes through each optimizer's own scaling rule,
not through the number: Muon's :math:`\\sqrt{\\max(1, n / m)}` factor
(``muon``, ``turbo_muon``, ``normuon``, ``auon``, ``hybrid_auon``), Dion's
:math:`\\sqrt{n / m}` (``dion``, ``dion2``, ``trion``), an update RMS of
0.2 on AdamW's scale (``adamuon``, ``root``), or a radius in each layer's
norm (``scion``, ``trust_region``).
The AdamW branch of every optimizer takes ``adam_learning_rate`` (3e-3,
AdamW's own, in the comparison).
"""

from __future__ import annotations

# The tasks of examples/compare.py the rates were chosen on.
CHOSEN_ON = ("lm", "lm_deep", "digits_cnn")

RECOMMENDED_LEARNING_RATES: dict[str, float] = {
    "muon": 0.02,
    "turbo_muon": 0.02,
    "normuon": 0.02,
    "adamuon": 0.01,
    "root": 0.01,
    "auon": 0.025,
    "hybrid_auon": 0.02,
    "scion": 0.01,
    "trust_region": 0.04,
    # The references' own defaults are 0.01 (Dion, Dion2) and 0.02 (Trion).
    "dion": 0.02,
    "dion2": 0.04,
    "trion": 0.04,
    # Provisional (PROVISIONAL): the best of an octave sweep on `lm` only,
    # seed 0 (best validation loss; muon 0.02 gave 1.5602 in the same
    # batch): soap 0.0015 1.8707, 0.003 (the reference's default) 1.7221,
    # 0.006 1.6337, 0.012 1.6438, 0.024 1.7175; shampoo 0.0015 1.6240,
    # 0.003 1.5803, 0.006 1.6155, 0.012 1.7830.
    "soap": 0.006,
    "shampoo": 0.003,
}

# Entries not yet chosen on CHOSEN_ON: their docstrings say "provisional".
PROVISIONAL = ("soap", "shampoo")


def recommended_learning_rate(name: str) -> float:
  """The recommended learning rate of the named optimizer ``name``.

  Args:
    name: a named optimizer of ``ortho_optax`` (e.g. ``"muon"``).

  Returns:
    Its entry of :data:`RECOMMENDED_LEARNING_RATES`.

  Raises:
    TypeError: ``name`` is not a string.
    ValueError: ``name`` is not a named optimizer; the message lists them.

  Examples:
    >>> import ortho_optax
    >>> ortho_optax.recommended_learning_rate("muon")
    0.02
  """
  if not isinstance(name, str):
    raise TypeError(
        f"`name` must be a str (a named optimizer), got {name!r}."
    )
  if name not in RECOMMENDED_LEARNING_RATES:
    raise ValueError(
        f"`name`={name!r} is not a named optimizer; one of"
        f" {', '.join(RECOMMENDED_LEARNING_RATES)}."
    )
  return RECOMMENDED_LEARNING_RATES[name]
