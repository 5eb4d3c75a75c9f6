r"""Continual learning on scikit-learn's digits: fine-tuning vs GPM vs ROGO.

  python examples/continual.py --workdir=/tmp/continual

Two task sequences, no download: split digits (5 tasks of 2 classes, one
head per task) and permuted digits (5 tasks of 10 classes, a fixed pixel
permutation each, one shared head). Each method (plain fine-tuning, GPM's
projection, ROGO's relaxed projection) trains with each optimizer (AdamW,
muon) over the seeds; ACC and BWT are reported.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The default configuration of the continual-learning example."""
  config = ml_collections.ConfigDict()
  # Seeds (parameter initialization, batch order, train/test split).
  config.seeds = (0, 1, 2)
  # Task sequences: 'split' and/or 'permuted'.
  config.benchmarks = ("split", "permuted")
  # Methods: 'finetune', 'gpm' and/or 'rogo'.
  config.methods = ("finetune", "gpm", "rogo")
  # Optimizers: 'adamw' and/or 'muon'.
  config.optimizers = ("adamw", "muon")
  # Number of tasks of each sequence.
  config.num_tasks = 5
  # Fraction of the digits held out for testing.
  config.test_fraction = 0.3
  # Hidden width of the bias-free two-layer MLP.
  config.hidden = 100
  # Examples per batch.
  config.batch_size = 32
  # Epochs per task, by sequence.
  config.epochs = ml_collections.ConfigDict({"split": 10, "permuted": 5})

  # Optimizers' learning rates and weight decay (hidden layers only, so the
  # heads of finished tasks do not decay).
  config.learning_rate = ml_collections.ConfigDict(
      {"adamw": 1e-3, "muon": 0.02}
  )
  config.weight_decay = 1e-4

  # GPM: examples per representation matrix (GPM: 300 on MNIST), and the
  # energy threshold of the bases, raised by `threshold_step` each task
  # (GPM's schedule on CIFAR: 0.97 + 0.003 t).
  config.representation_samples = 300
  config.threshold = 0.97
  config.threshold_step = 0.003

  # ROGO: the relaxing space is searched after each epoch of a task while
  # the last search found new directions, from the gradient on
  # `gradient_samples` examples (reference: 125), keeping
  # `gradient_threshold` of its energy (reference: 0.97 for the first
  # layer, 0.99 for the others), with alignment `relax_threshold`
  # (reference: 0.9); the learning rate is divided by `relax_lr_factor`
  # each time the space grows (reference: 2).
  config.gradient_samples = 125
  config.gradient_threshold = (0.97, 0.99)
  config.relax_threshold = 0.9
  config.relax_lr_factor = 2.0

  # Write the plot of per-task accuracy.
  config.plot = True
  return config
