"""Training and evaluation loop shared by the examples (digits and LM tasks).

``train_and_evaluate(config, workdir)`` trains the model of ``config`` with
``nnx.Optimizer(model, tx, wrt=nnx.Param)`` and writes to ``workdir``:

* ``metrics.jsonl``: one JSON object per line (``split`` is ``train`` or
  ``eval``; ``step``, ``loss`` and, for classifiers, ``accuracy``);
* ``checkpoints/``: Orbax checkpoints of ``nnx.state`` of the model and of the
  optimizer, and the configuration; a later call with the same ``workdir``
  resumes from the latest if its configuration is the same, up to the
  settings of ``RESUME_SAFE_KEYS`` (a ``cli.ConfigError`` names the others);
* ``loss.png``: the loss curves; ``summary.json``: the run's summary;
* ``config.json``: the configuration.
"""

import functools
import json
import math
import pathlib
import re
import shutil
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

from examples import cli
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

  The step takes ``shardings``: ``None`` on one device, or on a mesh the
  ``NamedSharding`` of every array of ``(model, optimizer)`` in
  ``jax.tree.leaves`` order (:func:`state_shardings`). The updated arrays
  are constrained to them. On Auto mesh axes XLA may otherwise return,
  say, a layer-norm scale placed replicated as split over ``"model"``; the
  next call would then see new input shardings and compile the step again.
  """

  @functools.partial(nnx.jit, static_argnames="shardings")
  def train_step(model, optimizer, batch, shardings=None):
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, _), grads = grad_fn(model, batch)
    optimizer.update(model, grads)
    if shardings is not None:
      state = nnx.state((model, optimizer))
      leaves, treedef = jax.tree.flatten(state)
      nnx.update((model, optimizer), jax.tree.unflatten(treedef, [
          jax.lax.with_sharding_constraint(x, s)
          for x, s in zip(leaves, shardings, strict=True)
      ]))
    return loss

  return train_step


def state_shardings(model, optimizer) -> tuple:
  """The shardings of ``(model, optimizer)``'s arrays, a static argument."""
  return tuple(
      x.sharding for x in jax.tree.leaves(nnx.state((model, optimizer)))
  )


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
  """Writes ``workdir/loss.png``: train and eval loss against step.

  The legend gives each curve's last value; the log-scaled loss axis is
  labelled densely enough to read it (``plotting.label_log_axis``).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  from examples import plotting  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(workdir)
  records = read_metrics(workdir)
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  for split, style in (("train", "-"), ("eval", "o-")):
    rs = [r for r in records if r["split"] == split]
    if rs:
      last = rs[-1]["loss"]
      # Four decimals, like the progress bar, unless that rounds to zero.
      value = f"{last:.4f}" if abs(last) >= 0.01 else f"{last:.3g}"
      ax.plot([r["step"] for r in rs], [r["loss"] for r in rs], style,
              markersize=3,
              label=f"{split} loss (step {rs[-1]['step']}: {value})")
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats)")
  ax.set_yscale("log")
  ax.grid(True, which="major", alpha=0.4)
  ax.grid(True, which="minor", alpha=0.12)
  ax.legend()
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  if records:
    plotting.label_log_axis(ax, "y", min_gap=0.28)
    fig.tight_layout()  # Room for the new labels' widths.
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


def _postfix(train: dict | None, evaluation: dict | None, unit: str) -> str:
  """The progress bar's text: the latest training and validation losses."""
  parts = []
  if train:
    parts.append(f"loss={train['loss']:.4f} {train['rate']:,.0f} {unit}/s")
  if evaluation:
    parts.append(f"eval={evaluation['loss']:.4f}")
  return " ".join(parts)


def _checkpoint_manager(
    workdir: pathlib.Path, max_to_keep: int = 2, create: bool = True
):
  return ocp.CheckpointManager(
      workdir / "checkpoints",
      options=ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, create=create
      ),
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
  if not (workdir / "checkpoints").is_dir():
    raise FileNotFoundError(f"No checkpoint in {workdir / 'checkpoints'}.")
  mngr = _checkpoint_manager(workdir, create=False)
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


# ----------------------------------------------------------------------------
# Resuming: the checkpoint's configuration against the new one.
# ----------------------------------------------------------------------------

# The settings that may differ between a checkpointed run and its resumption:
# they say how far the run goes and what it writes, not how the steps before
# the checkpoint were trained. Any other difference (learning rate,
# optimizer, model, data, seed, ...) stops the resumption with a
# `ConfigError` naming the changed settings, since the resumed run would
# otherwise report the checkpoint's training as the new configuration's.
# A longer (or shorter) `num_train_steps` recomputes the learning-rate
# schedule (warmup fraction, cosine decay) for the new length from the
# checkpoint's step on. The README lists these settings too.
RESUME_SAFE_KEYS = (
    "num_train_steps",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "save_checkpoints",
    "restore_checkpoints",
    "max_checkpoints_to_keep",
    "progress_bar",
    "plot",
    "eval.batch_size",  # The same validation set, batched differently.
)
_UNSET = "(unset)"


def _config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``config`` as the JSON object ``config.json`` and the checkpoint hold."""
  return json.loads(config.to_json_best_effort())


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  """Dotted keys to leaves; an empty dict (no ``kwargs``) has no leaves."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def config_changes(
    old: dict, new: dict, safe=RESUME_SAFE_KEYS
) -> list[tuple[str, Any, Any]]:
  """``(key, old value, new value)`` of every changed setting but ``safe``.

  Args:
    old: a configuration as a JSON object (``config.json``).
    new: another one.
    safe: dotted keys that are not compared.

  Returns:
    The changes in ``new``'s key order (then keys only ``old`` has); a key
    one side lacks has the value ``"(unset)"`` there.
  """
  a, b = _flatten(old), _flatten(new)
  keys = list(b) + [k for k in a if k not in b]
  return [
      (k, a.get(k, _UNSET), b.get(k, _UNSET)) for k in keys
      if k not in safe and a.get(k, _UNSET) != b.get(k, _UNSET)
  ]


def _show(value) -> str:
  return value if value is _UNSET else repr(value)


def _saved_config(workdir: pathlib.Path) -> tuple[int | None, dict | None]:
  """The latest checkpoint's step and the configuration it was trained with.

  Checkpoints written before the configuration was saved with them fall
  back to ``config.json``, which the run that wrote them left there.

  Returns:
    ``(step, configuration)``; ``(None, None)`` without a checkpoint.
  """
  if not (workdir / "checkpoints").is_dir():
    return None, None
  mngr = _checkpoint_manager(workdir, create=False)
  try:
    step = mngr.latest_step()
    if step is None:
      return None, None
    if (workdir / "checkpoints" / str(step) / "config").exists():
      restored = mngr.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore()
      ))
      return step, restored["config"]
  finally:
    mngr.close()
  path = workdir / "config.json"
  return step, (json.loads(path.read_text()) if path.exists() else None)


def check_resume(
    saved: dict | None, config: ml_collections.ConfigDict,
    workdir: pathlib.Path, step: int,
) -> None:
  """Raises a ``ConfigError`` naming each setting that changed since ``step``.

  Args:
    saved: the configuration of the checkpointed run (``None``: unknown, not
      checked).
    config: the configuration about to resume.
    workdir: the run's directory, for the message.
    step: the checkpoint's step, for the message.

  Raises:
    ConfigError: a setting outside ``RESUME_SAFE_KEYS`` differs.
  """
  if saved is None:
    return
  changes = config_changes(saved, _config_json(config))
  if changes:
    listed = ", ".join(f"{k} ({_show(o)} -> {_show(n)})"
                       for k, o, n in changes)
    raise cli.ConfigError(
        f"--workdir={workdir} holds a checkpoint at step {step} trained with"
        f" other settings: {listed}. Resuming would continue that run, not"
        " train this one: use a new --workdir, or undo the change. Only"
        f" {', '.join(RESUME_SAFE_KEYS)} may change on resume."
    )


# ----------------------------------------------------------------------------
# What runs, printed before the first step compiles.
# ----------------------------------------------------------------------------


def _say(*lines: str) -> None:
  if jax.process_index() == 0:
    for line in lines:
      print(line, flush=True)


def describe_devices(mesh) -> str:
  """``devices: 8 x cpu (1 process), mesh fsdp=8 (...)`` and the like."""
  devices = jax.devices()
  platform = devices[0].platform
  kinds = sorted({d.device_kind for d in devices} - {platform})
  procs = jax.process_count()
  about = kinds + [f"{procs} process{'es' if procs > 1 else ''}"]
  text = f"devices: {len(devices)} x {platform} ({', '.join(about)})"
  if mesh is None:
    return text + ", no mesh (one device trains)"
  return (
      f"{text}, mesh {mesh_lib.describe(mesh)} (batch and parameters split"
      f" along {mesh.axis_names[0]!r})"
  )


def describe_optimizer(config: ml_collections.ConfigDict, total: int) -> str:
  """``optimizer: muon(0.02, adam_learning_rate=0.003), cosine ...``."""
  c = config.optimizer
  args = [f"{optimizers.resolved_learning_rate(c):g}"] + [
      f"{k}={v!r}" for k, v in optimizers.resolve_kwargs(c.name, c.kwargs)
      .items()
  ]
  warmup = optimizers.steps_of(c.warmup_steps, total)
  clip = (f", gradient clipping {c.grad_clip_norm:g}" if c.grad_clip_norm
          else "")
  decay = ""
  if c.schedule == "wsd":
    last = optimizers.steps_of(c.get("decay_steps", 0.2), total)
    decay = f" (decay over the last {last} steps)"
  return (
      f"optimizer: {c.name}({', '.join(args)}), {c.schedule} schedule"
      f"{decay} after {warmup} warmup step{'' if warmup == 1 else 's'}{clip}"
  )


def describe_summary(summary: dict[str, Any], workdir) -> str:
  """The line ``examples/main.py`` prints at the end of a run."""
  final = summary["final_eval"]
  extra = "".join(
      f", {k} {v:.4f}" for k, v in final.items() if k != "loss"
  )
  return (
      f"step {summary['final_step']}: final eval loss {final['loss']:.4f}"
      f"{extra} (best {summary['best_eval_loss']:.4f}); metrics.jsonl,"
      f" checkpoints/ and loss.png in {workdir}"
  )


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------


def _config_error(error: Exception, setting: str | None = None):
  """``error`` as a ``ConfigError``, naming ``setting`` if it does not."""
  message = cli.one_line(error)
  if setting and setting not in message:
    message = f"`{setting}`: {message}"
  return cli.ConfigError(message)


def _build(config: ml_collections.ConfigDict):
  """Task, mesh, model and optimizer of ``config``; nothing is written.

  Every setting that cannot run raises here, as a ``ConfigError`` naming it,
  before the workdir is touched; the cheap checks come first.
  """
  try:
    tx = optimizers.create_optimizer(config.optimizer, config.num_train_steps)
  except ValueError as e:
    raise _config_error(e, "optimizer") from e
  except TypeError as e:  # An argument the factory does not take.
    raise _config_error(e, "optimizer.kwargs") from e
  try:
    task = Task(config)
    next(iter(task.eval_batches()))  # `eval.num_sequences` fits the data.
  except (ValueError, FileNotFoundError) as e:
    raise _config_error(e) from e
  try:
    # config.mesh: shard the parameters (and the optimizer state, built
    # from them) FSDP-style over a device mesh; see examples/mesh.py.
    mesh = mesh_lib.make_mesh(config.get("mesh"))
  except ValueError as e:
    raise _config_error(e, "mesh") from e
  try:
    model = models.create_model(
        config.model, num_outputs=task.num_outputs,
        rngs=nnx.Rngs(config.seed),
    )
  except ValueError as e:
    raise _config_error(e, "model") from e
  if mesh is not None:
    mesh_lib.shard_model(model, mesh)
    try:
      mesh_lib.shard_batch(task.train_batch(0), mesh)
    except ValueError as e:
      raise _config_error(e) from e
  return task, mesh, model, tx


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, verbose: bool = True
) -> dict[str, Any]:
  """Trains ``config``'s model in ``workdir``, resuming from a checkpoint.

  A checkpoint in ``workdir`` is resumed only if it was trained with the
  same configuration, up to ``RESUME_SAFE_KEYS``. A run that stops before
  its first step is done (a bad setting, an interrupted compilation)
  removes the ``workdir`` it created.

  Args:
    config: a configuration from ``configs/`` (``task``, ``data``, ``model``,
      ``optimizer``, step counts, ...).
    workdir: directory for metrics, checkpoints and the plot.
    verbose: print what runs (devices, mesh, model and parameter count,
      optimizer, the step it resumes from) before the first step compiles.

  Returns:
    The summary written to ``workdir/summary.json``: ``start_step`` (the step
    the run resumed from, 0 if fresh), ``final_step``, ``best_eval_loss``,
    ``final_eval`` (the last evaluation's metrics), ``sec_per_step`` (training
    wall time per step, without compilation and evaluation), ``wall_sec``
    (the whole call, this invocation) and ``num_params``. Under
    ``jax.distributed`` process 0 alone writes ``workdir``'s files (the
    checkpoints are written together); the others return the same summary
    but for ``best_eval_loss``, which covers only their own evaluations.

  Raises:
    cli.ConfigError: a setting that cannot run, named (a missing
      ``data.path``, an unknown ``optimizer.name``, a ``mesh`` that does not
      fit the devices, ...), or a checkpoint in ``workdir`` trained with
      other settings (the changed ones named, old -> new).
  """
  t_call = time.perf_counter()
  if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", str(workdir)):
    # pathlib would make "gs://b/run" the local directory "gs:/b/run".
    raise cli.ConfigError(
        f"`workdir`={str(workdir)!r} is a URL; this example writes through"
        " local file-system paths: give a directory (on a pod, one that every"
        " host sees, e.g. a shared file system)."
    )
  workdir = pathlib.Path(workdir).resolve()
  created = not workdir.exists()
  first_step_done = False
  try:
    latest = None
    if config.restore_checkpoints:  # Refuse a changed configuration first.
      latest, saved = _saved_config(workdir)
      if latest is not None:
        check_resume(saved, config, workdir, latest)
    task, mesh, model, tx = _build(config)
    total = config.num_train_steps
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    if mesh is not None:
      mesh_lib.replicate_unplaced(optimizer, mesh)
    num_params = sum(
        int(np.prod(x.shape))
        for x in jax.tree.leaves(nnx.state(model, nnx.Param))
    )

    # Checkpoints: resume from the latest one, if it was trained with this
    # configuration; otherwise start from the model of `init_from` (another
    # run's workdir) if it is set.
    mngr = None
    start_step = 0
    if latest is not None:
      mngr = _checkpoint_manager(workdir, config.max_checkpoints_to_keep)
      target = {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}
      try:
        restored = mngr.restore(latest, args=ocp.args.Composite(**{
            k: ocp.args.StandardRestore(v) for k, v in target.items()
        }))
      except ValueError as e:
        mngr.close()
        raise cli.ConfigError(
            f"The checkpoint at step {latest} in {workdir / 'checkpoints'}"
            " does not match this configuration's model and optimizer (was"
            " it written with another `model` or `optimizer.name`?). Use a"
            " new --workdir."
        ) from e
      nnx.update(model, restored["model"])
      nnx.update(optimizer, restored["optimizer"])
      start_step = int(optimizer.step[...])
    elif config.get("init_from"):
      try:
        nnx.update(model, load_model_state(model, config.init_from))
      except (FileNotFoundError, ValueError) as e:
        raise _config_error(e, "init_from") from e

    workdir.mkdir(parents=True, exist_ok=True)
    if mngr is None and config.save_checkpoints:
      mngr = _checkpoint_manager(workdir, config.max_checkpoints_to_keep)
    # Under jax.distributed every process runs this loop on the same
    # workdir; process 0 alone writes the files beside the checkpoints
    # (Orbax coordinates the checkpoints' own writes).
    primary = jax.process_index() == 0
    if primary:
      _reset_metrics(workdir, start_step if start_step else None)
    saved_config = _config_json(config)
    if primary:
      (workdir / "config.json").write_text(
          config.to_json_best_effort(indent=2)
      )

    if verbose:
      if start_step >= total:
        status = (
            f"resuming from step {start_step}: nothing to train"
            f" (num_train_steps={total}; raise it to train longer)"
        )
      elif start_step:
        status = f"resuming from step {start_step}"
      else:
        status = "new run"
      _say(
          describe_devices(mesh),
          f"model: {config.model.name} ({type(model).__name__}),"
          f" {num_params:,} parameters; {total} steps of"
          f" {task.items_per_step:,}"
          f" {'tokens' if task.unit == 'tok' else 'examples'}",
          describe_optimizer(config, total),
          f"workdir: {workdir}: {status}",
      )

    def save(step):
      if mngr is not None and config.save_checkpoints:
        mngr.save(step, args=ocp.args.Composite(
            model=ocp.args.StandardSave(nnx.state(model)),
            optimizer=ocp.args.StandardSave(nnx.state(optimizer)),
            config=ocp.args.JsonSave(saved_config),
        ))

    train_step = functools.partial(
        make_train_step(task.loss_fn),
        shardings=None if mesh is None else state_shardings(model, optimizer),
    )
    metrics_file = (workdir / METRICS_FILE).open("a") if primary else None

    def write(record):
      if metrics_file is not None:
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()

    best_eval = math.inf
    for r in read_metrics(workdir) if primary else ():
      if r["split"] == "eval":
        best_eval = min(best_eval, r["loss"])
    last_train, last_eval = None, {}
    timer = _Timer()
    pending = []
    bar = _progress_bar(config, start_step)
    if start_step < total:
      bar.set_postfix_str("compiling the training step")
    try:
      for step in range(start_step + 1, total + 1):
        batch = task.train_batch(step - 1)
        if mesh is not None:
          batch = mesh_lib.shard_batch(batch, mesh)
        t0 = time.perf_counter()
        loss = train_step(model, optimizer, batch)
        pending.append(loss)
        if timer.compile_sec is None:  # The first call compiles; apart.
          jax.block_until_ready(loss)
          timer.compile_sec = time.perf_counter() - t0
          first_step_done = True
          bar.set_postfix_str(f"compiled in {timer.compile_sec:.0f} s")
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
          last_train = {"loss": train_loss, "rate": rate}
        if eval_now:
          last_eval = task.evaluate(model)
          best_eval = min(best_eval, last_eval["loss"])
          write({"split": "eval", "step": step, **last_eval})
          logging.info("step %d: eval %s", step, last_eval)
        if log_now or eval_now:  # After the evaluation: the bar's last
          # `eval=` is this step's, the final one at the end.
          bar.set_postfix_str(_postfix(last_train, last_eval, task.unit))
        if save_now:
          save(step)
        if log_now or eval_now or save_now:
          timer.start()
    finally:
      bar.close()
      if metrics_file is not None:
        metrics_file.close()
      if mngr is not None:
        mngr.wait_until_finished()
        mngr.close()
  except BaseException:
    if created and not first_step_done:  # Nothing worth keeping.
      shutil.rmtree(workdir, ignore_errors=True)
    raise

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
  if jax.process_index() != 0:
    return summary
  (workdir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
  if config.plot:
    what = config.model.name
    if config.task != config.model.name:
      what = f"{config.task} / {what}"
    plot_metrics(workdir, title=(
        f"{what}: {config.optimizer.name}, lr={summary['learning_rate']:g}"
    ))
  return summary
