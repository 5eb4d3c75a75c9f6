r"""Learning rates that transfer: one rate for all, and across width.

Two checks on top of a finished learning-rate comparison of
``examples/compare.py`` (``--best_from``: its results directory, which
holds ``<task>/compare.json``, or several, e.g. of comparisons split by
optimizer; an optimizer's "own best" is the best rate of that sweep):

* ``--mode=common``: every optimizer at one learning rate
  (``--learning_rate``, by default ``COMMON_LEARNING_RATE``, 0.01) with
  extra factory arguments (``--optimizer_kwargs``), each given only to the
  optimizers whose factory accepts it. The default, ``update_rms=0.2,
  consistent_rms=0.2``, is Moonlight's rule (Liu et al. 2025,
  arXiv:2502.16982): each hidden matrix's update rescaled to RMS 0.2; the
  named ``ortho_optax`` optimizers take ``update_rms``, ``optax_muon``
  takes ``consistent_rms``. Moonlight pairs it with AdamW's learning
  rate; here AdamW's (0.003) is a third of what the RMS-0.2 optimizers
  want (``adamuon`` and ``root``, RMS 0.2 by construction, do best at
  0.01 on both LMs, and are 0.14-0.20 nats/byte worse at 0.0025), so the
  common rate is theirs, 0.01, which is also Muon's step at 0.02 on these
  widths. ``adamw`` takes no ``update_rms`` and is not in the default
  list. The table:
  each optimizer's value at the common rate, its own best, the gap, and
  whether the gap is within ``--tolerance`` (0.03 nats/byte).
* ``--mode=width``: the task (``lm``) at other widths of the residual
  stream (``--widths``, 64 and 256; as many heads as keep the head
  dimension of the task's configuration, 32), every other setting the
  task's. Each optimizer is swept around the rate chosen at the task's own
  width (the best of ``--best_from``, or ``--chosen_learning_rates``),
  ``--lr_factors`` times it, on ``--seeds`` (one), and the table gives
  the value at the chosen rate, the best rate at this width, the gap, and
  whether it is within ``--tolerance`` (0.02).

The runs, and each task's ``compare.md``, ``compare.json`` and
``compare.png``, go to ``--workdir/<task>/`` (``<task>_d<width>`` in the
width mode); the run configurations record the extra arguments and the
width, and finished runs are reused. The tables go to ``--results_dir``
(default ``--workdir``): ``transfer_<mode>.md`` and ``.json``, and
``transfer.md``, both modes' tables that are there.

Run from the repository root, after ``examples/compare.py
--workdir=runs/compare``::

  # One rate for all, LM tasks, seed 0: 15 optimizers x 2 tasks.
  python examples/transfer.py --mode=common --workdir=runs/common_rate \
    --best_from=runs/compare --results_dir=examples/results/transfer
  # Width transfer, one seed: muon, adamuon, scion at widths 64 and 256.
  python examples/transfer.py --mode=width --workdir=runs/width \
    --best_from=runs/compare --results_dir=examples/results/transfer
  # A smoke test of both (tiny models; --best_from of a --quick compare.py):
  python examples/transfer.py --mode=common --workdir=/tmp/transfer \
    --best_from=/tmp/compare --quick --steps=10 --seeds=0
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import math
import os
import pathlib
import statistics
import sys

# As in compare.py: one OpenBLAS thread.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

if __package__ in (None, ""):  # Run as a script: make `examples` importable.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from examples import cli  # noqa: E402
from examples import compare  # noqa: E402
from examples import optimizers  # noqa: E402

FLAGS = flags.FLAGS
MODES = ("common", "width")
# The common rate of --mode=common: ROOT's and AdaMuon's default (update
# RMS 0.2 by construction), the module docstring says why not AdamW's.
COMMON_LEARNING_RATE = 0.01
# Each mode's defaults, for the flags left out.
DEFAULTS = {
    "common": {
        "task": ["lm", "lm_deep"],
        "optimizers": [n for n in compare.DEFAULT_OPTIMIZERS
                       if n != compare.BASELINE],
        "optimizer_kwargs": ["update_rms=0.2", "consistent_rms=0.2"],
        "lr_factors": ["1"],
        "seeds": ["0"],
        "tolerance": 0.03,
    },
    "width": {
        "task": ["lm"],
        "optimizers": ["muon", "adamuon", "scion"],
        "optimizer_kwargs": [],
        "lr_factors": ["0.5", "1", "2"],
        "seeds": ["0"],
        "tolerance": 0.02,
    },
}
REPORT = "transfer.md"


def _define_flags():
  """Defined only when run as a script, so that importing has no effects."""
  flags.DEFINE_enum("mode", None, MODES,
                    "common: every optimizer at one learning rate; width:"
                    " the task at other widths.")
  flags.DEFINE_string("workdir", None, "Directory for the runs.")
  flags.DEFINE_list("best_from", None,
                    "Results directories of examples/compare.py (with"
                    " <task>/compare.json): each optimizer's own best (from"
                    " the first directory that has it).")
  flags.DEFINE_string("results_dir", None,
                      "Where transfer_<mode>.md/.json and transfer.md go"
                      " (default: --workdir).")
  flags.DEFINE_list("task", None, "Tasks (default: lm,lm_deep for common,"
                    " lm for width).")
  flags.DEFINE_list("optimizers", None,
                    "Optimizer names (default: compare.py's for common;"
                    " muon,adamuon,scion for width).")
  flags.DEFINE_float("learning_rate", None,
                     "common: the one learning rate (default:"
                     " COMMON_LEARNING_RATE, 0.01).")
  flags.DEFINE_list("optimizer_kwargs", None,
                    "key=value factory arguments, each given to the"
                    " optimizers that accept it (default for common:"
                    " update_rms=0.2,consistent_rms=0.2; width: none).")
  flags.DEFINE_list("widths", ["64", "256"], "width: d_model of the runs.")
  flags.DEFINE_list("chosen_learning_rates", [],
                    "width: name=lr, the rate chosen at the task's own width"
                    " (default: the best of --best_from).")
  flags.DEFINE_list("lr_factors", None,
                    "Rates run: these times the common or chosen rate"
                    " (default: 1 for common; 0.5,1,2 for width).")
  flags.DEFINE_integer("extend_edges", 3,
                       "Grid steps to sweep past a best rate at an edge.")
  flags.DEFINE_list("seeds", None,
                    "Seeds (default: 0).")
  flags.DEFINE_float("tolerance", None,
                     "The target gap to the own best, in the metric's unit"
                     " (default: 0.03 for common, 0.02 for width).")
  flags.DEFINE_integer("steps", None, "Training steps (default: each"
                       " task's configuration's).")
  flags.DEFINE_bool("quick", False,
                    "compare.py's smoke-test sizes (tiny models, 60 steps).")
  flags.DEFINE_bool("reuse_only", False,
                    "Train nothing: the tables from the finished runs.")


# ----------------------------------------------------------------------------
# Settings.
# ----------------------------------------------------------------------------


def parse_kwargs(items, names=None) -> dict:
  """``{key: value}`` from ``["key=value", ...]``.

  Values are Python literals (``0.2``, ``True``, ``"q8"``) or else strings.
  With ``names``, every key must be accepted by at least one of them.
  """
  out = {}
  for item in items or ():
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
      raise cli.ConfigError(
          f"`--optimizer_kwargs`: {item!r} is not key=value.")
    try:
      out[key] = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
      out[key] = text.strip()
  if names is not None:
    for key in out:
      if not any(optimizers.accepts(n, key) for n in names
                 if optimizers.available(n)):
        raise cli.ConfigError(
            f"`--optimizer_kwargs`: no optimizer of {', '.join(names)}"
            f" takes {key!r}.")
  return out


def width_task(spec: compare.TaskSpec, width: int) -> compare.TaskSpec:
  """The task ``spec`` at residual width ``width``: ``<name>_d<width>``."""
  return dataclasses.replace(spec, name=f"{spec.name}_d{width}")


def width_config(config, width: int, head_dim: int):
  """``config`` with ``model.d_model = width`` and ``width / head_dim``
  heads; every other setting kept."""
  if config.task != "lm":
    raise cli.ConfigError(
        f"`--mode=width` needs a language-model task; got {config.task!r}.")
  if width < 1 or width % head_dim:
    raise cli.ConfigError(
        f"`--widths`: {width} is not a positive multiple of the head"
        f" dimension {head_dim}.")
  c = copy.deepcopy(config)
  c.model.d_model = width
  c.model.num_heads = width // head_dim
  return c


def head_dim(config) -> int:
  """The head dimension of an LM configuration."""
  return config.model.d_model // config.model.num_heads


def _dirs(best_from) -> list[pathlib.Path]:
  if isinstance(best_from, (str, os.PathLike)):
    best_from = [best_from]
  return [pathlib.Path(d) for d in best_from]


def read_best(best_from, task: str) -> dict:
  """``{optimizer: row}`` of ``<dir>/<task>/compare.json``.

  Args:
    best_from: a results directory, or several: an optimizer's row comes
      from the first that has one.
    task: the task's name.
  """
  out = {}
  for d in _dirs(best_from):
    path = d / task / "compare.json"
    if path.exists():
      for r in json.loads(path.read_text())["rows"]:
        out.setdefault(r["optimizer"], r)
  return out


def runs_at(row: dict, lr: float, seeds) -> dict:
  """``{seed: value}`` of ``row``'s runs at ``lr`` on ``seeds``."""
  return {x["seed"]: x["value"] for x in row.get("runs", ())
          if x["seed"] in seeds and math.isclose(x["lr"], lr, rel_tol=1e-9)}


def worse_by(values: dict, best: dict, metric: str) -> float | None:
  """How much worse ``values`` are than ``best`` (``{seed: value}`` each):
  the mean over the seeds of both, else the difference of the means;
  positive: worse (a higher loss, a lower accuracy)."""
  sign = -1.0 if metric == "accuracy" else 1.0
  seeds = [s for s in values if s in best]
  if seeds:
    return sign * statistics.mean(values[s] - best[s] for s in seeds)
  if values and best:
    return sign * (statistics.mean(values.values())
                   - statistics.mean(best.values()))
  return None


def _values(row: dict, key: str) -> dict:
  return {s: v for s, v in zip(row["seeds"], row[key]) if v is not None}


# ----------------------------------------------------------------------------
# One rate for all.
# ----------------------------------------------------------------------------


def common_rows(table: dict, best: dict, kwargs: dict,
                tolerance: float) -> list[dict]:
  """The rows of the common-rate table of one task.

  Args:
    table: ``compare.compare``'s result at the common rate (its default).
    best: ``{optimizer: row}`` of the task's main comparison.
    kwargs: the extra factory arguments (each row lists those it took).
    tolerance: the target gap.
  """
  metric = table["metric"]
  out = []
  for r in table["rows"]:
    values = _values(r, "default_values")
    b = best.get(r["optimizer"])
    own = _values(b, "best_values") if b else {}
    gap = worse_by(values, own, metric)
    out.append({
        "task": table["task"], "metric": metric, "optimizer": r["optimizer"],
        "kwargs": optimizers.accepted_kwargs(r["optimizer"], kwargs),
        "learning_rate": r["default_lr"], "values": values,
        "value": statistics.mean(values.values()) if values else None,
        "best_lr": b and b["best_lr"], "best_edge": bool(
            b and b.get("edge_of_sweep")),
        "best_values": own,
        "best": statistics.mean(own.values()) if own else None,
        "gap": gap, "within": gap is not None and gap <= tolerance,
    })
  return out


def common_markdown(rows: list[dict], about: dict, lr: float, kwargs: dict,
                    tolerance: float, seeds) -> str:
  """The Markdown of the common-rate table (``about``: task -> sentence)."""
  args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "none"
  lines = [f"- {about[t]}" for t in about if about[t]]
  lines += [
      "",
      f"Every optimizer at learning rate {lr:g}, with {args} given to each"
      " optimizer whose factory takes it, on seeds"
      f" {', '.join(map(str, seeds))}; own best: the best rate of the"
      " learning-rate sweep (examples/compare.py) on the same seeds; gap:"
      " the value at the common rate minus the own best, paired by seed"
      f" (positive: worse); target: gap <= {_tol_text(tolerance, rows)}.",
      "",
      "| task | optimizer | arguments taken | value at the common rate |"
      " own best rate | own best | gap | within |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    m = r["metric"]
    taken = ", ".join(f"{k}={v!r}" for k, v in r["kwargs"].items()) or "-"
    lines.append(
        f"| {r['task']} | {r['optimizer']} | {taken} |"
        f" {compare._fmt_value(r['value'], m)} |"
        f" {_lr_text(r['best_lr'], r['best_edge'])} |"
        f" {compare._fmt_value(r['best'], m)} |"
        f" {_gap_text(r['gap'], [r])} | {_verdict(r)} |")
  tasks = list(dict.fromkeys(r["task"] for r in rows))
  lines.append("")
  for t in tasks:
    ours = [r for r in rows if r["task"] == t]
    lines.append(f"- {t}: {sum(r['within'] for r in ours)} of {len(ours)}"
                 f" within {_tol_text(tolerance, ours)}.")
  if any(r["best_edge"] for r in rows):
    lines.append("- (edge): the own best is at the edge of its sweep.")
  return "\n".join(lines) + "\n"


def run_common(tasks, workdir, best_from, names, lr: float, kwargs: dict,
               seeds, *, results_dir=None, lr_factors=(1.0,), tolerance=0.03,
               steps=None, quick=False, reuse_only=False,
               extend_edges=0) -> dict:
  """Every optimizer at ``lr`` with ``kwargs``, on each task; the table.

  Args:
    tasks: ``compare.TaskSpec``s.
    workdir: the runs go to ``workdir/<task>/``.
    best_from: results directory (or directories) of the main comparison.
    names: optimizer names.
    lr: the common learning rate.
    kwargs: extra factory arguments (``optimizers.accepted_kwargs``).
    seeds: the seeds of every run.
    results_dir: where ``transfer_common.md``/``.json`` and ``transfer.md``
      go (``None``: ``workdir``).
    lr_factors: rates around ``lr`` also run (``compare.compare``); the
      table reports ``lr``.
    tolerance: the target gap.
    steps, quick, reuse_only, extend_edges: as in ``compare.compare_tasks``.

  Returns:
    ``{"rows", "markdown"}``.
  """
  workdir = pathlib.Path(workdir)
  rows, about = [], {}
  for spec in tasks:
    config = compare.comparison_config(
        compare.load_config(spec.config), steps, quick)
    table = compare.compare(
        config, workdir / spec.name, names, lr_factors, seeds,
        metric=spec.metric, task=spec.name, reuse_only=reuse_only,
        extend_edges=extend_edges, learning_rates={n: lr for n in names},
        optimizer_kwargs=kwargs)
    about[spec.name] = table["about"]
    rows += common_rows(table, read_best(best_from, spec.name), kwargs,
                        tolerance)
  markdown = common_markdown(rows, about, lr, kwargs, tolerance, seeds)
  _write(results_dir or workdir, "common", rows, markdown, {
      "learning_rate": lr, "kwargs": kwargs, "seeds": list(seeds),
      "tolerance": tolerance, "best_from": list(map(str, _dirs(best_from))),
      "about": about})
  return {"rows": rows, "markdown": markdown}


# ----------------------------------------------------------------------------
# Width transfer.
# ----------------------------------------------------------------------------


def width_rows(table: dict, width: int, chosen_from: dict,
               tolerance: float) -> list[dict]:
  """The rows of the width table at one width.

  Args:
    table: ``compare.compare``'s result, swept around the chosen rates (its
      defaults).
    width: the task's width.
    chosen_from: optimizer -> where its chosen rate comes from (a note).
    tolerance: the target gap.
  """
  out = []
  for r in table["rows"]:
    gaps = [g for g in r["default_worse_than_best"] if g is not None]
    gap = statistics.mean(gaps) if gaps else None
    out.append({
        "task": table["task"], "metric": table["metric"], "width": width,
        "optimizer": r["optimizer"], "chosen_lr": r["default_lr"],
        "chosen_from": chosen_from.get(r["optimizer"], ""),
        "value": r["default_mean"], "best_lr": r["best_lr"],
        "best_edge": r["edge_of_sweep"], "best": r["best_mean"],
        "seeds": r["seeds"], "gap": gap,
        "within": gap is not None and gap <= tolerance,
    })
  return out


def base_width_rows(best: dict, width: int, chosen: dict, chosen_from: dict,
                    seeds, task: str, metric: str,
                    tolerance: float) -> list[dict]:
  """The rows at the task's own width, from its main comparison's runs."""
  out = []
  for name, lr in chosen.items():
    row = best.get(name)
    if row is None:
      continue
    values = runs_at(row, lr, seeds)
    own = runs_at(row, row["best_lr"], seeds)
    gap = worse_by(values, own, metric)
    out.append({
        "task": task, "metric": metric, "width": width, "optimizer": name,
        "chosen_lr": lr, "chosen_from": chosen_from.get(name, ""),
        "value": statistics.mean(values.values()) if values else None,
        "best_lr": row["best_lr"], "best_edge": row["edge_of_sweep"],
        "best": statistics.mean(own.values()) if own else None,
        "seeds": sorted(set(values) & set(own)), "gap": gap,
        "within": gap is not None and gap <= tolerance,
    })
  return out


def chosen_rates(names, best: dict, given: dict) -> tuple[dict, dict]:
  """``({optimizer: rate chosen at the task's width}, {optimizer: note})``:
  ``given``'s, else the main comparison's best, else the default.

  The note is ``""`` for a best inside its sweep, ``"edge"`` for one at
  its edge, ``"given"`` or ``"default: ..."``."""
  rates, notes = {}, {}
  for n in names:
    if n in given:
      rates[n], notes[n] = given[n], "given"
    elif n in best:
      rates[n] = best[n]["best_lr"]
      notes[n] = "edge" if best[n].get("edge_of_sweep") else ""
    else:
      rates[n] = optimizers.default_learning_rate(n)
      notes[n] = "default: not in --best_from"
  return rates, notes


def width_markdown(rows: list[dict], about: dict, base_width: int,
                   tolerance: float, seeds) -> str:
  """The Markdown of the width table."""
  lines = [f"- {about[t]}" for t in about if about[t]]
  lines += [
      "",
      f"Each optimizer at the rate chosen at width {base_width} (its best"
      " there; (edge): at the edge of that sweep; (given): set on the"
      " command line), on seed"
      f"{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}, and"
      " its own best rate at each width (a sweep around the chosen rate,"
      " past any best at an edge); gap: the value at the chosen rate minus"
      " the own best (positive: worse); width"
      f" {base_width}: the learning-rate comparison's runs; target: gap <="
      f" {_tol_text(tolerance, rows)}.",
      "",
      f"| width | optimizer | rate chosen at {base_width} | its value |"
      " own best rate here | own best | gap | within |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for r in sorted(rows, key=lambda r: r["width"]):  # Stable: rows' order.
    m = r["metric"]
    note = f" ({r['chosen_from']})" if r["chosen_from"] else ""
    lines.append(
        f"| {r['width']} | {r['optimizer']} | {r['chosen_lr']:.3g}{note} |"
        f" {compare._fmt_value(r['value'], m)} |"
        f" {_lr_text(r['best_lr'], r['best_edge'])} |"
        f" {compare._fmt_value(r['best'], m)} |"
        f" {_gap_text(r['gap'], [r])} | {_verdict(r)} |")
  others = [r for r in rows if r["task"] in about]
  lines += ["", f"- {sum(r['within'] for r in others)} of {len(others)}"
            f" within {_tol_text(tolerance, rows)} at the other widths."]
  if any(r["best_edge"] for r in rows):
    lines.append("- (edge): the own best is at the edge of its sweep.")
  return "\n".join(lines) + "\n"


def run_width(task: compare.TaskSpec, workdir, best_from, names, widths,
              lr_factors, seeds, *, given=None, kwargs=None,
              results_dir=None, tolerance=0.02, steps=None, quick=False,
              reuse_only=False, extend_edges=3) -> dict:
  """Sweeps ``names`` around their rate chosen at ``task``'s width, at each
  of ``widths``; the table.

  Args:
    task: a language-model ``compare.TaskSpec``.
    workdir: the runs go to ``workdir/<task>_d<width>/``.
    best_from: results directory (or directories) of the main comparison
      (``task``'s own width).
    names: optimizer names.
    widths: the residual widths run.
    lr_factors: the sweep, times each chosen rate.
    seeds: the chosen rate runs on every seed, the sweep on the first.
    given: optimizer -> the chosen rate, instead of ``best_from``'s best.
    kwargs: extra factory arguments (``optimizers.accepted_kwargs``).
    results_dir: where ``transfer_width.md``/``.json`` and ``transfer.md``
      go (``None``: ``workdir``).
    tolerance: the target gap.
    steps, quick, reuse_only, extend_edges: as in ``compare.compare_tasks``.

  Returns:
    ``{"rows", "markdown"}``.
  """
  workdir = pathlib.Path(workdir)
  base = compare.load_config(task.config)
  config = compare.comparison_config(base, steps, quick)
  base_width = config.model.d_model
  configs = {w: width_config(config, w, head_dim(base)) for w in widths}
  best = read_best(best_from, task.name)
  chosen, notes = chosen_rates(names, best, given or {})
  rows = base_width_rows(best, base_width, chosen, notes, seeds, task.name,
                         task.metric, tolerance)
  about = {}
  for width in widths:
    spec = width_task(task, width)
    table = compare.compare(
        configs[width], workdir / spec.name,
        names, lr_factors, seeds, metric=spec.metric, task=spec.name,
        reuse_only=reuse_only, extend_edges=extend_edges,
        learning_rates=chosen, optimizer_kwargs=kwargs)
    about[spec.name] = table["about"]
    rows += width_rows(table, width, notes, tolerance)
  markdown = width_markdown(rows, about, base_width, tolerance, seeds)
  _write(results_dir or workdir, "width", rows, markdown, {
      "task": task.name, "base_width": base_width, "widths": list(widths),
      "chosen": chosen, "kwargs": kwargs or {}, "seeds": list(seeds),
      "tolerance": tolerance, "best_from": list(map(str, _dirs(best_from))),
      "about": about})
  return {"rows": rows, "markdown": markdown}


# ----------------------------------------------------------------------------
# Output.
# ----------------------------------------------------------------------------


def _lr_text(lr, edge) -> str:
  return "-" if lr is None else f"{lr:.3g}" + (" (edge)" if edge else "")


def _gap_text(gap, rows) -> str:
  if gap is None:
    return "-"
  if rows and rows[0]["metric"] == "accuracy":
    return f"{100 * gap:+.2f}%"
  return f"{gap:+.4f}"


def _tol_text(tolerance, rows) -> str:
  """The tolerance in the rows' unit (both units if they differ)."""
  metrics = {r["metric"] for r in rows}
  texts = []
  if not metrics or "loss" in metrics:
    texts.append(f"{tolerance:g} nats/byte")
  if "accuracy" in metrics:
    texts.append(f"{100 * tolerance:g}% accuracy")
  return " or ".join(texts)


def _verdict(row) -> str:
  if row["gap"] is None:
    return "- (no own best)" if row["best"] is None else "-"
  return "yes" if row["within"] else "no"


def _write(out, mode: str, rows, markdown: str, settings: dict) -> None:
  """``transfer_<mode>.md``/``.json`` in ``out``, then ``transfer.md``."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  (out / f"transfer_{mode}.md").write_text(markdown)
  (out / f"transfer_{mode}.json").write_text(json.dumps(
      settings | {"mode": mode, "rows": rows, "markdown": markdown},
      indent=2))
  print("\n" + markdown, flush=True)
  write_report(out)


def write_report(out) -> str:
  """``transfer.md``: the tables of both modes found in ``out``."""
  out = pathlib.Path(out)
  titles = {"common": "One learning rate for every optimizer",
            "width": "Learning rates across width"}
  parts = ["# Learning rates that transfer\n"]
  for mode in MODES:
    path = out / f"transfer_{mode}.json"
    if path.exists():
      parts.append(f"## {titles[mode]}\n\n"
                   + json.loads(path.read_text())["markdown"])
  text = "\n".join(parts)
  (out / REPORT).write_text(text)
  print(f"Wrote {out / REPORT}.", flush=True)
  return text


def _rates(items) -> dict:
  rates = parse_kwargs(items)
  for name, lr in rates.items():
    if not isinstance(lr, (int, float)) or lr <= 0:
      raise cli.ConfigError(
          f"`--chosen_learning_rates`: {name}={lr!r} is not a positive"
          " number.")
  return {n: float(lr) for n, lr in rates.items()}


def main(argv):
  del argv  # cli.run has checked that there are no positional arguments.
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  d = DEFAULTS[FLAGS.mode]

  def get(name):
    value = getattr(FLAGS, name)
    return d[name] if value is None else value

  names = get("optimizers")
  kwargs = parse_kwargs(get("optimizer_kwargs"), names)
  tasks = [compare.resolve_task(t) for t in get("task")]
  common = dict(
      results_dir=FLAGS.results_dir, tolerance=get("tolerance"),
      steps=FLAGS.steps, quick=FLAGS.quick, reuse_only=FLAGS.reuse_only,
      extend_edges=FLAGS.extend_edges)
  factors = [float(f) for f in get("lr_factors")]
  seeds = [int(s) for s in get("seeds")]
  if FLAGS.mode == "common":
    lr = FLAGS.learning_rate or COMMON_LEARNING_RATE
    run_common(tasks, FLAGS.workdir, FLAGS.best_from, names, lr, kwargs,
               seeds, lr_factors=factors, **common)
    return
  if len(tasks) != 1:
    raise cli.ConfigError("`--mode=width` takes one `--task`.")
  run_width(tasks[0], FLAGS.workdir, FLAGS.best_from, names,
            [int(w) for w in FLAGS.widths], factors, seeds,
            given=_rates(FLAGS.chosen_learning_rates), kwargs=kwargs,
            **common)


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["mode", "workdir", "best_from"])
  cli.run(main)
