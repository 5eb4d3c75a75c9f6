"""Matmul FLOPs counted from a traced program (loops times their trip counts).

XLA's ``compiled.cost_analysis()`` counts the body of a ``scan``/``while``
once, whatever its trip count, so it under-counts an iterative method. This
module walks the jaxpr instead: every ``dot_general`` contributes
``2 * batch * m * n * k`` FLOPs (times 4 for complex operands), multiplied by
the trip count of each enclosing ``scan``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core


def count_matmul_flops(fn: Callable[..., Any], *args, **kwargs) -> int:
  """Matmul FLOPs of ``fn(*args, **kwargs)``, counted from its jaxpr.

  ``dot_general`` FLOPs are summed over the whole program; the body of a
  ``lax.scan`` (and of ``fori_loop`` with static bounds, which lowers to
  one) counts ``length`` times, and a ``lax.cond`` counts its most expensive
  branch. A ``while_loop`` with a data-dependent trip count cannot be
  counted and raises ``ValueError``.

  Args:
    fn: the function to trace.
    *args: its arguments (arrays or ``jax.ShapeDtypeStruct`` objects).
    **kwargs: its keyword arguments.

  Returns:
    The FLOP count, a Python int.
  """
  if not callable(fn):
    raise TypeError(f"`fn` must be callable, got {fn!r}.")
  closed = jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args)
  return _jaxpr_flops(closed.jaxpr)


def _dot_flops(eqn) -> int:
  lhs, rhs = (v.aval for v in eqn.invars[:2])
  (lc, rc), (lb, _) = eqn.params["dimension_numbers"]
  batch = math.prod(lhs.shape[d] for d in lb)
  contract = math.prod(lhs.shape[d] for d in lc)
  lfree = math.prod(
      s for d, s in enumerate(lhs.shape) if d not in lc and d not in lb
  )
  rb = eqn.params["dimension_numbers"][1][1]
  rfree = math.prod(
      s for d, s in enumerate(rhs.shape) if d not in rc and d not in rb
  )
  flops = 2 * batch * contract * lfree * rfree
  if jnp.iscomplexobj(jnp.zeros((), lhs.dtype)) or jnp.iscomplexobj(
      jnp.zeros((), rhs.dtype)
  ):
    flops *= 4
  return flops


def _sub_jaxprs(params) -> list:
  subs = []
  for v in params.values():
    for item in v if isinstance(v, (tuple, list)) else (v,):
      if isinstance(item, jex_core.ClosedJaxpr):
        subs.append(item.jaxpr)
      elif isinstance(item, jex_core.Jaxpr):
        subs.append(item)
  return subs


def _jaxpr_flops(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "scan":
      total += eqn.params["length"] * _jaxpr_flops(eqn.params["jaxpr"].jaxpr)
    elif name == "cond":
      total += max(_jaxpr_flops(b.jaxpr) for b in eqn.params["branches"])
    elif name == "while":
      body = _jaxpr_flops(eqn.params["body_jaxpr"].jaxpr)
      cond = _jaxpr_flops(eqn.params["cond_jaxpr"].jaxpr)
      if body or cond:
        raise ValueError(
            "count_matmul_flops: a while_loop containing matmuls has no static"
            " trip count; use lax.scan or fori_loop with static bounds."
        )
    else:
      total += sum(_jaxpr_flops(j) for j in _sub_jaxprs(eqn.params))
  return total
