"""Matmul FLOPs of the low-rank optimizers' step against Muon's, by width.

One block of the GPT-like tree of ``benchmarks/step.py`` (attention ``q``,
``k``, ``v``, ``o`` of ``(d, d)``, MLP ``(d, 4d)`` and ``(4d, d)``), counted
from the jaxpr with :func:`ortho_optax.count_matmul_flops` (no timing), for
each optimizer at its default rank rule (``rank=None``) and at the old
default (a quarter). The ratio is Muon's FLOPs over the method's: above 1
the method saves compute. The embedding and head go to AdamW in every
optimizer, so one block gives the tree's ratio.

Run: ``python benchmarks/rank_flops.py [--widths 128 256 512 768]``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import ortho_optax

OPTIMIZERS = ("dion", "dion2", "trion")


def block(width: int) -> dict:
  d = width
  shapes = {k: (d, d) for k in ("q", "k", "v", "o")}
  shapes |= {"fc": (d, 4 * d), "proj": (4 * d, d)}
  return {
      "block": {
          k: {"kernel": jax.ShapeDtypeStruct(s, jnp.float32)}
          for k, s in shapes.items()
      }
  }


def step_flops(tx, params) -> int:
  state = jax.eval_shape(tx.init, params)
  return ortho_optax.count_matmul_flops(tx.update, params, state, params)


def table(widths) -> str:
  head = "| width | muon GFLOP |" + "".join(
      f" {n} (default) | {n} (1/4) |" for n in OPTIMIZERS
  )
  lines = [head, "|" + "---|" * (2 + 2 * len(OPTIMIZERS))]
  for w in widths:
    params = block(w)
    muon = step_flops(ortho_optax.muon(0.02), params)
    row = f"| {w} | {muon / 1e9:.3f} |"
    for n in OPTIMIZERS:
      make = getattr(ortho_optax, n)
      for rank in (None, 0.25):
        flops = step_flops(make(0.02, rank=rank), params)
        row += f" {muon / flops:.2f}x |"
    lines.append(row)
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--widths", type=int, nargs="+", default=[128, 256, 384, 512, 768, 1024]
  )
  args = parser.parse_args(argv)
  print("Muon's matmul FLOPs over each method's (above 1: it saves compute)")
  print(table(args.widths))


if __name__ == "__main__":
  main()
