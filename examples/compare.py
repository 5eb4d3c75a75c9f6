r"""Compares optimizers on the LM example: same model, data, seeds and steps.

For every optimizer: a learning-rate sweep (``--lr_factors`` times its
default learning rate) on the first seed; the best learning rate is then run
on the other seeds. Reported at the best learning rate, as the mean over the
seeds: the best validation loss, the steps to reach AdamW's best validation
loss, and the training wall time per step. Writes ``compare.md`` (the table),
``compare.png`` (the plot) and ``compare.json`` to ``--workdir``. Runs that
already finished in ``--workdir`` are reused, so an interrupted comparison
continues where it stopped.

Run from the repository root::

  # About an hour on 2 idle CPU cores; the table and plot of the README:
  python examples/compare.py --workdir=runs/compare --results_dir=examples/results
  # A few minutes, a smoke test:
  python examples/compare.py --workdir=/tmp/compare --quick

Optimizers that this installation of ``ortho_optax`` does not have yet are
skipped with a note.
"""

import copy
import json
import math
import os
import pathlib
import statistics
import sys
import time

if __package__ in (None, ""):  # Run as a script: make `examples` importable.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from examples import cli  # noqa: E402
from examples import optimizers  # noqa: E402
from examples import plotting  # noqa: E402
from examples import train  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_OPTIMIZERS = (
    "adamw", "optax_muon", "muon", "turbo_muon", "normuon", "adamuon", "root",
    "auon", "scion", "trust_region",
)
BASELINE = "adamw"
# The reference Muon, and ours with its defaults, for the checks under the
# table.
REFERENCE_MUON = "optax_muon"
OUR_MUON = "muon"
# Optimizers that orthogonalize the momentum of hidden matrices and keep
# AdamW for the rest. Scion and trust_region are norm-LMO methods (spectral
# LMO on hidden matrices, other LMOs elsewhere); AuON does not orthogonalize
# (it is normalized SGD-M to within O(1/N), spec optimizers.md §10).
MUON_FAMILY = (
    "optax_muon", "muon", "turbo_muon", "normuon", "adamuon", "root",
    "hybrid_auon",
)

FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a script, so that importing has no effects."""
  flags.DEFINE_string("workdir", None, "Directory for the runs (and results).")
  flags.DEFINE_string("results_dir", None,
                      "Where compare.md/.png/.json go (default: --workdir).")
  config_flags.DEFINE_config_file(
      "config", str(REPO / "configs" / "lm.py"),
      "The LM configuration every optimizer trains.", lock_config=True,
  )
  flags.DEFINE_list("optimizers", list(DEFAULT_OPTIMIZERS),
                    "Optimizer names (see examples/optimizers.py).")
  flags.DEFINE_list("lr_factors", ["0.5", "1", "2"],
                    "Learning rates swept: these times each default.")
  # Four seeds: AdamW's best, the target every ratio is measured against,
  # moved by 0.036 nats/byte between seeds {0, 1} and {2, 3} (measured).
  flags.DEFINE_list("seeds", ["0", "1", "2", "3"],
                    "Seeds; the sweep runs on the first one.")
  flags.DEFINE_integer("steps", None, "Training steps (default: config's).")
  flags.DEFINE_bool("quick", False,
                    "A few-minute smoke run: tiny model, 60 steps, no sweep,"
                    " two seeds.")


# ----------------------------------------------------------------------------
# Settings.
# ----------------------------------------------------------------------------


def comparison_config(base, steps: int | None = None, quick: bool = False):
  """The LM configuration of the comparison (``base`` with overrides).

  Args:
    base: an LM configuration (``configs/lm.py``).
    steps: training steps; ``None`` keeps ``base``'s.
    quick: shrink to a smoke-test size (a few seconds per run).

  Returns:
    A copy of ``base`` without checkpoints, plot and progress bar.
  """
  config = copy.deepcopy(base)
  config.save_checkpoints = False
  config.restore_checkpoints = False
  config.plot = False
  config.progress_bar = False
  if quick:
    config.num_train_steps = 60
    config.model.d_model = 64
    config.model.num_layers = 2
    config.model.num_heads = 2
    config.data.seq_len = 64
    config.batch_size = 16
    config.eval.num_sequences = 128
    config.eval_every_steps = 10
    config.log_every_steps = 10
  if steps is not None:
    config.num_train_steps = steps
  return config


def run_config(config, name: str, lr: float, seed: int):
  c = copy.deepcopy(config)
  c.optimizer.name = name
  c.optimizer.learning_rate = lr
  c.seed = seed
  return c


def _run_dir(workdir, name, lr, seed) -> pathlib.Path:
  return pathlib.Path(workdir) / "runs" / name / f"lr{lr:.3g}" / f"seed{seed}"


def train_once(config, workdir) -> dict:
  """Trains one run, or reuses it if ``workdir`` holds a finished one."""
  summary_path = pathlib.Path(workdir) / train.SUMMARY_FILE
  if summary_path.exists():
    summary = json.loads(summary_path.read_text())
    old = json.loads((pathlib.Path(workdir) / "config.json").read_text())
    if old == json.loads(config.to_json_best_effort()):
      summary["reused"] = True
      return summary
  summary = train.train_and_evaluate(config, workdir, verbose=False)
  summary["reused"] = False
  return summary


def eval_curve(workdir) -> tuple[np.ndarray, np.ndarray]:
  """``(steps, losses)`` of a run's evaluations."""
  rs = [r for r in train.read_metrics(workdir) if r["split"] == "eval"]
  return (np.array([r["step"] for r in rs], np.float64),
          np.array([r["loss"] for r in rs], np.float64))


def steps_to_reach(steps, losses, target: float) -> float | None:
  """First step where the curve reaches ``target`` (linear interpolation)."""
  below = np.nonzero(losses <= target)[0]
  if not len(below):
    return None
  i = below[0]
  if i == 0:
    return float(steps[0])
  s0, s1, l0, l1 = steps[i - 1], steps[i], losses[i - 1], losses[i]
  return float(s0 + (s1 - s0) * (l0 - target) / (l0 - l1))


# ----------------------------------------------------------------------------
# The comparison.
# ----------------------------------------------------------------------------


def compare(
    config, workdir, names, lr_factors, seeds, results_dir=None
) -> dict:
  """Runs the sweep and the seeds; writes and returns the results.

  Args:
    config: the LM configuration (see ``comparison_config``).
    workdir: directory of the runs (``runs/<optimizer>/lr<lr>/seed<seed>``).
    names: optimizer names; unavailable ones are skipped with a note.
    lr_factors: the sweep, as multiples of each optimizer's default rate.
    seeds: the first one runs the sweep, the others the best rate.
    results_dir: where ``compare.md``, ``compare.png`` and ``compare.json``
      go; ``None`` is ``workdir``.

  Returns:
    ``{"markdown": the table, "rows": one dict per optimizer, "adamw_best"}``.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  out = pathlib.Path(results_dir) if results_dir else workdir
  out.mkdir(parents=True, exist_ok=True)
  skipped = [n for n in names if not optimizers.available(n)]
  for n in skipped:
    print(f"NOTE: skipping {n!r}: ortho_optax has no optimizer of that name"
          " yet.", flush=True)
  names = [n for n in names if n not in skipped]
  t_start = time.perf_counter()
  results = {}
  n_runs = len(names) * (len(lr_factors) + len(seeds) - 1)
  print(
      f"{len(names)} optimizers x ({len(lr_factors)} learning rates + "
      f"{len(seeds) - 1} more seeds) = {n_runs} runs of"
      f" {config.num_train_steps} steps.", flush=True,
  )
  done, durations = 0, []

  def one(name, lr, seed):
    nonlocal done
    rdir = _run_dir(workdir, name, lr, seed)
    t0 = time.perf_counter()
    s = train_once(run_config(config, name, lr, seed), rdir)
    done += 1
    took = "(reused)"
    if not s["reused"]:
      durations.append(time.perf_counter() - t0)
      eta = statistics.mean(durations) * (n_runs - done) / 60
      took = f"{durations[-1]:.0f} s, about {eta:.0f} min left"
    print(
        f"[{done}/{n_runs}] {name:13s} lr={lr:<8.3g} seed={seed}"
        f" best val {s['best_eval_loss']:.4f}"
        f" {1e3 * (s['sec_per_step'] or 0):.0f} ms/step {took}",
        flush=True,
    )
    return s | {"dir": str(rdir)}

  for name in names:
    center = optimizers.default_learning_rate(name)
    lrs = [center * f for f in lr_factors]
    sweep = {lr: one(name, lr, seeds[0]) for lr in lrs}
    best_lr = min(lrs, key=lambda lr: _finite(sweep[lr]["best_eval_loss"]))
    runs = [sweep[best_lr]] + [one(name, best_lr, s) for s in seeds[1:]]
    results[name] = {"lrs": lrs, "sweep": sweep, "best_lr": best_lr,
                     "runs": runs}

  wall = time.perf_counter() - t_start
  # Runs reused from an earlier invocation count with their own wall time.
  wall += sum(r.get("wall_sec") or 0.0 for res in results.values()
              for r in list(res["sweep"].values()) + res["runs"][1:]
              if r["reused"])
  table = summarize(config, results, seeds, lr_factors, skipped, wall)
  (out / "compare.md").write_text(table["markdown"])
  (out / "compare.json").write_text(json.dumps(table["rows"], indent=2))
  plot(results, out / "compare.png", table["adamw_best"])
  print("\n" + table["markdown"], flush=True)
  print(f"Wrote {out / 'compare.md'} and {out / 'compare.png'}.")
  return table


def _finite(x) -> float:
  return x if x is not None and math.isfinite(x) else math.inf


def _mean_curve(runs):
  curves = [eval_curve(r["dir"]) for r in runs]
  steps = curves[0][0]
  n = min(len(c[1]) for c in curves)
  return steps[:n], np.mean([c[1][:n] for c in curves], axis=0)


def summarize(config, results, seeds, lr_factors, skipped, wall) -> dict:
  """The Markdown table and its rows."""
  rows = []
  base = results.get(BASELINE)
  adamw_best = adamw_steps = None
  if base is not None:
    adamw_best = statistics.mean(r["best_eval_loss"] for r in base["runs"])
    steps, curve = _mean_curve(base["runs"])
    adamw_steps = float(steps[int(np.argmin(curve))])
  ref = results.get(REFERENCE_MUON)
  ref_losses = ([r["best_eval_loss"] for r in ref["runs"]]
                if ref is not None else None)
  for name, res in results.items():
    losses = [r["best_eval_loss"] for r in res["runs"]]
    paired = ([a - b for a, b in zip(losses, ref_losses)]
              if ref_losses is not None and len(losses) == len(ref_losses)
              else None)
    steps, curve = _mean_curve(res["runs"])
    reach = (steps_to_reach(steps, curve, adamw_best)
             if adamw_best is not None else None)
    sec = [r["sec_per_step"] for r in res["runs"] if r.get("sec_per_step")]
    rows.append({
        "optimizer": name,
        "best_lr": res["best_lr"],
        "lrs": res["lrs"],
        "best_val_loss": statistics.mean(losses),
        "seed_losses": losses,
        "seed_spread": max(losses) - min(losses),
        "seed_sem": (statistics.stdev(losses) / math.sqrt(len(losses))
                     if len(losses) > 1 else None),
        "paired_delta_vs_reference": paired,
        "steps_to_adamw_best": reach,
        "fraction_of_adamw_steps": (reach / adamw_steps
                                    if reach and adamw_steps else None),
        "ms_per_step": 1e3 * statistics.median(sec) if sec else None,
        "edge_of_sweep": res["best_lr"] in (min(res["lrs"]), max(res["lrs"]))
        and len(res["lrs"]) > 1,
    })

  m = config.model
  tokens = config.batch_size * config.data.seq_len
  n_runs = len(results) * (len(lr_factors) + len(seeds) - 1)
  caption = (
      f"Byte-level LM on `{config.data.path}` ({m.num_layers} layers,"
      f" width {m.d_model}, {m.num_heads} heads, sequence"
      f" {config.data.seq_len}, batch {config.batch_size} = {tokens:,}"
      f" tokens/step), {config.num_train_steps} steps for every optimizer,"
      f" {config.optimizer.schedule} schedule with"
      f" {config.optimizer.warmup_steps:g} warmup, gradient clipping"
      f" {config.optimizer.grad_clip_norm:g}. Validation: fixed"
      f" {config.eval.num_sequences} held-out sequences"
      f" ({config.eval.num_sequences * config.data.seq_len:,} tokens), every"
      f" {config.eval_every_steps} steps. Sweep: learning rate x"
      f" {{{', '.join(f'{f:g}' for f in lr_factors)}}} around each default on"
      f" seed {seeds[0]}"
      + (f", the best one rerun on seed(s) {', '.join(map(str, seeds[1:]))};"
         f" losses are means over {len(seeds)} seeds (± their standard"
         " error; seed spread: largest minus smallest)." if seeds[1:]
         else ".")
      + f" `- {REFERENCE_MUON}, per seed`: this optimizer's best validation"
      f" loss minus {REFERENCE_MUON}'s on the same seed (same initialization"
      " and batches): seeds move every optimizer alike, so these paired"
      " differences are far steadier than the seed spread."
      + " ms/step: median training wall time per step (no compilation or"
      " evaluation), sensitive to other load on the machine."
      + f" Budget: {n_runs} runs, {wall / 60:.1f} min wall time (the runs'"
      f" own, also for runs reused from an earlier invocation) on this"
      f" machine ({os.cpu_count()} CPUs, {jax.default_backend()})."
  )
  lines = [
      caption, "",
      "| optimizer | best lr | best val loss (nats/byte) | seed spread |"
      f" - {REFERENCE_MUON}, per seed |"
      f" steps to AdamW's best ({_fmt(adamw_best, '.4f')}) | x AdamW steps |"
      " ms/step |",
      "|---|---|---|---|---|---|---|---|",
  ]
  reach_none = "-" if adamw_best is None else "not reached"
  for r in rows:
    lines.append(
        f"| {r['optimizer']} | {r['best_lr']:.3g}"
        f"{' (edge)' if r['edge_of_sweep'] else ''} |"
        f" {r['best_val_loss']:.4f}{_sem(r['seed_sem'])} |"
        f" {r['seed_spread']:.4f} |"
        f" {_paired(r['paired_delta_vs_reference'])} |"
        f" {_fmt(r['steps_to_adamw_best'], '.0f', reach_none)} |"
        f" {_fmt(r['fraction_of_adamw_steps'], '.2f')} |"
        f" {_fmt(r['ms_per_step'], '.0f')} |"
    )
  lines += checks(rows)
  if skipped:
    lines += ["", "Skipped (not in this ortho_optax): " + ", ".join(skipped)]
  if any(r["edge_of_sweep"] for r in rows):
    lines += ["", "(edge): the best learning rate is at the edge of the sweep."]
  return {"markdown": "\n".join(lines) + "\n", "rows": rows,
          "adamw_best": adamw_best}


def checks(rows: list[dict]) -> list[str]:
  """Lines under the table: the comparison's targets, measured.

  * every Muon-family optimizer reaches AdamW's best validation loss in at
    most 0.5x AdamW's steps;
  * our ``muon`` (defaults) is within 0.005 nats of ``optax.contrib.muon``;
  * our best optimizer beats ``optax.contrib.muon`` by at least 0.01 nats.
  """
  by_name = {r["optimizer"]: r for r in rows}
  out = ["", "Checks (means over seeds, each optimizer at its best learning"
         " rate):"]
  if BASELINE in by_name:
    family = [n for n in by_name if n in MUON_FAMILY]
    others = [n for n in by_name if n not in MUON_FAMILY and n != BASELINE]

    def frac(n):
      f = by_name[n]["fraction_of_adamw_steps"]
      return "not reached" if f is None else f"{f:.2f}"

    def ok(n):
      f = by_name[n]["fraction_of_adamw_steps"]
      return f is not None and f <= 0.5

    if family:
      out.append(
          "- Muon family at <= 0.5x AdamW's steps: " + ", ".join(
              f"{n} {frac(n)} ({'yes' if ok(n) else 'no'})" for n in family)
      )
    if others:
      out.append("- other methods, x AdamW's steps: " + ", ".join(
          f"{n} {frac(n)}" for n in others))
  if REFERENCE_MUON in by_name and OUR_MUON in by_name:
    ref = by_name[REFERENCE_MUON]["best_val_loss"]
    gap = by_name[OUR_MUON]["best_val_loss"] - ref
    out.append(
        f"- {OUR_MUON} - {REFERENCE_MUON}: {gap:+.4f} nats/byte (target:"
        f" <= +0.005: {'yes' if gap <= 0.005 else 'no'})"
    )
    ours = [r for r in rows
            if r["optimizer"] not in (REFERENCE_MUON, BASELINE)]
    if ours:
      best = min(ours, key=lambda r: r["best_val_loss"])
      margin = ref - best["best_val_loss"]
      out.append(
          f"- best of ours: {best['optimizer']} {best['best_val_loss']:.4f},"
          f" {margin:.4f} below {REFERENCE_MUON} (target: >= 0.01:"
          f" {'yes' if margin >= 0.01 else 'no'})"
      )
  return out if len(out) > 2 else []


def _sem(sem) -> str:
  return "" if sem is None else f" ± {sem:.4f}"


def _paired(deltas) -> str:
  return "-" if deltas is None else " / ".join(f"{d:+.4f}" for d in deltas)


def _fmt(x, spec, none="-"):
  return none if x is None else format(x, spec)


def plot(results, out, adamw_best):
  """Validation curves at the best learning rates, and the sweeps."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=120)
  for i, (name, res) in enumerate(results.items()):
    color = plt.cm.tab10(i % 10)
    steps, curve = _mean_curve(res["runs"])
    ax.plot(steps, curve, "-", color=color, lw=1.5,
            label=f"{name} (lr {res['best_lr']:.3g})")
    lrs = res["lrs"]
    ax2.plot(lrs, [res["sweep"][lr]["best_eval_loss"] for lr in lrs], "o-",
             color=color, label=name)
  if adamw_best is not None:
    ax.axhline(adamw_best, color="k", ls="--", lw=0.8, label="AdamW's best")
  ax.set_xlabel("step")
  ax.set_ylabel("validation loss (nats/byte), mean over seeds")
  ax.set_title("validation loss at each optimizer's best learning rate")
  lo = min(np.min(_mean_curve(r["runs"])[1]) for r in results.values())
  ax.set_ylim(lo - 0.05, lo + 1.0)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  ax2.set_xscale("log")
  ax2.set_xlabel("peak learning rate")
  ax2.set_ylabel("best validation loss (first seed)")
  ax2.set_title("learning-rate sweep")
  ax2.set_ylim(lo - 0.05, lo + 0.6)
  ax2.grid(alpha=0.3, which="both")
  fig.tight_layout()
  # Plain labels ("0.02") far enough apart not to run into each other.
  plotting.label_log_axis(ax2, "x", min_gap=0.6)
  fig.savefig(out)
  plt.close(fig)


def main(argv):
  del argv  # cli.run has checked that there are no positional arguments.
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  config = comparison_config(FLAGS.config, FLAGS.steps, FLAGS.quick)
  factors = FLAGS.lr_factors
  seeds = FLAGS.seeds
  if FLAGS.quick and not FLAGS["lr_factors"].present:
    factors = ["1"]  # No sweep in the smoke run.
  if FLAGS.quick and not FLAGS["seeds"].present:
    seeds = seeds[:2]
  compare(
      config, FLAGS.workdir, FLAGS.optimizers,
      [float(f) for f in factors], [int(s) for s in seeds],
      FLAGS.results_dir,
  )


if __name__ == "__main__":
  with cli.flag_definitions():  # The default config applies overrides here.
    _define_flags()
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
