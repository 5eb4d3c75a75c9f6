r"""Cost of one optimizer step on a GPT-like parameter tree.

The tree: ``wte`` embedding ``(V, d)``; ``L`` blocks, each with attention
kernels ``q``, ``k``, ``v``, ``o`` ``(d, d)``, MLP kernels ``fc`` ``(d, 4d)``
and ``proj`` ``(4d, d)``, two layer-norm scales ``(d,)``; a final norm; an
untied ``lm_head`` ``(d, V)``. Full size: ``L = 12``, ``d = 768``,
``V = 8192``; ``--quick``: ``L = 4``, ``d = 256``.

Rows: every named optimizer of ortho_optax with its defaults; ``muon
(plain products)``, the default ``muon`` compiled with the engines'
Hermitian products as plain matmuls (no triangle of row blocks,
:mod:`ortho_optax.engines.symmetric`), ``muon (symmetric products)``, with
the triangle of blocks whatever the backend's default (the line under the
table compares the two against it), and ``muon (before issue 15)``, also
with the Gram form's restart before step 2 in float32 (the engines before
issue 15), side by side in the same run;
``optax.contrib.muon`` as a user calls it (default routing: every 2-D leaf,
embedding and head included, goes to Muon); ``optax.contrib.muon`` with the
embedding and head sent to its Adam via ``muon_weight_dimension_numbers``
(the same leaves as our routing, for an apples-to-apples comparison); and
``optax.adamw``.

Columns:

* ``GFLOP``: matmul FLOPs of the jitted ``update`` counted from its jaxpr,
  every ``scan``/``fori_loop`` body times its trip count
  (:func:`ortho_optax.count_matmul_flops`);
* ``XLA GFLOP``: ``compiled.cost_analysis()["flops"]`` of the same program,
  for comparison: XLA counts a loop body once, whatever its trip count, so
  it under-counts iterative methods (and adds elementwise FLOPs);
* ``ms``: median wall time of the jitted ``update`` over ``--repeats``
  rounds (and the fastest and slowest round); the rows are interleaved
  round by round, so slow drifts of the load on a shared machine hit every
  row alike;
* ratios to ``optax.contrib.muon`` (default routing) and to our ``muon``
  (the low-rank methods' reference), from the same run;
* ``state MiB``: bytes of the optimizer state (momenta, Dion's right
  factors, the AdamW branch's moments);
* ``polar err``: how far the first update (from zero state, at zero
  params so that weight decay adds nothing) of each hidden matrix of block
  0 (``q``, ``fc``, ``proj``) is from the exact polar factor of its
  (Gaussian) gradient: ``orthogonality_error(c * y, g)["polar_error"]``
  with ``c`` rescaling ``y`` to the polar factor's Frobenius norm
  ``sqrt(min(m, n))`` (the learning rate and shape factors are not
  orthogonality), averaged over the three. For a first step from zero state
  every momentum form's input is proportional to ``g``. NorMuon and AdaMuon
  renormalize the orthogonalized update per neuron / per element on
  purpose, ROOT orthogonalizes the quantile-clipped momentum and AuON
  only approximates the polar factor, and Dion, Dion2 and Trion update a
  rank-``r`` part of each matrix, so their errors are by design.

Rows: also ``trion (dct=fft)``, Trion with its DCT as a fast cosine
transform (not a matmul, so not in the FLOP count); and ``muon + gradient
projection (rank 1/4)``, ``ortho_optax.with_gradient_projection(muon,
bases)`` with a random orthonormal basis of ``min(fan_in, fan_out) / 4``
columns for every hidden matrix (continual learning, issue 23: the
projection before and after muon; its polar error is large by design), and
the same with ``project_before=False`` (``after only``).

``--second-order``: a separate table for ``shampoo`` and ``soap`` at
``precondition_every`` 1 and 10 against ``muon``: the matmul FLOPs of a
step that refreshes the preconditioner and of one that does not (each
traced without the ``lax.cond``, :data:`ortho_optax.transforms.kronecker.
FORCE_REFRESH`), their average over the period, and the time per step of
``period`` consecutive steps run in one ``lax.scan`` (the state advancing,
so the refreshes fall where they do in training), median over
``--repeats`` interleaved rounds. ``eigh`` and QR are LAPACK calls, not
matmuls: they are not in the FLOP columns, only in the time.

Usage::

  python benchmarks/step.py [--quick] [--dtype float32|bfloat16]
      [--repeats N] [--out benchmarks/results/step_cpu_f32.md]
  python benchmarks/step.py --second-order [--quick] [--flops-only]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import inspect
import math
import os
import platform
import statistics
import sys
import time

# One OpenBLAS thread: its LAPACK calls (the QR of Dion and Dion2) otherwise
# spin against XLA's own threads, 10-100x slower or stalled, on a few cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ortho_optax
from ortho_optax.engines import gram as _gram
from ortho_optax.engines import symmetric as _symmetric

MDN = optax.contrib.MuonDimensionNumbers
BASELINE = "optax.contrib.muon"
PLAIN = " (plain products)"
SYMMETRIC = " (symmetric products)"
BEFORE = " (before issue 15)"


@contextlib.contextmanager
def before_issue_15():
  """Traces the engines as before issue 15: plain products, and the Gram
  form's restart before step 2 in float32 too (Dao-AILab's default; now
  float32 restarts before step 3, at the same cost,
  :func:`ortho_optax.engines.gram.default_restarts`)."""
  saved = _gram._LATE_RESTART_DTYPES
  _gram._LATE_RESTART_DTYPES = ()
  try:
    with plain_products():
      yield
  finally:
    _gram._LATE_RESTART_DTYPES = saved


@contextlib.contextmanager
def symmetric_products():
  """Traces the engines with the triangle of blocks for every Hermitian
  product, whatever this backend's default (``symmetric=None`` is plain
  products where they were not measured faster,
  :data:`ortho_optax.engines.symmetric.SYMMETRIC_DEFAULTS`)."""
  saved = dict(_symmetric.SYMMETRIC_DEFAULTS)
  backend = jax.default_backend()
  _symmetric.SYMMETRIC_DEFAULTS[
      _symmetric._BACKEND_ALIASES.get(backend, backend)
  ] = True
  try:
    yield
  finally:
    _symmetric.SYMMETRIC_DEFAULTS.clear()
    _symmetric.SYMMETRIC_DEFAULTS.update(saved)


@contextlib.contextmanager
def plain_products():
  """Traces the engines with plain matmuls for every Hermitian product.

  The named optimizers take no ``symmetric`` option; the block plan is
  read at trace time, so a row traced and compiled inside this context
  runs the engines as they were before the triangle of blocks.
  """
  saved = _symmetric.MIN_BLOCK
  _symmetric.MIN_BLOCK = 2**62
  try:
    yield
  finally:
    _symmetric.MIN_BLOCK = saved


PROJECTED = " + gradient projection (rank 1/4)"
PROJECTED_AFTER = " + gradient projection (rank 1/4, after only)"


def projection_bases(params, seed: int = 2) -> dict:
  """Random orthonormal bases ``(fan_in, min(fan_in, fan_out) // 4)`` of
  the hidden matrices (attention and MLP kernels), float32."""
  rng = np.random.default_rng(seed)

  def basis(path, x):
    names = jax.tree_util.keystr(path)
    if x.ndim != 2 or "wte" in names or "lm_head" in names:
      return None
    k = min(x.shape) // 4
    q, _ = np.linalg.qr(rng.standard_normal((x.shape[0], k)))
    return jnp.asarray(q, jnp.float32)

  return jax.tree_util.tree_map_with_path(basis, params)


def gpt_shapes(layers: int, width: int, vocab: int) -> dict:
  """The parameter tree's shapes (nested dicts of tuples)."""
  d = width
  tree = {"wte": {"embedding": (vocab, d)}}
  for i in range(layers):
    tree[f"block_{i}"] = {
        "ln_1": {"scale": (d,)},
        "attn": {k: {"kernel": (d, d)} for k in ("q", "k", "v", "o")},
        "ln_2": {"scale": (d,)},
        "mlp": {"fc": {"kernel": (d, 4 * d)}, "proj": {"kernel": (4 * d, d)}},
    }
  tree["ln_f"] = {"scale": (d,)}
  tree["lm_head"] = {"kernel": (d, vocab)}
  return tree


def _is_shape(x) -> bool:
  return isinstance(x, tuple) and all(isinstance(s, int) for s in x)


def make_tree(shapes, dtype, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: jnp.asarray(
          rng.standard_normal(s, dtype=np.float32) * 0.02, dtype
      ),
      shapes,
      is_leaf=_is_shape,
  )


def optax_dimension_numbers(params):
  """optax routing that matches ours: hidden matrices only."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  hidden = {
      jax.tree_util.keystr(p)
      for p, x in flat
      if x.ndim == 2 and not any(
          n in jax.tree_util.keystr(p) for n in ("wte", "lm_head")
      )
  }
  return jax.tree_util.tree_map_with_path(
      lambda p, x: MDN() if jax.tree_util.keystr(p) in hidden else None,
      params,
  )


def optimizers(lr: float = 0.02, states=("f32",)) -> dict:
  """Row name -> GradientTransformation.

  ``states``: ``"f32"`` (the defaults) and quantized formats; a format
  ``s`` adds the row ``name [s]`` with ``mu_dtype = nu_dtype = s``.
  """
  rows = {}
  for name in NAMED:
    kwargs = {"learning_rate": 2**-6 if name == "scion" else lr}
    factory = getattr(ortho_optax, name)
    quantizable = "nu_dtype" in inspect.signature(factory).parameters
    for state in states:
      if state == "f32":
        rows[name] = getattr(ortho_optax, name)(**kwargs)
        if name == MUON:
          rows[name + PLAIN] = ortho_optax.muon(lr)
          rows[name + SYMMETRIC] = ortho_optax.muon(lr)
          rows[name + BEFORE] = ortho_optax.muon(lr)
      elif quantizable:  # the low-rank methods keep float factors
        rows[f"{name} [{state}]"] = getattr(ortho_optax, name)(
            **kwargs, mu_dtype=state, nu_dtype=state
        )
  # Trion's DCT as a fast cosine transform instead of a matmul.
  rows["trion (dct=fft)"] = ortho_optax.trion(lr, dct="fft")
  rows[BASELINE] = optax.contrib.muon(lr)
  rows[BASELINE + " (no embed/head)"] = optax.contrib.muon(
      lr, muon_weight_dimension_numbers=optax_dimension_numbers
  )
  rows["optax.adamw"] = optax.adamw(lr)
  return rows


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
    # Low-rank methods, at their default rank (1/4 of the shorter side, at
    # least 128 directions: at width 768, 1/4).
    "dion",
    "dion2",
    "trion",
)
# The row the low-rank methods' targets are measured against.
MUON = "muon"
# Leaves of block 0 whose orthogonality is reported.
PROBES = (("attn", "q"), ("mlp", "fc"), ("mlp", "proj"))


def polar_error(updates, grads) -> float:
  errs = []
  for group, name in PROBES:
    y = jnp.asarray(updates["block_0"][group][name]["kernel"], jnp.float32)
    g = jnp.asarray(grads["block_0"][group][name]["kernel"], jnp.float32)
    # Updates are descent directions: -lr * scale * polar(g).
    y = -y * (math.sqrt(min(y.shape)) / jnp.linalg.norm(y))
    errs.append(float(ortho_optax.orthogonality_error(y, g)["polar_error"]))
  return sum(errs) / len(errs)


def _vs_f32(rows, name) -> str:
  """State and time of a quantized-state row over its float32 row's."""
  f32 = rows.get(name.split(" [")[0])
  if f32 is None or f32 is rows[name]:
    return "— | — |"
  row = rows[name]
  t = statistics.median(row["times"]) / statistics.median(f32["times"])
  return f"{row['state_bytes'] / f32['state_bytes']:.3f} | {t:.3f} |"


def benchmark(args) -> str:
  layers, width = (4, 256) if args.quick else (args.layers, args.width)
  dtype = jnp.dtype(args.dtype)
  shapes = gpt_shapes(layers, width, args.vocab)
  params = make_tree(shapes, dtype, 0)
  grads = make_tree(shapes, dtype, 1)
  zeros = jax.tree.map(jnp.zeros_like, params)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  txs = optimizers(states=args.state.split(","))
  if MUON in txs:
    bases = projection_bases(params)
    txs[MUON + PROJECTED] = ortho_optax.with_gradient_projection(
        ortho_optax.muon(0.02), bases
    )
    txs[MUON + PROJECTED_AFTER] = ortho_optax.with_gradient_projection(
        ortho_optax.muon(0.02), bases, project_before=False
    )
  if args.only:
    keep = set(args.only.split(","))
    txs = {
        k: v for k, v in txs.items()
        if k.split(" [")[0] in keep or k == BASELINE
        or (k in (MUON + PROJECTED, MUON + PROJECTED_AFTER)
            and MUON in keep)
    }

  rows = {}
  for name, tx in txs.items():
    t0 = time.perf_counter()
    state = tx.init(params)
    spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        (grads, state, params))
    if name.endswith(PLAIN):
      context = plain_products()
    elif name.endswith(SYMMETRIC):
      context = symmetric_products()
    elif name.endswith(BEFORE):
      context = before_issue_15()
    else:
      context = contextlib.nullcontext()
    with context:
      flops = ortho_optax.count_matmul_flops(tx.update, *spec)
      compiled = jax.jit(tx.update).lower(*spec).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    xla_flops = float(cost.get("flops", float("nan")))
    jax.block_until_ready(compiled(grads, state, params))  # warm-up
    err = float("nan")
    if name != "optax.adamw":
      # Zero params: no weight-decay term in the update.
      updates, _ = compiled(grads, state, zeros)
      err = polar_error(updates, grads)
      del updates
    state_bytes = sum(
        x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes")
    )
    rows[name] = dict(
        fn=compiled, state=state, flops=flops, xla_flops=xla_flops,
        err=err, times=[], state_bytes=state_bytes,
    )
    print(f"# {name}: compiled and warmed up in"
          f" {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

  for r in range(args.repeats):
    for row in rows.values():
      t0 = time.perf_counter()
      out = row["fn"](grads, row["state"], params)
      jax.block_until_ready(out)
      row["times"].append(time.perf_counter() - t0)
      del out
    print(f"# round {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)

  base = rows[BASELINE]
  base_ms = statistics.median(base["times"]) * 1e3
  muon = rows.get(MUON)
  muon_ms = statistics.median(muon["times"]) * 1e3 if muon else math.nan
  lines = [
      "| optimizer | GFLOP | XLA GFLOP | FLOPs / optax | FLOPs / muon | ms"
      " | ms min-max | time / optax | time / muon | state MiB | polar err"
      " | state / f32 | time / f32 |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for name, row in rows.items():
    ms = statistics.median(row["times"]) * 1e3
    lo, hi = min(row["times"]) * 1e3, max(row["times"]) * 1e3
    err = "—" if math.isnan(row["err"]) else f"{row['err']:.4f}"
    vs_muon = (
        f"{row['flops'] / muon['flops']:.3f} | " if muon else "— | "
    )
    lines.append(
        f"| {name} | {row['flops'] / 1e9:.1f} | {row['xla_flops'] / 1e9:.1f}"
        f" | {row['flops'] / base['flops']:.3f} | {vs_muon}{ms:.0f}"
        f" | {lo:.0f}-{hi:.0f} | {ms / base_ms:.3f} | {ms / muon_ms:.3f}"
        f" | {row['state_bytes'] / 2**20:.1f} | {err} | {_vs_f32(rows, name)}"
    )
  caption = (
      f"One optimizer step (jitted `update`) on a GPT-like tree: {layers}"
      f" blocks, width {width}, vocabulary {args.vocab}"
      f" ({n_params / 1e6:.1f} M parameters, {dtype.name}); median of"
      f" {args.repeats} interleaved rounds. {platform.processor() or 'CPU'},"
      f" {os.cpu_count()} cores, {jax.devices()[0].platform}"
      f" ({jax.devices()[0].device_kind}),"
      f" jax {jax.__version__}, optax {optax.__version__},"
      f" {datetime.date.today().isoformat()}.\n\n"
      "GFLOP: matmul FLOPs counted from the jaxpr, loops times their trip"
      " counts (`ortho_optax.count_matmul_flops`). XLA GFLOP:"
      " `compiled.cost_analysis()`, which counts a loop body once whatever"
      " its trip count (and includes elementwise FLOPs). Ratios are to"
      f" `{BASELINE}` with its default routing (every 2-D leaf, embedding"
      " and head included); the `(no embed/head)` row routes the same"
      " leaves as ortho_optax. polar err: mean `polar_error` of the first"
      " update (zero state, zero params: no weight-decay term) of block 0's"
      " q, fc and proj kernels (Gaussian gradients), rescaled to the polar"
      " factor's norm, against the exact polar factor of the gradient"
      " (by design, NorMuon and AdaMuon renormalize the orthogonalized"
      " update per neuron/element, ROOT orthogonalizes the quantile-clipped"
      " momentum, AuON only approximates the polar factor, and Dion,"
      " Dion2 and Trion update a rank-1/4 part only). state MiB: bytes of"
      " the optimizer state (momenta, factors, AdamW moments)."
      " `name [q8]`/`[q4]` rows (`--state`) set `mu_dtype = nu_dtype` to"
      " that quantized format; their state / f32 and time / f32 are"
      " relative to the same optimizer's float32 row of this run."
      f" `muon{PROJECTED}`: `with_gradient_projection(muon, bases)`, random"
      " orthonormal bases of min(fan_in, fan_out) / 4 columns on every"
      " hidden matrix, projected before and after muon (`after only`:"
      " `project_before=False`, the final update only); their polar err is"
      " not orthogonality (the update is projected on purpose)."
  )
  return caption + "\n\n" + "\n".join(lines) + "\n" + _symmetric_line(rows)


def _symmetric_line(rows) -> str:
  """This backend's ``symmetric`` default against the step's two rows."""
  sym, plain = rows.get(MUON + SYMMETRIC), rows.get(MUON + PLAIN)
  if sym is None or plain is None:
    return ""
  ratio = statistics.median(sym["times"]) / statistics.median(plain["times"])
  backend = jax.default_backend()
  now = _symmetric.default_symmetric(backend)
  says = True if ratio <= 0.95 else False if ratio >= 1.0 else None
  verdict = (
      "no matrix has the 512 rows that blocks need: no evidence"
      if sym["flops"] == plain["flops"]
      else "within the noise (0.95-1.0x): no change" if says is None
      else "consistent with the default" if says == now
      else f"FLIP: this run says {'on' if says else 'off'}"
  )
  return (
      f"\nDefault `symmetric` on {backend!r}: {'on' if now else 'off'}"
      " (`ortho_optax.engines.symmetric.SYMMETRIC_DEFAULTS`); muon's step"
      f" with the triangle of blocks / with plain products: {ratio:.3f}x"
      f" the time, {sym['flops'] / plain['flops']:.3f}x the FLOPs;"
      f" {verdict}.\n"
  )


SECOND_ORDER = ("shampoo", "soap")
# Consecutive steps per timed call of the --second-order table.
_SCAN_STEPS = 10


def _period_flops(factory, spec) -> tuple[float, float]:
  """Matmul FLOPs of a refresh step and of a step between refreshes."""
  from ortho_optax.transforms import kronecker  # noqa: PLC0415

  out = []
  for force in (True, False):
    kronecker.FORCE_REFRESH = force
    try:
      tx = factory()
      out.append(ortho_optax.count_matmul_flops(tx.update, *spec))
    finally:
      kronecker.FORCE_REFRESH = None
  return out[0], out[1]


def second_order(args) -> str:
  """The ``--second-order`` table (module docstring)."""
  layers, width = (4, 256) if args.quick else (args.layers, args.width)
  dtype = jnp.dtype(args.dtype)
  shapes = gpt_shapes(layers, width, args.vocab)
  params = make_tree(shapes, dtype, 0)
  grads = make_tree(shapes, dtype, 1)
  rows = {}
  muon_tx = ortho_optax.muon(0.02)
  configs = [("muon", None, lambda: muon_tx)]
  # precondition_warmup=0: the steady state after SOAP's warm-up (its
  # first 100 steps all refresh; the timed steps would fall in it).
  for name in SECOND_ORDER:
    for every in (1, 10):
      configs.append((
          f"{name} (every {every})", every,
          lambda name=name, every=every: getattr(ortho_optax, name)(
              0.003, precondition_every=every, precondition_warmup=0
          ),
      ))
  # The MLP's long side (4 x width) not preconditioned (one-sided there).
  for name in SECOND_ORDER:
    configs.append((
        f"{name}, max_precond_dim={2 * width} (every 10)", 10,
        lambda name=name: getattr(ortho_optax, name)(
            0.003, precondition_every=10, precondition_warmup=0,
            max_precond_dim=2 * width,
        ),
    ))
  # Shampoo's matmul-only roots (engines/matrix_roots.py) in place of
  # LAPACK's eigh, which runs one matrix at a time on the CPU.
  for method in ("newton", "prism"):
    configs.append((
        f"shampoo, root_method={method} (every 10)", 10,
        lambda method=method: ortho_optax.shampoo(
            0.003, precondition_every=10, precondition_warmup=0,
            root_method=method,
        ),
    ))
  for label, every, factory in configs:
    tx = factory()
    state = tx.init(params)
    spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        (grads, state, params))
    if every is None:
      refresh = plain = ortho_optax.count_matmul_flops(tx.update, *spec)
      period = 1
    else:
      refresh, plain = _period_flops(factory, spec)
      period = every
    average = (refresh + (period - 1) * plain) / period
    row = dict(refresh=refresh, plain=plain, average=average, times=[])
    if not args.flops_only:
      steps = _SCAN_STEPS

      def run(carry, g, tx=tx):
        # The parameters are carried and updated, so that the updates are
        # used (XLA would drop an unused orthogonalization); the gradients
        # are an argument, not constants XLA would fold at compile time.
        def body(carry, _):
          s, p = carry
          u, s = tx.update(g, s, p)
          return (s, optax.apply_updates(p, u)), None

        return jax.lax.scan(body, carry, None, length=_SCAN_STEPS)[0]

      fn = jax.jit(run)
      # Past the first step (SOAP's initialization): a training state.
      state = jax.block_until_ready(fn((state, params), grads))
      row.update(fn=fn, state=state, steps=steps)
    rows[label] = row
    print(f"# {label}: traced", file=sys.stderr, flush=True)
  if not args.flops_only:
    for _ in range(args.repeats):
      for row in rows.values():
        t0 = time.perf_counter()
        jax.block_until_ready(row["fn"](row["state"], grads))
        row["times"].append((time.perf_counter() - t0) / row["steps"])
  muon = rows["muon"]
  lines = [
      "| optimizer | GFLOP refresh step | GFLOP other step"
      " | GFLOP / step (avg) | FLOPs / muon | ms / step | time / muon |",
      "|---|---:|---:|---:|---:|---:|---:|",
  ]
  for label, row in rows.items():
    if row["times"]:
      ms = statistics.median(row["times"]) * 1e3
      t = f"{ms:.0f} | {ms / (statistics.median(muon['times']) * 1e3):.3f}"
    else:
      t = "— | —"
    lines.append(
        f"| {label} | {row['refresh'] / 1e9:.1f} | {row['plain'] / 1e9:.1f}"
        f" | {row['average'] / 1e9:.1f}"
        f" | {row['average'] / muon['average']:.3f} | {t} |"
    )
  caption = (
      f"Shampoo and SOAP against muon on a GPT-like tree: {layers} blocks,"
      f" width {width}, vocabulary {args.vocab} ({dtype.name});"
      " matmul FLOPs from the jaxpr (`count_matmul_flops`), a refresh step"
      " and a step between refreshes traced apart, averaged over the"
      " period; eigh and QR (LAPACK) are not matmuls and not counted. Time:"
      " per step of 10 consecutive steps in one `lax.scan`, median of"
      f" {args.repeats} interleaved rounds"
      f" ({platform.processor() or 'CPU'}, {os.cpu_count()} cores,"
      f" jax {jax.__version__}, {datetime.date.today().isoformat()})."
  )
  return caption + "\n\n" + "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="4 blocks of width 256")
  parser.add_argument("--layers", type=int, default=12)
  parser.add_argument("--width", type=int, default=768)
  parser.add_argument("--vocab", type=int, default=8192)
  parser.add_argument("--dtype", default="float32",
                      choices=("float32", "bfloat16"))
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed rounds (default 3, 10 with --quick)")
  parser.add_argument("--state", default="f32",
                      help="comma-separated: f32 and quantized formats (q8,q4)")
  parser.add_argument("--only", default=None,
                      help="comma-separated row names (baseline always)")
  parser.add_argument("--out", default=None, help="also write the table here")
  parser.add_argument("--second-order", action="store_true",
                      help="the Shampoo/SOAP table (module docstring)")
  parser.add_argument("--flops-only", action="store_true",
                      help="with --second-order: FLOPs, no timing")
  args = parser.parse_args(argv)
  if args.repeats is None:
    args.repeats = 10 if args.quick else 3
  table = second_order(args) if args.second_order else benchmark(args)
  print(table)
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      f.write(table)


if __name__ == "__main__":
  main()
