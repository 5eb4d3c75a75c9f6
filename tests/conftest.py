"""Test configuration: fake CPU devices for the sharding tests, strict ranks."""

import os

# Must run before JAX initializes its backends: eight fake CPU devices let the
# sharding tests build 1-D and 2-D meshes on a plain CPU machine.
os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


# The default run (`pytest -q`, what CI runs) must stay under 10 minutes on 2
# CPU cores. These tests add compile-heavy variants of properties that other
# tests already check on smaller or cheaper cases; they run with
# `pytest -m slow`.
_SLOW = (
    # Hypothesis sweep of shapes/dtypes; test_gram's smaller sweep stays.
    "tests/test_newton_schulz.py::test_properties",
    # The spectral normalization's power iteration compiles slowly; its
    # accuracy is also covered by test_error_equals_scalar_prediction.
    "tests/test_newton_schulz.py::test_spectral_normalization",
    "tests/test_newton_schulz.py::test_transpose[shape0-spectral]",
    "tests/test_newton_schulz.py::test_batched_equals_looped[shape0-spectral]",
    "tests/test_newton_schulz.py::test_batched_equals_looped[shape1-spectral]",
    "tests/test_newton_schulz.py::test_bfloat16_compute_other_normalizations"
    "[spectral]",
    # The largest shape of the acceptance check (the benchmark covers it).
    "tests/test_orthogonalize.py::test_auto_is_at_least_as_accurate_as_optax"
    "[gaussian-shape2]",
    "tests/test_orthogonalize.py::test_auto_is_at_least_as_accurate_as_optax"
    "[power_law-shape2]",
    "tests/test_orthogonalize.py::test_auto_is_at_least_as_accurate_as_optax"
    "[ill_conditioned-shape2]",
    # End-to-end runs of the example scripts beyond the per-config smoke
    # tests of test_examples.py.
    "tests/test_examples_sharded.py::test_sharded_config_matches_one_device",
    "tests/test_examples.py::test_compare_writes_table_and_plot",
)


def pytest_collection_modifyitems(config, items):
  del config
  import pytest  # pylint: disable=import-outside-toplevel

  for item in items:
    if item.nodeid.startswith(_SLOW):
      item.add_marker(pytest.mark.slow)
