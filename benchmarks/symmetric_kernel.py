r"""A Pallas kernel for ``X X^H`` that computes one triangle of tiles, timed.

Issue 15 keeps the engines' plain-XLA triangle of row blocks
(:mod:`ortho_optax.engines.symmetric`) as the default until a kernel
measurably beats it on a device. This script is that measurement, ready
for a session that is lent a GPU or TPU. It compares three ways to form
``X X^T`` for ``(m, n)`` float32 or bfloat16 inputs:

* ``plain``: ``x @ x.T``;
* ``blocks``: the engines' triangle of row blocks
  (:func:`ortho_optax.engines.symmetric.hermitian_product`);
* ``pallas``: :func:`gram_upper`, a 3-D grid of ``(bm, bm)`` output tiles
  accumulated over ``bk``-wide slices of ``n``. Tiles below the diagonal
  compute nothing (``pl.when``). One elementwise pass then mirrors the upper
  triangle, ``where(block(i) <= block(j), C, C^T)``. The tiles read their
  operands straight from ``X`` (``BlockSpec``), so nothing is sliced or
  copied before the dots, which is where the XLA blocks lose on the CPU.

The tile products are ``(k + 1) / (2 k)`` of the plain product's FLOPs for
``k = m / bm`` row tiles (0.53 at ``k = 16``). On the CPU the kernel runs
in Pallas's interpreter, which checks correctness only (``--check``).

Usage::

  python benchmarks/symmetric_kernel.py --check        # any backend
  python benchmarks/symmetric_kernel.py [--dtype bfloat16] [--repeats N]
      [--shapes 1024x4096,2048x2048] [--out FILE]        # GPU/TPU
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from ortho_optax.engines import normalization as _normalization
from ortho_optax.engines import symmetric as _symmetric

SHAPES = ((1024, 4096), (2048, 2048), (4096, 4096), (4096, 16384))


def _upper_tiles_kernel(p_ref, q_ref, o_ref):
  """Accumulates the ``(i, j)`` tile of ``P Q^T`` over ``n``, for j >= i."""
  i, j, k = pl.program_id(0), pl.program_id(1), pl.program_id(2)

  @pl.when(j >= i)
  def _():
    @pl.when(k == 0)
    def _():
      o_ref[...] = jnp.zeros_like(o_ref)

    o_ref[...] += jax.lax.dot_general(
        p_ref[...], q_ref[...], (((1,), (1,)), ((), ())),
        preferred_element_type=jnp.float32,
    )


@functools.partial(jax.jit, static_argnames=("bm", "bk", "interpret"))
def gram_upper(x: jax.Array, bm: int = 128, bk: int = 128,
               interpret: bool = False) -> jax.Array:
  """``x @ x.T`` (float32) from the tiles on and above the diagonal.

  Args:
    x: ``(m, n)`` real array, ``m`` a multiple of ``bm`` and ``n`` of
      ``bk``.
    bm: rows (and columns) of an output tile.
    bk: width of the slices of ``n`` a tile accumulates over.
    interpret: run in Pallas's interpreter (the CPU's only mode).

  Returns:
    The ``(m, m)`` float32 Gram matrix.
  """
  m, n = x.shape
  if m % bm or n % bk:
    raise ValueError(
        f"`x` of shape {x.shape} must have rows divisible by bm={bm} and"
        f" columns divisible by bk={bk}."
    )
  upper = pl.pallas_call(
      _upper_tiles_kernel,
      grid=(m // bm, m // bm, n // bk),
      in_specs=[pl.BlockSpec((bm, bk), lambda i, j, k: (i, k)),
                pl.BlockSpec((bm, bk), lambda i, j, k: (j, k))],
      out_specs=pl.BlockSpec((bm, bm), lambda i, j, k: (i, j)),
      out_shape=jax.ShapeDtypeStruct((m, m), jnp.float32),
      interpret=interpret,
  )(x, x)
  # Tiles below the diagonal were never written; mirror the upper ones.
  tile = jnp.arange(m) // bm
  return jnp.where(tile[:, None] <= tile[None, :], upper, upper.T)


def tile_flops(m: int, n: int, bm: int) -> int:
  """FLOPs of the tile products :func:`gram_upper` computes."""
  k = m // bm
  return k * (k + 1) // 2 * 2 * bm * bm * n


def methods(dtype, bm: int, bk: int, interpret: bool) -> dict:
  """Name -> jitted ``x -> X X^T`` in float32."""

  def plain(x):
    return jnp.matmul(x, x.T, preferred_element_type=jnp.float32)

  def blocks(x):
    return _normalization.hermitian(x, x, dtype, keep_accumulator=True)

  return {
      "plain": jax.jit(plain),
      "blocks": jax.jit(blocks),
      "pallas": functools.partial(gram_upper, bm=bm, bk=bk,
                                  interpret=interpret),
  }


def check(bm: int = 32, bk: int = 32) -> float:
  """Largest relative difference to ``x @ x.T`` at small shapes, in the
  interpreter on any backend; raises if it exceeds float32 round-off."""
  worst = 0.0
  for m, n in ((64, 96), (96, 64), (128, 256)):
    x = jax.random.normal(jax.random.key(m + n), (m, n), jnp.float32)
    want = np.asarray(x, np.float64) @ np.asarray(x, np.float64).T
    got = np.asarray(gram_upper(x, bm=bm, bk=bk, interpret=True))
    err = float(np.abs(got - want).max() / np.abs(want).max())
    if not np.allclose(got, got.T, rtol=0, atol=0):
      raise AssertionError(f"{m}x{n}: the mirrored result is not symmetric")
    if err > 1e-5:
      raise AssertionError(f"{m}x{n}: relative error {err:.2e} > 1e-5")
    worst = max(worst, err)
  return worst


def benchmark(args, interpret: bool = False) -> str:
  """The table; ``interpret`` runs the kernel in the interpreter (tests)."""
  dtype = jnp.dtype(args.dtype)
  fns = methods(dtype, args.bm, args.bk, interpret=interpret)
  lines = [
      "| shape | method | tile GFLOP | ms | ms min-max | time x plain"
      " | TFLOP/s (plain FLOPs) | max rel. diff to plain |",
      "|---|---|---:|---:|---:|---:|---:|---:|",
  ]
  for m, n in args.shapes:
    x = jax.random.normal(jax.random.key(0), (m, n), jnp.float32).astype(dtype)
    ref = fns["plain"](x)
    outs = {k: f(x) for k, f in fns.items()}
    times = {k: [] for k in fns}
    for _ in range(args.repeats):
      for k, f in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(f(x))
        times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["plain"])
    for k in fns:
      med = statistics.median(times[k])
      flops = {
          "plain": 2 * m * m * n,
          "blocks": _symmetric.product_flops(m, n),
          "pallas": tile_flops(m, n, args.bm),
      }[k]
      diff = float(jnp.max(jnp.abs(outs[k] - ref)) / jnp.max(jnp.abs(ref)))
      lines.append(
          f"| {m}x{n} | {k} | {flops / 1e9:.1f} | {med * 1e3:.2f} |"
          f" {min(times[k]) * 1e3:.2f}-{max(times[k]) * 1e3:.2f} |"
          f" {med / base:.2f} | {2 * m * m * n / med / 1e12:.1f} |"
          f" {diff:.1e} |"
      )
    print(f"# {m}x{n} done", file=sys.stderr, flush=True)
  device = jax.devices()[0]
  return (
      f"`X X^T` three ways, {dtype.name} inputs accumulated in float32, on"
      f" {device.platform} ({device.device_kind}), jax {jax.__version__};"
      f" Pallas tiles {args.bm}x{args.bm}, slices of {args.bk}; median of"
      f" {args.repeats} interleaved runs. TFLOP/s counts the plain"
      " product's FLOPs, so the three rows compare as times do.\n\n"
      + "\n".join(lines) + "\n"
  )


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--check", action="store_true",
                 help="only check the kernel in the interpreter")
  p.add_argument("--dtype", default="float32",
                 choices=("float32", "bfloat16"))
  p.add_argument("--shapes", default=None,
                 help="comma-separated MxN shapes (default: "
                 + ",".join(f"{m}x{n}" for m, n in SHAPES) + ")")
  p.add_argument("--bm", type=int, default=128)
  p.add_argument("--bk", type=int, default=128)
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--out", default=None, help="also write the table here")
  args = p.parse_args(argv)
  args.shapes = SHAPES if args.shapes is None else tuple(
      tuple(int(d) for d in s.lower().split("x"))
      for s in args.shapes.split(",")
  )
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.check or jax.devices()[0].platform == "cpu":
    print(f"interpreter check passed: largest relative difference"
          f" {check():.1e}")
    return 0
  report = benchmark(args)
  print(report)
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      f.write(report)
  return 0


if __name__ == "__main__":
  sys.exit(main())
