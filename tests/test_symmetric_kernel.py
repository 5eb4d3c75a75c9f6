"""benchmarks/symmetric_kernel.py: the Pallas triangle-of-tiles Gram kernel,
checked in Pallas's interpreter (the CPU cannot time it; a device can)."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

PATH = (pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
        / "symmetric_kernel.py")
spec = importlib.util.spec_from_file_location("symmetric_kernel", PATH)
K = importlib.util.module_from_spec(spec)
spec.loader.exec_module(K)


@pytest.mark.parametrize("shape, bm, bk", [((64, 96), 32, 32),
                                           ((96, 32), 32, 16),
                                           ((128, 64), 64, 32)])
def test_gram_upper_equals_float64_gram(shape, bm, bk):
  x = jax.random.normal(jax.random.key(1), shape, jnp.float32)
  got = np.asarray(K.gram_upper(x, bm=bm, bk=bk, interpret=True))
  x64 = np.asarray(x, np.float64)
  np.testing.assert_allclose(got, x64 @ x64.T, rtol=0,
                             atol=1e-5 * np.abs(x64 @ x64.T).max())
  np.testing.assert_array_equal(got, got.T)  # mirrored, not recomputed


def test_tile_flops_count_the_upper_triangle():
  # k = 4 row tiles: 10 of the 16 tile products.
  assert K.tile_flops(128, 64, 32) == 10 * 2 * 32 * 32 * 64
  assert K.tile_flops(128, 64, 128) == 2 * 128 * 128 * 64


def test_bad_tiling_names_the_sizes():
  with pytest.raises(ValueError, match="bm=32"):
    K.gram_upper(jnp.ones((48, 64)), bm=32, bk=32, interpret=True)


def test_check_and_table_run_in_the_interpreter():
  assert K.check() < 1e-5
  args = K.parse_args(["--shapes", "64x128", "--bm", "32", "--bk", "32",
                       "--repeats", "1"])
  table = K.benchmark(args, interpret=True)
  rows = [r for r in table.splitlines() if r.startswith("| 64x128")]
  cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
  assert [c[1] for c in cells] == ["plain", "blocks", "pallas"]
  # Every method agrees with the plain product to float32 round-off.
  assert all(float(c[-1]) < 1e-5 for c in cells)
