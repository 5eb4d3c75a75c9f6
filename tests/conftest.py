"""Test configuration: fake CPU devices for the sharding tests, strict ranks."""

import os

# Must run before JAX initializes its backends: eight fake CPU devices let the
# sharding tests build 1-D and 2-D meshes on a plain CPU machine.
os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
