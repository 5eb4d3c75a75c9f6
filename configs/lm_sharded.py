r"""The LM example, sharded: FSDP over every device, Muon distributed.

``configs/lm.py`` with a device mesh and Muon whose orthogonalization is
spread over the devices (``sharding="distribute"``: each device runs
Newton-Schulz on whole matrices of its own; see ortho_optax's
``scale_by_orthogonalization``). On a CPU, 8 fake devices::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
    python examples/main.py --config=configs/lm_sharded.py \
    --workdir=/tmp/lm_sharded

Before it compiles, the run prints the devices and the mesh it built
(``devices: 8 x cpu (1 process), mesh fsdp=8 ...``). The same file runs
unchanged on a multi-GPU host or a TPU pod slice: the mesh shape ``(-1,)``
takes every device of the job. For FSDP x tensor
parallelism name two axes, e.g. on 8 devices::

  --config.mesh.shape='(2, 4)' --config.mesh.axis_names='("fsdp", "model")'

The batch is split over the first axis, so ``batch_size`` must be a
multiple of its size. On several hosts, start every process with the same
command after ``jax.distributed.initialize()`` (``--distributed`` of
``examples/main.py``, which detects a cluster environment). Without one,
name the cluster: ``--coordinator_address=HOST:PORT --num_processes=N
--process_id=I`` (two processes on one machine: README, "Multiple
devices: where the orthogonalization runs").
"""

import importlib.util
import pathlib

import ml_collections


def _base_config() -> ml_collections.ConfigDict:
  path = pathlib.Path(__file__).with_name("lm.py")
  spec = importlib.util.spec_from_file_location("_lm_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config() -> ml_collections.ConfigDict:
  """The LM configuration with a device mesh and distributed Muon."""
  config = _base_config()
  # Device mesh (examples/mesh.py). `shape`: one -1 takes the devices left
  # over; `axis_names`: the first axis is FSDP (batch and parameters split
  # along it), a second one splits another parameter dimension.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.shape = (-1,)
  config.mesh.axis_names = ("fsdp",)
  # Sequences per batch: a multiple of the first mesh axis's size.
  config.batch_size = 32
  config.optimizer.name = "muon"
  # Where Muon orthogonalizes: None (XLA's sharded matmuls), "gather" (every
  # device orthogonalizes every matrix) or "distribute" (each device its
  # own whole matrices; the cheapest, see benchmarks/sharding.py).
  config.optimizer.kwargs = ml_collections.ConfigDict({
      "sharding": "distribute",
  })
  return config
