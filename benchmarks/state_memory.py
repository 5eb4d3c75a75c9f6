"""Optimizer-state bytes of every named optimizer, float32 and quantized.

For each optimizer of ``benchmarks/step.py`` on its full GPT-like tree (12
blocks, width 768, vocabulary 8192), the bytes of ``tx.init(params)``
counted from ``jax.eval_shape`` (nothing is allocated or timed), with the
state in float32 and with ``mu_dtype = nu_dtype`` = each quantized format,
and each format's ratio to float32. Run from the repository root::

  python benchmarks/state_memory.py [--formats q8,q4,n4]
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import step  # noqa: E402

import ortho_optax  # noqa: E402


def state_bytes(tx, params) -> int:
  state = jax.eval_shape(tx.init, params)
  return sum(
      math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
      for x in jax.tree.leaves(state)
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--formats", default="q8,q4,n4")
  args = parser.parse_args()
  formats = [f for f in args.formats.split(",") if f]
  shapes = step.gpt_shapes(12, 768, 8192)
  params = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s, jnp.float32), shapes,
      is_leaf=step._is_shape,
  )
  n = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  print(
      f"GPT-like tree: 12 blocks, width 768, vocabulary 8192 ({n / 1e6:.1f} M"
      " float32 parameters). State bytes from `jax.eval_shape(tx.init,"
      " params)` (`mu_dtype = nu_dtype` = the format).\n"
  )
  head = "| optimizer | f32 MiB |" + "".join(
      f" {f} MiB | {f} / f32 |" for f in formats
  )
  print(head)
  print("|---|---:|" + "---:|---:|" * len(formats))
  for name in step.NAMED:
    lr = 2**-6 if name == "scion" else 0.02
    f32 = state_bytes(getattr(ortho_optax, name)(lr), params)
    row = f"| {name} | {f32 / 2**20:.1f} |"
    for f in formats:
      b = state_bytes(
          getattr(ortho_optax, name)(lr, mu_dtype=f, nu_dtype=f), params
      )
      row += f" {b / 2**20:.1f} | {b / f32:.3f} |"
    print(row, flush=True)


if __name__ == "__main__":
  main()
