"""configs/lm_sharded.py trains on the 8 fake CPU devices like on one."""

import importlib
import logging
import pathlib
import sys

import jax
import numpy as np
import pytest
from flax import nnx

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from examples import mesh as mesh_lib  # noqa: E402
from examples import models  # noqa: E402
from examples import train  # noqa: E402


def _tiny(config):
  config.num_train_steps = 3
  config.log_every_steps = 3
  config.eval_every_steps = 3
  config.checkpoint_every_steps = 3
  config.save_checkpoints = False
  config.restore_checkpoints = False
  config.progress_bar = False
  config.plot = False
  config.batch_size = 8
  config.data.seq_len = 16
  config.eval.num_sequences = 8
  config.eval.batch_size = 8
  config.model.d_model = 32
  config.model.num_layers = 2
  config.model.num_heads = 2
  return config


def test_sharded_config_matches_one_device(tmp_path):
  sharded = _tiny(importlib.import_module("configs.lm_sharded").get_config())
  assert sharded.optimizer.kwargs.sharding == "distribute"
  plain = _tiny(importlib.import_module("configs.lm").get_config())
  plain.optimizer.name = "muon"
  got = train.train_and_evaluate(sharded, tmp_path / "sharded")
  want = train.train_and_evaluate(plain, tmp_path / "plain")
  assert jax.device_count() == 8
  np.testing.assert_allclose(
      got["final_eval"]["loss"], want["final_eval"]["loss"], rtol=1e-5
  )


@pytest.mark.parametrize(
    "shape, names", [((8,), ("fsdp",)), ((2, 4), ("fsdp", "model"))])
def test_train_step_compiles_once(tmp_path, caplog, shape, names):
  # On Auto axes XLA chose other shardings for some updated arrays (a
  # replicated layer-norm scale came back split over "model", P(None)
  # came back P()), and the step compiled again at step 2.
  config = _tiny(importlib.import_module("configs.lm_sharded").get_config())
  config.mesh.shape = shape
  config.mesh.axis_names = names
  train.make_train_step.cache_clear()  # A new jit: no earlier test's cache.
  with jax.log_compiles(True), caplog.at_level(logging.WARNING):
    train.train_and_evaluate(config, tmp_path / "run", verbose=False)
  compiles = [r for r in caplog.records
              if "Compiling jit(train_step)" in r.getMessage()]
  assert len(compiles) == 1


def test_mesh_helpers():
  config = importlib.import_module("configs.lm_sharded").get_config()
  mesh = mesh_lib.make_mesh(config.mesh)
  assert dict(mesh.shape) == {"fsdp": 8}
  config.mesh.shape = (2, -1)
  config.mesh.axis_names = ("fsdp", "model")
  mesh = mesh_lib.make_mesh(config.mesh)
  assert dict(mesh.shape) == {"fsdp": 2, "model": 4}
  assert mesh_lib.param_spec((128, 512), mesh) == jax.P("model", "fsdp")
  assert mesh_lib.param_spec((128,), mesh) == jax.P(None)
  model = models.create_model(
      _tiny(config).model, num_outputs=256, rngs=nnx.Rngs(0)
  )
  mesh_lib.shard_model(model, mesh)
  for x in jax.tree.leaves(nnx.state(model)):
    assert x.sharding.spec == mesh_lib.param_spec(x.shape, mesh)
  with pytest.raises(ValueError, match="divisible"):
    mesh_lib.shard_batch({"tokens": np.zeros((3, 4), np.int32)}, mesh)
  config.mesh.shape = (3, -1)
  with pytest.raises(ValueError, match="not a multiple"):
    mesh_lib.make_mesh(config.mesh)
