r"""Byte-level decoder-only transformer LM on the bundled corpus (the main job).

Trains a 2-layer, width-128 transformer (0.46M parameters) with
``ortho_optax.muon`` on ``examples/data/corpus.txt`` (docstrings of the Python
standard library, 1.8 MB) in a few minutes on 2 CPU cores::

  python examples/main.py --config=configs/lm.py --workdir=/tmp/lm

Choose the length of the run, another optimizer, learning rate or text file
on the command line::

  python examples/main.py --config=configs/lm.py --workdir=/tmp/lm_adamw \
    --config.num_train_steps=1200 \
    --config.optimizer.name=adamw --config.optimizer.learning_rate=3e-3 \
    --config.data.path=/path/to/any/file.txt

Rerun in the same ``--workdir``, a run resumes from its latest checkpoint;
of the settings below only those of ``RESUME_SAFE_KEYS`` in
``examples/train.py`` (``num_train_steps``, the logging, evaluation and
checkpoint frequencies, ...) may differ from the checkpointed run's.

``examples/compare.py`` trains this configuration with every optimizer.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The default configuration of the LM example."""
  config = ml_collections.ConfigDict()
  # Which example task: 'lm' (byte-level language model) or 'digits'.
  config.task = "lm"
  # Seed of the parameter initialization and of the batch order.
  config.seed = 0
  # Sequences per training batch.
  config.batch_size = 32
  # Training steps (optimizer updates). Raising it on a finished workdir
  # trains further from the last checkpoint (the schedule follows it).
  config.num_train_steps = 600
  # Write the mean training loss every this many steps.
  config.log_every_steps = 25
  # Evaluate on the validation set every this many steps (and at the end).
  config.eval_every_steps = 25
  # Save a checkpoint every this many steps (and at the end).
  config.checkpoint_every_steps = 200
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
  # Any text file, read as raw bytes; relative paths are tried against the
  # working directory, then the repository root.
  config.data.path = "examples/data/corpus.txt"
  # Tokens (bytes) per training sequence; the model sees seq_len + 1 bytes.
  config.data.seq_len = 64
  # Seed of the training windows; None: `seed` (one seed for init and data).
  config.data.seed = ml_collections.config_dict.placeholder(int)
  # The file is cut into chunks of this many bytes for the train/val split.
  config.data.chunk_bytes = 4096
  # Every val_every-th chunk is held out for validation (10%).
  config.data.val_every = 10

  # Validation: a fixed set of evenly spaced windows of the held-out text.
  config.eval = ml_collections.ConfigDict()
  # Number of validation sequences (of seq_len tokens each): 16,384 tokens.
  config.eval.num_sequences = 256
  # Sequences per evaluation batch.
  config.eval.batch_size = 128

  # Model.
  config.model = ml_collections.ConfigDict()
  # Model name: 'lm' is the decoder-only transformer of examples/models.py.
  config.model.name = "lm"
  # Width of the residual stream.
  config.model.d_model = 128
  # Number of transformer blocks.
  config.model.num_layers = 2
  # Attention heads per block (d_model must be divisible by it).
  config.model.num_heads = 4
  # Hidden width of the MLP, as a multiple of d_model.
  config.model.mlp_ratio = 4
  # Start the last projection of every residual branch at zero (each block
  # starts as the identity). Off: it helps Muon (two seeds agree far more
  # closely) but costs AdamW 0.17 nats/byte here (see models.TransformerLM).
  config.model.zero_init_residual = False
  # Initialization: 'default' (the modules' initializers) or 'scion'
  # (ortho_optax.scion_init: every matrix on the sphere of its Scion norm).
  config.model.init = "default"
  # The Scion preset whose norms and radii that init uses; match the
  # optimizer's (`--config.optimizer.kwargs='{"preset": ...}'`).
  config.model.scion_preset = "gpt"

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
  # (warmup-stable-decay: constant, then linear to 0 over decay_steps).
  config.optimizer.schedule = "cosine"
  # Linear warmup steps (an int, or a float: a fraction of the steps).
  config.optimizer.warmup_steps = 0.05
  # The final decay of the 'wsd' schedule (an int, or a float: a fraction of
  # the steps); the other schedules ignore it.
  config.optimizer.decay_steps = 0.2
  # Clip gradients to this global norm before the optimizer (0: no clipping).
  config.optimizer.grad_clip_norm = 1.0
  return config
