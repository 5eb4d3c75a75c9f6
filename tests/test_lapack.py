"""engines/lapack.py: batched factorizations, one matrix at a time on CPU."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ortho_optax.engines import lapack

SHAPES = [(5, 7), (7, 5), (1, 6, 4), (3, 6, 4), (2, 3, 4, 6), (0, 6, 4),
          (3, 0, 4)]


@pytest.mark.parametrize("shape", SHAPES)
def test_qr_q_equals_numpy_and_jnp(shape):
  x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  q = jax.jit(lapack.qr_q)(x)
  # Bit for bit the batched jnp call (same LAPACK kernel, same matrices).
  np.testing.assert_array_equal(q, jnp.linalg.qr(x)[0])
  # An independent reference: NumPy's QR spans the same columns.
  if x.size:
    ref = np.linalg.qr(x.astype(np.float64))[0]
    np.testing.assert_allclose(
        np.abs(np.einsum("...ij,...ik->...jk", q, ref)),
        np.broadcast_to(np.eye(ref.shape[-1]), q.shape[:-2]
                        + (ref.shape[-1],) * 2),
        atol=1e-5,
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_svd_equals_numpy(shape):
  x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
  u, s, vh = jax.jit(lapack.svd)(x)
  ref = np.linalg.svd(x.astype(np.float64), compute_uv=False)
  np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.jit(lapack.singular_values)(x), ref,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      np.einsum("...ij,...j,...jk->...ik", u, s, vh), x, atol=1e-5
  )


def test_cpu_lowering_factors_one_matrix_per_call():
  # The stall needs a batched LAPACK kernel: on the CPU every LAPACK call
  # must get a single matrix (no batch dimensions), whatever the batch.
  x = jnp.ones((4, 3, 16, 8))
  for fn in (lapack.qr_q, lapack.svd, lapack.singular_values):
    hlo = jax.jit(fn).lower(x).as_text()
    batch_dims = re.findall(r"lapack_\w+_ffi.*?num_batch_dims = \"(\d+)\"",
                            hlo)
    assert batch_dims and set(batch_dims) == {"0"}, batch_dims
  # The check can fail: jnp's own batched call has batch dimensions.
  hlo = jax.jit(lambda a: jnp.linalg.qr(a)[0]).lower(x).as_text()
  assert "2" in re.findall(r"num_batch_dims = \"(\d+)\"", hlo)
