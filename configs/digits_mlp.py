r"""An MLP on scikit-learn's digits (8x8 images, 10 classes; no download).

  python examples/main.py --config=configs/digits_mlp.py --workdir=/tmp/mlp \
    --config.optimizer.name=adamw --config.optimizer.learning_rate=3e-3
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The default configuration of the digits MLP example."""
  config = ml_collections.ConfigDict()
  # Which example task: 'digits' (classification) or 'lm'.
  config.task = "digits"
  # Seed of the parameter initialization and of the batch order.
  config.seed = 0
  # Examples per training batch.
  config.batch_size = 64
  # Training steps (optimizer updates); 21 steps are one epoch.
  config.num_train_steps = 500
  # Write the mean training loss every this many steps.
  config.log_every_steps = 25
  # Evaluate on the test set every this many steps (and at the end).
  config.eval_every_steps = 100
  # Save a checkpoint every this many steps (and at the end).
  config.checkpoint_every_steps = 250
  # Whether to save Orbax checkpoints of the model and optimizer state.
  config.save_checkpoints = True
  # Whether to resume from the latest checkpoint in the workdir.
  config.restore_checkpoints = True
  # How many checkpoints to keep.
  config.max_checkpoints_to_keep = 2
  # Fine-tuning: start from the model saved in this workdir ('' : fresh init).
  config.init_from = ""
  # Show a tqdm progress bar with the loss and the throughput.
  config.progress_bar = True
  # Write loss.png with the loss curves at the end.
  config.plot = True

  # Data.
  config.data = ml_collections.ConfigDict()
  # Fraction of the 1797 digits held out for testing.
  config.data.test_fraction = 0.25
  # Seed of the train/test split.
  config.data.split_seed = 0
  # Task shift: 'none', 'permute' (classes), 'invert' or 'roll' (pixels).
  config.data.shift = "none"

  # Evaluation on the whole test set.
  config.eval = ml_collections.ConfigDict()
  # Examples per evaluation batch.
  config.eval.batch_size = 512

  # Model.
  config.model = ml_collections.ConfigDict()
  # Model name: 'mlp' or 'cnn' (see examples/models.py).
  config.model.name = "mlp"
  # Width of the hidden layers.
  config.model.hidden = 128
  # Number of hidden layers.
  config.model.depth = 2
  # Initialization: 'default' (the modules' initializers) or 'scion'
  # (ortho_optax.scion_init: every matrix on the sphere of its Scion norm).
  config.model.init = "default"
  # The Scion preset whose norms and radii that init uses; match the
  # optimizer's (`--config.optimizer.kwargs='{"preset": ...}'`).
  config.model.scion_preset = "mlp"

  # Optimizer, chosen by name: 'adamw', 'optax_muon' (optax.contrib.muon) or
  # any optimizer of ortho_optax ('muon', 'normuon', 'scion', ...).
  config.optimizer = ml_collections.ConfigDict()
  # Name of the optimizer (see examples/optimizers.py).
  config.optimizer.name = "muon"
  # Peak learning rate, the factory's first argument; None: the optimizer's
  # default in examples/optimizers.py (3e-3 for AdamW, 0.02 for Muon).
  config.optimizer.learning_rate = ml_collections.config_dict.placeholder(float)
  # Extra keyword arguments of the optimizer factory, set as a whole on the
  # command line: --config.optimizer.kwargs='{"weight_decay": 0.01}'.
  # Orthogonalizing optimizers get adam_learning_rate=3e-3 unless set.
  config.optimizer.kwargs = ml_collections.ConfigDict()
  # Learning-rate shape after warmup: 'constant', 'cosine', 'linear' or 'wsd'
  # (warmup-stable-decay: constant, then linear to 0 over the last 20% of
  # the steps).
  config.optimizer.schedule = "cosine"
  # Linear warmup steps (an int, or a float: a fraction of the steps).
  config.optimizer.warmup_steps = 0
  # Clip gradients to this global norm before the optimizer (0: no clipping).
  config.optimizer.grad_clip_norm = 0.0
  return config
