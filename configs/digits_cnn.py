r"""A small CNN on scikit-learn's digits (8x8 images, 10 classes; no download).

  python examples/main.py --config=configs/digits_cnn.py --workdir=/tmp/cnn \
    --config.optimizer.name=adamw --config.optimizer.learning_rate=3e-3

Everything but the model and the step budget is the MLP example's
configuration (configs/digits_mlp.py).
"""

import importlib.util
import pathlib

import ml_collections


def _digits_mlp_config() -> ml_collections.ConfigDict:
  # Loaded by path: config_flags loads this file by path too, outside any
  # package, so a package import of the sibling would not resolve.
  path = pathlib.Path(__file__).with_name("digits_mlp.py")
  spec = importlib.util.spec_from_file_location("_digits_mlp_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config() -> ml_collections.ConfigDict:
  """The default configuration of the digits CNN example."""
  config = _digits_mlp_config()
  # Training steps (optimizer updates); 21 steps are one epoch.
  config.num_train_steps = 300
  # Steps between Orbax checkpoints.
  config.checkpoint_every_steps = 150

  # Model: the CNN of examples/models.py.
  config.model = ml_collections.ConfigDict()
  config.model.name = "cnn"
  # Channels of the first 3x3 convolution (the second has twice as many).
  config.model.features = 16
  # Width of the dense layer before the head.
  config.model.hidden = 64
  # Initialization: 'default' (the modules' initializers) or 'scion'
  # (ortho_optax.scion_init: every matrix on the sphere of its Scion norm).
  config.model.init = "default"
  # The Scion preset whose norms and radii that init uses; match the
  # optimizer's (`--config.optimizer.kwargs='{"preset": ...}'`).
  config.model.scion_preset = "cnn"
  return config
