"""AdaMuon: orthogonalized momentum with an elementwise second moment."""

from __future__ import annotations

import jax
import optax

from ortho_optax import checks as _checks
from ortho_optax import routing as _routing
from ortho_optax.optimizers import base as _base
from ortho_optax.parallel import sharding as _sharding
from ortho_optax.transforms import elementwise_norm as _elementwise_norm
from ortho_optax.transforms import momentum as _momentum


@_base.document_shared_args
def adamuon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    beta: jax.typing.ArrayLike = 0.95, eps: jax.typing.ArrayLike = 1e-8,
    nesterov: bool = True, sign: bool = False, rms: jax.typing.ArrayLike = 0.2,
    method: str = "auto", coeffs=None, steps: int | None = None,
    normalization: str | None = None, ns_eps: float | None = None,
    compute_dtype=None,
    update_rms: float | None = None,
    weight_decay: jax.typing.ArrayLike = 0.01,
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
  r"""AdaMuon: orthogonalized momentum with an elementwise second moment.

  For each hidden matrix :math:`W` of shape ``(m, n)``:

  .. math::
    M_t = \beta M_{t-1} + (1 - \beta) G_t, \quad
    O_t = \mathrm{polar}(S(\beta M_t + (1 - \beta) G_t)), \\
    v_t = \beta v_{t-1} + (1 - \beta)\, O_t \odot O_t, \quad
    \hat O_t = O_t \oslash (\sqrt{v_t} + \epsilon), \\
    W_t = W_{t-1} - \eta \Big(\frac{0.2 \sqrt{mn}}{\|\hat O_t\|_F
      + \epsilon} \hat O_t + \lambda W_{t-1}\Big).

  The second moment uses the momentum's :math:`\beta` (zero init, no bias
  correction), and the final update has RMS 0.2 (AdamW's), so no shape
  factor is applied. See :func:`scale_by_elementwise_norm`.

  Width: on AdamW's scale the best rate moves with the width as AdamW's
  does. On the examples' LM at widths 64, 128 and 256 (one seed,
  ``examples/results/transfer``) the best rate was 0.02, 0.01 and 0.005,
  and the rate chosen at 128 ended 0.016 and 0.020 nats/byte behind the
  best at 64 and 256; :func:`muon`'s best stayed 0.02 at all three. When
  widening a model, scale the rate by the inverse of the width.

  :math:`S` is the identity by default, as in the paper's first version
  (arXiv:2507.11005v1) and kozistr/pytorch_optimizer. ``sign=True`` makes it
  the elementwise sign (``optax.scale_by_sign``, taken *before* the
  orthogonalization), the "sign-stabilized" update of the paper's later
  versions and of the authors' code. Why it is off by default: on the LM
  example (``configs/lm.py``, 600 steps, learning rate 0.01, seed 0) the
  sign took AdaMuon's validation loss from 1.5272 to 1.7158 nats/byte with
  the default (Muon's) coefficients and from 1.5258 to 1.6909 with Polar
  Express's; without the second moment (Polar Express) from 1.5692 to
  1.5802. At small scale the sign discards the momentum's magnitudes,
  which the second moment then turns into a nearly elementwise-sign step.

  Settings that reproduce the reference step (Chongjie-Si/AdaMuon,
  ``gpt2/models/optimizers/adamuon.py``; float32):

  >>> import ortho_optax
  >>> lr = 0.02
  >>> tx = ortho_optax.adamuon(
  ...     lr, sign=True, method="newton_schulz", coeffs="muon",
  ...     normalization="frobenius", ns_eps=1e-7)

  Reference defaults: ``lr=0.02``, ``weight_decay=0.01``, ``beta=0.95``;
  its GPT-2 runs use one ``lr=6e-4`` and ``weight_decay=0.1`` for both
  AdaMuon and AdamW.

  Args:
    learning_rate: learning rate (or schedule) of the matrices, and of AdamW
      unless ``adam_learning_rate`` is given.
    beta: momentum coefficient, also the second moment's decay.
    eps: added to :math:`\sqrt{v}` and to the Frobenius norm.
    nesterov: Nesterov look-ahead.
    sign: orthogonalize the elementwise sign of the momentum (the
      reference's "sign-stabilized" step) instead of the momentum.
    rms: RMS of the update.
    **engine: the orthogonalization arguments of ``base.ENGINE_ARGS``.
    coeffs: Newton-Schulz coefficients; ``None`` for Muon's (``"muon"``).
      With ``sign=True``, ``"polar_express"`` (Schatten-4 normalized)
      trained better than Muon's (1.6905 vs 1.7158 nats/byte on the LM
      example, lr 0.01, seed 0); without the sign the two are alike
      (Polar Express 1.5258, Muon's 1.5272).
    **shared: the weight decay, AdamW, routing, state, sharding and
      skipping arguments of ``base.SHARED_ARGS``.
    nu_dtype: storage of AdamW's second moment and of AdaMuon's
      elementwise one: ``None``, a
      floating dtype, or a quantized format (kept in the unsigned code of
      its width, ``"q8"`` -> ``"u8"``).

  Returns:
    An ``optax.GradientTransformation``.

  References:
    Si et al., `AdaMuon: Adaptive Muon Optimizer
    <https://arxiv.org/abs/2507.11005>`_, 2025
  """
  shared = _base.shared_args(locals(), "adamuon")
  _checks.check_bool(sign, "sign")
  engine = _base.engine_args(locals(), "ns_eps")
  branch_dn = shared.branch_dimension_numbers
  return shared.chain(
      _momentum.scale_by_momentum(
          beta, nesterov=nesterov, form="ema", mu_dtype=mu_dtype
      ),
      *([optax.scale_by_sign()] if sign else []),
      shared.orthogonalization(engine),
      _elementwise_norm.scale_by_elementwise_norm(
          beta, eps, rms=rms, dimension_numbers=branch_dn, nu_dtype=nu_dtype
      ),
  )
