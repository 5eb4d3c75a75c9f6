"""Dion2: Muon on a selected fraction of each matrix's rows."""

from __future__ import annotations

import jax
import optax

from ortho_optax import routing as _routing
from ortho_optax.optimizers import base as _base
from ortho_optax.parallel import sharding as _sharding
from ortho_optax.transforms import dion2 as _dion2

# Dion2's Newton-Schulz (microsoft/dion `polar_express`): the 5-row Polar
# Express table with its 1.02 safety factor, Frobenius normalization, and
# the optimizer's epsilon 1e-8.
DION2_RECIPE = {"coeffs": "polar_express"}
DION2_NS_EPS = 1e-8


@_base.document_shared_args
def dion2(
    learning_rate: optax.ScalarOrSchedule,
    *,
    rank: float | int | None = None, beta: jax.typing.ArrayLike = 0.95,
    method: str = "auto", coeffs=None, steps: int | None = None,
    normalization: str | None = None, ns_eps: float | None = None,
    compute_dtype=None,
    shape_rule: str = "spectral", shape_rms: float = 0.2,
    update_rms: float | None = None,
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_decay_mask=None,
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
  r"""Dion2: orthogonalize the rows of largest norm, AdamW for the rest.

  For each hidden matrix :math:`W` with gradient :math:`G_t` and momentum
  :math:`M` (:func:`scale_by_dion2`), rows taken along the shorter side:

  .. math::
    B = M + G_t, \quad I = \mathrm{top}_k \|B_{i,:}\|_1, \quad
    M_{I,:} \leftarrow \beta B_{I,:}, \quad M_{\bar I,:} \leftarrow
    B_{\bar I,:}, \\
    W \leftarrow W - \eta\,(s(W)\, U + \lambda W), \quad
    U_{I,:} = \mathrm{polar}(B_{I,:}), \quad U_{\bar I,:} = 0,

  with :math:`s(W) = \sqrt{\mathrm{fan\_out} / \mathrm{fan\_in}}`
  (``shape_rule="spectral"``, the reference's ``adjust_lr``) and ``k =
  rank`` rows (a fraction of the shorter side, or an int). Only a ``k x n``
  matrix enters Newton-Schulz: with a quarter of the rows about 1/16 of
  Muon's FLOPs. Embeddings, heads and non-matrix leaves go to AdamW.

  The default rank (``rank=None``) is a quarter of the shorter side but at
  least 128 rows: a matrix whose shorter side is at most 128 keeps every
  row and costs what Muon's step costs. Dion2 saves compute from a shorter
  side above 128: on a block of the GPT-like tree
  (``benchmarks/rank_flops.py``) Muon's step has 1.0x Dion2's matmul FLOPs
  at width 128, 5.3x at 256, 14x at 384 and 21x at 768.

  Trained against ``optax.contrib.muon`` on the examples' ``lm`` (width
  128, so the default rank keeps every direction; seven octaves of learning
  rate, 2 seeds; ``examples/results/octaves``), Dion2 ends +0.038
  nats/byte behind at its default rate, 0.02, its best there (+0.144 at
  0.04, the earlier default; +0.24 at rank 1/4, the earlier default
  rank); on the deeper ``lm_deep`` +0.107 at 0.02 and +0.088 at its
  best, 0.01. It trails Muon at these widths.

  Defaults follow microsoft/dion's ``Dion2`` (``fraction`` 0.25,
  ``ef_decay`` 0.95, Polar Express with epsilon 1e-8, AdamW betas (0.9,
  0.95)) except the floor of 128 rows, ``weight_decay=0`` (the
  reference's 0.01) and the
  orthogonalization's precision (see :func:`scale_by_dion2`). The
  reference's ``lr`` default is 0.01. The paper also studies random row
  selection; the reference code (and this optimizer) select by norm.

  Args:
    learning_rate: learning rate (or schedule) of the matrices, and of AdamW
      unless ``adam_learning_rate`` is given.
    rank: ``None``, the default rule: a quarter of ``min(fan_in,
      fan_out)``, rounded up, but at least 128 directions, capped at
      ``min(fan_in, fan_out)`` (static under ``optax.inject_hyperparams``);
      or a fraction in ``(0, 1]`` of ``min(fan_in, fan_out)`` or an int
      (static: list it in ``static_args``).
    beta: the error-feedback decay of the selected rows (``ef_decay``).
    **engine: the orthogonalization arguments of ``base.ENGINE_ARGS``.
    coeffs: Newton-Schulz coefficients; ``None``: ``"polar_express"``.
    normalization: input normalization; ``None``: the table's own.
    ns_eps: the normalization's epsilon; ``None``: 1e-8.
    shape_rule: see :func:`scale_by_shape`.
    shape_rms: target RMS of the ``"moonlight"`` rule.
    **shared: the weight decay, AdamW, routing, state, sharding and
      skipping arguments of ``base.SHARED_ARGS``.
    sharding: see :func:`scale_by_dion2`.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import ortho_optax
    >>> params = {"w": jnp.ones((16, 32)), "b": jnp.zeros(32)}
    >>> tx = ortho_optax.dion2(0.01)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, tx.init(params), params)

  References:
    Ahn et al., `Dion2: A Simple Method to Shrink Matrix in Muon
    <https://arxiv.org/abs/2512.16928>`_, 2025
  """
  shared = _base.shared_args(locals(), "dion2")
  engine = _base.engine_args(locals(), "ns_eps")
  branch_dn = shared.branch_dimension_numbers
  return shared.chain(
      _dion2.scale_by_dion2(
          rank,
          beta=beta,
          method=method,
          dimension_numbers=branch_dn,
          mu_dtype=mu_dtype,
          sharding=sharding,
          **engine.options(DION2_RECIPE, eps=DION2_NS_EPS),
      ),
      _base.shape_scaling(shape_rule, shape_rms, branch_dn),
  )
