r"""Quantization code books, as data: the value each code stands for.

* ``"q8"``: bitsandbytes' signed dynamic code (Dettmers et al.), for momenta
  and Adam's first moment; blocks of 2048.
* ``"q4"``: its 4-bit version, Li et al.'s "DE" code for the first moment;
  blocks of 128.
* ``"n4"``: the 4-bit NormalFloat code of QLoRA (Dettmers et al. 2023),
  quantiles of a normal distribution: for a momentum whose blocks look
  Gaussian it errs less than ``"q4"`` (relative RMS error 0.096 against
  0.148 on Gaussian blocks of 128; 0.129 against 0.175 for Student-t(4)),
  because its values are densest where most entries are; QLoRA's blocks
  of 64 (0.092 there): 0.56 bytes an entry, 0.14x float32.
* ``"u8"`` / ``"u4"``: the unsigned dynamic code without its zero (Li et
  al.'s "DE-0"), for Adam's second moment.

Why DE-0 for the second moment, rather than Li et al.'s final choice (a
linear code without zero, :math:`(i + 1) / 2^b`, with rank-1
normalization) or a linear code of :math:`\sqrt v`: in a simulated Adam
run (``benchmarks/second_moment_codes.py``, results in
``benchmarks/results/second_moment_codes.md``) whose gradient scales
spread over rows and columns (log-normal, sigma 1), the update's relative
error was 0.069 (8-bit) and 0.39 (4-bit) with DE-0 blocks, against 0.45
and 0.75 for the linear code with rank-1 normalization (its floor
:math:`1/2^b` of the block maximum shrinks the steps of small entries: the
median :math:`|u_q / u|` was 0.74 and 0.19) and 0.15 and 0.43 for the
:math:`\sqrt v` code. With milder spread (sigma 0.3) the :math:`\sqrt v`
code was better (0.010 and 0.12 vs 0.016 and 0.17), but DE-0 was never
far from the best, and rank-1 normalization did not help it (0.066 and
0.46). A code with a zero point blew the update up (largest relative error
820 and 8.7e5).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Code:
  """A code book: ``2**bits`` sorted values in ``[-1, 1]`` (or ``(0, 1]``).

  A block of a quantized array stores, for each entry ``x``, the index of
  the value nearest to ``x / s``, where ``s`` is the block's largest
  ``|x|``; it is read back as ``values[index] * s``.

  Attributes:
    name: the format name (``"q8"``, ``"q4"``, ``"n4"``, ``"u8"``, ``"u4"``).
    bits: bits per code (8 or 4).
    signed: whether the values cover ``[-1, 1]`` (momenta) or ``(0, 1]``
      (a second moment).
    values: the sorted code values, float32, ``2**bits`` of them.
    block_size: the default (largest) block length, from the paper.
    source: where the format comes from.
  """

  name: str
  bits: int
  signed: bool
  values: np.ndarray
  block_size: int
  source: str

  @property
  def max_error(self) -> float:
    """Largest round-to-nearest error, relative to the block's ``max|x|``.

    Half the widest gap between neighbouring values, or the distance from
    an end of the input range (``-1`` or ``0``, and ``1``) to the nearest
    value, whichever is larger.
    """
    v = self.values.astype(np.float64)
    lo = -1.0 if self.signed else 0.0
    return float(
        max(np.max(np.diff(v)) / 2, v[0] - lo, 1.0 - v[-1])
    )


def dynamic_exponent(bits: int, signed: bool) -> np.ndarray:
  r"""The dynamic (exponent) code of Dettmers (2016) as bitsandbytes builds it.

  With :math:`E = \text{bits} - 1` decades :math:`i = 0, \dots, E - 1`,
  decade :math:`i` holds the midpoints of :math:`n_i + 1` equally spaced
  points of :math:`[0.1, 1]`, times :math:`10^{i - E + 1}`: a finer linear
  grid in each larger decade, so that small values keep a relative
  precision. :math:`n_i = 2^i` values of each sign (signed codes) or
  :math:`n_i = 2^{i + 1}` (unsigned). Then 0 and 1 complete the
  :math:`2^{\text{bits}}` values. Signed codes therefore reach 1 but not
  -1: the most negative value is :math:`-(1 - 0.45 / 2^{E - 1})`
  (-0.99296875 for 8 bits, -0.8875 for 4 bits).

  This is bitsandbytes' ``create_dynamic_map(signed, bits - 1, bits)``
  for 8 bits (``create_dynamic_map(False, 7, 8)`` unsigned) and the
  4-bit paper's "DE" map (``create_dynamic_map(signed, 3, 4)`` signed,
  ``(False, 3, 3)`` unsigned).

  Args:
    bits: bits per code.
    signed: signed (both signs) or unsigned (non-negative) code.

  Returns:
    The ``2**bits`` sorted values, float32 (computed in float64).
  """
  e = bits - 1
  parts = [np.array([0.0, 1.0])]
  for i in range(e):
    n = 2**i if signed else 2 ** (i + 1)
    edges = np.linspace(0.1, 1.0, n + 1)
    mids = 10.0 ** (i - e + 1) * (edges[:-1] + edges[1:]) / 2
    parts.append(mids)
    if signed:
      parts.append(-mids)
  values = np.sort(np.concatenate(parts).astype(np.float64))
  assert values.size == 2**bits, values.size
  return values.astype(np.float32)


def without_zero(values: np.ndarray) -> np.ndarray:
  """An unsigned code with its 0 replaced by the smallest positive value.

  Li et al.'s "DE-0": a second moment ``v`` that rounds to 0 turns
  ``m / (sqrt(v) + eps)`` into ``m / eps``, the zero-point problem; without
  a zero value every ``v`` is read back as at least the smallest code times
  its block's ``max v``, which can only shrink that entry's step.
  """
  out = np.array(values, np.float32)
  assert out[0] == 0.0 and out[1] > 0.0
  out[0] = out[1]
  return out


def normal_float(bits: int = 4, offset: float = 0.9677083) -> np.ndarray:
  r"""QLoRA's NormalFloat code: normal quantiles, with an exact zero.

  :math:`2^{b-1}` positive values :math:`\Phi^{-1}(p_i)`, :math:`p_i`
  equally spaced from ``offset`` down to 1/2 (the last, 1/2, dropped),
  :math:`2^{b-1} - 1` negative ones from :math:`2^{b-1}` points the same
  way, and 0; divided by the largest, so that both 1 and -1 are values.
  ``offset`` is QLoRA's (the midpoint of the two outermost quantiles
  :math:`1 - 1/(2 \cdot 15)` and :math:`1 - 1/(2 \cdot 16)`).

  Computed with :func:`math.erf`'s inverse by bisection (no SciPy at run
  time); ``tests/test_quantize.py`` checks it against
  ``scipy.stats.norm.ppf`` and QLoRA's published table.
  """
  half = 2 ** (bits - 1)
  pos = [_normal_ppf(p) for p in np.linspace(offset, 0.5, half + 1)[:-1]]
  neg = [-_normal_ppf(p) for p in np.linspace(offset, 0.5, half)[:-1]]
  values = np.sort(np.asarray(pos + [0.0] + neg, np.float64))
  values /= np.max(np.abs(values))
  assert values.size == 2**bits, values.size
  return values.astype(np.float32)


def _normal_ppf(p: float) -> float:
  """The standard normal quantile of ``p`` in (0, 1), to float64 accuracy."""
  lo, hi = -40.0, 40.0
  for _ in range(200):
    mid = (lo + hi) / 2
    if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
      lo = mid
    else:
      hi = mid
  return (lo + hi) / 2


_BNB = (
    "Dettmers et al., 8-bit Optimizers via Block-wise Quantization, ICLR"
    " 2022 (arXiv 2110.02861): dynamic code, blocks of 2048"
)
_LI = (
    "Li et al., Memory Efficient Optimizers with 4-bit States, NeurIPS 2023"
    " (arXiv 2309.01507): blocks of 128"
)

_QLORA = (
    "Dettmers et al., QLoRA: Efficient Finetuning of Quantized LLMs, NeurIPS"
    " 2023 (arXiv 2305.14314): NormalFloat (NF4), blocks of 64"
)

CODES = {
    "q8": Code(
        "q8", 8, True, dynamic_exponent(8, True), 2048, _BNB + ", signed"
    ),
    "q4": Code(
        "q4", 4, True, dynamic_exponent(4, True), 128, _LI + ", DE (m)"
    ),
    "n4": Code("n4", 4, True, normal_float(4), 64, _QLORA),
    "u8": Code(
        "u8",
        8,
        False,
        without_zero(dynamic_exponent(8, False)),
        2048,
        _BNB + ", unsigned, with Li et al.'s zero point removed (DE-0)",
    ),
    "u4": Code(
        "u4",
        4,
        False,
        without_zero(dynamic_exponent(4, False)),
        128,
        _LI + ", DE-0 (v)",
    ),
}
