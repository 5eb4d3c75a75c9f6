r"""Compares optimizers on several tasks: same model, data, seeds and steps.

On each task (``--task``; by default every task of ``TASKS``) and for every
optimizer:

1. its default learning rate (``examples/optimizers.py``) on every seed;
2. a learning-rate sweep (``--lr_factors`` times the default: by default
   octaves, x1/8 to x8) on the first seed (on the digits, whose accuracy
   is noisy, on all four seeds, the best by their mean; ``--sweep_seeds``,
   ``TaskSpec``); a best rate at an edge of the
   grid is swept past, one more step of the grid at a time, until it is
   not at the edge (at most ``--extend_edges`` steps; a best still at the
   edge is marked "(edge)" in the table);
3. the best swept learning rate on the other seeds;
4. any other run of that grid already finished in the workdir (a rate
   that was once the default or the best), so that no rate is scored on
   fewer seeds than the workdir holds.

The runs are in that order, so an interrupted comparison has the defaults
first. Reported per task, as means over the seeds: the metric at the
default and at the best learning rate, each optimizer's difference to
``optax.contrib.muon`` on the same seed (same initialization and batches),
the steps to reach AdamW's best, and the training wall time per step. The
metric is the best validation loss of the language models (nats/byte) and
the best test accuracy of the digits classifier (its loss too).

Writes to ``--results_dir`` (default: ``--workdir``):

* ``<task>/compare.md``, ``<task>/compare.png``, ``<task>/compare.json``:
  each task's table, plot and rows;
* ``summary.md``, ``summary.json``: the summary across tasks, and
  ``defaults.md``: the learning rate that ``recommend_defaults`` picks for
  each optimizer over the tasks.

Runs that already finished in ``--workdir`` are reused, so an interrupted
comparison continues where it stopped; ``--reuse_only`` writes the tables
from the finished runs alone (the missing ones are listed).

Run from the repository root::

  # Up to about an hour per task on 2 idle CPU cores:
  python examples/compare.py --workdir=runs/compare \
    --results_dir=examples/results
  # One task:
  python examples/compare.py --workdir=runs/compare --task=lm_deep
  # A few minutes, a smoke test of every task:
  python examples/compare.py --workdir=/tmp/compare --quick

A ``--task`` may also be the path of a configuration file (its ``task``
field, ``lm`` or ``digits``, chooses the metric). Optimizers that this
installation of ``ortho_optax`` does not have yet are skipped with a note.
"""

import copy
import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import statistics
import sys
import time

# One OpenBLAS thread: its LAPACK calls (the QR of Dion and Dion2) otherwise
# spin against XLA's own threads, 10-100x slower or stalled, on a few cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

if __package__ in (None, ""):  # Run as a script: make `examples` importable.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from examples import cli  # noqa: E402
from examples import optimizers  # noqa: E402
from examples import plotting  # noqa: E402
from examples import train  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_OPTIMIZERS = (
    "adamw", "optax_muon", "muon", "turbo_muon", "normuon", "adamuon", "root",
    "auon", "hybrid_auon", "scion", "trust_region", "dion", "dion2", "trion",
    "soap", "shampoo",
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
# The targets (issue 16): a default within this much of the optimizer's own
# best swept learning rate, in each metric's unit (nats; accuracy, 0.005 =
# 0.5%).
DEFAULT_TOLERANCE = {"loss": 0.01, "accuracy": 0.005}


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A task of the comparison: a configuration file and its metric.

  Attributes:
    name: the task's name (its folder in the workdir and results).
    config: the configuration file, relative to the repository root.
    metric: ``"loss"`` (the best validation loss, lower is better) or
      ``"accuracy"`` (the best test accuracy, higher is better).
    seeds: the task's own seeds, used unless ``--seeds`` is given
      (``None``: ``--seeds``' default).
    sweep_seeds: how many of them the sweep runs on, unless
      ``--sweep_seeds`` is given.
  """

  name: str
  config: str
  metric: str
  seeds: tuple[int, ...] | None = None
  sweep_seeds: int = 1


# The tasks differ in model, depth, context and schedule: a 2-layer
# byte-level LM with context 64 and a cosine schedule; a 4-layer one with
# context 128 and warmup-stable-decay; a CNN on 8x8 digits (cosine, no
# warmup, no clipping). One task's full comparison (14 optimizers, 7
# learning rates on seed 0 and the default on seed 1: 112 runs, up to 14
# more where a default is not the best and up to 3 more per optimizer past
# a best rate at an edge) is about 2 to 2.5 hours on 2 idle CPU cores for
# the LM (about 60 s a run), less for the others (the deep LM's runs about
# 35 s, the digits' about 6 s).
TASKS = {
    "lm": TaskSpec("lm", "configs/lm.py", "loss"),
    "lm_deep": TaskSpec("lm_deep", "configs/lm_deep.py", "loss"),
    # A run takes 5 s, and one seed's best accuracy is noisy (one test
    # image is 0.22%; seeds differ by 0.5-1%): the sweep runs on 4 seeds.
    "digits_cnn": TaskSpec("digits_cnn", "configs/digits_cnn.py", "accuracy",
                           seeds=(0, 1, 2, 3), sweep_seeds=4),
}

# Under the recommendation (defaults.md): which learning rates a paper's
# rule already carries across shapes, so that one number serves every width.
SCALING_NOTES = """\
How the learning rates carry across shapes (the rules are in the
optimizers, so a default is a number per optimizer, not per model):

- `muon`, `turbo_muon`, `normuon` (its default Frobenius rescale), `auon`,
  `hybrid_auon`: Muon's factor sqrt(max(1, fan_out / fan_in)) per matrix
  on an update of spectral norm 1, which is the spectral condition of
  feature learning (Yang, Simon and Bernstein 2023: spectral norm ~
  sqrt(fan_out / fan_in)) wherever fan_out >= fan_in: the learning rate
  transfers across width at a fixed aspect ratio, muP-style, with no
  1/width factor.
- `root`, `adamuon`, `normuon(rescale="rms")`: the update's RMS is set to
  0.2 (Moonlight: 0.2 sqrt(max(fan_in, fan_out)) for an orthogonal matrix;
  Liu et al. 2025), AdamW's, so their learning rate is on AdamW's scale
  and moves with width as AdamW's does.
- `scion`, `trust_region`: the learning rate is a radius in each layer's
  norm; Scion's norms carry the sqrt(fan_out / fan_in) factors, which is
  why Pethick et al. (2025) find it transfers across width.
- Depth: none of the papers gives these optimizers a rule for the number
  of layers (depth-muP scales the residual branches, not the learning
  rate), so a default chosen over the tasks is a number, not a rule.
- The two language models differ in width (128 and 64) but not in aspect
  ratio (every matrix is (d, 3d), (d, d), (d, 4d) or (4d, d)), so Muon's
  factor is the same on both; under muP, AdamW's hidden-layer learning
  rate (and so that of the RMS-0.2 optimizers) would be 2x higher on the
  narrower one.
"""

FLAGS = flags.FLAGS


# The learning-rate grid: seven octaves around each default.
OCTAVES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _define_flags():
  """Defined only when run as a script, so that importing has no effects."""
  flags.DEFINE_string("workdir", None, "Directory for the runs (and results).")
  flags.DEFINE_string("results_dir", None,
                      "Where the tables and plots go (default: --workdir).")
  flags.DEFINE_list("task", list(TASKS),
                    f"Tasks: names ({', '.join(TASKS)}) or configuration"
                    " files.")
  flags.DEFINE_list("optimizers", list(DEFAULT_OPTIMIZERS),
                    "Optimizer names (see examples/optimizers.py).")
  flags.DEFINE_list("lr_factors", [str(f) for f in OCTAVES],
                    "Learning rates swept: these times each default.")
  # Two seeds keep a task's comparison near an hour on 2 cores; the paired
  # differences are steady across seeds, but AdamW's best (the target of
  # the steps column) moved by 0.036 nats/byte between seeds {0, 1} and
  # {2, 3} on the LM (measured), so --seeds=0,1,2,3 is the careful choice.
  flags.DEFINE_integer("extend_edges", 3,
                       "Grid steps to sweep past a best rate at an edge of"
                       " the grid (0: none).")
  flags.DEFINE_list("seeds", ["0", "1"],
                    "Seeds; the sweep runs on the first --sweep_seeds. A"
                    " task with seeds of its own (digits_cnn: 0-3) uses them"
                    " unless this flag is given.")
  flags.DEFINE_integer("sweep_seeds", None,
                       "How many of the seeds the sweep runs on (the best"
                       " rate by their mean; default: the task's, 1 for the"
                       " LMs, 4 for digits_cnn).")
  flags.DEFINE_integer("steps", None, "Training steps (default: each"
                       " task's configuration's).")
  flags.DEFINE_bool("quick", False,
                    "A few-minute smoke run: tiny models, 60 steps, no sweep,"
                    " two seeds.")
  flags.DEFINE_bool("reuse_only", False,
                    "Train nothing: write the tables from the runs already in"
                    " --workdir.")
  flags.DEFINE_bool("summary_only", False,
                    "Train nothing: write summary.md and defaults.md from the"
                    " tasks' <task>/compare.json in --results_dir.")


# ----------------------------------------------------------------------------
# Settings.
# ----------------------------------------------------------------------------


def load_config(path):
  """``get_config()`` of a configuration file (relative to the repository)."""
  path = pathlib.Path(path)
  if not path.is_absolute() and not path.exists():
    path = REPO / path
  if not path.exists():
    raise cli.ConfigError(f"`--task`: no task or configuration file {path}.")
  spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def resolve_task(task: str) -> TaskSpec:
  """A task of ``TASKS`` by name, or a task made of a configuration file."""
  if task in TASKS:
    return TASKS[task]
  if not task.endswith(".py"):
    raise cli.ConfigError(
        f"`--task`={task!r} is neither a task ({', '.join(TASKS)}) nor a"
        " configuration file (*.py)."
    )
  config = load_config(task)
  metric = "accuracy" if config.task == "digits" else "loss"
  return TaskSpec(pathlib.Path(task).stem, task, metric)


def comparison_config(base, steps: int | None = None, quick: bool = False):
  """A task's configuration in the comparison (``base`` with overrides).

  Args:
    base: a configuration of ``configs/`` (an LM or a digits one).
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
  if config.task == "digits":
    # The test set is 450 images: evaluating is cheap, and the steps to
    # AdamW's best need the curve.
    config.eval_every_steps = 25
  if quick:
    config.num_train_steps = 60
    config.eval_every_steps = 10
    config.log_every_steps = 10
    if config.task == "lm":
      # Half as deep and half the context: the tasks stay distinct.
      config.model.d_model = 64
      config.model.num_heads = 2
      config.model.num_layers = max(1, config.model.num_layers // 2)
      config.data.seq_len //= 2
      config.batch_size = 16
      config.eval.num_sequences = 128
    else:
      config.model.hidden = 16
  if steps is not None:
    config.num_train_steps = steps
  return config


def run_config(config, name: str, lr: float, seed: int, kwargs=None):
  """``config`` for one run: the optimizer, its peak rate and the seed.

  ``kwargs`` (a dict) go into ``optimizer.kwargs`` where ``name``'s factory
  accepts them (``optimizers.accepted_kwargs``); the run's ``config.json``
  records them, so that its runs are never mistaken for plain ones.
  """
  c = copy.deepcopy(config)
  c.optimizer.name = name
  c.optimizer.learning_rate = lr
  c.seed = seed
  for k, v in optimizers.accepted_kwargs(name, kwargs).items():
    c.optimizer.kwargs[k] = v
  return c


def _run_dir(workdir, name, lr, seed) -> pathlib.Path:
  return pathlib.Path(workdir) / "runs" / name / f"lr{lr:.3g}" / f"seed{seed}"


def finished_run(config, workdir) -> dict | None:
  """The summary of a finished run of ``config`` in ``workdir``, if any."""
  summary_path = pathlib.Path(workdir) / train.SUMMARY_FILE
  if not summary_path.exists():
    return None
  old = json.loads((pathlib.Path(workdir) / "config.json").read_text())
  if old != json.loads(config.to_json_best_effort()):
    return None
  return json.loads(summary_path.read_text()) | {"reused": True}


def train_once(config, workdir) -> dict:
  """Trains one run, or reuses it if ``workdir`` holds a finished one."""
  summary = finished_run(config, workdir)
  if summary is not None:
    return summary
  summary = train.train_and_evaluate(config, workdir, verbose=False)
  summary["reused"] = False
  # Every run compiles new programs; a sweep's process kept them all and
  # failed after about 130 LM runs ("LLVM compilation error: Cannot
  # allocate memory", then a segmentation fault).
  jax.clear_caches()
  return summary


def _finished(workdir, config, name, lr, seed, metric,
              kwargs=None) -> dict | None:
  """The finished run of ``(name, lr, seed)`` in ``workdir``, without training."""
  rdir = _run_dir(workdir, name, lr, seed)
  s = finished_run(run_config(config, name, lr, seed, kwargs), rdir)
  if s is None:
    return None
  return s | _run_values(s, rdir, metric) | {
      "dir": str(rdir), "lr": lr, "seed": seed}


def eval_curve(workdir, metric: str = "loss") -> tuple[np.ndarray, np.ndarray]:
  """``(steps, values)`` of a run's evaluations of ``metric``."""
  rs = [r for r in train.read_metrics(workdir) if r["split"] == "eval"]
  return (np.array([r["step"] for r in rs], np.float64),
          np.array([r[metric] for r in rs], np.float64))


def steps_to_reach(steps, values, target: float,
                   higher_is_better: bool = False) -> float | None:
  """First step where the curve reaches ``target`` (linear interpolation)."""
  if higher_is_better:
    values, target = -np.asarray(values), -target
  below = np.nonzero(values <= target)[0]
  if not len(below):
    return None
  i = below[0]
  if i == 0:
    return float(steps[0])
  s0, s1, l0, l1 = steps[i - 1], steps[i], values[i - 1], values[i]
  return float(s0 + (s1 - s0) * (l0 - target) / (l0 - l1))


def _higher_is_better(metric: str) -> bool:
  return metric == "accuracy"


def _run_values(summary: dict, rdir, metric: str) -> dict:
  """The run's best loss and, for ``accuracy``, its best accuracy."""
  out = {"loss": summary["best_eval_loss"]}
  if metric == "accuracy":
    _, acc = eval_curve(rdir, "accuracy")
    out["accuracy"] = float(np.max(acc)) if len(acc) else None
  out["value"] = out[metric]
  return out


# ----------------------------------------------------------------------------
# One task.
# ----------------------------------------------------------------------------


def compare(
    config, workdir, names, lr_factors, seeds, results_dir=None, *,
    metric: str = "loss", task: str = "", reuse_only: bool = False,
    extend_edges: int = 0, learning_rates: dict | None = None,
    optimizer_kwargs: dict | None = None, sweep_seeds: int = 1,
) -> dict:
  """Runs one task's defaults, sweep and seeds; writes and returns the table.

  Args:
    config: the task's configuration (see ``comparison_config``).
    workdir: directory of the runs (``runs/<optimizer>/lr<lr>/seed<seed>``).
    names: optimizer names; unavailable ones are skipped with a note.
    lr_factors: the sweep, as multiples of each optimizer's default rate.
    seeds: the default rate runs on all, the sweep on the first
      ``sweep_seeds``, the best rate on all.
    results_dir: where ``compare.md``, ``compare.png`` and ``compare.json``
      go; ``None`` is ``workdir``.
    metric: ``"loss"`` or ``"accuracy"`` (see ``TaskSpec``).
    task: the task's name, for the caption.
    reuse_only: train nothing; report the finished runs (a row needs its
      default on the first seed).
    extend_edges: while the best rate on the first seed is the lowest or
      the highest swept, sweep one more rate beyond it (the grid's ratio at
      that edge), at most this many times per optimizer; with
      ``reuse_only``, the rates past the edge that an earlier invocation
      finished are read back the same way.
    learning_rates: optimizer name -> the rate that takes the default's
      place (run on every seed, the centre of the sweep); an optimizer not
      in it has its default (``examples/optimizers.py``).
    optimizer_kwargs: extra factory arguments, each given to the optimizers
      whose factory accepts it (``run_config``); use a workdir of their
      own.
    sweep_seeds: how many of ``seeds`` the sweep runs on; the best rate
      (and an edge) is that of the mean over them. More than one takes the
      winner's curse out of a noisy task's best (the digits' accuracy moves
      by 0.5-1% between seeds, 2-5 of its 450 test images).

  Returns:
    ``{"markdown": the table, "rows": one dict per optimizer, "task",
    "metric", "adamw_best", "missing": runs not found (``reuse_only``)}``.
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
  factors = sorted(set(lr_factors) | {1.0})
  if not 1 <= sweep_seeds <= len(seeds):
    raise ValueError(
        f"`sweep_seeds` must be in [1, {len(seeds)}] (the number of"
        f" seeds), got {sweep_seeds!r}.")
  sweep = list(seeds[:sweep_seeds])
  n_planned = len(names) * (len(seeds) + len(sweep) * (len(factors) - 1))
  if not reuse_only:
    print(
        f"{task or 'task'}: {len(names)} optimizers x ({len(seeds)} seeds at"
        f" the default + {len(factors) - 1} more learning rates) = {n_planned}"
        f" runs of {config.num_train_steps} steps, and the best learning rate"
        " on the other seeds.", flush=True,
    )
  done, durations, missing = 0, [], []

  def one(name, lr, seed):
    nonlocal done
    rdir = _run_dir(workdir, name, lr, seed)
    c = run_config(config, name, lr, seed, optimizer_kwargs)
    if reuse_only:
      s = finished_run(c, rdir)
      if s is None:
        missing.append(f"{name} lr={lr:.3g} seed={seed}")
        return None
    else:
      t0 = time.perf_counter()
      s = train_once(c, rdir)
      done += 1
      took = "(reused)"
      if not s["reused"]:
        durations.append(time.perf_counter() - t0)
        left = max(n_planned - done, 0)
        eta = statistics.mean(durations) * left / 60
        took = f"{durations[-1]:.0f} s, about {eta:.0f} min left"
      print(
          f"[{task} {done}/{n_planned}] {name:13s} lr={lr:<8.3g}"
          f" seed={seed} best val loss {s['best_eval_loss']:.4f}"
          f" {1e3 * (s['sec_per_step'] or 0):.0f} ms/step {took}",
          flush=True,
      )
    return s | _run_values(s, rdir, metric) | {
        "dir": str(rdir), "lr": lr, "seed": seed}

  key = _sort_key(metric)
  results = {}
  learning_rates = learning_rates or {}
  for name in names:  # 1. The defaults, every seed.
    default = learning_rates.get(name)
    if default is None:
      default = optimizers.default_learning_rate(name)
    results[name] = {
        "default_lr": default,
        "lrs": [default * f for f in factors],
        "runs": {(default, s): one(name, default, s) for s in seeds},
    }
  for name, res in results.items():  # 2. The sweep, the sweep's seeds.
    for s in sweep:
      for lr in res["lrs"]:
        if (lr, s) not in res["runs"]:
          res["runs"][(lr, s)] = one(name, lr, s)
  for name, res in results.items():  # 2b. Past a best rate at an edge.
    for _ in range(extend_edges):
      lr = _past_the_edge(res, sweep, key)
      if lr is None:
        break
      if reuse_only:
        # The rates an earlier run swept past the edge, if it finished them.
        found = [_finished(workdir, config, name, lr, s, metric,
                           optimizer_kwargs) for s in sweep]
        if any(f is None for f in found):
          break
        res["lrs"] = sorted(res["lrs"] + [lr])
        res["runs"].update({(lr, s): f for s, f in zip(sweep, found)})
        continue
      res["lrs"] = sorted(res["lrs"] + [lr])
      for s in sweep:
        res["runs"][(lr, s)] = one(name, lr, s)
  for name, res in results.items():  # 3. The best rate, every seed.
    swept = _swept_keys(res, sweep, key)
    res["best_lr"] = (min(swept, key=swept.__getitem__) if swept
                      else None)
    if res["best_lr"] is not None:
      for s in seeds[1:]:
        if (res["best_lr"], s) not in res["runs"]:
          res["runs"][(res["best_lr"], s)] = one(name, res["best_lr"], s)
  for name, res in results.items():  # 4. Any other finished run of the grid.
    # A rate that was once the default or the best has runs on more seeds:
    # they count too, so that a rate is not scored on its lucky seed only.
    for lr in res["lrs"]:
      for s in seeds:
        if (lr, s) not in res["runs"]:
          found = _finished(workdir, config, name, lr, s, metric,
                            optimizer_kwargs)
          if found is not None:
            res["runs"][(lr, s)] = found
  results = {n: r for n, r in results.items() if r["best_lr"] is not None}

  table = summarize(config, results, seeds, factors, skipped, metric=metric,
                    sweep_seeds=sweep_seeds,
                    task=task, missing=missing)
  about = describe_task(config, task)
  (out / "compare.md").write_text(table["markdown"])
  (out / "compare.json").write_text(json.dumps(
      {"task": task, "metric": metric, "about": about, "rows": table["rows"],
       "adamw_best": table["adamw_best"], "missing": missing}, indent=2))
  if results:
    plot(results, seeds, out / "compare.png", table["adamw_best"], metric)
  print("\n" + table["markdown"], flush=True)
  print(f"Wrote {out / 'compare.md'} and {out / 'compare.png'}.")
  return table | {"task": task, "metric": metric, "missing": missing,
                  "about": about}


def _swept_keys(res, sweep, key) -> dict:
  """``{lr: sort key}`` of the rates run on every seed of ``sweep``, the
  key (``_sort_key``'s) averaged over those seeds."""
  out = {}
  for lr in res["lrs"]:
    runs = [res["runs"].get((lr, s)) for s in sweep]
    if any(r is None for r in runs):
      continue
    keys = [key(r) for r in runs]
    if isinstance(keys[0], tuple):
      out[lr] = tuple(statistics.mean(k) for k in zip(*keys))
    else:
      out[lr] = statistics.mean(keys)
  return out


def _past_the_edge(res, sweep, key) -> float | None:
  """The rate beyond the best of the sweep (the mean over the seeds
  ``sweep``) when it is at an edge of the grid (times the grid's ratio at
  that edge), else ``None``."""
  keys = _swept_keys(res, sweep, key)
  swept = sorted(keys)
  if len(swept) < 2:
    return None
  best = min(swept, key=keys.__getitem__)
  if best == swept[0]:
    return best * best / swept[1]
  if best == swept[-1]:
    return best * best / swept[-2]
  return None


def _finite(x) -> float:
  return x if x is not None and math.isfinite(x) else math.inf


def _sort_key(metric: str):
  """Sorts runs best first: by the metric, ties by the loss."""
  if metric == "accuracy":
    return lambda r: (_finite(None if r["accuracy"] is None
                              else -r["accuracy"]), _finite(r["loss"]))
  return lambda r: _finite(r["loss"])


def _seed_runs(res, lr, seeds) -> list[dict | None]:
  return [res["runs"].get((lr, s)) for s in seeds]


def _mean_curve(runs, metric="loss"):
  curves = [eval_curve(r["dir"], metric) for r in runs if r is not None]
  steps = curves[0][0]
  n = min(len(c[1]) for c in curves)
  return steps[:n], np.mean([c[1][:n] for c in curves], axis=0)


def _paired(runs, ref_runs, field="value") -> list[float | None]:
  """Per seed: this run's ``field`` minus the reference's (same seed)."""
  if ref_runs is None:
    return [None] * len(runs)
  return [a[field] - b[field] if a is not None and b is not None else None
          for a, b in zip(runs, ref_runs)]


def _mean(xs) -> float | None:
  xs = [x for x in xs if x is not None]
  return statistics.mean(xs) if xs else None


def summarize(config, results, seeds, lr_factors, skipped, wall=None, *,
              metric="loss", task="", missing=(), sweep_seeds=1) -> dict:
  """The Markdown table and its rows."""
  higher = _higher_is_better(metric)
  rows = []
  base = results.get(BASELINE)
  adamw_best = adamw_steps = None
  if base is not None:
    best_runs = [r for r in _seed_runs(base, base["best_lr"], seeds) if r]
    # The best point of AdamW's mean curve, which that curve reaches at
    # adamw_steps by construction. The mean of each seed's best would be a
    # target no mean curve reaches when the seeds peak at different steps
    # (the digits' accuracy does).
    steps, curve = _mean_curve(best_runs, metric)
    i = int(np.argmax(curve) if higher else np.argmin(curve))
    adamw_best, adamw_steps = float(curve[i]), float(steps[i])
  ref = results.get(REFERENCE_MUON)
  ref_default = (_seed_runs(ref, ref["default_lr"], seeds)
                 if ref is not None else None)
  ref_best = (_seed_runs(ref, ref["best_lr"], seeds)
              if ref is not None else None)
  for name, res in results.items():
    default_runs = _seed_runs(res, res["default_lr"], seeds)
    best_runs = _seed_runs(res, res["best_lr"], seeds)
    values = [r["value"] for r in best_runs if r is not None]
    steps, curve = _mean_curve(best_runs, metric)
    reach = (steps_to_reach(steps, curve, adamw_best, higher)
             if adamw_best is not None else None)
    sec = [r["sec_per_step"] for r in best_runs
           if r is not None and r.get("sec_per_step")]
    swept = [lr for lr in res["lrs"] if (lr, seeds[0]) in res["runs"]
             and res["runs"][(lr, seeds[0])] is not None]
    # Default minus own best, per seed; positive: the default is worse.
    sign = -1.0 if higher else 1.0
    own = [sign * d if d is not None else None
           for d in _paired(default_runs, best_runs)]
    rows.append({
        "optimizer": name,
        "default_lr": res["default_lr"],
        "best_lr": res["best_lr"],
        "lrs": res["lrs"],
        "swept_lrs": swept,
        "seeds": list(seeds),
        "sweep_seeds": list(seeds[:sweep_seeds]),
        "default_values": [r and r["value"] for r in default_runs],
        "default_mean": _mean(r and r["value"] for r in default_runs),
        "best_values": [r and r["value"] for r in best_runs],
        "best_mean": statistics.mean(values),
        "best_losses": [r and r["loss"] for r in best_runs],
        "seed_spread": max(values) - min(values),
        "seed_sem": (statistics.stdev(values) / math.sqrt(len(values))
                     if len(values) > 1 else None),
        "paired_default_vs_reference": _paired(default_runs, ref_default),
        "paired_best_vs_reference": _paired(best_runs, ref_best),
        "paired_default_loss_vs_reference": _paired(
            default_runs, ref_default, "loss"),
        "default_worse_than_best": own,
        "steps_to_adamw_best": reach,
        "fraction_of_adamw_steps": (reach / adamw_steps
                                    if reach and adamw_steps else None),
        "ms_per_step": 1e3 * statistics.median(sec) if sec else None,
        "edge_of_sweep": len(swept) > 1
        and res["best_lr"] in (min(swept), max(swept)),
        # Every run, for recommend_defaults: (lr, seed) -> metric and loss.
        "runs": [{"lr": lr, "seed": s, "value": r["value"], "loss": r["loss"]}
                 for (lr, s), r in sorted(res["runs"].items())
                 if r is not None],
    })

  n_runs = sum(len(r["runs"]) for r in rows)
  if wall is None:  # The runs' own wall time, reused ones too.
    wall = sum(r.get("wall_sec") or 0.0 for res in results.values()
               for r in res["runs"].values() if r is not None)
  unit = "nats/byte" if metric == "loss" else "test accuracy"
  lines = [
      describe_task(config, task) + " " + caption(
          metric, seeds, lr_factors, n_runs, wall, sweep_seeds),
      "",
      "| optimizer | default lr | at default | - optax_muon at default, per"
      f" seed | best lr | at best ({unit}) | - optax_muon at best, per seed |"
      + (" best test loss |" if metric == "accuracy" else "")
      + f" steps to AdamW's best ({_fmt_value(adamw_best, metric)}) |"
      " x AdamW steps | ms/step |",
      "|---|---|---|---|---|---|---|" + ("---|" if metric == "accuracy"
                                          else "") + "---|---|---|",
  ]
  reach_none = "-" if adamw_best is None else "not reached"
  for r in rows:
    swept = "" if len(r["swept_lrs"]) > 1 else " (not swept)"
    lines.append(
        f"| {r['optimizer']} | {r['default_lr']:.3g} |"
        f" {_fmt_value(r['default_mean'], metric)} |"
        f" {_deltas(r['paired_default_vs_reference'], metric)} |"
        f" {r['best_lr']:.3g}{' (edge)' if r['edge_of_sweep'] else ''}"
        f"{swept} |"
        f" {_fmt_value(r['best_mean'], metric)}"
        f"{_sem(r['seed_sem'], metric)} |"
        f" {_deltas(r['paired_best_vs_reference'], metric)} |"
        + (f" {_fmt(_mean(r['best_losses']), '.4f')} |"
           if metric == "accuracy" else "")
        + f" {_fmt(r['steps_to_adamw_best'], '.0f', reach_none)} |"
        f" {_fmt(r['fraction_of_adamw_steps'], '.2f')} |"
        f" {_fmt(r['ms_per_step'], '.0f')} |"
    )
  lines += checks(rows, metric)
  if skipped:
    lines += ["", "Skipped (not in this ortho_optax): " + ", ".join(skipped)]
  if any(r["edge_of_sweep"] for r in rows):
    lines += ["", "(edge): the best learning rate is at the edge of the sweep."]
  if missing:
    lines += ["", f"Not run yet ({len(missing)}): " + ", ".join(missing)]
  return {"markdown": "\n".join(lines) + "\n", "rows": rows,
          "adamw_best": adamw_best}


def describe_task(config, task: str = "") -> str:
  """One sentence: the model, data, schedule and budget of a task."""
  c = config
  o = c.optimizer
  schedule = f"{o.schedule} schedule"
  if o.schedule == "wsd":
    decay = o.get("decay_steps", 0.2)
    decay = (f"{100 * decay:g}% of the steps" if isinstance(decay, float)
             else f"{decay} steps")
    schedule = ("warmup-stable-decay schedule (linear decay to 0 over the"
                f" last {decay})")
  clip = (f", gradient clipping {o.grad_clip_norm:g}" if o.grad_clip_norm
          else ", no gradient clipping")
  head = f"**{task}**: " if task else ""
  if c.task == "lm":
    m = c.model
    tokens = c.batch_size * c.data.seq_len
    return (
        f"{head}Byte-level LM on `{c.data.path}` ({m.num_layers} layers,"
        f" width {m.d_model}, {m.num_heads} heads, sequence"
        f" {c.data.seq_len}, batch {c.batch_size} = {tokens:,}"
        f" tokens/step), {c.num_train_steps} steps for every optimizer,"
        f" {schedule} with {o.warmup_steps:g} warmup{clip}. Validation:"
        f" fixed {c.eval.num_sequences} held-out sequences"
        f" ({c.eval.num_sequences * c.data.seq_len:,} tokens), every"
        f" {c.eval_every_steps} steps."
    )
  m = c.model
  model = (f"CNN ({m.features} and {2 * m.features} channels, dense"
           f" {m.hidden})" if m.name == "cnn"
           else f"MLP ({m.depth} x {m.hidden})")
  return (
      f"{head}{model} on scikit-learn's 8x8 digits, batch {c.batch_size},"
      f" {c.num_train_steps} steps for every optimizer, {schedule} with"
      f" {o.warmup_steps:g} warmup{clip}. Test set: the held-out"
      f" {c.data.test_fraction:g} of the 1,797 images, every"
      f" {c.eval_every_steps} steps; the metric is the best test accuracy"
      " (one image is 0.22%)."
  )


def caption(metric, seeds, lr_factors, n_runs, wall, sweep_seeds=1) -> str:
  """What the columns mean and what the comparison cost."""
  what = "best validation loss" if metric == "loss" else "best test accuracy"
  sweep = (
      f"; sweep: learning rate x"
      f" {{{', '.join(f'{f:g}' for f in lr_factors)}}} around each default"
      + (f" on seed {seeds[0]}" if sweep_seeds == 1 else
         f" on seeds {', '.join(map(str, seeds[:sweep_seeds]))} (the best"
         " by their mean)")
      + (", the best one rerun on the other seeds"
         if sweep_seeds < len(seeds) else "")
      if len(lr_factors) > 1 else "; no sweep (the best is the default)"
  )
  return (
      f"Each optimizer at its default learning rate on seed"
      f"{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}{sweep}."
      f" Values are the {what}, means over the seeds run (± their standard"
      " error)."
      f" `- {REFERENCE_MUON}, per seed`: this optimizer's value minus"
      f" {REFERENCE_MUON}'s on the same seed (same initialization and"
      " batches), both at their default or both at their best learning"
      " rate: seeds move every optimizer alike, so these paired differences"
      " are far steadier than the seed spread"
      + (" (negative: lower loss than optax_muon)." if metric == "loss"
         else " (in % points; positive: more accurate than optax_muon).")
      + " ms/step: median training wall time per step (no compilation or"
      " evaluation), sensitive to other load on the machine."
      f" Budget: {n_runs} runs, {wall / 60:.1f} min wall time (the runs'"
      f" own, also for runs reused from an earlier invocation) on this"
      f" machine ({os.cpu_count()} CPUs, {jax.default_backend()})."
  )


def checks(rows: list[dict], metric: str = "loss") -> list[str]:
  """Lines under the table: the comparison's targets, measured.

  * every Muon-family optimizer reaches AdamW's best in at most 0.5x
    AdamW's steps (at its best learning rate);
  * at the defaults, our ``muon`` is within 0.005 nats of
    ``optax.contrib.muon`` and our best optimizer beats it by at least
    0.01 nats (paired means over the seeds; language models);
  * every optimizer's default is within 0.01 nats (0.5% accuracy) of its
    own best swept learning rate.
  """
  by_name = {r["optimizer"]: r for r in rows}
  out = [""]
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
          "- Muon family at <= 0.5x AdamW's steps (best learning rates): "
          + ", ".join(f"{n} {frac(n)} ({'yes' if ok(n) else 'no'})"
                      for n in family)
      )
    if others:
      out.append("- other methods, x AdamW's steps: " + ", ".join(
          f"{n} {frac(n)}" for n in others))
  if REFERENCE_MUON in by_name and metric == "loss":
    if OUR_MUON in by_name:
      gap = _mean(by_name[OUR_MUON]["paired_default_vs_reference"])
      if gap is not None:
        out.append(
            f"- at defaults, {OUR_MUON} - {REFERENCE_MUON}: {gap:+.4f}"
            f" nats/byte, mean over seeds (target: <= +0.005:"
            f" {'yes' if gap <= 0.005 else 'no'})"
        )
    ours = [(r["optimizer"], _mean(r["paired_default_vs_reference"]))
            for r in rows if r["optimizer"] not in (REFERENCE_MUON, BASELINE)]
    ours = [(n, d) for n, d in ours if d is not None]
    if ours:
      best, margin = min(ours, key=lambda x: x[1])
      out.append(
          f"- at defaults, best of ours: {best}, {-margin:.4f} below"
          f" {REFERENCE_MUON} (target: >= 0.01:"
          f" {'yes' if -margin >= 0.01 else 'no'})"
      )
  tol = DEFAULT_TOLERANCE[metric]
  own = [(r["optimizer"], _mean(r.get("default_worse_than_best") or []))
         for r in rows if len(r.get("swept_lrs", ())) > 1]
  own = [(n, d) for n, d in own if d is not None]
  if own:
    scale, unit = (1.0, " nats") if metric == "loss" else (100.0, "%")
    out.append(
        f"- default within {scale * tol:g}{unit} of its own best swept"
        " learning rate: " + ", ".join(
            f"{n} {'yes' if d <= tol else 'no'}"
            + (f" ({scale * d:.3g}{unit} worse)" if d > 0 else "")
            for n, d in own)
    )
  if len(out) == 1:
    return []
  return ["", "Checks:"] + out[1:]


def _fmt_value(x, metric: str) -> str:
  if x is None:
    return "-"
  return f"{100 * x:.2f}%" if metric == "accuracy" else f"{x:.4f}"


def _sem(sem, metric: str = "loss") -> str:
  if sem is None:
    return ""
  return f" ± {100 * sem:.2f}" if metric == "accuracy" else f" ± {sem:.4f}"


def _deltas(deltas, metric: str = "loss") -> str:
  if not deltas or all(d is None for d in deltas):
    return "-"
  if metric == "accuracy":
    return " / ".join("-" if d is None else f"{100 * d:+.2f}" for d in deltas)
  return " / ".join("-" if d is None else f"{d:+.4f}" for d in deltas)


def _fmt(x, spec, none="-"):
  return none if x is None else format(x, spec)


def plot(results, seeds, out, adamw_best, metric="loss"):
  """Mean curves at the best learning rates, and the sweeps."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  higher = _higher_is_better(metric)
  label = ("validation loss (nats/byte)" if metric == "loss"
           else "test accuracy")
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=120)
  ends = []
  for i, (name, res) in enumerate(results.items()):
    color = plt.cm.tab10(i % 10)
    steps, curve = _mean_curve(_seed_runs(res, res["best_lr"], seeds), metric)
    ends.append(np.max(curve) if higher else np.min(curve))
    ax.plot(steps, curve, "-", color=color, lw=1.5,
            label=f"{name} (lr {res['best_lr']:.3g})")
    lrs = [lr for lr in res["lrs"] if res["runs"].get((lr, seeds[0]))]
    ax2.plot(lrs, [res["runs"][(lr, seeds[0])]["value"] for lr in lrs], "o-",
             color=color, label=name)
  if adamw_best is not None:
    ax.axhline(adamw_best, color="k", ls="--", lw=0.8, label="AdamW's best")
  ax.set_xlabel("step")
  ax.set_ylabel(f"{label}, mean over seeds")
  ax.set_title(f"{label} at each optimizer's best learning rate")
  if higher:
    top = max(ends)
    ax.set_ylim(top - 0.15, min(1.0, top + 0.01))
    ax2.set_ylim(top - 0.1, min(1.0, top + 0.01))
  else:
    lo = min(ends)
    ax.set_ylim(lo - 0.05, lo + 1.0)
    ax2.set_ylim(lo - 0.05, lo + 0.6)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  ax2.set_xscale("log")
  ax2.set_xlabel("peak learning rate")
  ax2.set_ylabel(f"best {label} (seed {seeds[0]})")
  ax2.set_title("learning-rate sweep")
  ax2.grid(alpha=0.3, which="both")
  fig.tight_layout()
  # Plain labels ("0.02") far enough apart not to run into each other.
  plotting.label_log_axis(ax2, "x", min_gap=0.6)
  fig.savefig(out)
  plt.close(fig)


# ----------------------------------------------------------------------------
# Across tasks.
# ----------------------------------------------------------------------------


def summary_table(tables: list[dict]) -> str:
  """The Markdown summary across tasks, from the tasks' ``compare`` results.

  One line per task and optimizer: its paired differences to
  ``optax.contrib.muon`` per seed at the default learning rates and at the
  best swept ones, how much worse its default is than its own best, and
  the steps to AdamW's best as a multiple of AdamW's.
  """
  lines = [f"- {t['about']}" for t in tables if t.get("about")]
  lines += [
      "" if lines else None,
      "| task | optimizer | default lr | - optax_muon at default, per seed |"
      " best lr | - optax_muon at best, per seed | default vs own best |"
      " x AdamW's steps to its best |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for t in tables:
    metric = t["metric"]
    for r in t["rows"]:
      own = _mean(r.get("default_worse_than_best") or [])
      if len(r["swept_lrs"]) < 2 or own is None:
        own_text = "not swept"
      elif metric == "accuracy":
        own_text = f"{100 * own:+.2f}%"
      else:
        own_text = f"{own:+.4f}"
      unit = "" if metric == "loss" else " (%)"
      lines.append(
          f"| {t['task']} | {r['optimizer']} | {r['default_lr']:.3g} |"
          f" {_deltas(r['paired_default_vs_reference'], metric)}{unit} |"
          f" {r['best_lr']:.3g}"
          f"{' (edge)' if r['edge_of_sweep'] else ''} |"
          f" {_deltas(r['paired_best_vs_reference'], metric)}{unit} |"
          f" {own_text} | {_fmt(r['fraction_of_adamw_steps'], '.2f')} |"
      )
  return "\n".join(x for x in lines if x is not None) + "\n"


# The largest regret (gap to the optimizer's own best rate on a task) that
# issue 25 allows a default on any single task, in each metric's unit.
REGRET_LIMIT = {"loss": 0.02, "accuracy": 0.01}


def _sweep_values(row, metric: str) -> dict[float, float]:
  """``{lr: value}``: the mean over the seeds the sweep ran on
  (``sweep_seeds``; else the first of ``seeds``), of the rates run on all
  of them."""
  del metric  # The values are the row's metric already.
  sweep = row.get("sweep_seeds") or (row.get("seeds") or [0])[:1]
  per_lr: dict[float, dict[int, float]] = {}
  for x in row["runs"]:
    v = x.get("value", x.get("loss"))
    if x["seed"] in sweep and v is not None:
      per_lr.setdefault(round(x["lr"], 12), {})[x["seed"]] = v
  return {lr: statistics.mean(d.values()) for lr, d in per_lr.items()
          if len(d) == len(sweep)}


def regrets(row, metric: str) -> dict[float, float]:
  """Each swept rate's gap to the best one (>= 0).

  The best rate is the best mean over the sweep's seeds; a rate's gap is
  its difference to the best, seed by seed, averaged over every seed both
  were run on (a rate that was once the default or the best has more
  than the sweep's): a rate is not scored on its lucky seed only.
  """
  values = _sweep_values(row, metric)
  if not values:
    return {}
  sign = -1.0 if _higher_is_better(metric) else 1.0
  best = min(values, key=lambda lr: sign * values[lr])
  per_seed: dict[float, dict[int, float]] = {}
  for x in row["runs"]:
    v = x.get("value", x.get("loss"))
    if v is not None:
      per_seed.setdefault(round(x["lr"], 12), {})[x["seed"]] = v
  out = {}
  for lr in values:
    seeds = [s for s in per_seed[lr] if s in per_seed[best]]
    out[lr] = max(0.0, statistics.mean(
        sign * (per_seed[lr][s] - per_seed[best][s]) for s in seeds))
  return out


def recommend_defaults(tables: list[dict], current=None) -> dict:
  """The learning rate per optimizer whose worst regret over the tasks is least.

  On each task the sweep's seeds give every swept rate a regret: its gap
  to the best swept rate of the same optimizer on that task (nats of
  validation loss; points of test accuracy on the digits). Divided by the
  task's limit (``REGRET_LIMIT``: 0.02 nats, 1%), the largest over the
  tasks is the rate's score; the lowest score is recommended (ties: the
  lower mean), among the rates swept on every task. A score of at most 1
  means that the rate is within the limit on every task.

  Args:
    tables: the tasks' ``compare`` results (or their ``compare.json``).
    current: optimizer name -> current default (``DEFAULT_LEARNING_RATES``).

  Returns:
    ``{"table": Markdown, "optimizers": {optimizer: {"current",
    "recommended", "scores": {lr: score}, "regrets": {lr: {task: regret}},
    "edge"}}}``; prints the table.
  """
  current = current or optimizers.DEFAULT_LEARNING_RATES
  tasks = [t["task"] for t in tables]
  names = []
  for t in tables:
    names += [r["optimizer"] for r in t["rows"]
              if r["optimizer"] not in names]
  out = {}
  for name in names:
    per_lr: dict[float, dict[str, float]] = {}
    normalized: dict[float, dict[str, float]] = {}
    for t in tables:
      metric = t.get("metric", "loss")
      row = next((r for r in t["rows"] if r["optimizer"] == name), None)
      if row is None:
        continue
      for lr, g in regrets(row, metric).items():
        per_lr.setdefault(lr, {})[t["task"]] = g
        normalized.setdefault(lr, {})[t["task"]] = g / REGRET_LIMIT[metric]
    on_all = {lr: d for lr, d in normalized.items() if len(d) == len(tasks)}
    if not on_all:
      continue
    scores = {lr: max(d.values()) for lr, d in on_all.items()}
    best = min(scores, key=lambda lr: (
        scores[lr], statistics.mean(on_all[lr].values())))
    out[name] = {
        "current": current.get(name), "recommended": best,
        "scores": scores, "regrets": per_lr,
        "edge": len(scores) > 1 and best in (min(scores), max(scores)),
    }

  def fmt(task_regrets):
    parts = []
    for t in tables:
      if t["task"] in task_regrets:
        g = task_regrets[t["task"]]
        parts.append(f"{t['task']} {100 * g:.2f}%"
                     if t.get("metric") == "accuracy"
                     else f"{t['task']} {g:.4f}")
    return ", ".join(parts)

  lines = [
      f"Tasks: {', '.join(tasks)}. Regret: the gap to the optimizer's own"
      " best swept learning rate on the task, on the sweep's seeds (their"
      " mean; nats of"
      " best validation loss; points of best test accuracy). Score: the"
      " largest regret over the tasks as a multiple of the per-task limit"
      " (0.02 nats, 1%); the recommended rate has the lowest (at most 1:"
      " within the limit on every task).",
      "",
      "| optimizer | current default | recommended | regret at the"
      " recommended rate | score | learning rates: score |",
      "|---|---|---|---|---|---|",
  ]
  for name, r in out.items():
    rec = f"{r['recommended']:.3g}"
    if r["current"] is not None and math.isclose(r["recommended"],
                                                  r["current"]):
      rec += " (= current)"
    if len(r["scores"]) == 1:
      rec += " (only one measured)"
    elif r["edge"]:
      rec += " (edge of the sweep)"
    scores = ", ".join(f"{lr:.3g}: {s:.2f}"
                       for lr, s in sorted(r["scores"].items()))
    lines.append(
        f"| {name} | {_fmt(r['current'], '.3g')} | {rec} |"
        f" {fmt(r['regrets'][r['recommended']])} |"
        f" {r['scores'][r['recommended']]:.2f} | {scores} |")
  text = "\n".join(lines) + "\n"
  print(text, flush=True)
  return {"table": text, "optimizers": out}


# Issue 25's targets for a default: the regret averaged over the tasks of a
# metric, and on any single task (``REGRET_LIMIT``).
MEAN_REGRET_LIMIT = {"loss": 0.01, "accuracy": 0.005}


def default_regrets(tables: list[dict]) -> dict:
  """Each optimizer's regret at its default, on every seed, against targets.

  The regret on a task is ``default_worse_than_best`` averaged over the
  seeds: the default's value minus the own best swept rate's, seed by
  seed (positive: the default is worse). The targets: averaged over the
  tasks of each metric, at most ``MEAN_REGRET_LIMIT`` (0.01 nats over the
  LMs, 0.5% on the digits); on any single task at most ``REGRET_LIMIT``
  (0.02 nats, 1%).

  Args:
    tables: the tasks' ``compare`` results (or their ``compare.json``).

  Returns:
    ``{"table": Markdown, "optimizers": {optimizer: {"default",
    "regrets": {task: regret}, "means": {metric: mean}, "meets": bool}}}``.
  """
  names: list[str] = []
  for t in tables:
    names += [r["optimizer"] for r in t["rows"] if r["optimizer"] not in names]
  out = {}
  for name in names:
    per_task, metric_of, default = {}, {}, None
    for t in tables:
      row = next((r for r in t["rows"] if r["optimizer"] == name), None)
      if row is None:
        continue
      g = _mean(row.get("default_worse_than_best") or [])
      if g is None:
        continue
      per_task[t["task"]] = max(g, 0.0)
      metric_of[t["task"]] = t.get("metric", "loss")
      default = row["default_lr"]
    means = {}
    for metric in sorted(set(metric_of.values())):
      means[metric] = statistics.mean(
          g for task, g in per_task.items() if metric_of[task] == metric)
    meets = (all(g <= REGRET_LIMIT[metric_of[task]] + 1e-12
                 for task, g in per_task.items())
             and all(m <= MEAN_REGRET_LIMIT[k] + 1e-12
                     for k, m in means.items()))
    out[name] = {"default": default, "regrets": per_task, "means": means,
                 "meets": meets, "metric_of": metric_of}
  tasks = [t["task"] for t in tables]

  def fmt(g, metric):
    return f"{100 * g:.2f}%" if metric == "accuracy" else f"{g:.4f}"

  metrics = sorted({t.get("metric", "loss") for t in tables})
  lines = [
      "Regret at the default: its gap to the optimizer's own best swept"
      " rate on the task, seed by seed, averaged over the seeds (nats of"
      " best validation loss; points of best test accuracy). Targets:"
      " averaged over the tasks of a metric at most 0.01 nats and 0.5%;"
      " on any single task at most 0.02 nats and 1%.",
      "",
      "| optimizer | default | " + " | ".join(tasks) + " | "
      + " | ".join(f"mean ({m})" for m in metrics) + " | targets met |",
      "|---|---|" + "---|" * (len(tasks) + len(metrics)) + "---|",
  ]
  for name, r in out.items():
    cells = [fmt(r["regrets"][t], r["metric_of"][t])
             if t in r["regrets"] else "-" for t in tasks]
    cells += [fmt(r["means"][m], m) if m in r["means"] else "-"
              for m in metrics]
    lines.append(f"| {name} | {_fmt(r['default'], '.3g')} | "
                 + " | ".join(cells)
                 + f" | {'yes' if r['meets'] else 'no'} |")
  return {"table": "\n".join(lines) + "\n", "optimizers": out}


def compare_tasks(tasks, workdir, names, lr_factors, seeds, results_dir=None,
                  *, steps=None, quick=False, reuse_only=False,
                  extend_edges=0, task_seeds=False,
                  sweep_seeds=None) -> dict:
  """Runs ``compare`` on every task, then the summary and recommendation.

  Args:
    tasks: ``TaskSpec``s (see ``resolve_task``).
    workdir: the runs go to ``workdir/<task>/``.
    names, lr_factors, seeds: as in ``compare``.
    results_dir: ``<task>/compare.*``, ``summary.md``, ``summary.json`` and
      ``defaults.md`` go here; ``None`` is ``workdir``.
    steps: training steps of every task (``None``: each task's own).
    quick: the smoke-test sizes of ``comparison_config``.
    reuse_only, extend_edges: as in ``compare``.
    task_seeds: a task with its own ``TaskSpec.seeds`` runs on those
      instead of ``seeds``.
    sweep_seeds: as in ``compare``; ``None``: the task's
      ``TaskSpec.sweep_seeds`` (at most the number of seeds run).

  Returns:
    ``{"tables": the tasks' compare results, "summary": Markdown,
    "defaults": recommend_defaults' result, "regrets": default_regrets'}``.
  """
  workdir = pathlib.Path(workdir)
  out = pathlib.Path(results_dir) if results_dir else workdir
  tables = []
  for spec in tasks:
    config = comparison_config(load_config(spec.config), steps, quick)
    run_seeds = list(spec.seeds) if task_seeds and spec.seeds else seeds
    tables.append(compare(
        config, workdir / spec.name, names, lr_factors, run_seeds,
        out / spec.name, metric=spec.metric, task=spec.name,
        reuse_only=reuse_only, extend_edges=extend_edges,
        # The task's own count fits its seeds; a given one is checked.
        sweep_seeds=(min(spec.sweep_seeds, len(run_seeds))
                     if sweep_seeds is None else sweep_seeds),
    ))
  tables = [t for t in tables if t["rows"]]
  return {"tables": tables} | write_summary(tables, out)


def write_summary(tables: list[dict], out) -> dict:
  """Writes ``summary.md``, ``summary.json``, ``defaults.md`` and
  ``regrets.md`` (``default_regrets``) to ``out``.

  Args:
    tables: the tasks' ``compare`` results (or their ``compare.json``).
    out: the results directory.

  Returns:
    ``{"summary": the Markdown summary, "defaults": recommend_defaults',
    "regrets": default_regrets'}``.
  """
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  summary = summary_table(tables)
  (out / "summary.md").write_text(summary)
  (out / "summary.json").write_text(json.dumps(
      [{k: t.get(k) for k in ("task", "metric", "about", "rows",
                              "adamw_best", "missing")}
       for t in tables], indent=2))
  defaults = recommend_defaults(tables)
  (out / "defaults.md").write_text(defaults["table"] + "\n" + SCALING_NOTES)
  regret = default_regrets(tables)
  (out / "regrets.md").write_text(regret["table"])
  print("\n" + summary, flush=True)
  print(f"Wrote {out / 'summary.md'} and {out / 'defaults.md'}.")
  return {"summary": summary, "defaults": defaults, "regrets": regret}


def read_tables(results_dir) -> list[dict]:
  """The tasks' ``compare.json`` under ``results_dir`` (``<task>/``).

  In the order of ``TASKS``, then the other tasks by name.
  """
  tables = []
  for path in sorted(pathlib.Path(results_dir).glob("*/compare.json")):
    t = json.loads(path.read_text())
    if t.get("rows"):
      tables.append(t)
  order = list(TASKS)
  return sorted(tables, key=lambda t: (
      order.index(t["task"]) if t["task"] in order else len(order),
      t["task"]))


def main(argv):
  del argv  # cli.run has checked that there are no positional arguments.
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if FLAGS.summary_only:
    write_summary(read_tables(FLAGS.results_dir or FLAGS.workdir),
                  FLAGS.results_dir or FLAGS.workdir)
    return
  tasks = [resolve_task(t) for t in FLAGS.task]
  factors = FLAGS.lr_factors
  seeds = FLAGS.seeds
  if FLAGS.quick and not FLAGS["lr_factors"].present:
    factors = ["1"]  # No sweep in the smoke run.
  if FLAGS.quick and not FLAGS["seeds"].present:
    seeds = seeds[:2]
  compare_tasks(
      tasks, FLAGS.workdir, FLAGS.optimizers,
      [float(f) for f in factors], [int(s) for s in seeds],
      FLAGS.results_dir, steps=FLAGS.steps, quick=FLAGS.quick,
      reuse_only=FLAGS.reuse_only, extend_edges=FLAGS.extend_edges,
      task_seeds=not FLAGS["seeds"].present and not FLAGS.quick,
      sweep_seeds=FLAGS.sweep_seeds,
  )


if __name__ == "__main__":
  with cli.flag_definitions():  # The default config applies overrides here.
    _define_flags()
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
