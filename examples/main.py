r"""Trains an example model with an optimizer chosen by name.

This file is intentionally kept short: the logic lives in ``train.py`` so that
it can be tested and imported. Run from the repository root::

  python examples/main.py --config=configs/lm.py --workdir=/tmp/lm \
    --config.optimizer.name=muon --config.optimizer.learning_rate=0.02

A mistake on the command line (an unknown option, a missing data file, a
changed setting in a workdir that holds a checkpoint) is one line on stderr
and exit status 2 (``examples/cli.py``).
"""

import os
import pathlib
import sys

# One OpenBLAS thread: its LAPACK calls (the QR of Dion and Dion2) otherwise
# spin against XLA's own threads, 10-100x slower or stalled, on a few cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

if __package__ in (None, ""):  # Run as a script: make `examples` importable.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from examples import cli  # noqa: E402

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
  del argv  # cli.run has checked that there are no positional arguments.
  # Imported here, after the flags parsed: JAX and Flax take seconds to load,
  # and a mistyped option should not wait for them.
  import jax  # pylint: disable=g-import-not-at-top

  from examples import train  # pylint: disable=g-import-not-at-top

  if not FLAGS["verbosity"].present:  # Orbax logs every save at INFO.
    logging.set_verbosity(logging.WARNING)
  if FLAGS.distributed:
    jax.distributed.initialize()
  summary = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  if jax.process_index() == 0:
    print(train.describe_summary(summary, FLAGS.workdir), flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
