"""Trion: Newton-Schulz on the momentum's top DCT components."""

from __future__ import annotations

import jax
import optax

from ortho_optax import routing as _routing
from ortho_optax.optimizers import base as _base
from ortho_optax.parallel import sharding as _sharding
from ortho_optax.transforms import trion as _trion


@_base.document_shared_args
def trion(
    learning_rate: optax.ScalarOrSchedule,
    *,
    rank: float | int | None = None, beta: jax.typing.ArrayLike = 0.95,
    dct: str = "matmul",
    method: str = "auto", coeffs=None, steps: int | None = None,
    normalization: str | None = None, ns_eps: float | None = None,
    compute_dtype=None,
    shape_rule: str = "muon", shape_rms: float = 0.2,
    update_rms: float | None = None,
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_decay_mask=None,
    weight_decay_mode: str = "decoupled",
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    adam_b1: jax.typing.ArrayLike = 0.9,
    adam_b2: jax.typing.ArrayLike = 0.95,
    adam_eps: jax.typing.ArrayLike = 1e-10,
    adam_weight_decay: jax.typing.ArrayLike = 0.0,
    labels=None,
    rules: _routing.Rules = None,
    dimension_numbers=None,
    mu_dtype=None,
    nu_dtype=None,
    sharding: str | _sharding.ShardingOptions | None = None,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformation:
  r"""Trion: DCT-projected low-rank Muon, AdamW for the rest.

  For each hidden matrix :math:`W` (oriented wide, :math:`m \le n`) with
  gradient :math:`G_t`, momentum :math:`M` and a fixed DCT basis
  :math:`K` (:func:`scale_by_trion`):

  .. math::
    B = M + G_t, \quad S = K B, \quad I = \mathrm{top}_r \|S_{k,:}\|_1,
    \quad V = K_{I,:}, \\
    M \leftarrow B - (1 - \beta) V^\top S_{I,:}, \quad
    W \leftarrow W - \eta\,(s(W)\, V^\top \mathrm{polar}(S_{I,:}) +
    \lambda W),

  with Muon's :math:`s(W) = \sqrt{\max(1, \mathrm{fan\_out} /
  \mathrm{fan\_in})}` (``shape_rule="muon"``, the reference's ``"kj"``
  scaling) and Newton-Schulz with Muon's coefficients (the reference's
  ``zeropower_via_newtonschulz5``) on the ``r x n`` projection only.
  Embeddings, heads and non-matrix leaves go to AdamW.

  Compute: at full rank (a shorter side of at most 128, where the default
  keeps every direction) the DCT projection makes the step dearer than
  Muon's (Muon has 0.77x Trion's matmul FLOPs at width 128 on a block of
  the GPT-like tree, ``benchmarks/rank_flops.py``); above it Trion saves
  compute: 2.6x at width 256, 4.2x at 384, 4.1x at 768.

  Trained against ``optax.contrib.muon`` on the examples' ``lm`` (width
  128, so the default rank keeps every direction; seven octaves of learning
  rate, 2 seeds; ``examples/results/octaves``), Trion ends +0.035
  nats/byte behind at its default rate, 0.02, its best there (+0.115 at
  0.04, the earlier default; +0.23 at rank 1/4, the earlier default
  rank); on the deeper ``lm_deep`` +0.096 at 0.02 and +0.087 at its
  best, 0.01. It trails Muon at these widths.

  Defaults follow IST-DASLab's ``Trion`` (momentum 0.95, weight decay 0,
  AdamW betas (0.9, 0.95) and epsilon 1e-10) except ``rank``, which the
  reference requires (here a quarter of the shorter side but at least 128
  directions, capped at the shorter side), and the shape rule,
  which it requires too (``"kj"``, ``"none"``, ``"kimi"`` or ``"dion"``;
  here ``"muon"``, its ``"kj"``). The reference's ``lr`` default is 0.02.

  Args:
    learning_rate: learning rate (or schedule) of the matrices, and of AdamW
      unless ``adam_learning_rate`` is given.
    rank: ``None``, the default rule: a quarter of ``min(fan_in,
      fan_out)``, rounded up, but at least 128 directions, capped at
      ``min(fan_in, fan_out)`` (static under ``optax.inject_hyperparams``);
      or a fraction in ``(0, 1]`` of ``min(fan_in, fan_out)`` or an int
      (static: list it in ``static_args``).
    beta: the error-feedback momentum :math:`\mu`.
    dct: ``"matmul"`` or ``"fft"``, see :func:`scale_by_trion`.
    **engine: the orthogonalization arguments of ``base.ENGINE_ARGS``.
    shape_rule: see :func:`scale_by_shape`.
    shape_rms: target RMS of the ``"moonlight"`` rule.
    **shared: the weight decay, AdamW, routing, state, sharding and
      skipping arguments of ``base.SHARED_ARGS``.
    sharding: see :func:`scale_by_trion`.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import ortho_optax
    >>> params = {"w": jnp.ones((16, 32)), "b": jnp.zeros(32)}
    >>> tx = ortho_optax.trion(0.02)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, tx.init(params), params)

  References:
    Modoranu et al., `FFT-based Dynamic Subspace Selection for Low-Rank
    Adaptive Optimization of Large Language Models
    <https://arxiv.org/abs/2505.17967>`_, 2025
  """
  shared = _base.shared_args(locals(), "trion")
  engine = _base.engine_args(locals(), "ns_eps")
  branch_dn = shared.branch_dimension_numbers
  return shared.chain(
      _trion.scale_by_trion(
          rank,
          beta=beta,
          dct=dct,
          method=method,
          dimension_numbers=branch_dn,
          mu_dtype=mu_dtype,
          sharding=sharding,
          **engine.options(),
      ),
      _base.shape_scaling(shape_rule, shape_rms, branch_dn),
  )
