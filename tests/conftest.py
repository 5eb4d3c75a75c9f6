"""Test configuration: fake CPU devices for the sharding tests, strict ranks."""

import os

# Must run before JAX initializes its backends: eight fake CPU devices let the
# sharding tests build 1-D and 2-D meshes on a plain CPU machine.
os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"

# One OpenBLAS thread: its LAPACK calls (the QR of Dion and Dion2) otherwise
# spin against XLA's own threads, 10-100x slower or stalled, on a few cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


# The default run (`pytest -q -n 2`, what CI runs) must stay under 10
# minutes on 2 CPU cores. These tests add compile-heavy variants of
# properties that other tests already check on smaller or cheaper cases;
# they run with `pytest -m slow`.
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

# Measured at 3 s or more each on 2 idle cores in this round's full run (973 s
# in all); they run with `pytest -m slow`.
_SLOW_MEASURED = (
    # Measured at 2.6-7.5 s on 2 idle cores (2026-12-01, second run); each
    # has a cheaper sibling in the default run (another format, strategy,
    # shape or optimizer of the same property).
    "tests/test_quantized_optimizers.py::test_state_is_codes_and_scales"
    "[muon-q8]",
    "tests/test_quantized_optimizers.py::test_types_stable_and_bf16[muon-q4]",
    "tests/test_quantized_optimizers.py::"
    "test_stochastic_second_moment_in_adamuon",
    "tests/test_low_rank_quantized.py::test_quantized_momentum_tracks_float32"
    "[dion2-q8]",
    "tests/test_low_rank_sharding.py::test_explicit_axes_match_single_device"
    "[dion-fsdp2x4-distribute]",
    "tests/test_lmo.py::test_scion_init_is_a_random_draw_of_the_key",
    "tests/test_examples.py::test_default_config_runs[digits_cnn-optax_muon]",
    "tests/test_quantile_clip.py::test_bf16_keeps_dtype",
    "tests/test_low_rank.py::test_full_rank_first_step_is_the_polar_factor"
    "[matmul-dion2]",
    "tests/test_pome.py::test_batched_leaves_are_edited_per_slice_and_keep_"
    "dtype",
    "tests/test_transforms.py::"
    "test_orthogonalization_per_leaf_equals_orthogonalize"
    "[gram_newton_schulz-options2]",
    "tests/test_orthogonalize.py::test_zero_matrix_maps_to_zero[auto]",
    "tests/test_gram.py::test_batched_equals_looped[shape1-spectral]",
    "tests/parity_test.py::test_optax_argument_translation[aol]",
    "tests/test_newton_schulz.py::test_vmap_equals_batched",
    "tests/common_test.py::LeafKindsAndIdiomsTest::"
    "test_explicit_mesh_parameters_adamuon_distribute",
    "tests/common_test.py::LeafKindsAndIdiomsTest::"
    "test_inject_hyperparams_without_static_args_adamuon",
    "tests/common_test.py::LeafKindsAndIdiomsTest::"
    "test_integer_and_bool_leaves_pass_through_adamuon",
    "tests/test_numerics_range.py::test_scale_invariance[ns-frobenius]",
    "tests/test_numerics_range.py::test_issue_examples_engines",
    "tests/test_cli.py::test_resume_takes_safe_settings_and_says_so",
    "tests/test_cli.py::test_missing_data_file_is_one_line",
    "tests/test_auon.py::test_batched_equals_looped_and_jit",
    "tests/test_examples_sharded.py::test_mesh_helpers",
    "tests/test_gram.py::test_properties",
    "tests/test_gram.py::test_spectral_estimate_on_a_small_eigengap",
    "tests/test_gram.py::test_zero_matrix_maps_to_zero[None-spectral]",
    "tests/test_lmo.py::test_auto_picks_by_rank",
    "tests/test_lmo.py::test_scion_init_conv_kernel_and_bias_rms_leaves",
    "tests/test_lmo.py::test_scion_init_mlp_preset_and_unknown_preset",
    "tests/test_low_rank.py::test_dion_state_shapes",
    "tests/test_low_rank.py::test_scale_invariant_over_the_float32_range[dion]",
    "tests/test_low_rank.py::test_trion_basis_rows_are_exact_at_large_sizes",
    "tests/test_low_rank_sharding.py::test_named_optimizer_distribute_matches_single_device[dion2]",
    "tests/test_newton_schulz.py::test_jit_equals_eager[spectral]",
    "tests/test_quantile_clip.py::test_clip_is_exact_and_about_ten_percent",
    "tests/test_quantize.py::test_quantized_ema_tracks_float32[q4]",
    "tests/test_quantize.py::test_sharding_in_types[q8]",
    "tests/test_quantized_optimizers.py::test_inject_hyperparams_multisteps_and_skips[adamuon]",
    "tests/test_quantized_optimizers.py::test_inject_hyperparams_multisteps_and_skips[muon]",
    "tests/test_routing_flax.py::test_attention_query_is_orthogonalized_as_in_by_heads_times_dim",
    "tests/test_sharding.py::test_eager_auto_axes_keep_sharding",
    "tests/test_sharding.py::test_normuon_exact_under_distribute",
    "tests/test_storage.py::test_quantized_adam_step_from_its_stored_state[q4]",
    "tests/test_storage.py::test_quantized_adam_step_from_its_stored_state[q8]",
    "tests/test_storage.py::test_quantized_adam_tracks_float_adam",
    "tests/test_storage.py::test_quantized_storage_round_trip",
    "tests/test_symmetric.py::test_engine_equals_plain_and_svd_polar[newton_schulz]",
    "tests/test_transforms.py::test_orthogonalization_per_leaf_equals_orthogonalize[auto-options0]",
    "tests/test_transforms.py::test_orthogonalization_per_leaf_equals_orthogonalize[newton_schulz-options1]",
    # Measured at 1.6-6.8 s in a clean-clone default run of 642 s on 2 idle
    # cores (2026-12-02); each has a sibling in the default run (another
    # optimizer, format, engine, shape or mesh of the same property).
    "tests/test_quantized_optimizers.py::test_state_is_codes_and_scales[adamuon-q4]",
    "tests/test_low_rank.py::test_full_rank_first_step_is_the_polar_factor[matmul-trion]",
    "tests/test_numerics_range.py::test_scale_invariance[ns-spectral]",
    "tests/test_sharding.py::test_auto_axes_no_hints_collective_bytes[fsdp8]",
    "tests/common_test.py::LeafKindsAndIdiomsTest::test_explicit_mesh_parameters_adamuon_gather",
    "tests/test_gram.py::test_zero_matrix_maps_to_zero[restarts1-spectral]",
    "tests/test_gram.py::test_batched_equals_looped[shape0-spectral]",
    "tests/test_quantized_optimizers.py::test_types_stable_and_bf16[muon-q8]",
    "tests/test_low_rank_sharding.py::test_replicated_params_bring_back_factors[dion2]",
    "tests/test_examples.py::test_default_config_runs[lm_deep-adamw]",
    "tests/test_orthogonalize.py::test_jit_shape_and_dtype[auto]",
    "tests/test_orthogonalize.py::test_zero_matrix_maps_to_zero[newton_schulz]",
    "tests/test_low_rank.py::test_dct_fft_equals_matmul[True]",
    "tests/common_test.py::LeafKindsAndIdiomsTest::test_inject_hyperparams_without_static_args_scion",
    "tests/parity_test.py::test_optax_argument_translation[consistent_rms]",
    "tests/parity_test.py::test_optax_argument_translation[schatten]",
    "tests/test_quantize.py::test_stochastic_rounding_is_unbiased[q8]",
    "tests/parity_low_rank_test.py::test_dion_equals_numpy[2]",
    "tests/test_training.py::test_trains_on_digits[root]",
    "tests/test_training.py::test_trains_on_digits[dion2]",
    "tests/test_low_rank.py::test_half_precision_keeps_dtypes[dion2]",
    "tests/common_test.py::LeafKindsAndIdiomsTest::test_explicit_mesh_parameters_adamuon_none",
    "tests/common_test.py::LeafKindsAndIdiomsTest::test_explicit_mesh_parameters_scion_distribute",
    "tests/common_test.py::LeafKindsAndIdiomsTest::test_explicit_mesh_parameters_scion_gather",
    "tests/test_polar.py::test_rank_deficient_gives_partial_isometry[shape0]",
    # Measured at 3.5-14.6 s in a default run of 585 s (2026-12-07, one
    # other job on the machine); each has a sibling in the default run (the
    # named optimizers on split kernels, the other mesh or dtype/method).
    "tests/test_routing_split.py::test_nnx_lm_with_per_head_qkv_trains",
    "tests/test_routing_split.py::test_expert_kernels_distributed_equal_"
    "single_device[mesh_shape0-names0-spec0-AxisType.Explicit]",
    "tests/test_state_shardings.py::test_equal_to_what_jit_gives_after_a_"
    "step[auto-normuon]",
    "tests/test_numerics_range.py::test_inverse_root_does_not_depend_on_the_"
    "scale[float16-prism]",
    "tests/test_numerics_range.py::test_inverse_root_does_not_depend_on_the_"
    "scale[float32-newton]",
    "tests/test_numerics_range.py::test_inverse_root_does_not_depend_on_the_"
    "scale[float16-newton]",
)

# tests/common_test.py holds every named optimizer to the same properties.
# By default it runs them on one optimizer of two families (Newton-Schulz
# momentum, LMO); `pytest -m slow` runs the other ten (AdaMuon's own
# properties stay in the default run through test_quantized_optimizers.py,
# parity_optimizers_test.py and the training test). The low-rank family's own properties are in test_low_rank*.py,
# parity_low_rank_test.py and the digits training test. The
# optimizer-agnostic code paths (base.py's AdamW split, skipping, structure
# checks, sharding) are shared, so a failure there shows in the default run
# too.
_COMMON_DEFAULT = ("muon", "scion")
_COMMON_ALL = (
    "hybrid_auon", "turbo_muon", "trust_region", "adamuon", "normuon",
    "dion2", "trion", "auon", "dion", "muon", "root", "scion", "soap",
    "shampoo",
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
    if item.nodeid.startswith(_SLOW) or item.nodeid in _SLOW_MEASURED:
      item.add_marker(pytest.mark.slow)
    elif item.nodeid.startswith("tests/common_test.py::"):
      opt = _common_optimizer(item.nodeid.rsplit("::", 1)[-1])
      if opt is not None and opt not in _COMMON_DEFAULT:
        item.add_marker(pytest.mark.slow)
