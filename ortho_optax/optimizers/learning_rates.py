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

Every optimizer ran at seven octaves of learning rate, x1/8 to x8 around
its earlier default (and past a best rate at an edge of that grid), on
seed 0 of the language models and on seeds 0-3 of the digits, whose
accuracy is noisier; the default and the best rate ran on seed 1 too. On
each task a rate's regret is its gap to the optimizer's own best rate
there (averaged over every seed it shares with the best rate); the rate
recommended has the least worst regret over the tasks,
each task's regret divided by its limit (0.02 nats/byte on the LMs, 1
point of accuracy on the digits; ``compare.recommend_defaults``). The
regrets at these defaults, task by task, are in the README ("Learning-rate
defaults over the tasks") and ``examples/results/octaves/regrets.md``.

Where the tasks disagree, no single rate meets every limit. ``scion``
wants 0.01 on ``lm``, 0.005 on ``lm_deep`` (it is 0.08 behind there at
0.01) and 0.08 on the digits; ``auon`` 0.05 on ``lm`` and 0.025 on
``lm_deep``; ``dion2`` 0.02 and 0.01. The digits' best rates are 2x to 8x
the LMs' (AdamW's 4x: at 0.003 it is 2 points of accuracy behind its best
there), but most of the Muon family are within half a point of their best
at the LM rate.

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
    # The paper's LM rate is 0.055, its code's 0.24. On lm_deep 0.05 ended
    # at 2.41 on seed 1 (0.025: 1.97), a regret of 0.26 over two seeds.
    "auon": 0.025,
    "hybrid_auon": 0.02,
    "scion": 0.01,
    "trust_region": 0.04,
    # The references' own defaults are 0.01 (Dion, Dion2) and 0.02 (Trion).
    "dion": 0.02,
    "dion2": 0.02,
    "trion": 0.02,
    # The reference's default is 0.003 (SOAP's authors).
    "soap": 0.012,
    "shampoo": 0.003,
}

# Entries not yet chosen on CHOSEN_ON, whose docstrings say "provisional"
# and how they were chosen: none since the octave sweep of issue 25.
PROVISIONAL: tuple[str, ...] = ()


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
