"""Coefficient tables: published digits, resolution, scalar reference maps."""

import engine_inputs as E
import jax.numpy as jnp
import numpy as np
import pytest

import ortho_optax
from ortho_optax.engines import coefficients as _coefficients
from ortho_optax.engines import newton_schulz as _newton_schulz

PRESETS = ortho_optax.COEFFICIENT_PRESETS

# --- The tables equal the published numbers -----------------------------------


def test_muon_and_standard_rows():
  assert PRESETS["muon"].rows == (E.MUON_REF,)
  assert PRESETS["standard"].rows == (E.MUON_REF,)
  assert PRESETS["muon"].input_scale == 1.0


def test_dion_rows():
  assert PRESETS["dion"].rows == E.DION_5
  assert PRESETS["dion"].input_scale == 1.0


def test_polar_express_rows():
  table = PRESETS["polar_express"]
  assert table.rows == E.PE_5
  assert table.input_scale == 1.02
  assert table.normalization == "frobenius"


def test_polar_express_paper_rows():
  table = PRESETS["polar_express_paper"]
  assert table.input_scale == 1.01
  assert len(table.rows) == 8
  np.testing.assert_allclose(table.rows, E.PE_PAPER, rtol=1e-15, atol=0)
  # The 8th row is the unscaled fixed-point quintic (15/8, -10/8, 3/8).
  assert table.rows[7] == (1.875, -1.25, 0.375)
  # Spec §2: "row 1 becomes (8.205160414, -22.901934987, 16.460724910)".
  np.testing.assert_allclose(
      table.rows[0], (8.205160414, -22.901934987, 16.460724910), atol=1e-9
  )


def test_turbo_rows():
  table = PRESETS["turbo"]
  assert table.rows == E.DION_5[1:]
  assert table.normalization == "aol"
  assert table.input_scale == 1.0


def test_root_rows():
  table = PRESETS["root"]
  assert dict(table.by_shape) == E.ROOT_BY_SHAPE
  assert table.rows == (E.MUON_REF,)


@pytest.mark.parametrize(
    "shape, row",
    [
        ((2048, 8192), (2.9794, -3.6674, 1.6207)),
        ((8192, 2048), (2.9794, -3.6674, 1.6207)),  # keyed on (min, max)
        ((4, 2048, 3072), (3.4509, -4.5790, 1.9325)),
        ((2048, 2048), (3.4916, -4.8224, 2.1095)),
        ((512, 512), E.MUON_REF),  # fallback
    ],
)
def test_root_resolves_by_shape(shape, row):
  rows, scale = _coefficients.resolve_coefficients("root", shape, None)
  assert rows == (row,) * 5
  assert scale == 1.0


def test_every_preset_has_a_source():
  for name, table in PRESETS.items():
    assert table.source, name
    assert table.name in (name, "muon"), name


# --- resolve_coefficients -----------------------------------------------------


@pytest.mark.parametrize(
    "coeffs, steps, expected",
    [
        ("muon", None, (E.MUON_REF,) * 5),
        ("muon", 3, (E.MUON_REF,) * 3),
        ("dion", None, E.DION_5),
        ("dion", 2, E.DION_5[:2]),
        ("dion", 7, E.DION_5 + (E.DION_5[-1],) * 2),
        ("polar_express", None, E.PE_5),
        ("polar_express_paper", 10, E.PE_PAPER + (E.PE_PAPER[-1],) * 2),
        ((1.0, 2.0, 3.0), None, ((1.0, 2.0, 3.0),) * 5),
        (((1.0, 2.0, 3.0), (4.0, 5.0, 6.0)), None,
         ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))),
        (np.array([[1.0, 2.0, 3.0]]), 2, ((1.0, 2.0, 3.0),) * 2),
    ],
)
def test_resolve_rows_and_steps(coeffs, steps, expected):
  rows, _ = _coefficients.resolve_coefficients(coeffs, (8, 8), steps)
  np.testing.assert_allclose(rows, expected, rtol=1e-15)
  assert len(rows) == len(expected)


def test_resolve_accepts_numpy_int_steps():
  rows, _ = _coefficients.resolve_coefficients("dion", (8, 8), np.int64(3))
  assert rows == E.DION_5[:3]


@pytest.mark.parametrize(
    "coeffs, steps, error, match",
    [
        ("nope", None, ValueError, "coeffs"),
        ((1.0, 2.0), None, ValueError, "coeffs"),
        (np.ones((3, 4)), None, ValueError, "coeffs"),
        (np.ones((2, 3, 3)), None, ValueError, "coeffs"),
        (np.ones((0, 3)), None, ValueError, "coeffs"),
        ((1.0, np.nan, 2.0), None, ValueError, "coeffs"),
        ("muon", 0, ValueError, "steps"),
        ("muon", -2, ValueError, "steps"),
        ("muon", 2.5, TypeError, "steps"),
        ("muon", True, TypeError, "steps"),
        ("muon", "5", TypeError, "steps"),
    ],
)
def test_resolve_rejects_bad_arguments(coeffs, steps, error, match):
  with pytest.raises(error, match=match):
    _coefficients.resolve_coefficients(coeffs, (8, 8), steps)


# --- Scalar reference maps (spec §12b) ----------------------------------------

XS = (0.001, 0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0)

# p_T o ... o p_1 (x * pre), fp64, spec newton_schulz.md §12b.
REFERENCE_MAPS = {
    "muon": (0.470544, 0.698917, 0.758120, 0.712120, 1.079592, 0.765439,
             1.119204, 0.696436),
    "dion": (0.474982, 1.018025, 1.010644, 1.019050, 0.996224, 0.985869,
             1.005632, 0.978346),
    "polar_express": (0.846647, 0.996775, 0.862474, 1.016459, 1.129064,
                      1.086403, 0.878287, 0.903537),
    "polar_express_paper_5": (0.840145, 1.054024, 0.936275, 0.891444,
                              0.882166, 1.104657, 0.976071, 0.877107),
    "polar_express_paper": (1.0,) * 8,
    "pe_gram": (0.729003, 0.906027, 0.971167, 0.878715, 1.093326, 0.884924,
                1.123382, 1.019028),
    "turbo": (0.120364, 0.972670, 1.024080, 1.007872, 0.985954, 0.984557,
              0.980852, 0.994146),
    "turbo_ga": (0.146595, 1.014157, 0.961272, 1.031002, 1.002846, 1.027036,
                 0.992155, 0.943827),
}

# name -> (coeffs argument, steps)
MAP_ARGS = {
    "muon": ("muon", None),
    "dion": ("dion", None),
    "polar_express": ("polar_express", None),
    "polar_express_paper_5": ("polar_express_paper", 5),
    "polar_express_paper": ("polar_express_paper", None),
    "pe_gram": (E.PE_GRAM, None),
    "turbo": ("turbo", None),
    "turbo_ga": (E.TURBO_GA_4, None),
}


def _rows_and_pre(name):
  coeffs, steps = MAP_ARGS[name]
  rows, input_scale = _coefficients.resolve_coefficients(coeffs, (8, 8), steps)
  return rows, 1.0 / input_scale


@pytest.mark.parametrize("name", sorted(REFERENCE_MAPS))
def test_reference_map_from_library_rows_fp64(name):
  """The library's rows reproduce the spec's composite values (numpy fp64)."""
  rows, pre = _rows_and_pre(name)
  values = E.composite(rows, np.asarray(XS) * pre)
  np.testing.assert_allclose(values, REFERENCE_MAPS[name], atol=1.5e-6)


@pytest.mark.parametrize("dtype, atol", [("float64", 2e-6), ("float32", 1e-5)])
@pytest.mark.parametrize("name", sorted(REFERENCE_MAPS))
def test_reference_map_through_iterate(name, dtype, atol):
  """The engines' iteration on diag(x * pre) gives the spec's values."""
  rows, pre = _rows_and_pre(name)
  with E.x64():
    x0 = jnp.diag(jnp.asarray(np.asarray(XS) * pre, dtype))
    y = _newton_schulz.iterate(x0, rows, jnp.dtype(dtype))
    assert y.dtype == jnp.dtype(dtype)
    np.testing.assert_allclose(
        np.diag(np.asarray(y)), REFERENCE_MAPS[name], atol=atol
    )
    off = np.asarray(y) - np.diag(np.diag(np.asarray(y)))
    assert np.all(off == 0)


@pytest.mark.parametrize("dtype, atol", [("float64", 2e-6), ("float32", 1e-5)])
@pytest.mark.parametrize("name", sorted(REFERENCE_MAPS))
def test_reference_map_through_public_api(name, dtype, atol):
  """``newton_schulz`` on diag(x, sqrt(1 - x^2)) (Frobenius norm 1, eps 0).

  The preset's own input scale is applied by the engine, so this checks the
  table, the safety factor and the normalization together.
  """
  coeffs, steps = MAP_ARGS[name]
  got = []
  with E.x64():
    for x in XS:
      m = jnp.diag(jnp.asarray([x, np.sqrt(max(1.0 - x * x, 0.0))], dtype))
      y = ortho_optax.newton_schulz(
          m, coeffs=coeffs, steps=steps, normalization="frobenius", eps=0.0
      )
      got.append(float(y[0, 0]))
  np.testing.assert_allclose(got, REFERENCE_MAPS[name], atol=atol)


# Spec §11: range of the composite over x in [1e-3, 1] and in [0.01, 1]
# (including the input pre-factor), and the composite's own slope at 0,
# prod_t a_t.
PUBLISHED_RANGES = {
    "muon": ((0.4705, 1.2024), (0.6818, 1.1344), 485),
    "dion": ((0.4750, 1.1450), (0.9778, 1.0318), 493),
    "polar_express": ((0.8466, 1.1411), (0.8589, 1.1411), 990),
    "polar_express_paper_5": ((0.8401, 1.1236), (0.8703, 1.1236), 976),
    "polar_express_paper": ((1.0000, 1.0000), (1.0000, 1.0000), 6363),
    "pe_gram": ((0.7290, 1.1236), (0.8461, 1.1236), 804),
    "turbo": ((0.1204, 1.1450), (0.9727, 1.1450), 121),
    "turbo_ga": ((0.1466, 1.0500), (0.9409, 1.0500), 147),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_RANGES))
def test_published_ranges_and_slope(name):
  rows, pre = _rows_and_pre(name)
  wide, narrow, slope = PUBLISHED_RANGES[name]
  xs = np.geomspace(1e-3, 1.0, 200_001)
  values = E.composite(rows, xs * pre)
  np.testing.assert_allclose((values.min(), values.max()), wide, atol=1.5e-4)
  tail = values[xs >= 0.01]
  np.testing.assert_allclose((tail.min(), tail.max()), narrow, atol=1.5e-4)
  assert abs(np.prod([r[0] for r in rows]) - slope) <= 1.0


@pytest.mark.parametrize("name", ["muon", "dion", "polar_express",
                                  "polar_express_paper_5", "turbo"])
def test_reference_vectors_catch_a_wrong_row(name):
  """Any single-row mistake moves the reference map far beyond 1e-5.

  (The 8-step Polar Express map is flat at 1 and absorbs small errors in
  its last rows; its first five rows are checked through the 5-step map,
  and every row is compared digit for digit above.)
  """
  rows, pre = _rows_and_pre(name)
  xs = np.asarray(XS) * pre
  base = E.composite(rows, xs)
  rows = list(rows)
  mutants = []
  for t in range(len(rows)):
    for j in range(3):
      bad = list(rows[t])
      bad[j] *= 1 + 1e-3
      mutants.append(rows[:t] + [tuple(bad)] + rows[t + 1:])
  for t in range(len(rows) - 1):
    if rows[t] != rows[t + 1]:
      swapped = rows[:t] + [rows[t + 1], rows[t]] + rows[t + 2:]
      mutants.append(swapped)
  for mutant in mutants:
    assert np.max(np.abs(E.composite(mutant, xs) - base)) > 1e-5
