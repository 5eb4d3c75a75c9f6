r"""Trains an example model with an optimizer chosen by name.

This file is intentionally kept short: the logic lives in ``train.py`` so that
it can be tested and imported. Run from the repository root::

  python examples/main.py --config=configs/lm.py --workdir=/tmp/lm \
    --config.optimizer.name=muon --config.optimizer.learning_rate=0.02

A mistake on the command line (an unknown option, a missing data file, a
changed setting in a workdir that holds a checkpoint) is one line on stderr
and exit status 2 (``examples/cli.py``).

Several processes (one per host of a pod, or several on one machine) run the
same command with ``--distributed``; ``jax.distributed.initialize`` finds the
cluster from the environment (Cloud TPU, SLURM, ...), or from
``--coordinator_address``, ``--num_processes`` and ``--process_id`` where
given. Two processes of 2 CPU devices each on one machine::

  for i in 0 1; do
    XLA_FLAGS=--xla_force_host_platform_device_count=2 \
      python examples/main.py --config=configs/lm_sharded.py \
      --workdir=/tmp/lm_2proc --coordinator_address=localhost:12355 \
      --num_processes=2 --process_id=$i &
  done; wait
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
    " multi-host job (TPU pod slice, several GPU hosts). Implied by"
    " --coordinator_address, --num_processes or --process_id.",
)
flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0's coordinator, for jax.distributed.initialize;"
    " unset: detected from the cluster environment.",
)
flags.DEFINE_integer(
    "num_processes", None,
    "Number of processes of the job, for jax.distributed.initialize; unset:"
    " detected from the cluster environment.",
    lower_bound=1,
)
flags.DEFINE_integer(
    "process_id", None,
    "This process's index in [0, num_processes), for"
    " jax.distributed.initialize; unset: detected from the cluster"
    " environment.",
    lower_bound=0,
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
  cluster = {
      name: FLAGS[name].value
      for name in ("coordinator_address", "num_processes", "process_id")
      if FLAGS[name].value is not None
  }
  if FLAGS.distributed or cluster:
    jax.distributed.initialize(**cluster)
  summary = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  if jax.process_index() == 0:
    print(train.describe_summary(summary, FLAGS.workdir), flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
