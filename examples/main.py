r"""Trains an example model with an optimizer chosen by name.

This file is intentionally kept short: the logic lives in ``train.py`` so that
it can be tested and imported. Run from the repository root::

  python examples/main.py --config=configs/lm.py --workdir=/tmp/lm \
    --config.optimizer.name=muon --config.optimizer.learning_rate=0.02
"""

import pathlib
import sys

if __package__ in (None, ""):  # Run as a script: make `examples` importable.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from examples import train  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for metrics, checkpoints, plot.")
flags.DEFINE_bool(
    "distributed", False,
    "Call jax.distributed.initialize() first: one process per host of a"
    " multi-host job (TPU pod slice, several GPU hosts).",
)
config_flags.DEFINE_config_file(
    "config", None, "Path to a configuration file in configs/.",
    lock_config=True,
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  if not FLAGS["verbosity"].present:  # Orbax logs every save at INFO.
    logging.set_verbosity(logging.WARNING)
  if FLAGS.distributed:
    jax.distributed.initialize()
  logging.info("JAX devices: %s", jax.local_devices())
  summary = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  print(
      f"best eval loss {summary['best_eval_loss']:.4f} at"
      f" {summary['final_step']} steps; final eval {summary['final_eval']};"
      f" metrics, checkpoints and loss.png in {FLAGS.workdir}"
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
