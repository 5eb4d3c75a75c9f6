"""Bytes moved by collectives, read from a compiled program's HLO text.

A measuring tool for the sharding strategies (tests and benchmarks), not
part of any optimizer: ``jax.jit(f).lower(*args).compile().as_text()`` is
the per-device program after SPMD partitioning, so its array shapes are the
shards one device holds.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# Collective opcodes; "-start"/"-done" are the asynchronous halves.
COLLECTIVES = (
    "all-to-all",
    "ragged-all-to-all",
    "all-gather",
    "all-reduce",
    "reduce-scatter",
    "collective-permute",
    "collective-broadcast",
)

_BYTES = {
    "pred": 1,
    "s4": 1,
    "u4": 1,
    "s8": 1,
    "u8": 1,
    "f8e4m3fn": 1,
    "f8e5m2": 1,
    "f8e4m3": 1,
    "f8e4m3b11fnuz": 1,
    "f8e4m3fnuz": 1,
    "f8e5m2fnuz": 1,
    "bf16": 2,
    "f16": 2,
    "s16": 2,
    "u16": 2,
    "f32": 4,
    "s32": 4,
    "u32": 4,
    "f64": 8,
    "s64": 8,
    "u64": 8,
    "c64": 8,
    "c128": 16,
}

_ARRAY = re.compile(r"([a-z][a-z0-9]*)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%([^\s(]+)\s*\(")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([^\s=]+)\s*=\s*(.*)$")
_CALLEE = re.compile(
    r"\b(?:calls|body|condition|to_apply|true_computation|"
    r"false_computation)=%([^\s,)}]+)"
)
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


class CollectiveStats(NamedTuple):
  """What :func:`collective_bytes` counted.

  Attributes:
    total: bytes, summed over every collective instruction of
      (operand bytes + result bytes), times the trip count of the loops
      around it.
    by_op: the same per opcode (``"-start"``/``"-done"`` folded in).
    count: number of collective instructions executed per opcode (loop
      bodies times their trip count).
    static_total: ``total`` with every instruction counted once (loops
      ignored, as ``cost_analysis()`` does).
    unknown_trip_counts: number of while loops without a known trip count
      (counted once).
  """

  total: int
  by_op: dict
  # Hides the tuple's count method (type checkers flag it); public.
  count: dict  # type: ignore[assignment]
  static_total: int
  unknown_trip_counts: int


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape string (arrays, tuples; layouts ignored)."""
  total = 0
  for dtype, dims in _ARRAY.findall(re.sub(r"\{[^}]*\}", "", shape)):
    if dtype not in _BYTES:
      continue  # token[], opaque
    n = 1
    for d in dims.split(","):
      if d:
        n *= int(d)
    total += n * _BYTES[dtype]
  return total


def _matching(s: str, start: int) -> int:
  """Index just past the bracket that closes ``s[start]``."""
  depth = 0
  for i in range(start, len(s)):
    if s[i] in "([{":
      depth += 1
    elif s[i] in ")]}":
      depth -= 1
      if depth == 0:
        return i + 1
  return len(s)


def _check_text(hlo_text) -> None:
  if not isinstance(hlo_text, str):
    raise TypeError(
        "`hlo_text` must be the text of a compiled program"
        " (`jax.jit(f).lower(*args).compile().as_text()`), got"
        f" {type(hlo_text).__name__}."
    )


def _parse(text: str):
  """Computations: name -> list of (name, shape, opcode, operands, attrs)."""
  text = re.sub(r"/\*.*?\*/", "", text)
  comps: dict[str, list] = {}
  entry = None
  current = None
  for line in text.splitlines():
    header = _HEADER.match(line)
    if header and line.rstrip().endswith("{"):
      current = header.group(2)
      comps[current] = []
      if header.group(1):
        entry = current
      continue
    if current is None:
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    name, rest = m.group(1), m.group(2)
    if rest.startswith("("):
      end = _matching(rest, 0)
      shape, rest = rest[:end], rest[end:].lstrip()
    else:
      shape, _, rest = rest.partition(" ")
    op_match = re.match(r"([a-z][a-z0-9\-_.]*)\(", rest)
    if not op_match:
      continue
    opcode = op_match.group(1)
    end = _matching(rest, op_match.end() - 1)
    operands = re.findall(r"%([^\s,)]+)", rest[op_match.end() : end - 1])
    attrs = rest[end:]
    comps[current].append((name, shape, opcode, operands, attrs))
  return comps, entry


def _shapes(comps) -> dict[str, str]:
  return {
      name: shape
      for instrs in comps.values()
      for name, shape, *_ in instrs
  }


def _multiplicities(comps, entry) -> tuple[dict[str, int], int]:
  """How many times each computation runs per call of the entry."""
  if entry is None:
    raise ValueError("No ENTRY computation in the HLO text.")
  mult: dict[str, int] = {}
  unknown = 0

  def visit(comp: str, times: int):
    nonlocal unknown
    mult[comp] = mult.get(comp, 0) + times
    for _, _, opcode, _, attrs in comps.get(comp, ()):
      callees = _CALLEE.findall(attrs)
      for group in _BRANCHES.findall(attrs):
        callees += re.findall(r"%([^\s,}]+)", group)
      factor = 1
      if opcode == "while":
        trip = _TRIP.search(attrs)
        if trip:
          factor = int(trip.group(1))
        else:
          unknown += 1
      for callee in callees:
        if callee in comps:
          visit(callee, times * factor)

  visit(entry, 1)
  return mult, unknown


def _dims(shape: str) -> list[int]:
  m = _ARRAY.search(shape)
  if not m:
    return []
  return [int(d) for d in m.group(2).split(",") if d]


def matmul_flops(hlo_text: str) -> int:
  """Matmul FLOPs that one device runs, loops counted by their trip counts.

  Sums ``2 * prod(result dims) * prod(contracted dims)`` over every
  ``dot`` of the per-device compiled program (fusion bodies included),
  each times the trip counts of the loops around it. Unlike
  ``cost_analysis()["flops"]``, which counts a loop body once, this
  counts a 5-step Newton-Schulz ``scan`` 5 times; unlike it, it ignores
  elementwise work. Real dots only (complex ones count as real).

  Args:
    hlo_text: ``jax.jit(f).lower(*args).compile().as_text()``.

  Returns:
    The FLOP count.
  """
  _check_text(hlo_text)
  comps, entry = _parse(hlo_text)
  shapes = _shapes(comps)
  mult, _ = _multiplicities(comps, entry)
  total = 0
  for comp, instrs in comps.items():
    times = mult.get(comp, 0)
    for _, shape, opcode, operands, attrs in instrs:
      if opcode != "dot" or not times or not operands:
        continue
      contracting = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", attrs)
      lhs = _dims(shapes.get(operands[0], ""))
      k = 1
      if contracting:
        for d in contracting.group(1).split(","):
          if d:
            k *= lhs[int(d)]
      out = 1
      for d in _dims(shape):
        out *= d
      total += 2 * out * k * times
  return total


def collective_bytes(hlo_text: str) -> CollectiveStats:
  """Bytes that one device sends and receives through collectives.

  Counts, in the per-device HLO of a compiled program (``as_text()`` of a
  ``jax.stages.Compiled``), every ``all-to-all``, ``all-gather``,
  ``all-reduce``, ``reduce-scatter``, ``collective-permute`` (and their
  ``-start``/``-done`` forms): the bytes of its operands plus the bytes of
  its result, shapes being per-device shards. For the asynchronous forms the
  operands are taken from ``-start`` and the result from ``-done``. An
  instruction inside a ``while`` body counts its loop's
  ``known_trip_count`` times (nested loops multiply); a body whose trip
  count XLA does not know counts once. Conditional branches count once
  each (an upper bound).

  So a reshard that moves a shard of ``S`` bytes by all-to-all counts
  ``2 S``; an all-gather of ``S`` to ``W S`` counts ``(W + 1) S``; an
  all-reduce of ``S`` counts ``2 S``. These are the bytes through the
  collectives' buffers, not wire bytes (an all-reduce sends about
  ``2 (W - 1) / W S``), but they rank programs the same way.

  Args:
    hlo_text: ``jax.jit(f).lower(*args).compile().as_text()``.

  Returns:
    A :class:`CollectiveStats`.
  """
  _check_text(hlo_text)
  comps, entry = _parse(hlo_text)
  shapes = _shapes(comps)
  mult, unknown = _multiplicities(comps, entry)

  by_op: dict[str, int] = {}
  count: dict[str, int] = {}
  total = static = 0
  for comp, instrs in comps.items():
    times = mult.get(comp, 0)
    if not times:
      continue
    for _, shape, opcode, operands, _ in instrs:
      base = opcode.removesuffix("-start").removesuffix("-done")
      if base not in COLLECTIVES:
        continue
      nbytes = 0
      if not opcode.endswith("-done"):
        nbytes += sum(shape_bytes(shapes.get(o, "")) for o in operands)
      if not opcode.endswith("-start"):
        nbytes += shape_bytes(shape)
      total += nbytes * times
      static += nbytes
      by_op[base] = by_op.get(base, 0) + nbytes * times
      if not opcode.endswith("-done"):
        count[base] = count.get(base, 0) + times
  return CollectiveStats(total, by_op, count, static, unknown)


def custom_calls(hlo_text: str) -> dict[tuple[str, str], int]:
  """How many times one device runs each custom call (LAPACK, cuSOLVER).

  The work XLA hands to a library (``eigh``, ``qr`` and ``svd`` kernels)
  is not a ``dot``, so :func:`matmul_flops` does not see it. This counts,
  in the per-device program, every ``custom-call`` instruction by its
  ``custom_call_target`` and the shape of its first operand (a shard's
  shape), times the trip counts of the loops around it (conditional
  branches count once each, as in :func:`collective_bytes`).

  Args:
    hlo_text: ``jax.jit(f).lower(*args).compile().as_text()``.

  Returns:
    ``{(target, operand shape): count}``, e.g.
    ``{("lapack_ssyevd_ffi", "f32[128,128]"): 3}``.
  """
  _check_text(hlo_text)
  comps, entry = _parse(hlo_text)
  shapes = _shapes(comps)
  mult, _ = _multiplicities(comps, entry)
  out: dict[tuple[str, str], int] = {}
  for comp, instrs in comps.items():
    times = mult.get(comp, 0)
    for _, _, opcode, operands, attrs in instrs:
      if opcode != "custom-call" or not times:
        continue
      target = re.search(r'custom_call_target="([^"]+)"', attrs)
      shape = shapes.get(operands[0], "") if operands else ""
      array = _ARRAY.search(shape)
      key = (
          target.group(1) if target else "",
          array.group(0) if array else shape,
      )
      out[key] = out.get(key, 0) + times
  return out
