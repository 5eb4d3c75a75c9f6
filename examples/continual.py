r"""Continual learning on digits: fine-tuning vs GPM vs ROGO, AdamW vs muon.

Two task sequences built from scikit-learn's digits (no download):

* ``split``: 5 tasks of 2 classes (0/1, 2/3, ...), one 2-way head per task
  (the head of the current task is used; heads are not protected);
* ``permuted``: 5 tasks of all 10 classes, each with a fixed permutation of
  the 64 pixels (the first is the identity), one shared 10-way head
  (protected too, as in GPM's permuted MNIST).

The model is a bias-free ReLU MLP (64 -> 100 -> 100 -> head), as GPM's. After
each task its layer inputs on ``representation_samples`` training examples
update the protected bases (:func:`ortho_optax.update_bases`); the next task
trains with ``ortho_optax.with_gradient_projection(optimizer, bases)``, the
gradient projected before the optimizer and the update after it. ROGO also
searches a relaxing space in the bases after the first epoch of each task
(:func:`ortho_optax.relaxing_bases`). Plain fine-tuning uses the same chain
with empty bases. The optimizer state is reset at each task (as GPM's code
makes a new optimizer per task).

Metrics (Lopez-Paz and Ranzato, 2017), from the accuracy ``A[j, i]`` on task
``i`` after learning task ``j``: ``ACC = mean_i A[T-1, i]``, ``BWT =
mean_{i < T-1} (A[T-1, i] - A[i, i])`` (negative: forgetting).

Writes ``continual.md``, ``continual.json`` and ``continual.png`` to
``--workdir`` (and to ``--results_dir`` when given). Run from the repository
root::

  python examples/continual.py --workdir=/tmp/continual \
    --results_dir=examples/results/continual
"""

import functools
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

if __package__ in (None, ""):  # Run as a script: make `examples` importable.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import ortho_optax  # noqa: E402

_DEFAULT_CONFIG = str(
    pathlib.Path(__file__).resolve().parents[1] / "configs"
    / "continual_digits.py"
)
FLAGS = flags.FLAGS
METHODS = ("finetune", "gpm", "rogo")


def _define_flags():
  """Defined only when run as a script, so that importing has no effects."""
  flags.DEFINE_string("workdir", None, "Directory for the report.")
  flags.DEFINE_string("results_dir", None, "Also copy the report here.")
  config_flags.DEFINE_config_file(
      "config", _DEFAULT_CONFIG, "Path to the configuration.",
      lock_config=True,
  )


# ----------------------------------------------------------------------------
# Tasks.
# ----------------------------------------------------------------------------


def make_tasks(benchmark: str, num_tasks: int, test_fraction: float,
               seed: int) -> list[dict]:
  """``[{train_x, train_y, test_x, test_y, head}]`` for one sequence."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  y = digits.target.astype(np.int32)
  rng = np.random.default_rng(seed)
  perm = rng.permutation(len(y))
  n_test = int(round(test_fraction * len(y)))
  test, train = perm[:n_test], perm[n_test:]
  tasks = []
  for t in range(num_tasks):
    if benchmark == "split":
      classes = (2 * t, 2 * t + 1)
      tr = train[np.isin(y[train], classes)]
      te = test[np.isin(y[test], classes)]
      tasks.append(dict(
          train_x=x[tr], train_y=y[tr] - 2 * t, test_x=x[te],
          test_y=y[te] - 2 * t, head=t,
      ))
    elif benchmark == "permuted":
      pixels = np.arange(64) if t == 0 else rng.permutation(64)
      tasks.append(dict(
          train_x=x[train][:, pixels], train_y=y[train],
          test_x=x[test][:, pixels], test_y=y[test], head=0,
      ))
    else:
      raise ValueError(
          f"Unknown benchmark {benchmark!r}; accepted: 'split', 'permuted'."
      )
  return tasks


# ----------------------------------------------------------------------------
# Model.
# ----------------------------------------------------------------------------


class ContinualMLP(nnx.Module):
  """Bias-free ReLU MLP; ``head`` stacks one ``(hidden, classes)`` head per
  task (routed to AdamW by the optimizers, by its name)."""

  def __init__(self, hidden: int, num_heads: int, num_classes: int, *,
               rngs: nnx.Rngs):
    self.hidden_0 = nnx.Linear(64, hidden, use_bias=False, rngs=rngs)
    self.hidden_1 = nnx.Linear(hidden, hidden, use_bias=False, rngs=rngs)
    init = nnx.initializers.lecun_normal()
    self.head = nnx.Param(
        init(rngs.params(), (num_heads, hidden, num_classes))
    )

  def features(self, x):
    """The inputs of the three layers."""
    h1 = jax.nn.relu(self.hidden_0(x))
    h2 = jax.nn.relu(self.hidden_1(h1))
    return x, h1, h2

  def __call__(self, x, head):
    _, _, h2 = self.features(x)
    return h2 @ self.head[...][head]


def layer_inputs(protect_head: bool):
  """The user function of :func:`ortho_optax.collect_representations`: the
  input of each protected layer, keyed like the parameters."""
  def fn(model, x):
    x0, h1, h2 = model.features(x)
    out = {"hidden_0": {"kernel": x0}, "hidden_1": {"kernel": h1}}
    if protect_head:
      out["head"] = h2
    return out
  return fn


def _loss(graphdef, params, x, y, head):
  logits = nnx.merge(graphdef, params)(x, head)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_optimizer(name: str, learning_rate: float, weight_decay: float):
  """AdamW or muon; weight decay on the hidden layers only."""
  if name == "adamw":
    def mask(params):
      return jax.tree_util.tree_map_with_path(
          lambda p, _: "head" not in jax.tree_util.keystr(p), params
      )
    return optax.adamw(learning_rate, weight_decay=weight_decay, mask=mask)
  if name == "muon":
    # muon's weight decay is on the orthogonalized matrices only; the head
    # is on AdamW (adam_weight_decay=0).
    return ortho_optax.muon(learning_rate, weight_decay=weight_decay)
  raise ValueError(f"Unknown optimizer {name!r}; accepted: 'adamw', 'muon'.")


@functools.partial(
    jax.jit, static_argnames=("graphdef", "opt", "wd", "relaxed")
)
def train_epoch(params, opt_state, xs, ys, head, bases, relax, lr, *,
                graphdef, opt, wd, relaxed):
  """One epoch (``lax.scan`` over the batches) of the projected optimizer.

  The bases (padded to a fixed width) and the learning rate are arguments,
  so a method, a task or ROGO's smaller learning rate does not recompile
  the step.
  """
  tx = ortho_optax.with_gradient_projection(
      make_optimizer(opt, lr, wd), bases, relax=relax if relaxed else None
  )

  def step(carry, batch):
    params, opt_state = carry
    loss, grads = jax.value_and_grad(
        functools.partial(_loss, graphdef)
    )(params, batch[0], batch[1], head)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  (params, opt_state), losses = jax.lax.scan(
      step, (params, opt_state), (xs, ys)
  )
  return params, opt_state, losses.mean()


@functools.partial(jax.jit, static_argnames=("graphdef",))
def accuracy(params, x, y, head, *, graphdef):
  logits = nnx.merge(graphdef, params)(x, head)
  return jnp.mean(jnp.argmax(logits, -1) == y)


def _pad(bases, widths):
  """Zero columns up to the fan-in: a fixed shape for the jitted step."""
  return jax.tree.map(
      lambda m, w: jnp.pad(m, ((0, 0), (0, w - m.shape[-1]))), bases, widths
  )


# ----------------------------------------------------------------------------
# One run.
# ----------------------------------------------------------------------------


def run(config, benchmark: str, method: str, opt: str, seed: int) -> dict:
  """Trains one sequence; returns the accuracy matrix and the bases' ranks."""
  tasks = make_tasks(benchmark, config.num_tasks, config.test_fraction, seed)
  split = benchmark == "split"
  model = ContinualMLP(
      config.hidden, config.num_tasks if split else 1, 2 if split else 10,
      rngs=nnx.Rngs(seed),
  )
  graphdef, params = nnx.split(model, nnx.Param)
  fn = layer_inputs(protect_head=not split)
  h = config.hidden
  widths = {"hidden_0": {"kernel": 64}, "hidden_1": {"kernel": h}}
  if not split:
    widths["head"] = h
  empty = jax.tree.map(lambda w: jnp.zeros((w, 0)), widths)
  bases = None
  lr = config.learning_rate[opt]
  kw = dict(graphdef=graphdef, opt=opt, wd=config.weight_decay)
  steps = min(len(t["train_y"]) for t in tasks) // config.batch_size
  rng = np.random.default_rng(seed + 1000)
  acc = np.full((len(tasks), len(tasks)), np.nan)
  ranks, relaxed_ranks = [], []
  for t, task in enumerate(tasks):
    frozen = bases if (bases is not None and method != "finetune") else empty
    padded = _pad(frozen, widths)
    relax = _pad(empty, widths)
    tx = ortho_optax.with_gradient_projection(
        make_optimizer(opt, lr, config.weight_decay), padded
    )
    opt_state = tx.init(params)
    n_relaxed, found, search, lr_t = 0, None, method == "rogo", lr
    for _ in range(config.epochs[benchmark]):
      order = rng.permutation(len(task["train_y"]))[
          : steps * config.batch_size
      ]
      xs = task["train_x"][order].reshape(steps, config.batch_size, 64)
      ys = task["train_y"][order].reshape(steps, config.batch_size)
      params, opt_state, _ = train_epoch(
          params, opt_state, xs, ys, task["head"], padded, relax,
          jnp.float32(lr_t), relaxed=method == "rogo", **kw,
      )
      if search and bases is not None:
        idx = rng.permutation(len(task["train_y"]))[: config.gradient_samples]
        grads = jax.grad(functools.partial(_loss, graphdef))(
            params, task["train_x"][idx], task["train_y"][idx], task["head"]
        )
        g = {k: {"kernel": grads[k]["kernel"][...]}
             for k in ("hidden_0", "hidden_1")}
        thresholds = {
            "hidden_0": {"kernel": config.gradient_threshold[0]},
            "hidden_1": {"kernel": config.gradient_threshold[1]},
        }
        if not split:
          g["head"] = grads["head"][...][0]
          thresholds["head"] = config.gradient_threshold[1]
        found = ortho_optax.relaxing_bases(
            bases, g, threshold=thresholds,
            relax_threshold=config.relax_threshold, relaxed=found,
        )
        n = sum(int(x.shape[-1]) for x in jax.tree.leaves(found))
        # As the reference: search again after the next epoch while the
        # relaxing space grows, halving the learning rate each time.
        search = n > n_relaxed
        if search:
          lr_t /= config.relax_lr_factor
        n_relaxed = n
        relax = _pad(found, widths)
    relaxed_ranks.append(n_relaxed)
    for i in range(t + 1):
      acc[t, i] = float(accuracy(
          params, tasks[i]["test_x"], tasks[i]["test_y"], tasks[i]["head"],
          graphdef=graphdef,
      ))
    if method != "finetune":
      idx = rng.permutation(len(task["train_y"]))[
          : config.representation_samples
      ]
      reps = ortho_optax.collect_representations(
          fn, nnx.merge(graphdef, params), task["train_x"][idx]
      )
      bases = ortho_optax.update_bases(
          bases, reps, min(1.0, config.threshold + config.threshold_step * t)
      )
      ranks.append({
          jax.tree_util.keystr(p): int(m.shape[-1])
          for p, m in jax.tree_util.tree_leaves_with_path(bases)
      })
  final = acc[-1]
  return dict(
      acc=acc.tolist(), ACC=float(np.mean(final)),
      BWT=float(np.mean(final[:-1] - np.diag(acc)[:-1])),
      ranks=ranks, relaxed=relaxed_ranks,
  )


# ----------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------


def _mean_std(values) -> str:
  v = 100 * np.asarray(values)
  return f"{v.mean():.1f} ± {v.std():.1f}"


def report(config, results: dict, seconds: float) -> str:
  """The markdown table of ACC and BWT (percent, mean ± std over seeds)."""
  lines = [
      "Continual learning on scikit-learn's digits"
      f" ({len(config.seeds)} seeds; {config.num_tasks} tasks; bias-free MLP"
      f" 64-{config.hidden}-{config.hidden}; epochs per task"
      f" {dict(config.epochs)}; learning rates"
      f" {dict(config.learning_rate)}; GPM threshold {config.threshold} +"
      f" {config.threshold_step} per task; ROGO relax threshold"
      f" {config.relax_threshold}). ACC: mean final accuracy (%); BWT:"
      " mean final minus just-learned accuracy (points, negative ="
      " forgetting); mean ± std over seeds. |BWT| ratio: fine-tuning's |BWT|"
      " over the method's, same optimizer (target >= 5). Relaxed: mean"
      " number of ROGO relaxing directions per task (all layers)."
      f" Total time {seconds:.0f} s.",
      "",
      "| sequence | optimizer | method | ACC | BWT | \\|BWT\\| ratio |"
      " relaxed |",
      "|---|---|---|---:|---:|---:|---:|",
  ]
  for bench in config.benchmarks:
    for opt in config.optimizers:
      ft = results.get(f"{bench}/{opt}/finetune")
      for method in config.methods:
        runs = results[f"{bench}/{opt}/{method}"]
        acc = [r["ACC"] for r in runs]
        bwt = [r["BWT"] for r in runs]
        ratio = "—"
        if ft is not None and method != "finetune":
          ft_bwt = abs(np.mean([r["BWT"] for r in ft]))
          m_bwt = abs(np.mean(bwt))
          ratio = "inf" if m_bwt == 0 else f"{ft_bwt / m_bwt:.1f}"
        relaxed = "—"
        if method == "rogo":
          relaxed = f"{np.mean([np.mean(r['relaxed'][1:]) for r in runs]):.1f}"
        lines.append(
            f"| {bench} | {opt} | {method} | {_mean_std(acc)} |"
            f" {_mean_std(bwt)} | {ratio} | {relaxed} |"
        )
  return "\n".join(lines) + "\n"


def plot(config, results: dict, path: str) -> None:
  """Per-task accuracy over the sequence, mean over seeds."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  benches, opts = list(config.benchmarks), list(config.optimizers)
  fig, axes = plt.subplots(
      len(benches), len(opts), figsize=(5 * len(opts), 3.6 * len(benches)),
      squeeze=False, sharey=True,
  )
  colors = {"finetune": "tab:red", "gpm": "tab:blue", "rogo": "tab:green"}
  for r, bench in enumerate(benches):
    for c, opt in enumerate(opts):
      ax = axes[r][c]
      for method in config.methods:
        acc = np.mean(
            [np.asarray(x["acc"]) for x in results[f"{bench}/{opt}/{method}"]],
            axis=0,
        )
        T = acc.shape[0]
        for i in range(T):
          ax.plot(range(i + 1, T + 1), 100 * acc[i:, i], color=colors[method],
                  alpha=0.35, lw=1)
        seen = [np.mean(acc[j, : j + 1]) for j in range(T)]
        ax.plot(range(1, T + 1), 100 * np.asarray(seen), color=colors[method],
                lw=2.5, label=f"{method} (mean of seen)")
      ax.set_title(f"{bench} digits, {opt}")
      ax.set_xlabel("after learning task")
      ax.set_xticks(range(1, config.num_tasks + 1))
      if c == 0:
        ax.set_ylabel("test accuracy (%)")
      ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8, loc="lower left")
  fig.suptitle("Thin lines: each task's accuracy from when it is learned",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run_all(config, workdir: str, results_dir: str | None = None) -> dict:
  """Every (sequence, optimizer, method, seed); writes the report."""
  start = time.time()
  results = {}
  for bench in config.benchmarks:
    for opt in config.optimizers:
      for method in config.methods:
        key = f"{bench}/{opt}/{method}"
        results[key] = [
            run(config, bench, method, opt, seed) for seed in config.seeds
        ]
        logging.info(
            "%s: ACC %.3f BWT %.3f", key,
            np.mean([r["ACC"] for r in results[key]]),
            np.mean([r["BWT"] for r in results[key]]),
        )
  seconds = time.time() - start
  table = report(config, results, seconds)
  dirs = [workdir] + ([results_dir] if results_dir else [])
  for d in dirs:
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "continual.md"), "w") as f:
      f.write(table)
    with open(os.path.join(d, "continual.json"), "w") as f:
      json.dump(dict(config=config.to_dict(), results=results), f, indent=1)
    if config.plot:
      plot(config, results, os.path.join(d, "continual.png"))
  print(table)
  return results


def main(argv):
  del argv
  if FLAGS.workdir is None:
    raise app.UsageError("--workdir is required.")
  run_all(FLAGS.config, FLAGS.workdir, FLAGS.results_dir)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
