r"""Where the orthogonalization runs: sharding strategies on 8 CPU devices.

A GPT-like parameter tree (embedding, ``L`` blocks of attention and MLP
kernels, norms, LM head) sharded on two meshes of 8 fake CPU devices:

* ``fsdp8``: 1-D ``fsdp`` mesh, every kernel sharded along its first axis;
* ``fsdp2x4``: ``fsdp x model``; input projections ``P('fsdp', 'model')``,
  output projections ``P('model', 'fsdp')`` (Megatron style).

For each mesh, one optimizer step (``update`` + ``apply_updates``, jitted,
parameters and state donated) of:

* ``chain``: ``scale_by_orthogonalization`` + learning rate, on the hidden
  matrices only, for each ``sharding`` strategy;
* ``muon``: the named :func:`ortho_optax.muon` (AdamW on the rest), for each
  strategy;
* ``optax``: ``optax.contrib.muon`` with the same matrices routed to it;
* with ``--rows``: the low-rank ``dion``, ``dion2``, ``trion`` (rank 1/4)
  for each strategy, and with ``--meshes dp8`` a data-parallel mesh (every
  parameter replicated on 8 devices), where Dion2 and Trion bring back only
  their low-rank factors;
* with ``--rows shampoo,soap``: the second-order ``shampoo`` (inverse
  roots by ``eigh``), ``shampoo-newton`` (by the coupled Newton iteration,
  matmuls only) and ``soap`` at ``precondition_every=1``, each twice: a
  refresh step (new roots; SOAP's power iteration and QR) and a step
  between refreshes (the step's branch is fixed at trace time,
  ``transforms.kronecker.FORCE_REFRESH``, so each program holds one kind
  of step). Their table adds ``LAPACK``: the ``eigh`` / ``qr`` calls one
  device runs (:func:`ortho_optax.parallel.hlo.custom_calls`), which are
  not matmuls, as the sum of ``n^3`` over the matrices factored.

Our transforms run with Explicit mesh axes (layouts read from the types)
and with Auto axes without any hint (no ``param_shardings``: the layouts
are the ones ``init`` recorded from the placed parameters); optax with
Auto axes (under Explicit axes it raises ``ShardingTypeError`` on these
parameters; the row says so). All use
plain Newton-Schulz in float32, 5 steps (ours: ``method="newton_schulz",
coeffs="muon"``; optax's default coefficients), so the work is the same.

Columns, per device:

* ``GFLOP``: matmul FLOPs of the compiled per-device program, loops counted
  by their trip counts (:func:`ortho_optax.compiled_matmul_flops`), the
  forward-free optimizer step only;
* ``collectives``: bytes through collectives (operand + result bytes of
  every all-to-all / all-gather / all-reduce / reduce-scatter /
  collective-permute, loops times trip counts;
  :func:`ortho_optax.collective_bytes`), in MiB and as a multiple of the
  bytes of the orthogonalized parameters (global, unsharded);
* ``peak MiB``: ``memory_analysis()``: arguments + outputs + temporaries -
  aliased (donated) buffers;
* ``remat``: XLA's "Involuntary full rematerialization" warnings while
  compiling the step (read from the process's stderr);
* ``ms``: median wall time of one step over ``--repeats`` runs. The 8
  devices share this machine's cores, so times measure total work, not a
  pod's speed.

Usage::

  python benchmarks/sharding.py [--quick] [--out benchmarks/results/x.md]
  python benchmarks/sharding.py --rows muon,dion,dion2,trion \
      --meshes fsdp8,fsdp2x4,dp8 --out benchmarks/results/sharding_low_rank.md
  python benchmarks/sharding.py --rows shampoo,soap --repeats 0 \
      --append benchmarks/results/sharding_cpu.md

``--repeats 0`` compiles and counts without running (no ``ms``);
``--append`` adds the table to a results file as a section.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

# One OpenBLAS thread: its LAPACK calls (the QR of Dion and Dion2) otherwise
# spin against XLA's own threads, 10-100x slower or stalled, on a few cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import ortho_optax  # noqa: E402
from ortho_optax.parallel import hlo  # noqa: E402
from ortho_optax.transforms import kronecker  # noqa: E402

NS = {"method": "newton_schulz", "coeffs": "muon"}
MESHES = {
    "fsdp8": ((8,), ("fsdp",)),
    "fsdp2x4": ((2, 4), ("fsdp", "model")),
    # Data parallelism: every parameter replicated on 8 devices.
    "dp8": ((8,), ("data",)),
}
# The rows of the default run; --rows adds the low-rank optimizers.
DEFAULT_ROWS = ("chain", "muon", "optax")
LOW_RANK = ("dion", "dion2", "trion")
# --rows shampoo,soap: these, each as a refresh step and a step between.
SECOND_ORDER = ("shampoo", "shampoo-newton", "soap")
STEPS = {"refresh": True, "between": False}
STRATEGIES = (None, "gather", "distribute")


NOTES = """\
Per device: GFLOP = matmul FLOPs of the compiled program, loops times trip
counts; collectives = operand + result bytes of every collective, loops
times trip counts, and that over the bytes of the orthogonalized matrices;
peak = arguments + outputs + temporaries - donated (memory_analysis); ms =
median wall time of one step (update + apply_updates, donated). The 8
devices are fake CPU devices sharing the machine's cores: collectives are
memory copies and the devices do not run in parallel, so wall times measure
total work, not a pod's speed; FLOPs and bytes are the per-device numbers a
pod would see. `distribute` needs 1/8 of the single-device FLOPs plus the
zero matrices that pad stacks of 4 (qkv, attention out) to 8; with 4 blocks
on 8 devices that is 3.19 instead of 2.35 GFLOP. remat = XLA's "Involuntary
full rematerialization" warnings while compiling the step.

Auto rows pass no hints (`param_shardings`): the transform reads the
layouts from the placed parameters that `init` received. Before it did,
`distribute` on the 2-D mesh under Auto axes moved 51.0 MiB (4.25x) with
2 remat warnings per compile (XLA's own resharding path); now 16.0 MiB
(1.33x), as with Explicit axes.
"""

SECOND_ORDER_NOTES = """
Second order: `shampoo` (inverse roots by eigh), `shampoo-newton` (by the
coupled Newton iteration, matmuls only) and `soap`, all at
precondition_every=1. `refresh`: a step that recomputes the roots (SOAP:
its power iteration and QR of the eigenbases); `between`: a step that does
not; each program is traced as one kind of step
(`transforms.kronecker.FORCE_REFRESH`). LAPACK: the eigh / QR calls one
device runs (geqrf; its orgqr is not counted again), with the sum of n^3
over the matrices; they are not matmuls, so GFLOP leaves them out. `gather`
runs every matrix's refresh on every device (the whole work); `distribute`
splits each stack of same-shape statistics over the devices (one matrix's
refresh on one device, in a shard_map) and all-gathers the results, so its
refresh work is 1/8 of gather's where each stack holds a multiple of 8
matrices (stacks are padded with zeros to a multiple of 8). x params: over
the bytes of the preconditioned (hidden) matrices.
"""


def gpt_params(d_model: int, layers: int, vocab: int, key):
  """A GPT-like tree; kernels are ``(in, out)`` as in Flax."""
  keys = iter(jax.random.split(key, 6 * layers + 2))

  def dense(i, o):
    return jax.random.normal(next(keys), (i, o)) / jnp.sqrt(i)

  params = {
      "embed": {"embedding": dense(vocab, d_model)},
      "lm_head": {"kernel": dense(d_model, vocab)},
      "final_norm": {"scale": jnp.ones(d_model)},
  }
  for i in range(layers):
    params[f"block{i}"] = {
        "attn": {
            "qkv": {"kernel": dense(d_model, 3 * d_model)},
            "out": {"kernel": dense(d_model, d_model)},
        },
        "mlp": {
            "up": {"kernel": dense(d_model, 4 * d_model)},
            "down": {"kernel": dense(4 * d_model, d_model)},
        },
        "norm1": {"scale": jnp.ones(d_model)},
        "norm2": {"scale": jnp.ones(d_model)},
    }
  return params


def param_specs(params, mesh_name):
  """FSDP (and Megatron-style model-parallel) specs for the tree."""

  def spec(path, x):
    key = jax.tree_util.keystr(path)
    if x.ndim < 2 or mesh_name == "dp8":
      return P()
    if mesh_name == "fsdp8":
      return P("fsdp", None)
    if any(name in key for name in ("'out'", "'down'", "lm_head")):
      return P("model", "fsdp")
    return P("fsdp", "model")

  return jax.tree_util.tree_map_with_path(spec, params)


def is_hidden_matrix(path, x) -> bool:
  return x.ndim == 2 and not ortho_optax.routing.is_embedding_or_head(path)


def optimizers(params):
  """``{(optimizer, strategy): GradientTransformation}``."""
  labels = jax.tree_util.tree_map_with_path(
      lambda p, x: "orthogonalize" if is_hidden_matrix(p, x) else "adam",
      params,
  )
  out = {}
  for strategy in STRATEGIES:
    out["chain", strategy] = optax.partition(
        {
            "orthogonalize": optax.chain(
                ortho_optax.scale_by_orthogonalization(
                    sharding=strategy, **NS
                ),
                optax.scale_by_learning_rate(0.02),
            ),
            "adam": optax.set_to_zero(),
        },
        labels,
    )
    out["muon", strategy] = ortho_optax.muon(0.02, sharding=strategy, **NS)
    # Low-rank methods at their default rank (1/4 of the shorter side); the
    # Newton-Schulz of Dion2 and Trion in its plain form, as Muon's here.
    out["dion", strategy] = ortho_optax.dion(0.02, sharding=strategy)
    for name in ("dion2", "trion"):
      out[name, strategy] = getattr(ortho_optax, name)(
          0.02, sharding=strategy, method="newton_schulz"
      )
    # Second order at their recommended learning rates; every step may
    # refresh (the benchmark fixes which kind of step each program is).
    out["shampoo", strategy] = ortho_optax.shampoo(
        0.003, sharding=strategy, precondition_every=1
    )
    out["shampoo-newton", strategy] = ortho_optax.shampoo(
        0.003, sharding=strategy, precondition_every=1, root_method="newton"
    )
    out["soap", strategy] = ortho_optax.soap(
        0.003, sharding=strategy, precondition_every=1
    )
  dims = jax.tree_util.tree_map_with_path(
      lambda p, x: optax.contrib.MuonDimensionNumbers(0, 1)
      if is_hidden_matrix(p, x)
      else None,
      params,
  )
  out["optax", None] = optax.contrib.muon(
      0.02, muon_weight_dimension_numbers=dims
  )
  return out


def compile_counting_remat(lowered):
  """Compiles, counting XLA's involuntary-rematerialization warnings.

  XLA logs them from C++ to file descriptor 2, so the descriptor itself is
  redirected to a file while compiling, then the text is passed on.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as log:
    os.dup2(log.fileno(), 2)
    try:
      compiled = lowered.compile()
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
    log.seek(0)
    text = log.read().decode(errors="replace")
  sys.stderr.write(text)
  return compiled, text.count("Involuntary full rematerialization")


@contextlib.contextmanager
def forced_refresh(value):
  """Shampoo's and SOAP's steps traced as refresh steps (``True``), as
  steps between refreshes (``False``), or as they are (``None``)."""
  kronecker.FORCE_REFRESH = value
  try:
    yield
  finally:
    kronecker.FORCE_REFRESH = None


def lapack_n3(text: str) -> tuple[int, float]:
  """LAPACK factorizations one device runs: ``(count, sum of n^3)`` over
  the ``eigh`` and Householder-QR calls (``orgqr`` completes a ``geqrf``
  and is not counted again)."""
  calls = n3 = 0
  for (target, shape), times in hlo.custom_calls(text).items():
    if not target.startswith("lapack_") or "orgqr" in target:
      continue
    dims = [int(d) for d in shape.partition("[")[2].rstrip("]").split(",")]
    calls += times
    n3 += times * dims[-1] ** 2 * dims[-2]
  return calls, n3


def measure(tx, params, repeats: int):
  state = tx.init(params)
  grads = jax.tree.map(lambda x: jnp.cos(3.0 * x), params)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  fn = jax.jit(step, donate_argnums=(0, 1))
  compiled, remat = compile_counting_remat(fn.lower(params, state, grads))
  text = compiled.as_text()
  mem = compiled.memory_analysis()
  peak = (
      mem.argument_size_in_bytes
      + mem.output_size_in_bytes
      + mem.temp_size_in_bytes
      - mem.alias_size_in_bytes
  )
  times = []
  # Warm-up: the first call's outputs may be laid out differently from the
  # freshly initialized inputs, so the second call can compile once more.
  for _ in range(2 if repeats else 0):
    params, state = fn(params, state, grads)
  jax.block_until_ready(params)
  for _ in range(repeats):
    t0 = time.perf_counter()
    params, state = fn(params, state, grads)
    jax.block_until_ready(params)
    times.append(time.perf_counter() - t0)
  return {
      "gflop": ortho_optax.compiled_matmul_flops(text) / 1e9,
      "bytes": ortho_optax.collective_bytes(text).total,
      "peak": peak,
      "remat": remat,
      "ms": 1e3 * statistics.median(times) if times else None,
      "lapack": lapack_n3(text),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="a small tree")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default=None, help="also write the table")
  parser.add_argument(
      "--rows", default=",".join(DEFAULT_ROWS),
      help="comma-separated optimizers: chain, muon, optax, dion, dion2,"
      " trion, shampoo, shampoo-newton, soap",
  )
  parser.add_argument(
      "--meshes", default="fsdp8,fsdp2x4",
      help=f"comma-separated meshes of {sorted(MESHES)}",
  )
  parser.add_argument(
      "--axes", default="Explicit,Auto",
      help="comma-separated mesh axis types: Explicit, Auto",
  )
  parser.add_argument(
      "--layers", type=int, default=None,
      help="blocks of the tree (default 4; 2 with --quick)",
  )
  parser.add_argument(
      "--append", default=None,
      help="also append the tables to this file, as a section",
  )
  parser.add_argument(
      "--title", default="Shampoo and SOAP",
      help="the --append section's title",
  )
  args = parser.parse_args(argv)
  rows_wanted = args.rows.split(",")
  meshes = {k: MESHES[k] for k in args.meshes.split(",")}
  d_model, layers, vocab = (128, 2, 256) if args.quick else (256, 4, 512)
  layers = args.layers or layers
  # Host copies: every mesh gets fresh buffers (the step donates them).
  base = jax.tree.map(
      np.asarray, gpt_params(d_model, layers, vocab, jax.random.key(0))
  )
  matrix_bytes = sum(
      x.nbytes
      for path, x in jax.tree_util.tree_leaves_with_path(base)
      if is_hidden_matrix(path, x)
  )
  single = ortho_optax.orthogonalize_flops
  ns_gflop = (
      sum(
          single(x.shape, **NS)
          for path, x in jax.tree_util.tree_leaves_with_path(base)
          if is_hidden_matrix(path, x)
      )
      / 1e9
  )
  header = (
      f"GPT-like tree: d_model={d_model}, {layers} blocks, vocab {vocab};"
      f" {matrix_bytes / 2**20:.2f} MiB of hidden matrices (float32),"
      f" Newton-Schulz on all of them = {ns_gflop:.2f} GFLOP on one device."
      f" jax {jax.__version__}, optax {optax.__version__},"
      f" {jax.device_count()} {jax.devices()[0].platform.upper()} devices"
      f" on {os.cpu_count()} cores ({platform.machine()})."
  )
  lines = [
      "| mesh | axes | optimizer | sharding | GFLOP/device |"
      " collectives MiB (x params) | peak MiB/device | remat | ms/step |",
      "|---|---|---|---|---:|---:|---:|---:|---:|",
  ]
  second = [
      "| mesh | axes | optimizer | step | sharding | GFLOP/device |"
      " LAPACK calls (sum n^3, G)/device | collectives MiB (x params) |"
      " peak MiB/device | remat | ms/step |",
      "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|",
  ]
  results = {}
  txs = optimizers(base)
  wanted_axes = [getattr(AxisType, a) for a in args.axes.split(",")]
  for mesh_name, (shape, names) in meshes.items():
    for optimizer, strategy in txs:
      if optimizer not in rows_wanted:
        continue
      if optimizer == "optax":
        # optax under Explicit axes raises; the row records it.
        axis_types = (AxisType.Auto, AxisType.Explicit)
      else:
        axis_types = (AxisType.Explicit, AxisType.Auto)
      steps = STEPS if optimizer in SECOND_ORDER else {None: None}
      rows = [
          (a, step) for a in axis_types if a in wanted_axes for step in steps
      ]
      for axis_type, step in rows:
        mesh = jax.make_mesh(shape, names, axis_types=(axis_type,) * len(names))
        specs = param_specs(base, mesh_name)
        params = jax.tree.map(
            lambda x, s, mesh=mesh: jax.device_put(x, NamedSharding(mesh, s)),
            base,
            specs,
        )
        tx = txs[optimizer, strategy]
        cells = f"| {mesh_name} | {axis_type.name} | {optimizer} |"
        cells += f" {strategy} |" if step is None else f" {step} | {strategy} |"
        table = lines if step is None else second
        try:
          with forced_refresh(steps[step]):
            r = measure(tx, params, args.repeats)
        except Exception as e:  # noqa: BLE001  (the table records it)
          table.append(f"{cells} {type(e).__name__} | | | | |")
          print(table[-1], flush=True)
          continue
        results[mesh_name, axis_type.name, optimizer, step, strategy] = r
        ms = "-" if r["ms"] is None else f"{r['ms']:.0f}"
        lapack = ""
        if step is not None:
          calls, n3 = r["lapack"]
          lapack = f" {calls} ({n3 / 1e9:.3f}) |"
        table.append(
            f"{cells} {r['gflop']:.2f} |{lapack}"
            f" {r['bytes'] / 2**20:.1f} ({r['bytes'] / matrix_bytes:.2f}) |"
            f" {r['peak'] / 2**20:.1f} | {r['remat']} | {ms} |"
        )
        print(table[-1], flush=True)
  parts = [header, ""]
  if len(lines) > 2:
    parts += lines + [""]
  if len(second) > 2:
    parts += second + ["", refresh_summary(results), ""]
  table = "\n".join(parts)
  print()
  print(table)
  command = "python benchmarks/sharding.py " + shlex.join(
      sys.argv[1:] if argv is None else argv
  )
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      f.write("# Sharding strategies, one optimizer step\n\n")
      f.write(f"Produced by `{command}`.\n\n")
      f.write(table + "\n")
      f.write(NOTES)
  if args.append:
    with open(args.append, "a") as f:
      f.write(f"\n## {args.title}\n\nProduced by `{command}`.\n\n")
      f.write(table)
      if len(second) > 2:
        f.write(SECOND_ORDER_NOTES)


def refresh_summary(results) -> str:
  """Per mesh and optimizer: each strategy's refresh work per device (a
  refresh step's minus a step between refreshes': matmul GFLOP, and the
  LAPACK sum of n^3), and ``distribute`` over ``gather`` (which runs every
  matrix's refresh on every device: the whole work)."""
  out = [
      "Refresh work per device (refresh step minus step between):",
      "",
      "| mesh | axes | optimizer | matmul GFLOP None / gather /"
      " distribute | distribute / gather | LAPACK n^3 (G) None / gather /"
      " distribute | distribute / gather |",
      "|---|---|---|---|---:|---|---:|",
  ]
  keys = sorted({k[:3] for k in results}, key=lambda k: (k[0], k[1], k[2]))
  for mesh_name, axes, optimizer in keys:
    flops, n3 = {}, {}
    for strategy in STRATEGIES:
      a = results.get((mesh_name, axes, optimizer, "refresh", strategy))
      b = results.get((mesh_name, axes, optimizer, "between", strategy))
      if a is None or b is None:
        continue
      flops[strategy] = a["gflop"] - b["gflop"]
      n3[strategy] = (a["lapack"][1] - b["lapack"][1]) / 1e9

    def cells(d):
      return " / ".join(
          f"{d[k]:.3f}" if k in d else "-" for k in STRATEGIES
      )

    def ratio(d):
      if "gather" not in d or "distribute" not in d or not d["gather"]:
        return "-"
      return f"{d['distribute'] / d['gather']:.3f}"

    out.append(
        f"| {mesh_name} | {axes} | {optimizer} | {cells(flops)} |"
        f" {ratio(flops)} | {cells(n3)} | {ratio(n3)} |"
    )
  return "\n".join(out)

if __name__ == "__main__":
  main()
