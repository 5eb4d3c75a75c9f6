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
    # Measured at 4-15 s each on 2 cores (this round's new tests); each
    # property keeps a cheaper case in the default run.
    "tests/test_examples.py::test_model_scion_init",
    "tests/test_examples.py::test_compare_tasks_write_tables_summary",
    "tests/test_quantized_optimizers.py::test_state_is_codes_and_scales"
    "[muon-q4]",
    "tests/test_quantized_optimizers.py::test_distribute_equals_one_device",
    "tests/test_quantized_optimizers.py::test_nnx_optimizer",
    "tests/test_quantize.py::test_sharding_in_types[q4]",
    "tests/test_low_rank_sharding.py::test_dion_moves_factors_not_matrices",
    "tests/test_low_rank_sharding.py::test_explicit_axes_match_single_device"
    "[dion2",
    "tests/test_low_rank_sharding.py::test_explicit_axes_match_single_device"
    "[trion",
    "tests/test_gram.py::test_equals_newton_schulz_fp64[spectral",
    "tests/test_lmo.py::test_scion_init_gpt_matches_the_norm_spheres",
)

# tests/common_test.py holds every named optimizer to the same properties.
# By default it runs them on one optimizer of each family (Newton-Schulz
# momentum, elementwise second moment, LMO, low rank); `pytest -m slow` runs
# the other eight. The optimizer-agnostic code paths (base.py's AdamW split,
# skipping, structure checks, sharding) are shared, so a failure there shows
# in the default run too.
_COMMON_DEFAULT = ("muon", "adamuon", "scion", "dion")
_COMMON_ALL = (
    "hybrid_auon", "turbo_muon", "trust_region", "adamuon", "normuon",
    "dion2", "trion", "auon", "dion", "muon", "root", "scion",
)


def _common_optimizer(name: str) -> str | None:
  """The optimizer a common_test case is parameterized by, if any."""
  method = name.split("[")[0]
  for opt in _COMMON_ALL:  # Longest names first: "hybrid_auon" before "auon".
    if method.endswith("_" + opt) or ("_" + opt + "_") in method:
      return opt
  return None


def pytest_collection_modifyitems(config, items):
  del config
  import pytest  # pylint: disable=import-outside-toplevel

  for item in items:
    if item.nodeid.startswith(_SLOW):
      item.add_marker(pytest.mark.slow)
    elif item.nodeid.startswith("tests/common_test.py::"):
      opt = _common_optimizer(item.nodeid.rsplit("::", 1)[-1])
      if opt is not None and opt not in _COMMON_DEFAULT:
        item.add_marker(pytest.mark.slow)
