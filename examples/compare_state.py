r"""Quantized optimizer state on the LM example: paired against float32.

Trains ``configs/lm.py`` with each optimizer and each state storage
(``f32``: the default; ``q8``/``q4``: ``mu_dtype`` and ``nu_dtype`` set to
that format, so the momentum and AdamW's moments are 8- or 4-bit), seed by
seed at each optimizer's default learning rate, and reports the best
validation loss (nats/byte) and its difference to the float32 run of the
same seed: mean, standard error and the largest over seeds.

Usage::

  python examples/compare_state.py --workdir=/tmp/compare_state \
      [--optimizers=muon,adamuon] [--states=f32,q8,q4] [--seeds=0,1,2,3] \
      [--out=examples/results/lm/compare_state.md]

Finished runs in ``workdir`` are reused (same configuration).
"""

from __future__ import annotations

import copy
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# One OpenBLAS thread: its LAPACK calls (the QR of Dion and Dion2) otherwise
# spin against XLA's own threads, 10-100x slower or stalled, on a few cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from configs import lm  # noqa: E402
from examples import compare  # noqa: E402
from examples import optimizers  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/compare_state", "where runs are kept")
flags.DEFINE_list("optimizers", ["muon", "adamuon"], "optimizer names")
flags.DEFINE_list(
    "states", ["f32", "q8", "q4"],
    "f32 or quantized formats: q8, q4, n4; q4s stochastic rounding, q4/64"
    " blocks of 64 (examples/optimizers.py: state_format); q4@mu the momenta"
    " only; n4+u4s/64 the momenta in n4, the second moments in u4s/64",
)
flags.DEFINE_list("seeds", ["0", "1", "2", "3"], "seeds")
flags.DEFINE_string("out", None, "also write the table here")


def config_for(name: str, state: str, seed: int):
  c = copy.deepcopy(lm.get_config())
  c.optimizer.name = name
  c.optimizer.learning_rate = optimizers.default_learning_rate(name)
  c.seed = seed
  if state != "f32":
    # "<format>@mu": the momenta only (AdamW's second moment in float32);
    # "<mu format>+<nu format>": each its own.
    fmt, _, only = state.partition("@")
    mu_fmt, _, nu_fmt = fmt.partition("+")
    c.optimizer.kwargs.mu_dtype = mu_fmt
    if only != "mu":
      c.optimizer.kwargs.nu_dtype = nu_fmt or mu_fmt
  return c


def main(argv):
  del argv
  seeds = [int(s) for s in FLAGS.seeds]
  loss = {}
  t0 = time.time()
  for seed in seeds:
    for name in FLAGS.optimizers:
      for state in FLAGS.states:
        wd = (
            pathlib.Path(FLAGS.workdir) / name / state.replace("/", "_b")
            / f"seed{seed}"
        )
        summary = compare.train_once(config_for(name, state, seed), str(wd))
        loss[name, state, seed] = summary["best_eval_loss"]
        print(f"{name} {state} seed {seed}: {loss[name, state, seed]:.4f}"
              f" ({time.time() - t0:.0f} s)", flush=True)
  lines = [
      "| optimizer | state | seeds | best val loss (mean) | diff vs f32"
      " (mean ± s.e.) | largest diff |",
      "|---|---|---|---:|---:|---:|",
  ]
  for name in FLAGS.optimizers:
    for state in FLAGS.states:
      vals = np.array([loss[name, state, s] for s in seeds])
      row = f"| {name} | {state} | {len(seeds)} | {vals.mean():.4f} |"
      if state == "f32" or "f32" not in FLAGS.states:
        lines.append(row + " — | — |")
        continue
      d = vals - np.array([loss[name, "f32", s] for s in seeds])
      se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
      worst = d[np.argmax(np.abs(d))]
      lines.append(row + f" {d.mean():+.4f} ± {se:.4f} | {worst:+.4f} |")
  per_seed = ["", "Per seed (best validation loss, nats/byte):", ""]
  for key, v in sorted(loss.items()):
    per_seed.append(f"- {key[0]} {key[1]} seed {key[2]}: {v:.4f}")
  table = "\n".join(lines + per_seed) + "\n"
  print(table)
  if FLAGS.out:
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    with open(FLAGS.out, "w") as f:
      f.write(
          "`examples/compare_state.py`: configs/lm.py, each optimizer's"
          " default learning rate, state stored as float32 or quantized"
          " (mu_dtype = nu_dtype = the format), paired by seed. Wall time"
          f" {time.time() - t0:.0f} s on a shared 2-core CPU.\n\n" + table
      )


if __name__ == "__main__":
  app.run(main)
