"""Tests of ortho_optax.pome: kept rank, equalized values, untouched leaves."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ortho_optax


def _trees(shape=(12, 8), seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  pre = {
      "dense": {"kernel": jax.random.normal(k1, shape), "bias": jnp.zeros(8)},
      "scale": jnp.ones(()),
  }
  ft = {
      "dense": {
          "kernel": pre["dense"]["kernel"] + jax.random.normal(k2, shape),
          "bias": jax.random.normal(k3, (8,)),
      },
      "scale": jnp.full((), 2.0),
  }
  return pre, ft


def _delta_sv(pre, edited):
  return np.linalg.svd(
      np.asarray(edited, np.float64) - np.asarray(pre, np.float64),
      compute_uv=False,
  )


@pytest.mark.parametrize("rank_ratio", [0.25, 0.3, 0.5, 0.75, 1.0])
def test_kept_rank_and_equalized_singular_values(rank_ratio):
  pre, ft = _trees()
  edited = ortho_optax.pome(pre, ft, rank_ratio=rank_ratio)
  k = math.ceil(round(rank_ratio * 8, 9))
  sv = _delta_sv(pre["dense"]["kernel"], edited["dense"]["kernel"])
  s_ft = _delta_sv(pre["dense"]["kernel"], ft["dense"]["kernel"])
  # Rank k exactly; the k values are all equal to the mean of the top k.
  np.testing.assert_allclose(sv[:k], np.full(k, s_ft[:k].mean()), rtol=1e-4)
  np.testing.assert_allclose(sv[k:], 0.0, atol=1e-4 * s_ft[0])


def test_keeps_the_top_singular_subspace():
  pre, ft = _trees()
  edited = ortho_optax.pome(pre, ft, rank_ratio=0.5)
  d_ft = np.asarray(ft["dense"]["kernel"] - pre["dense"]["kernel"])
  d_ed = np.asarray(edited["dense"]["kernel"] - pre["dense"]["kernel"])
  u, _, vh = np.linalg.svd(d_ft, full_matrices=False)
  s = np.linalg.svd(d_ft, compute_uv=False)[:4].mean()
  np.testing.assert_allclose(d_ed, s * u[:, :4] @ vh[:4], atol=1e-4)


def test_rms_scale_and_alpha():
  pre, ft = _trees()
  s_ft = _delta_sv(pre["dense"]["kernel"], ft["dense"]["kernel"])[:4]
  edited = ortho_optax.pome(pre, ft, rank_ratio=0.5, scale="rms", alpha=0.5)
  sv = _delta_sv(pre["dense"]["kernel"], edited["dense"]["kernel"])
  want = 0.5 * np.linalg.norm(s_ft) / math.sqrt(4)
  np.testing.assert_allclose(sv[:4], want, rtol=1e-4)
  zero = ortho_optax.pome(pre, ft, alpha=0.0)
  np.testing.assert_allclose(
      zero["dense"]["kernel"], pre["dense"]["kernel"], atol=1e-6
  )


def test_non_matrix_and_masked_leaves_are_the_finetuned_values():
  pre, ft = _trees()
  edited = ortho_optax.pome(pre, ft)
  assert edited["dense"]["bias"] is ft["dense"]["bias"]
  assert edited["scale"] is ft["scale"]
  masked = ortho_optax.pome(
      pre, ft, mask={"dense": {"kernel": False, "bias": True}, "scale": True}
  )
  assert masked["dense"]["kernel"] is ft["dense"]["kernel"]
  by_fn = ortho_optax.pome(pre, ft, mask=lambda p: jax.tree.map(
      lambda x: x.ndim != 2, p))
  assert by_fn["dense"]["kernel"] is ft["dense"]["kernel"]


def test_batched_leaves_are_edited_per_slice_and_keep_dtype():
  key = jax.random.key(1)
  pre = {"conv": jnp.zeros((3, 3, 4, 6), jnp.bfloat16)}
  ft = {"conv": jax.random.normal(key, (3, 3, 4, 6)).astype(jnp.bfloat16)}
  edited = ortho_optax.pome(pre, ft, rank_ratio=0.5)
  assert edited["conv"].dtype == jnp.bfloat16
  assert edited["conv"].shape == (3, 3, 4, 6)
  for i, j in [(0, 0), (1, 2), (2, 1)]:
    sv = _delta_sv(pre["conv"][i, j], edited["conv"][i, j])
    s_ft = _delta_sv(pre["conv"][i, j], ft["conv"][i, j])
    np.testing.assert_allclose(sv[:2], s_ft[:2].mean(), rtol=2e-2)
    np.testing.assert_allclose(sv[2:], 0.0, atol=2e-2 * s_ft[0])


def test_jit_and_identical_models():
  pre, _ = _trees()
  edited = jax.jit(ortho_optax.pome)(pre, pre)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), edited, pre
  )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"rank_ratio": 0.0}, "`rank_ratio`"),
        ({"rank_ratio": 1.5}, "`rank_ratio`"),
        ({"rank_ratio": "half"}, "`rank_ratio`"),
        ({"scale": "max"}, "`scale`"),
        ({"alpha": -1.0}, "`alpha`"),
        ({"alpha": float("nan")}, "`alpha`"),
    ],
)
def test_bad_arguments(kwargs, match):
  pre, ft = _trees()
  with pytest.raises(ValueError, match=match):
    ortho_optax.pome(pre, ft, **kwargs)


def test_mismatched_trees_and_shapes():
  pre, ft = _trees()
  with pytest.raises(ValueError, match="same tree structure"):
    ortho_optax.pome(pre, {"dense": ft["dense"]})
  bad = dict(ft, dense={"kernel": jnp.zeros((8, 12)), "bias": jnp.zeros(8)})
  with pytest.raises(ValueError, match=r"\['dense'\]\['kernel'\].*\(8, 12\)"):
    ortho_optax.pome(pre, bad)
  with pytest.raises(ValueError, match="`mask`"):
    ortho_optax.pome(pre, ft, mask={"dense": True})
