r"""A deeper byte-level LM with a longer context and a warmup-stable-decay
schedule: the second task of ``examples/compare.py``.

Everything not set here is the LM example's configuration (configs/lm.py):
the same corpus, validation text and optimizer. This one is 4 blocks deep and
half as wide (width 64, 2 heads of 32: 0.23M parameters, every matrix with
the aspect ratio it has in configs/lm.py), reads 128 bytes of context, 16
sequences a step (the same 2,048 tokens a step as configs/lm.py), for 400
steps of a warmup-stable-decay schedule (constant after the warmup, then a
linear decay to 0 over the last 20% of the steps). A run is about 0.4x the
FLOPs of one of configs/lm.py::

  python examples/main.py --config=configs/lm_deep.py --workdir=/tmp/lm_deep
"""

import importlib.util
import pathlib

import ml_collections


def _lm_config() -> ml_collections.ConfigDict:
  # Loaded by path: config_flags loads this file by path too, outside any
  # package, so a package import of the sibling would not resolve.
  path = pathlib.Path(__file__).with_name("lm.py")
  spec = importlib.util.spec_from_file_location("_lm_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config() -> ml_collections.ConfigDict:
  """The configuration of the deeper, longer-context LM."""
  config = _lm_config()
  # Sequences per training batch: 16 x 128 = 2,048 tokens, as configs/lm.py.
  config.batch_size = 16
  # Training steps (optimizer updates).
  config.num_train_steps = 400
  # Tokens (bytes) per training sequence.
  config.data.seq_len = 128
  # Validation sequences (of 128 tokens): 16,384 tokens, as configs/lm.py.
  config.eval.num_sequences = 128
  # Number of transformer blocks.
  config.model.num_layers = 4
  # Width of the residual stream: half configs/lm.py's, so that a run of the
  # deeper model costs less than one of configs/lm.py.
  config.model.d_model = 64
  # Attention heads per block: 2 of width 32, as in configs/lm.py.
  config.model.num_heads = 2
  # Learning-rate shape after warmup: warmup-stable-decay, the last 20% of
  # the steps (optimizer.decay_steps, from configs/lm.py) decaying to 0.
  config.optimizer.schedule = "wsd"
  return config
