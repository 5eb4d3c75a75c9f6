r"""Which unsigned code for Adam's second moment: a NumPy simulation.

Adam (:math:`\beta_1 = 0.9`, :math:`\beta_2 = 0.95`, the AdamW branch's
defaults here) runs 200 steps on a ``(256, 192)`` gradient stream with
rank-1 heterogeneous scales (row and column log-normal scales of spread
``sigma``, five outlier columns 30x, and now and then half the rows with a
zero gradient, like embedding rows of absent tokens). Its second moment
``v`` is kept quantized between steps (the first moment in float32, so
that only the code of ``v`` is compared), and the update
:math:`\hat m / (\sqrt{\hat v} + \epsilon)` is compared with the float32
run's: relative Frobenius error (mean of the last 100 steps and the
largest), and the median of :math:`|u_q / u|` (below 1: shrunken steps).

Candidates: the dynamic code without zero (``"u8"``/``"u4"``, Li et al.'s
DE-0), a linear code without zero :math:`c_i = (i + 1) / 2^b` (Li et al.'s
choice for ``v`` at 4 bits), the square of that code (a linear code of
:math:`\sqrt v`), each with blocks (up to 2048 / 128 entries along axis 0
of each column) or with Li et al.'s rank-1 normalization
(:math:`\min(\max_j |v_{ij}|, \max_i |v_{ij}|)`); and the dynamic code
with its zero, to show the zero-point problem.

Usage::

  python benchmarks/second_moment_codes.py [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import sys

# One OpenBLAS thread: its LAPACK calls (the QR of Dion and Dion2) otherwise
# spin against XLA's own threads, 10-100x slower or stalled, on a few cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ortho_optax.state import codes as codes_lib  # noqa: E402

M, N, STEPS = 256, 192, 200


def _nearest(y, values):
  mids = (values[:-1] + values[1:]) / 2
  return values[np.searchsorted(mids, y, side="right")]


def blockwise(values, block):
  def q(v):
    k = -(-v.shape[0] // block)
    length = -(-v.shape[0] // k)
    pad = np.zeros((k * length, v.shape[1]))
    pad[: v.shape[0]] = v
    b = pad.reshape(k, length, -1)
    s = b.max(axis=1, keepdims=True)
    y = np.where(s > 0, b / np.where(s > 0, s, 1), 0)
    return (_nearest(y, values) * s).reshape(k * length, -1)[: v.shape[0]]

  return q


def rank1(values):
  def q(v):
    s = np.minimum(v.max(axis=1, keepdims=True), v.max(axis=0, keepdims=True))
    y = np.where(s > 0, v / np.where(s > 0, s, 1), 0)
    return _nearest(y, values) * s

  return q


def run(quantize_v, sigma, seed=0, b1=0.9, b2=0.95, eps=1e-8):
  rng = np.random.default_rng(seed)
  rows = np.exp(rng.normal(0, sigma, (M, 1)))
  cols = np.exp(rng.normal(0, sigma, (1, N)))
  cols[0, :5] *= 30
  signal = 0.3 * rng.normal(size=(M, N))
  m, v, vq = np.zeros((M, N)), np.zeros((M, N)), np.zeros((M, N))
  errs, ratios = [], []
  for t in range(1, STEPS + 1):
    g = 1e-3 * rows * cols * (signal + rng.normal(size=(M, N)))
    if rng.random() < 0.1:
      g[rng.random(M) < 0.5] = 0
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    vq = quantize_v(b2 * vq + (1 - b2) * g * g)
    m_hat = m / (1 - b1**t)
    u = m_hat / (np.sqrt(v / (1 - b2**t)) + eps)
    uq = m_hat / (np.sqrt(vq / (1 - b2**t)) + eps)
    errs.append(np.linalg.norm(uq - u) / np.linalg.norm(u))
    nz = np.abs(u) > 0
    ratios.append(np.median(np.abs(uq[nz]) / np.abs(u[nz])))
  return np.mean(errs[-100:]), np.max(errs), np.mean(ratios[-100:])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  lines = [
      "| bits | code of v | normalization | sigma | rel. err (last 100)"
      " | max rel. err | median abs(u_q / u) |",
      "|---|---|---|---|---|---|---|",
  ]
  for bits, block in ((8, 2048), (4, 128)):
    de0 = codes_lib.CODES[f"u{bits}"].values.astype(np.float64)
    de = codes_lib.dynamic_exponent(bits, signed=False).astype(np.float64)
    linear = np.arange(1, 2**bits + 1) / 2**bits
    cands = [
        ("dynamic, no zero (u%d)" % bits, "blocks", blockwise(de0, block)),
        ("dynamic, no zero", "rank-1", rank1(de0)),
        ("linear, no zero", "blocks", blockwise(linear, block)),
        ("linear, no zero", "rank-1", rank1(linear)),
        ("linear of sqrt v", "blocks", blockwise(linear**2, block)),
        ("dynamic with zero", "blocks", blockwise(de, block)),
    ]
    for sigma in (0.3, 1.0):
      for name, norm, fn in cands:
        mean, worst, ratio = run(fn, sigma)
        line = (
            f"| {bits} | {name} | {norm} | {sigma} | {mean:.4f} |"
            f" {worst:.3g} | {ratio:.3f} |"
        )
        print(line, flush=True)
        lines.append(line)
  if args.out:
    with open(args.out, "w") as f:
      f.write(__doc__.split("Usage::")[0].strip() + "\n\n")
      f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
