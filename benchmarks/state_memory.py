"""Optimizer-state bytes of every named optimizer, float32 and quantized.

For each optimizer of ``benchmarks/step.py`` on its full GPT-like tree (12
blocks, width 768, vocabulary 8192), the bytes of ``tx.init(params)``
counted from ``jax.eval_shape`` (nothing is allocated or timed), with the
state in float32 and with ``mu_dtype = nu_dtype`` = each quantized format,
and each format's ratio to float32. A second table gives ``shampoo`` and
``soap``'s preconditioner state (statistics and roots or eigenbases) in
float32 and with ``precond_dtype`` q8 / q4 (eigenvectors as block codes;
Shampoo's eigenvalues in float32, SOAP's statistics in their bases as a
float32 diagonal and 8-bit off-diagonals), each format's ratio to the same
optimizer's float32
preconditioner state, and the whole state's. Run from the repository root::

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


# The preconditioner fields of each second-order optimizer's matrix state.
PRECOND_FIELDS = {
    "shampoo": ("left", "right", "root_left", "root_right"),
    "soap": ("left", "right", "q_left", "q_right"),
}


def _nbytes(tree) -> int:
  return sum(
      math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
      for x in jax.tree.leaves(tree)
  )


def _matrix_state(state, fields):
  """The named fields of the (one) second-order state inside ``state``."""
  found = []

  def visit(node):
    if all(hasattr(node, f) for f in fields) and hasattr(node, "_fields"):
      found.append(node)
      return
    if isinstance(node, (tuple, list)):
      for child in node:
        visit(child)
    elif isinstance(node, dict):
      for child in node.values():
        visit(child)
    elif hasattr(node, "_fields"):
      for child in node:
        visit(child)
    elif hasattr(node, "inner_states"):
      visit(node.inner_states)
    elif hasattr(node, "inner_state"):
      visit(node.inner_state)

  visit(state)
  (node,) = found
  return [getattr(node, f) for f in fields]


def second_order_rows(params, formats=("q8", "q4")) -> list[str]:
  """Rows of the second-order table (module docstring)."""
  lines = [
      "| optimizer | precond f32 MiB |" + "".join(
          f" precond {f} MiB | {f} / f32 (precond) | {f} / f32 (state) |"
          for f in formats
      ),
      "|---|---:|" + "---:|---:|---:|" * len(formats),
  ]
  for name, fields in PRECOND_FIELDS.items():
    factory = getattr(ortho_optax, name)
    state = jax.eval_shape(factory(0.003).init, params)
    f32 = _nbytes(_matrix_state(state, fields))
    total = _nbytes(state)
    row = f"| {name} | {f32 / 2**20:.1f} |"
    for f in formats:
      q_state = jax.eval_shape(factory(0.003, precond_dtype=f).init, params)
      q = _nbytes(_matrix_state(q_state, fields))
      row += (
          f" {q / 2**20:.1f} | {q / f32:.3f} |"
          f" {_nbytes(q_state) / total:.3f} |"
      )
    lines.append(row)
  return lines


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
  print(
      "\nSecond-order preconditioner state (statistics and roots or"
      " eigenbases; `precond_dtype` = the format, momenta float32):\n"
  )
  for line in second_order_rows(params):
    print(line, flush=True)


if __name__ == "__main__":
  main()
