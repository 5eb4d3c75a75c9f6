r"""Cost and accuracy of the orthogonalization engines against optax's Muon.

For each shape (512x512, 512x2048, 1024x4096) and input class

* ``gaussian``: i.i.d. N(0, 1) entries;
* ``1/i``: random singular vectors, singular values sigma_i = 1 / i;
* ``kappa=1e3``: random singular vectors, log-uniform singular values in
  [1e-3, 1];

each method maps the same input matrix to (an approximation of) its polar
factor U V^T, and the table reports:

* ``steps``: Newton-Schulz steps (``-`` for AuON, which has none);
* ``GFLOP``: matmul FLOPs counted from the traced program by
  :func:`ortho_optax.count_matmul_flops` (every ``dot_general``, ``scan``
  bodies times their trip counts). XLA's ``compiled.cost_analysis()`` counts
  a scan body once, whatever its trip count, so it under-counts the
  iterative methods and is not used;
* ``ms``: median wall time of the jit-compiled function (``block_until_ready``)
  over ``--repeats`` runs after one warm-up run (whose output is the one
  measured for accuracy). Runs are interleaved
  round-robin over the methods of a (shape, input), so a load change on a
  shared machine hits every method alike;
* ``time x`` / ``FLOP x``: wall time and FLOPs relative to the baseline row,
  optax.contrib's default Newton-Schulz
  (``optax.contrib._muon.orthogonalize_via_newton_schulz`` with
  (3.4445, -4.7750, 2.0315), 5 steps, eps 1e-8), measured in the same run.
  It runs the same arithmetic as the ``newton_schulz muon`` row, but vmaps
  a batch of one, and XLA's CPU batched matmuls are slower (a plain 5-step
  loop runs at our speed, the same loop under ``vmap`` at optax's);
* ``GFLOP/s``: achieved matmul throughput, next to ``x@xT GFLOP/s``, a plain
  ``x @ x.T`` on the same input (the best a method built from such products
  can expect);
* ``sv_min``, ``sv_max``, ``polar_error``: extreme singular values of the
  output and ||Y - U V^T||_F / ||U V^T||_F, as in
  :func:`ortho_optax.orthogonality_error` (U V^T from
  :func:`ortho_optax.polar_svd` of the input, computed once per input).

Methods: the optax baseline; ``orthogonalize`` with ``method="auto"`` (the
library default; the row names the engine it picked); ``newton_schulz`` with
the ``muon``, ``dion``, ``polar_express`` (5 steps), ``polar_express_paper``
(8 steps) and ``turbo`` (AOL, 4 steps) presets; ``newton_schulz`` with Polar
Express and ``schatten4`` / ``spectral`` normalization;
``gram_newton_schulz`` with Polar Express (one restart) and with Muon's
coefficients (the named optimizers' default on wide matrices); and
``auon_orthogonalize``.

The last line checks the acceptance criterion: the default (``auto``) has
``polar_error`` <= optax's for every shape and input class, and a FLOP
ratio <= 0.7 at 512x2048 and 1024x4096 and <= 1.0 at 512x512.

``--symmetric`` runs issue 15's side-by-side comparison at 1024x4096 and
2048x2048 (or ``--shapes``, in ``--dtype``): the default engine with the
Hermitian products as one triangle of row blocks (``symmetric=True``,
float32's restart before step 3), as it ran before issue 15 (plain
products and Dao's restart before step 2) and with plain products only;
the raw engines with ``symmetric=False`` and ``True``; and the optax row.
Its first line compares the triangle with the plain products on this
backend against the backend's default
(:data:`ortho_optax.engines.symmetric.SYMMETRIC_DEFAULTS`) and says
whether the run would flip it. It reports matmul GFLOP from the jaxpr and from XLA's
``cost_analysis()`` (which counts a scan body once), interleaved medians
on the Gaussian input, ratios to the reference row and to optax, and the
polar error on all three input classes. Its acceptance line checks the
issue's targets: FLOPs <= 0.75x and time <= 0.8x the engine before, polar
error no worse (to 1%) on every input class.

Usage::

  python benchmarks/orthogonalize.py [--quick] [--dtype float32|bfloat16]
      [--repeats N] [--shapes 4096x4096,4096x16384]
      [--out benchmarks/results/orthogonalize_cpu_f32.md]
  python benchmarks/orthogonalize.py --symmetric
      [--out benchmarks/results/orthogonalize_symmetric_cpu_f32.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

# One OpenBLAS thread: its LAPACK calls (the QR of Dion and Dion2) otherwise
# spin against XLA's own threads, 10-100x slower or stalled, on a few cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib._muon as optax_muon

import ortho_optax
from ortho_optax.engines import symmetric as _symmetric

FULL_SHAPES = ((512, 512), (512, 2048), (1024, 4096))
QUICK_SHAPES = ((512, 512), (512, 2048))
INPUTS = ("gaussian", "1/i", "kappa=1e3")
OPTAX_COEFFS = (3.4445, -4.7750, 2.0315)
BASELINE = "optax default (muon)"
AUTO = "auto"
# Acceptance criterion: largest FLOP ratio of "auto" to the optax baseline.
MAX_FLOP_RATIO = {(512, 512): 1.0, (512, 2048): 0.7, (1024, 4096): 0.7}


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  steps: str
  fn: Callable[[jax.Array], jax.Array]


def optax_default(x):
  return optax_muon.orthogonalize_via_newton_schulz(
      x, jnp.asarray(OPTAX_COEFFS, x.dtype), 5, eps=1e-8
  )


def methods(shape, dtype) -> list[Method]:
  """The rows of one (shape, input) block, baseline first."""
  ns = ortho_optax.newton_schulz
  auto = ortho_optax.select_method(shape, dtype)
  return [
      Method(BASELINE, "5", optax_default),
      Method(f"{AUTO} -> {auto}", "5", ortho_optax.orthogonalize),
      Method("newton_schulz muon", "5", lambda x: ns(x, coeffs="muon")),
      Method("newton_schulz dion", "5", lambda x: ns(x, coeffs="dion")),
      Method("newton_schulz polar_express", "5",
             lambda x: ns(x, coeffs="polar_express")),
      Method("newton_schulz polar_express_paper", "8",
             lambda x: ns(x, coeffs="polar_express_paper")),
      Method("newton_schulz turbo (aol)", "4",
             lambda x: ns(x, coeffs="turbo")),
      Method("newton_schulz polar_express schatten4", "5",
             lambda x: ns(x, normalization="schatten4")),
      Method("newton_schulz polar_express spectral", "5",
             lambda x: ns(x, normalization="spectral")),
      Method("gram_newton_schulz polar_express", "5",
             ortho_optax.gram_newton_schulz),
      Method("gram_newton_schulz muon", "5",
             lambda x: ortho_optax.gram_newton_schulz(
                 x, coeffs="muon", normalization="frobenius")),
      Method("auon_orthogonalize", "-", ortho_optax.auon_orthogonalize),
  ]


# --- Inputs -------------------------------------------------------------------


def _orthonormal(rng, p, q):
  z, r = np.linalg.qr(rng.standard_normal((p, q)))
  return z * np.sign(np.diag(r))


def make_input(kind: str, m: int, n: int, seed: int) -> np.ndarray:
  """One input matrix of the given class, in float64."""
  rng = np.random.default_rng(seed)
  if kind == "gaussian":
    return rng.standard_normal((m, n))
  k = min(m, n)
  if kind == "1/i":
    sigma = 1.0 / np.arange(1, k + 1)
  elif kind == "kappa=1e3":
    sigma = np.exp(rng.uniform(np.log(1e-3), 0.0, k))
    sigma[0], sigma[-1] = 1.0, 1e-3
  else:
    raise ValueError(f"Unknown input class {kind!r}.")
  return (_orthonormal(rng, m, k) * sigma) @ _orthonormal(rng, n, k).T


# --- Measurements -------------------------------------------------------------


@jax.jit
def _metrics(y, ref):
  """sv_min, sv_max and polar error of ``y`` against the polar factor."""
  y = y.astype(jnp.float32)
  s = jnp.linalg.svd(y, compute_uv=False)
  err = jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref)
  return s.min(), s.max(), err


def time_round_robin(fns: list[Callable], x, repeats: int) -> list[float]:
  """Median seconds of each (already warmed-up) function, runs interleaved."""
  times = [[] for _ in fns]
  for _ in range(repeats):
    for i, fn in enumerate(fns):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(x))
      times[i].append(time.perf_counter() - t0)
  return [statistics.median(t) for t in times]


@dataclasses.dataclass
class ShapePlan:
  """What is built once per shape and reused for every input class."""
  rows: list[Method]
  jitted: list[Callable]
  flops: list[int]
  matmul: Callable


def plan(shape, dtype) -> ShapePlan:
  rows = methods(shape, dtype)
  spec = jax.ShapeDtypeStruct(shape, dtype)
  return ShapePlan(
      rows=rows,
      jitted=[jax.jit(r.fn) for r in rows],
      flops=[ortho_optax.count_matmul_flops(r.fn, spec) for r in rows],
      matmul=jax.jit(lambda x: x @ x.T),
  )


def bench_block(shape_plan: ShapePlan, x, kind, repeats) -> list[dict]:
  """All methods on one input matrix; one dict per row."""
  m, n = x.shape
  ref = ortho_optax.polar_svd(x.astype(jnp.float32))
  # The first call compiles (once per shape) and warms up; its output is
  # the one whose accuracy is reported.
  outputs = [jax.block_until_ready(fn(x)) for fn in shape_plan.jitted]
  seconds = time_round_robin(shape_plan.jitted, x, repeats)
  jax.block_until_ready(shape_plan.matmul(x))
  (mm_seconds,) = time_round_robin([shape_plan.matmul], x, repeats)
  mm_rate = 2 * m * m * n / mm_seconds / 1e9
  base_s, base_f = seconds[0], shape_plan.flops[0]
  out = []
  for row, y, sec, flop in zip(shape_plan.rows, outputs, seconds,
                               shape_plan.flops):
    sv_min, sv_max, err = (float(v) for v in _metrics(y, ref))
    out.append(dict(
        shape=f"{m}x{n}", input=kind, method=row.name, steps=row.steps,
        flops=flop, seconds=sec, time_ratio=sec / base_s,
        flop_ratio=flop / base_f,
        rate=flop / sec / 1e9 if flop else float("nan"),
        matmul_rate=mm_rate, sv_min=sv_min, sv_max=sv_max, polar_error=err,
    ))
  return out


# --- Report -------------------------------------------------------------------

COLUMNS = ("shape", "input", "method", "steps", "GFLOP", "ms", "time x",
           "FLOP x", "GFLOP/s", "x@xT GFLOP/s", "sv_min", "sv_max",
           "polar_error")


def _row_cells(r: dict) -> list[str]:
  rate = "-" if np.isnan(r["rate"]) else f"{r['rate']:.1f}"
  return [r["shape"], r["input"], r["method"], r["steps"],
          f"{r['flops'] / 1e9:.2f}", f"{r['seconds'] * 1e3:.1f}",
          f"{r['time_ratio']:.2f}", f"{r['flop_ratio']:.3f}", rate,
          f"{r['matmul_rate']:.1f}", f"{r['sv_min']:.4f}",
          f"{r['sv_max']:.4f}", f"{r['polar_error']:.4f}"]


def markdown_table(results: list[dict]) -> str:
  lines = ["| " + " | ".join(COLUMNS) + " |",
           "|" + "---|" * len(COLUMNS)]
  lines += ["| " + " | ".join(_row_cells(r)) + " |" for r in results]
  return "\n".join(lines)


def _auto_row(rows: dict) -> dict:
  return next(v for k, v in rows.items() if k.startswith(AUTO))


def acceptance(results: list[dict], dtype) -> str:
  """One line: does ``auto`` meet the issue's acceptance criterion?

  The FLOP part applies to float32 inputs: in half precision ``auto``
  never picks the Gram form (unstable there), so its FLOPs equal optax's;
  the line then reports the ratios without judging them.
  """
  failures, ratios = [], {}
  by_block = {}
  for r in results:
    by_block.setdefault((r["shape"], r["input"]), {})[r["method"]] = r
  for (shape, kind), rows in by_block.items():
    auto, base = _auto_row(rows), rows[BASELINE]
    if auto["polar_error"] > base["polar_error"]:
      failures.append(f"polar_error {auto['polar_error']:.4f} > optax "
                      f"{base['polar_error']:.4f} at {shape} {kind}")
    ratios[shape] = auto["flop_ratio"]
  flops_apply = jnp.dtype(dtype) == jnp.float32
  for (m, n), limit in MAX_FLOP_RATIO.items():
    ratio = ratios.get(f"{m}x{n}")
    if flops_apply and ratio is not None and ratio > limit:
      failures.append(f"FLOP ratio {ratio:.3f} > {limit} at {m}x{n}")
  missing = [f"{m}x{n}" for m, n in MAX_FLOP_RATIO
             if f"{m}x{n}" not in ratios]
  verdict = "PASS" if not failures else "FAIL: " + "; ".join(failures)
  notes = []
  if not flops_apply:
    notes.append(f"FLOP limits not applied to {jnp.dtype(dtype)} inputs,"
                 " where auto uses standard Newton-Schulz by design")
  if missing:
    notes.append(f"not measured: {', '.join(missing)}")
  note = f" ({'; '.join(notes)})" if notes else ""
  listed = ", ".join(f"{k} {v:.3f}" for k, v in ratios.items())
  return (f"Acceptance (auto polar_error <= optax's on every shape and input;"
          f" FLOP ratio <= 0.7 at 512x2048 and 1024x4096, <= 1.0 at 512x512;"
          f" auto FLOP ratios: {listed}): {verdict}{note}")


def caption(args, shapes) -> str:
  devices = jax.devices()
  names = ", ".join(f"{m}x{n}" for m, n in shapes)
  return (
      f"Orthogonalization engines vs optax.contrib Newton-Schulz, "
      f"{args.dtype} inputs, {devices[0].platform.upper()} "
      f"({devices[0].device_kind}; host "
      f"{platform.processor() or platform.machine()}, "
      f"{os.cpu_count()} cores), jax {jax.__version__}, optax "
      f"{optax.__version__}; shapes {names}; median of {args.repeats}"
      " interleaved runs after a warm-up.\n"
      "GFLOP: matmul FLOPs counted from the jaxpr with"
      " `ortho_optax.count_matmul_flops` (scan bodies times their trip"
      " count), not XLA's `cost_analysis()`, which counts a scan body once."
      " `time x` and `FLOP x` are relative to the optax row of the same"
      " block; `x@xT GFLOP/s` is a plain `x @ x.T` on the same input."
      " polar_error = ||Y - UV^T||_F / ||UV^T||_F against `polar_svd`.\n"
      "The optax row does the same arithmetic as `newton_schulz muon`; on"
      " CPU it is slower because it vmaps a batch of one (batched"
      " `dot_general`s). So for the algorithms alone compare against the"
      " `newton_schulz muon` row; `time x` to optax includes that overhead."
      + (f"\n{args.note}" if args.note else "")
  )


def _parse_shapes(text: str):
  try:
    return tuple(
        tuple(int(d) for d in s.lower().split("x")) for s in text.split(",")
    )
  except ValueError as e:
    raise SystemExit(f"--shapes: expected e.g. 512x2048,1024x4096, got"
                     f" {text!r}") from e


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true",
                 help="drop 1024x4096 and use 2 repeats (about a minute)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"),
                 default="float32", help="dtype of the input matrices")
  p.add_argument("--repeats", type=int, default=None,
                 help="timed runs per method (default 5; 2 with --quick)")
  p.add_argument("--shapes", default=None,
                 help="comma-separated MxN shapes, e.g. 4096x4096,4096x16384"
                 " (default: 512x512,512x2048,1024x4096)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="also write the table here")
  p.add_argument("--symmetric", action="store_true",
                 help="only the symmetric-products side-by-side comparison")
  p.add_argument("--note", default="",
                 help="free text appended to the caption (e.g. machine load)")
  args = p.parse_args(argv)
  args.symmetric_shapes = SYMMETRIC_SHAPES
  if args.symmetric and args.shapes:
    args.symmetric_shapes = _parse_shapes(args.shapes)
  if args.repeats is None:
    args.repeats = 2 if args.quick else 5
  return args


SYMMETRIC_SHAPES = ((1024, 4096), (2048, 2048))
# The engines before issue 15: plain products and, in the Gram form, the
# restart before step 2 of Dao-AILab's default (float32 now restarts
# before step 3, at the same cost).
BEFORE = dict(symmetric=False, restarts=(2,))


def symmetric_rows(shape, dtype=jnp.float32):
  """``(engine, products, fn, index of its reference row)`` per row.

  The default engine has three rows: as before issue 15 (``before``), with
  today's restarts but plain products (``plain``), and as run today
  (``triangle``); the raw engines have a plain and a triangle row.
  """
  auto = ortho_optax.select_method(shape, dtype, symmetric=True)
  rows = [(BASELINE, "plain", optax_default, 0)]

  def before_options(engine):
    if engine == "gram_newton_schulz":
      return BEFORE
    return {"symmetric": False}

  default = f"{AUTO} -> {auto}"
  rows.append((default, "before",
               functools.partial(ortho_optax.orthogonalize,
                                 **before_options(auto)), 1))
  rows.append((default, "plain", functools.partial(
      ortho_optax.orthogonalize, symmetric=False), 1))
  # The triangle rows ask for the blocks: ``symmetric=None`` means plain
  # products on backends where they were not measured faster.
  rows.append((default, "triangle", functools.partial(
      ortho_optax.orthogonalize, symmetric=True), 1))
  raw = [("newton_schulz muon", functools.partial(
      ortho_optax.newton_schulz, coeffs="muon"))]
  if auto != "gram_newton_schulz":
    raw.append(("gram_newton_schulz", ortho_optax.gram_newton_schulz))
  for name, fn in raw:
    ref = len(rows)
    rows.append((name, "plain", functools.partial(fn, symmetric=False), ref))
    rows.append((name, "triangle", functools.partial(fn, symmetric=True),
                 ref))
  return rows


def xla_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan")))


def symmetric_default_line(flips) -> str:
  """The per-backend default of ``symmetric`` against this run's numbers.

  ``flips``: ``(shape, time of the default engine with the triangle of
  blocks / with plain products)`` per shape. A gain is the triangle at
  0.95x the plain time or less at every shape; a loss, 1.0x or more at
  every shape; anything between is within the noise of one run.
  """
  backend = jax.default_backend()
  now = _symmetric.default_symmetric(backend)
  ratios = [r for _, r in flips]
  listed = ", ".join(f"{m}x{n} {r:.2f}x" for (m, n), r in flips)
  if ratios and max(ratios) <= 0.95:
    says = True
  elif ratios and min(ratios) >= 1.0:
    says = False
  else:
    says = None
  head = (
      f"Default `symmetric` on {backend!r}: {'on' if now else 'off'}"
      " (`ortho_optax.engines.symmetric.SYMMETRIC_DEFAULTS`). This run, the"
      f" default engine's time with the triangle / with plain products:"
      f" {listed}."
  )
  if says is None:
    return head + " Within the noise (0.95-1.0x): no change."
  if says == now:
    return head + f" Consistent with the default ({'gain' if says else 'no gain'})."
  return (
      head + f" FLIP: this run says {'on' if says else 'off'}; set"
      f" SYMMETRIC_DEFAULTS[{backend!r}] = {says} and write these numbers"
      " next to it."
  )


def symmetric_report(args) -> str:
  """Today's engines vs plain products and the engines before, side by side."""
  lines = [
      "| shape | engine | products | GFLOP | XLA GFLOP | ms | ms min-max"
      " | FLOP x ref | time x ref | FLOP x optax | time x optax | "
      + " | ".join(f"polar_error {k}" for k in INPUTS) + " |",
      "|" + "---|" * (11 + len(INPUTS)),
  ]
  checks = []
  flips = []
  dtype = jnp.dtype(args.dtype)
  for shape in args.symmetric_shapes:
    xs = [jnp.asarray(make_input(k, *shape, args.seed), jnp.float32)
          for k in INPUTS]
    refs = [ortho_optax.polar_svd(x) for x in xs]
    xs = [x.astype(dtype) for x in xs]
    spec = jax.ShapeDtypeStruct(shape, dtype)
    rows = symmetric_rows(shape, dtype)
    compiled = [jax.jit(fn).lower(spec).compile() for _, _, fn, _ in rows]
    flops = [ortho_optax.count_matmul_flops(fn, spec) for _, _, fn, _ in rows]
    xla = [xla_flops(c) for c in compiled]
    errs = [[float(_metrics(jax.block_until_ready(c(x)), r)[2])
             for x, r in zip(xs, refs)] for c in compiled]
    times = [[] for _ in rows]
    x = xs[0]
    for _ in range(args.repeats):
      for i, c in enumerate(compiled):
        t0 = time.perf_counter()
        jax.block_until_ready(c(x))
        times[i].append(time.perf_counter() - t0)
    med = [statistics.median(t) for t in times]
    for i, (name, kind, _, j) in enumerate(rows):
      lines.append(
          f"| {shape[0]}x{shape[1]} | {name} | {kind} |"
          f" {flops[i] / 1e9:.1f} | {xla[i] / 1e9:.1f} | {med[i] * 1e3:.0f} |"
          f" {min(times[i]) * 1e3:.0f}-{max(times[i]) * 1e3:.0f} |"
          f" {flops[i] / flops[j]:.3f} | {med[i] / med[j]:.2f} |"
          f" {flops[i] / flops[0]:.3f} | {med[i] / med[0]:.2f} | "
          + " | ".join(f"{e:.4f}" for e in errs[i]) + " |"
      )
      if kind == "triangle" and name.startswith(AUTO):
        checks.append((shape, flops[i] / flops[j], med[i] / med[j],
                       max(e / b for e, b in zip(errs[i], errs[j]))))
        plain = next(k for k, row in enumerate(rows)
                     if row[0] == name and row[1] == "plain")
        flips.append((shape, med[i] / med[plain]))
    print(f"# {shape[0]}x{shape[1]} done", file=sys.stderr, flush=True)
  failures = [
      f"{m}x{n}: FLOP x {f:.3f}, time x {t:.2f}, error x {e:.3f}"
      for (m, n), f, t, e in checks
      if f > 0.75 or t > 0.8 or e > 1.01
  ]
  listed = "; ".join(
      f"{m}x{n} FLOP x {f:.3f}, time x {t:.2f}, error x {e:.4f}"
      for (m, n), f, t, e in checks
  )
  verdict = "PASS" if not failures else "FAIL: " + "; ".join(failures)
  return (
      symmetric_default_line(flips) + "\n\n" +
      "The default engine as run today (`triangle`: Hermitian products as"
      " one triangle of row blocks; the Gram form restarts before step 3)"
      " against the same engine before issue 15 (`before`: plain products,"
      " restart before step 2) and with plain products only (`plain`); the raw"
      " engines with `symmetric=False` and `True`. `x ref` is relative to"
      " the `before` row (to the `plain` row for the raw engines). Timed on"
      " the Gaussian input; polar errors on the three input classes."
      f" {args.dtype}, {jax.devices()[0].platform.upper()}"
      f" ({jax.devices()[0].device_kind}), {os.cpu_count()} host"
      f" cores, jax {jax.__version__}; median of {args.repeats} interleaved"
      " runs."
      + (f" {args.note}" if args.note else "")
      + "\n\n" + "\n".join(lines) + "\n\n"
      + "Acceptance (default engine, today vs before: FLOPs <= 0.75x,"
      " time <= 0.8x, polar error <= 1.01x on every input class;"
      f" {listed}): {verdict}\n"
  )


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.symmetric:
    report = symmetric_report(args)
    print(report)
    if args.out:
      os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
      with open(args.out, "w") as f:
        f.write(report)
    return 0
  shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
  if args.shapes:
    shapes = _parse_shapes(args.shapes)
  dtype = jnp.dtype(args.dtype)
  results = []
  for shape in shapes:
    shape_plan = plan(shape, dtype)
    for i, kind in enumerate(INPUTS):
      t0 = time.perf_counter()
      x = jnp.asarray(make_input(kind, *shape, args.seed + i), jnp.float32)
      results += bench_block(shape_plan, x.astype(dtype), kind, args.repeats)
      print(f"# {shape[0]}x{shape[1]} {kind}: "
            f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
  report = "\n\n".join([caption(args, shapes), markdown_table(results),
                        acceptance(results, dtype)]) + "\n"
  print(report)
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      f.write(report)
  return 0


if __name__ == "__main__":
  sys.exit(main())
