"""SOAP: Adam in the eigenbasis of Shampoo's preconditioner, AdamW aside."""

from __future__ import annotations

import jax
import optax

from ortho_optax import routing as _routing
from ortho_optax.optimizers import base as _base
from ortho_optax.parallel import sharding as _sharding
from ortho_optax.transforms import soap as _soap


@_base.document_shared_args
def soap(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: jax.typing.ArrayLike = 0.95, b2: jax.typing.ArrayLike = 0.95,
    eps: jax.typing.ArrayLike = 1e-8,
    shampoo_beta: jax.typing.ArrayLike | None = None,
    precondition_every: int | None = None,
    precondition_warmup: int | None = None,
    max_precond_dim: int | None = None,
    normalize_grads: bool = False, precond_dtype=None,
    bjorck_steps: int | None = None,
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
  r"""SOAP: Adam in Shampoo's eigenbasis for hidden matrices, AdamW aside.

  For each hidden matrix :math:`W` with gradient :math:`G`, statistics
  :math:`L, R` and their eigenbases :math:`Q_L, Q_R`
  (:func:`scale_by_soap`):

  .. math::
    G' = Q_L^T G Q_R, \quad
    M \leftarrow \beta_1 M + (1 - \beta_1) G', \quad
    V \leftarrow \beta_2 V + (1 - \beta_2) G'^{\odot 2}, \\
    W \leftarrow W - \eta \left(
      \frac{\sqrt{1 - \beta_2^t}}{1 - \beta_1^t}\,
      Q_L \frac{M}{\sqrt{V} + \epsilon} Q_R^T + \lambda W
    \right), \\
    L \leftarrow \beta_s L + (1 - \beta_s) G G^T, \quad
    R \leftarrow \beta_s R + (1 - \beta_s) G^T G,

  the bases refreshed after each of the first ``precondition_warmup`` steps
  and then every ``precondition_every`` steps by one power iteration and a
  QR (``eigh`` on the first step, which only initializes), the moments
  rotated and permuted to the new bases. The update has Adam's scale, so no
  shape factor is applied. Embeddings, heads and non-matrix leaves go to AdamW
  (see :func:`label_params`; the reference preconditions embeddings too, with
  the identity on the vocabulary side).

  Defaults are the authors' (nikhilvyas/SOAP): betas (0.95, 0.95),
  ``shampoo_beta`` = ``b2``, eps 1e-8, precondition frequency 10,
  ``max_precond_dim`` 10000, ``normalize_grads`` off, except
  ``weight_decay=0`` (the reference's 0.01; every optimizer here defaults
  to 0) and the refresh warm-up (``precondition_warmup=100``; 0 is the
  reference's schedule). The reference's ``lr`` default is 3e-3.

  Trained on the examples' byte-level LMs (``examples/results/octaves``,
  seven octaves of learning rate, 2 seeds), SOAP at 0.012 (its best rate
  on both) ends 0.014 (``lm``) and 0.037 (``lm_deep``) nats/byte ahead of
  ``optax.contrib.muon``, reaching AdamW's best loss in 0.48x and 0.57x of
  AdamW's steps. Without the warm-up it ended 0.077 and 0.049 behind (the
  table in :func:`scale_by_soap`, Refresh schedule).

  Args:
    learning_rate: learning rate (or schedule) of the matrices, and of AdamW
      unless ``adam_learning_rate`` is given.
    b1: Adam's :math:`\beta_1` in the eigenbasis.
    b2: Adam's :math:`\beta_2` in the eigenbasis.
    eps: Adam's epsilon, in units of each matrix's largest
      :math:`\sqrt{V}` (see :func:`scale_by_soap`, Range).
    shampoo_beta: decay of the statistics; ``None``: ``b2``.
    precondition_every: refresh period of the bases (static; ``None``: 10).
    precondition_warmup: the bases are also refreshed after each of the
      first this many steps (static; ``None``: 100; 0: the reference's
      schedule; see :func:`scale_by_soap`, Refresh schedule).
    max_precond_dim: sides above it are not preconditioned (static;
      ``None``: 10000).
    normalize_grads: divide each matrix's update by its RMS.
    precond_dtype: storage of the statistics and bases: ``None``
      (float32), a floating dtype, or ``"q8"`` / ``"q4"`` (eigenvectors as
      block codes, each statistic in its basis as a float32 diagonal and an
      8-bit off-diagonal; see :func:`scale_by_soap`).
    bjorck_steps: Björck steps on a quantized basis read back (static;
      ``None``: 1).
    mu_dtype: storage of both first moments (SOAP's and AdamW's):
      ``None`` (the parameters' dtype), a floating dtype or a quantized
      format.
    nu_dtype: storage of both second moments (kept in the unsigned code of
      a quantized format's width).
    sharding: see :func:`scale_by_soap`.
    **shared: the weight decay, AdamW, routing, state, sharding and
      skipping arguments of ``base.SHARED_ARGS``.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import ortho_optax
    >>> params = {"w": jnp.ones((16, 32)), "b": jnp.zeros(32)}
    >>> tx = ortho_optax.soap(0.012)
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)

  References:
    Vyas et al., `SOAP: Improving and Stabilizing Shampoo using Adam
    <https://arxiv.org/abs/2409.11321>`_, 2024

    Wang et al., `4-bit Shampoo for Memory-Efficient Network Training
    <https://arxiv.org/abs/2405.18144>`_, NeurIPS 2024
  """
  shared = _base.shared_args(locals(), "soap")
  branch_dn = shared.branch_dimension_numbers
  return shared.chain(
      _soap.scale_by_soap(
          b1,
          b2,
          eps,
          shampoo_beta=shampoo_beta,
          precondition_every=precondition_every,
          precondition_warmup=precondition_warmup,
          max_precond_dim=max_precond_dim,
          normalize_grads=normalize_grads,
          precond_dtype=precond_dtype,
          bjorck_steps=bjorck_steps,
          mu_dtype=mu_dtype,
          nu_dtype=nu_dtype,
          dimension_numbers=branch_dn,
          sharding=sharding,
      ),
  )
