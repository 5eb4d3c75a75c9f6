"""Training and evaluation loop shared by the examples (digits and LM tasks).

``train_and_evaluate(config, workdir)`` trains the model of ``config`` with
``nnx.Optimizer(model, tx, wrt=nnx.Param)`` and writes to ``workdir``:

* ``metrics.jsonl``: one JSON object per line (``split`` is ``train`` or
  ``eval``; ``step``, ``loss`` and, for classifiers, ``accuracy``);
* ``checkpoints/``: Orbax checkpoints of ``nnx.state`` of the model and of the
  optimizer; a later call with the same ``workdir`` resumes from the latest;
* ``loss.png``: the loss curves; ``summary.json``: the run's summary;
* ``config.json``: the configuration.
"""

import functools
import json
import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from examples import input_pipeline
from examples import mesh as mesh_lib
from examples import models
from examples import optimizers

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
SUMMARY_FILE = "summary.json"


# ----------------------------------------------------------------------------
# Losses and steps.
# ----------------------------------------------------------------------------


def classification_loss(model, batch):
  logits = model(batch["x"])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
  correct = jnp.argmax(logits, axis=-1) == batch["y"]
  return loss.mean(), {
      "loss": loss.sum(), "correct": correct.sum(), "count": loss.size
  }


def lm_loss(model, batch):
  tokens = batch["tokens"]
  logits = model(tokens[:, :-1])
  loss = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), tokens[:, 1:]
  )
  return loss.mean(), {"loss": loss.sum(), "count": loss.size}


@functools.cache
def make_train_step(loss_fn):
  """An ``nnx.jit``-ed step: gradient, then ``optimizer.update`` in place.

  Cached per loss, so runs of the same model and optimizer in one process
  (a sweep, the tests) can share compilations.
  """

  @nnx.jit
  def train_step(model, optimizer, batch):
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, _), grads = grad_fn(model, batch)
    optimizer.update(model, grads)
    return loss

  return train_step


@functools.cache
def make_eval_step(loss_fn):
  @nnx.jit
  def eval_step(model, batch):
    return loss_fn(model, batch)[1]

  return eval_step


# ----------------------------------------------------------------------------
# Tasks: data, model, loss and evaluation behind one interface.
# ----------------------------------------------------------------------------


class Task:
  """Data, model factory, loss and evaluation of one example task."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    if config.task == "digits":
      data = input_pipeline.load_digits(
          config.data.test_fraction, config.data.split_seed
      )
      self.data = input_pipeline.shift_digits(data, config.data.shift)
      self.num_outputs = self.data.num_classes
      self.loss_fn = classification_loss
      self.items_per_step = config.batch_size
      self.unit = "ex"
    elif config.task == "lm":
      self.data = input_pipeline.load_text(
          config.data.path, config.data.chunk_bytes, config.data.val_every
      )
      self.num_outputs = self.data.vocab_size
      self.loss_fn = lm_loss
      self.items_per_step = config.batch_size * config.data.seq_len
      self.unit = "tok"
    else:
      raise ValueError(
          f"`task` must be 'digits' or 'lm'; got {config.task!r}."
      )
    self.eval_step = make_eval_step(self.loss_fn)

  def train_batch(self, step: int) -> dict:
    c = self.config
    if c.task == "digits":
      return self.data.train_batch(step, c.batch_size, c.seed)
    data_seed = c.seed if c.data.get("seed") is None else c.data.seed
    return self.data.train_batch(step, c.batch_size, c.data.seq_len, data_seed)

  def eval_batches(self):
    c = self.config
    if c.task == "digits":
      return self.data.eval_batches(c.eval.batch_size)
    return self.data.eval_batches(
        c.eval.batch_size, c.data.seq_len, c.eval.num_sequences
    )

  def evaluate(self, model) -> dict[str, float]:
    """Mean loss (and accuracy) over the whole held-out set."""
    totals = {}
    for batch in self.eval_batches():
      for k, v in self.eval_step(model, batch).items():
        totals[k] = totals.get(k, 0.0) + float(v)
    metrics = {"loss": totals["loss"] / totals["count"]}
    if "correct" in totals:
      metrics["accuracy"] = totals["correct"] / totals["count"]
    return metrics


# ----------------------------------------------------------------------------
# Metrics file and plot.
# ----------------------------------------------------------------------------


def read_metrics(workdir) -> list[dict[str, Any]]:
  """The records of ``workdir/metrics.jsonl`` (empty if there is none)."""
  path = pathlib.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  with path.open() as f:
    return [json.loads(line) for line in f if line.strip()]


def _reset_metrics(workdir: pathlib.Path, keep_up_to: int | None):
  """Drops records after ``keep_up_to`` (all of them when ``None``)."""
  path = workdir / METRICS_FILE
  kept = [] if keep_up_to is None else [
      r for r in read_metrics(workdir) if r["step"] <= keep_up_to
  ]
  with path.open("w") as f:
    for r in kept:
      f.write(json.dumps(r) + "\n")


def plot_metrics(workdir, title: str = "") -> pathlib.Path:
  """Writes ``workdir/loss.png``: train and eval loss against step."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(workdir)
  records = read_metrics(workdir)
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  for split, style in (("train", "-"), ("eval", "o-")):
    rs = [r for r in records if r["split"] == split]
    if rs:
      ax.plot([r["step"] for r in rs], [r["loss"] for r in rs], style,
              label=f"{split} loss", markersize=3)
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats)")
  ax.set_yscale("log")
  plain = matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}")
  ax.yaxis.set_major_formatter(plain)
  lo, hi = ax.get_ylim()
  if hi < 10 * lo:  # Less than a decade: label the minor ticks too.
    ax.yaxis.set_minor_formatter(plain)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  out = workdir / PLOT_FILE
  fig.savefig(out)
  plt.close(fig)
  return out


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------


class _Timer:
  """Training wall time, without compilation, evaluation and checkpoints."""

  def __init__(self):
    self.compile_sec = None
    self.total_sec, self.total_steps = 0.0, 0
    self._log_sec, self._log_steps = 0.0, 0
    self._t, self._n = None, 0

  def start(self):
    self._t, self._n = time.perf_counter(), 0

  def tick(self):
    self._n += 1

  def stop(self, result):
    jax.block_until_ready(result)
    if self._t is not None:
      dt = time.perf_counter() - self._t
      self.total_sec += dt
      self.total_steps += self._n
      self._log_sec += dt
      self._log_steps += self._n
    self._t = None

  def take_rate(self) -> float:
    """Steps per second since the last call."""
    rate = self._log_steps / self._log_sec if self._log_sec > 0 else 0.0
    self._log_sec, self._log_steps = 0.0, 0
    return rate

  def sec_per_step(self) -> float | None:
    return self.total_sec / self.total_steps if self.total_steps else None


def _progress_bar(config, start_step: int):
  from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top

  return tqdm.tqdm(
      total=config.num_train_steps, initial=start_step,
      disable=not config.progress_bar, dynamic_ncols=True, leave=True,
      desc=f"{config.task}/{config.optimizer.name}",
  )


def _checkpoint_manager(workdir: pathlib.Path, max_to_keep: int = 2):
  return ocp.CheckpointManager(
      workdir / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
  )


def load_model_state(model: nnx.Module, workdir, step: int | None = None):
  """The model state saved in ``workdir``'s checkpoint (latest by default).

  Args:
    model: a model with the structure of the saved one (its values are not
      used).
    workdir: the ``workdir`` of a ``train_and_evaluate`` run.
    step: which checkpoint; ``None`` is the latest.

  Returns:
    The saved ``nnx.state(model)``; apply it with ``nnx.update(model, state)``.
  """
  workdir = pathlib.Path(workdir).resolve()
  mngr = _checkpoint_manager(workdir)
  try:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {workdir / 'checkpoints'}.")
    restored = mngr.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(nnx.state(model))
    ))
  finally:
    mngr.close()
  return restored["model"]


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Trains ``config``'s model in ``workdir``, resuming from a checkpoint.

  Args:
    config: a configuration from ``configs/`` (``task``, ``data``, ``model``,
      ``optimizer``, step counts, ...).
    workdir: directory for metrics, checkpoints and the plot.

  Returns:
    The summary written to ``workdir/summary.json``: ``start_step`` (the step
    the run resumed from, 0 if fresh), ``final_step``, ``best_eval_loss``,
    ``final_eval`` (the last evaluation's metrics), ``sec_per_step`` (training
    wall time per step, without compilation and evaluation), ``wall_sec``
    (the whole call, this invocation) and ``num_params``.
  """
  t_call = time.perf_counter()
  workdir = pathlib.Path(workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  task = Task(config)
  total = config.num_train_steps

  model = models.create_model(
      config.model, num_outputs=task.num_outputs, rngs=nnx.Rngs(config.seed)
  )
  # config.mesh: shard the parameters (and the optimizer state, built from
  # them) FSDP-style over a device mesh; see examples/mesh.py.
  mesh = mesh_lib.make_mesh(config.get("mesh"))
  if mesh is not None:
    mesh_lib.shard_model(model, mesh)
    logging.info("Mesh %s.", mesh_lib.describe(mesh))
  tx = optimizers.create_optimizer(config.optimizer, total)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  num_params = sum(
      int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param))
  )
  logging.info("%s: %d parameters, optimizer %s", config.model.name,
               num_params, config.optimizer.name)

  # Checkpoints: resume from the latest one if there is one; otherwise start
  # from the model of `init_from` (another run's workdir) if it is set.
  mngr = None
  start_step = 0
  if config.save_checkpoints or config.restore_checkpoints:
    mngr = _checkpoint_manager(workdir, config.max_checkpoints_to_keep)
  latest = mngr.latest_step() if mngr is not None else None
  if latest is not None and config.restore_checkpoints:
    target = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
    try:
      restored = mngr.restore(latest, args=ocp.args.Composite(**{
          k: ocp.args.StandardRestore(v) for k, v in target.items()
      }))
    except ValueError as e:
      raise ValueError(
          f"The checkpoint at step {latest} in {workdir / 'checkpoints'}"
          " does not match this configuration's model and optimizer (was it"
          " written with another `model` or `optimizer.name`?). Use a new"
          " `--workdir`, or set `--config.restore_checkpoints=False`."
      ) from e
    nnx.update(model, restored["model"])
    nnx.update(optimizer, restored["optimizer"])
    start_step = int(optimizer.step[...])
    logging.info("Resumed from the checkpoint at step %d.", start_step)
  elif config.get("init_from"):
    nnx.update(model, load_model_state(model, config.init_from))
    logging.info("Initialized the model from %s.", config.init_from)
  _reset_metrics(workdir, start_step if start_step else None)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

  def save(step):
    if mngr is not None and config.save_checkpoints:
      mngr.save(step, args=ocp.args.Composite(
          model=ocp.args.StandardSave(nnx.state(model)),
          optimizer=ocp.args.StandardSave(nnx.state(optimizer)),
      ))

  train_step = make_train_step(task.loss_fn)
  metrics_file = (workdir / METRICS_FILE).open("a")

  def write(record):
    metrics_file.write(json.dumps(record) + "\n")
    metrics_file.flush()

  best_eval = math.inf
  for r in read_metrics(workdir):
    if r["split"] == "eval":
      best_eval = min(best_eval, r["loss"])
  last_eval = {}
  timer = _Timer()
  pending = []
  bar = _progress_bar(config, start_step)
  try:
    for step in range(start_step + 1, total + 1):
      batch = task.train_batch(step - 1)
      if mesh is not None:
        batch = mesh_lib.shard_batch(batch, mesh)
      t0 = time.perf_counter()
      loss = train_step(model, optimizer, batch)
      pending.append(loss)
      if timer.compile_sec is None:  # The first call compiles; keep it apart.
        jax.block_until_ready(loss)
        timer.compile_sec = time.perf_counter() - t0
        timer.start()
      else:
        timer.tick()
      bar.update(1)
      log_now = step % config.log_every_steps == 0 or step == total
      eval_now = step % config.eval_every_steps == 0 or step == total
      save_now = step % config.checkpoint_every_steps == 0 or step == total
      if log_now or eval_now or save_now:
        timer.stop(loss)
      if log_now:
        train_loss = float(np.mean(jax.device_get(pending)))
        pending = []
        rate = task.items_per_step * timer.take_rate()
        if not math.isfinite(train_loss):
          logging.warning("Non-finite training loss at step %d.", step)
        write({"split": "train", "step": step, "loss": train_loss,
               f"{task.unit}_per_sec": rate})
        bar.set_postfix_str(
            f"loss={train_loss:.4f} {rate:,.0f} {task.unit}/s"
            + (f" eval={last_eval['loss']:.4f}" if last_eval else "")
        )
      if eval_now:
        last_eval = task.evaluate(model)
        best_eval = min(best_eval, last_eval["loss"])
        write({"split": "eval", "step": step, **last_eval})
        logging.info("step %d: eval %s", step, last_eval)
      if save_now:
        save(step)
      if log_now or eval_now or save_now:
        timer.start()
  finally:
    bar.close()
    metrics_file.close()
    if mngr is not None:
      mngr.wait_until_finished()
      mngr.close()

  if not last_eval and start_step >= total:
    last_eval = task.evaluate(model)
  summary = {
      "task": config.task,
      "optimizer": config.optimizer.name,
      "learning_rate": optimizers.resolved_learning_rate(config.optimizer),
      "seed": config.seed,
      "start_step": start_step,
      "final_step": max(total, start_step),
      "best_eval_loss": best_eval,
      "final_eval": last_eval,
      "sec_per_step": timer.sec_per_step(),
      "compile_sec": timer.compile_sec,
      "wall_sec": time.perf_counter() - t_call,
      "num_params": num_params,
  }
  (workdir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
  if config.plot:
    what = config.model.name
    if config.task != config.model.name:
      what = f"{config.task} / {what}"
    plot_metrics(workdir, title=(
        f"{what}: {config.optimizer.name}, lr={summary['learning_rate']:g}"
    ))
  return summary
