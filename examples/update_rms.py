"""The scale of each named optimizer's step: update RMS at learning rate 1.

One step from a fresh state on a Gaussian gradient (standard normal
entries, seed 0) with zero parameters, at ``learning_rate=1`` and every
other argument at its default, on three hidden matrices of a GPT-like block
of width 256: attention ``(256, 256)``, MLP in ``(256, 1024)`` and MLP out
``(1024, 256)``. The RMS of a matrix's update is
:math:`\\|U\\|_F / \\sqrt{mn}`, the step size per unit learning rate; AdamW's
first step has RMS 1 (every entry :math:`\\pm 1`), and Moonlight's rule
scales Muon's to 0.2 so that AdamW's learning rate carries over.

``docs/optimizers.rst`` holds this script's table between the lines
``.. update-rms-table-start`` and ``.. update-rms-table-end``;
``tests/test_update_rms.py`` checks that it matches the measurement.

Run: ``python -m examples.update_rms`` (prints the table; about a
minute on 2 CPU cores, compilation included).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ortho_optax

NAMED = (
    "muon",
    "turbo_muon",
    "normuon",
    "adamuon",
    "root",
    "auon",
    "hybrid_auon",
    "scion",
    "trust_region",
    "dion",
    "dion2",
    "trion",
    "shampoo",
    "soap",
)
# SOAP's first step only computes its eigenbases (a zero update, as in the
# authors' soap.py): its row is its second step on the same gradient.
SECOND_STEP = ("soap",)
SHAPES = {"attn": (256, 256), "fc": (256, 1024), "proj": (1024, 256)}


def gaussian_grads(seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {
      "block": {
          k: {"kernel": jnp.asarray(rng.standard_normal(s), jnp.float32)}
          for k, s in SHAPES.items()
      }
  }


def update_rms(
    tx: optax.GradientTransformation, grads, steps: int = 1
) -> dict:
  """``{leaf name: RMS}`` of ``tx``'s ``steps``-th update of ``grads`` (the
  same gradient every step, parameters left at zero)."""
  params = jax.tree.map(jnp.zeros_like, grads)
  state = tx.init(params)
  for _ in range(steps):
    updates, state = jax.jit(tx.update)(grads, state, params)
  return {
      k: float(jnp.sqrt(jnp.mean(jnp.square(v["kernel"]))))
      for k, v in updates["block"].items()
  }


def steps_of(name: str) -> int:
  """Which step of ``name`` the table measures (see :data:`SECOND_STEP`)."""
  return 2 if name in SECOND_STEP else 1


def measure(names=NAMED, seed: int = 0) -> dict:
  """``{optimizer: {leaf: RMS}}``, AdamW's (``optax.adamw``) included."""
  grads = gaussian_grads(seed)
  rows = {"adamw": update_rms(optax.adamw(1.0), grads)}
  for name in names:
    rows[name] = update_rms(
        getattr(ortho_optax, name)(1.0), grads, steps_of(name)
    )
  return rows


def table(rows: dict) -> str:
  """The reST table of ``docs/optimizers.rst``."""
  head = ["optimizer"] + [f"{k} {m}x{n}" for k, (m, n) in SHAPES.items()]
  body = [
      [f":func:`{n}`" if n != "adamw" else "``optax.adamw``"]
      + [f"{r[k]:#.4g}" for k in SHAPES]
      for n, r in rows.items()
  ]
  widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
  rule = "  ".join("=" * w for w in widths)
  fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
  lines = [rule, fmt(head), rule] + [fmt(b) for b in body] + [rule]
  return "\n".join(line.rstrip() for line in lines)


def parse_table(text: str) -> dict:
  """``{optimizer: {leaf: RMS}}`` from :func:`table`'s output."""
  rows = {}
  for line in text.splitlines():
    cells = line.split()
    if not cells or cells[0].startswith(("=", "optimizer")):
      continue
    name = re.sub(r":func:|`", "", cells[0])
    name = "adamw" if name == "optax.adamw" else name
    rows[name] = dict(zip(SHAPES, map(float, cells[1:])))
  return rows


if __name__ == "__main__":
  print(table(measure()))
