"""The low-rank transforms: Dion, Dion2, Trion (single device).

Parity with the reference implementations is in ``parity_low_rank_test.py``;
sharding in ``test_low_rank_sharding.py``. Here: the rank argument, the
full-rank limits (Dion2 and Trion at rank 1 are Muon's polar factor, by
orthogonality of the DCT), scale invariance over the float32 range, and the
edge cases (zero and rank-deficient momenta, zero-size leaves, dtypes).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ortho_optax
from ortho_optax.transforms import low_rank as _low_rank
from ortho_optax.transforms import trion as _trion

TRANSFORMS = {
    "dion": functools.partial(ortho_optax.scale_by_dion, 0.5),
    "dion2": functools.partial(
        ortho_optax.scale_by_dion2, 0.5, method="newton_schulz"
    ),
    "trion": functools.partial(
        ortho_optax.scale_by_trion, 0.5, method="newton_schulz"
    ),
}


def _normal(seed, shape, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(seed), shape, dtype)


def _tree(dtype=jnp.float32):
  return {
      "up": _normal(0, (6, 10), dtype),
      "down": _normal(1, (10, 6), dtype),
      "square": _normal(2, (8, 8), dtype),
      "stack": _normal(3, (2, 4, 12), dtype),
      "conv": _normal(4, (3, 3, 2, 8), dtype),
      "bias": _normal(5, (6,), dtype),
  }


@functools.cache
def _jitted(tx):
  return jax.jit(tx.init), jax.jit(tx.update)


def _steps(tx, grads_list, params=None):
  init, update = _jitted(tx)
  state = init(grads_list[0] if params is None else params)
  out = []
  for g in grads_list:
    u, state = update(g, state)
    out.append(u)
  return out, state


def _polar(x):
  x = np.asarray(x)
  x = x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)
  u, _, vh = np.linalg.svd(x, full_matrices=False)
  return u @ vh


# ---------------------------------------------------------------- the rank


@pytest.mark.parametrize(
    "rank, m, n, expected",
    [
        (0.25, 8, 32, 2),
        (0.25, 6, 6, 2),  # rounded up
        (0.01, 6, 6, 1),  # at least one
        (1.0, 6, 9, 6),
        (3, 6, 9, 3),
        (64, 6, 9, 6),  # capped at the shorter side
        (0.5, 0, 9, 0),
    ],
)
def test_resolve_rank(rank, m, n, expected):
  assert _low_rank.resolve_rank(rank, m, n) == expected


@pytest.mark.parametrize("name", list(TRANSFORMS))
@pytest.mark.parametrize(
    "rank, error, match",
    [
        (0.0, ValueError, r"`rank` as a float must be in \(0, 1\]"),
        (1.5, ValueError, r"`rank` as a float must be in \(0, 1\]"),
        (0, ValueError, "`rank` as an int must be >= 1"),
        (True, TypeError, "`rank` must be a fraction"),
        ("half", TypeError, "`rank` must be a fraction"),
    ],
)
def test_bad_rank_raises(name, rank, error, match):
  factory = {
      "dion": ortho_optax.scale_by_dion,
      "dion2": ortho_optax.scale_by_dion2,
      "trion": ortho_optax.scale_by_trion,
  }[name]
  with pytest.raises(error, match=match):
    factory(rank)


@pytest.mark.parametrize("name", ["dion", "dion2", "trion"])
def test_optimizers_check_their_arguments(name):
  factory = getattr(ortho_optax, name)
  with pytest.raises(ValueError, match="`beta` must be in"):
    factory(0.01, beta=1.0)
  with pytest.raises(ValueError, match="`rank`"):
    factory(0.01, rank=2.0)
  with pytest.raises(ValueError, match="Unknown `shape_rule` 'kj'"):
    factory(0.01, shape_rule="kj")


def test_bad_dct_raises():
  with pytest.raises(ValueError, match="Unknown `dct` 'dft'"):
    ortho_optax.scale_by_trion(dct="dft")


def test_dion_state_shapes():
  tx = ortho_optax.scale_by_dion(0.5)
  state = jax.eval_shape(tx.init, _tree())
  shapes = jax.tree.map(jnp.shape, state.q)
  assert shapes["up"] == (1, 6, 3)
  assert shapes["down"] == (1, 6, 3)  # the short side, once transposed
  assert shapes["stack"] == (2, 4, 2)
  assert shapes["conv"] == (1, 8, 4)  # (3 * 3 * 2, 8): short side 8
  assert isinstance(state.q["bias"], type(state.mu["bias"]))


# ------------------------------------------------------- full-rank limits


@pytest.mark.parametrize("name", ["dion2", "trion"])
@pytest.mark.parametrize("dct", ["matmul", "fft"])
def test_full_rank_first_step_is_the_polar_factor(name, dct):
  """At rank 1, Dion2 orthogonalizes every row and Trion projects on a whole
  orthonormal basis: the first update is polar(G), as Muon's would be."""
  if name == "dion2" and dct == "fft":
    pytest.skip("Dion2 has no DCT")
  kwargs = {"dct": dct} if name == "trion" else {}
  factory = getattr(ortho_optax, f"scale_by_{name}")
  tx = factory(1.0, method="polar_svd", **kwargs)
  grads = {k: v for k, v in _tree().items() if k != "bias"}
  (u,), _ = _steps(tx, [grads])
  for k in ("up", "down", "square"):
    np.testing.assert_allclose(u[k], _polar(grads[k]), atol=2e-5)
  for layer in range(2):
    np.testing.assert_allclose(
        u["stack"][layer], _polar(grads["stack"][layer]), atol=2e-5
    )


def test_dion_full_rank_spans_the_gradient():
  """At full rank the first step's P spans the whole row space: the error
  feedback leaves beta * G, and the update's row space is G's."""
  g = {"w": _normal(0, (6, 10))}
  tx = ortho_optax.scale_by_dion(1.0, beta=0.9)
  (u,), state = _steps(tx, [g])
  np.testing.assert_allclose(state.mu["w"], 0.9 * g["w"], atol=1e-5)
  # U = Q P^T with P an orthonormal basis of G's row space: U's rows lie in
  # it, and U has full rank 6.
  proj = _polar(g["w"]).T @ _polar(g["w"])
  np.testing.assert_allclose(u["w"] @ proj, u["w"], atol=1e-5)
  assert np.linalg.matrix_rank(np.asarray(u["w"]), tol=1e-3) == 6


def test_dion_low_rank_update_has_the_rank():
  g = {"w": _normal(0, (12, 20))}
  (u,), _ = _steps(ortho_optax.scale_by_dion(3), [g])
  s = np.linalg.svd(np.asarray(u["w"]), compute_uv=False)
  assert s[2] > 0.5 and s[3] < 1e-5, s


def test_dion2_selects_rows_of_largest_norm_and_decays_them():
  g = np.asarray(_normal(0, (4, 6))) * np.array([[0.1], [10], [0.5], [5]])
  tx = ortho_optax.scale_by_dion2(2, beta=0.5, method="polar_svd")
  (u,), state = _steps(tx, [{"w": jnp.asarray(g)}])
  u = np.asarray(u["w"])
  np.testing.assert_array_equal(u[[0, 2]], 0)  # rows 1 and 3 selected
  np.testing.assert_allclose(u[[1, 3]], _polar(g[[1, 3]]), atol=1e-6)
  mu = np.asarray(state.mu["w"])
  np.testing.assert_allclose(mu[[1, 3]], 0.5 * g[[1, 3]])
  np.testing.assert_allclose(mu[[0, 2]], g[[0, 2]])


def test_dion2_square_selects_output_neurons():
  """A square (in, out) kernel: the reference's rows are PyTorch's
  (out, in) rows, i.e. our columns."""
  g = np.asarray(_normal(0, (4, 4))) * np.array([0.1, 10, 0.5, 5])
  tx = ortho_optax.scale_by_dion2(2, method="polar_svd")
  (u,), _ = _steps(tx, [{"w": jnp.asarray(g)}])
  u = np.asarray(u["w"])
  np.testing.assert_array_equal(u[:, [0, 2]], 0)
  assert np.all(np.abs(u[:, [1, 3]]) > 0)


def test_trion_basis_rows_are_exact_at_large_sizes():
  m = 4096
  d = _trion.dct_matrix(m)
  idx = jnp.array([[1, 2047, 4095]])
  for second, want in ((True, d), (False, d.T)):
    rows = np.asarray(_trion.basis_rows(idx, m, second, jnp.float32))[0]
    np.testing.assert_allclose(rows, want[[1, 2047, 4095]], atol=1e-6)


@pytest.mark.parametrize("second", [True, False])
def test_dct_fft_equals_matmul(second):
  x = _normal(0, (2, 12, 7))
  want = (_trion.dct_matrix(12) if second else _trion.dct_matrix(12).T) @ x
  for dct in ("matmul", "fft"):
    np.testing.assert_allclose(
        _trion.project(x, second, dct), want, atol=2e-6
    )


# --------------------------------------------------------------- numerics


# One transform per property in the default run; all three with -m slow.
SOME = [
    "dion",
    pytest.param("dion2", marks=pytest.mark.slow),
    pytest.param("trion", marks=pytest.mark.slow),
]
OTHERS = [
    pytest.param("dion", marks=pytest.mark.slow),
    "dion2",
    "trion",
]


@pytest.mark.parametrize("name", SOME)
def test_scale_invariant_over_the_float32_range(name):
  """Every update is a function of the momentum's direction only: scaling
  all gradients by 1e-20 or 1e20 gives the same (finite) updates."""
  tree = {k: v for k, v in _tree().items() if k != "bias"}
  grads = [jax.tree.map(lambda x, t=t: x * (1 + t) - t, tree) for t in
           range(3)]
  tx = TRANSFORMS[name]()  # one compilation for every scale
  base, _ = _steps(tx, grads)
  for scale in (1e-20, 1e20):
    scaled = [jax.tree.map(lambda x, s=scale: x * s, g) for g in grads]
    out, state = _steps(tx, scaled)
    for a, b in zip(out, base):
      for k in a:
        assert np.all(np.isfinite(a[k])), (name, scale, k)
        np.testing.assert_allclose(a[k], b[k], rtol=2e-3, atol=2e-4)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_zero_and_rank_deficient_momenta(name):
  one = np.zeros((6, 10), np.float32)
  one[0] = 1.0  # rank 1, below the rank of 3 asked for
  grads = [
      {"w": jnp.zeros((6, 10))},
      {"w": jnp.asarray(one)},
      {"w": jnp.zeros((6, 10))},
  ]
  out, state = _steps(TRANSFORMS[name](), grads)
  np.testing.assert_array_equal(out[0]["w"], 0)
  for u in out:
    assert np.all(np.isfinite(u["w"]))
  assert np.linalg.norm(out[1]["w"]) > 0.5
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_zero_size_leaves(name):
  grads = {
      "a": jnp.zeros((0, 5)),
      "b": jnp.zeros((4, 0)),
      "c": jnp.zeros((0, 3, 4)),
      "w": _normal(0, (4, 6)),
  }
  (u,), state = _steps(TRANSFORMS[name](), [grads])
  for k in "abc":
    assert u[k].shape == grads[k].shape
  assert np.all(np.isfinite(u["w"]))


@pytest.mark.parametrize("name", OTHERS)
def test_half_precision_keeps_dtypes(name):
  tree = {
      "up": _normal(0, (6, 10), jnp.bfloat16),
      "down": _normal(1, (10, 6), jnp.float16),
      "bias": _normal(2, (6,), jnp.bfloat16),
  }
  tx = TRANSFORMS[name]()
  (u,), state = _steps(tx, [tree])
  for k in tree:
    assert u[k].dtype == tree[k].dtype
    if k != "bias":
      assert state.mu[k].dtype == tree[k].dtype
    assert np.all(np.isfinite(np.asarray(u[k], np.float32)))
  ref, _ = _steps(tx, [jax.tree.map(lambda x: x.astype(jnp.float32), tree)])
  for k in ("up", "down"):
    np.testing.assert_allclose(
        np.asarray(u[k], np.float32), ref[0][k], atol=0.05
    )


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_complex_leaves(name):
  """Complex matrices: finite, complex updates; at rank 1 Dion2 and Trion
  give the (complex) polar factor."""
  g = (_normal(0, (4, 7)) + 1j * _normal(1, (4, 7))).astype(jnp.complex64)
  (u,), _ = _steps(TRANSFORMS[name](), [{"w": g}])
  assert u["w"].dtype == jnp.complex64
  assert np.all(np.isfinite(u["w"]))
  if name != "dion":
    factory = getattr(ortho_optax, f"scale_by_{name}")
    (u,), _ = _steps(factory(1.0, method="polar_svd"), [{"w": g}])
    np.testing.assert_allclose(u["w"], _polar(g), atol=2e-5)


def test_mu_dtype():
  tx = ortho_optax.scale_by_dion(0.5, mu_dtype=jnp.bfloat16)
  (_,), state = _steps(tx, [{"up": _normal(0, (6, 10))}])
  assert state.mu["up"].dtype == jnp.bfloat16
  assert state.q["up"].dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "m, n, want",
    [
        (0, 5, 0),
        (1, 7, 1),
        (64, 256, 64),  # At most 128: full rank.
        (128, 128, 128),
        (300, 200, 128),  # The floor, above a quarter (50).
        (512, 2048, 128),  # A quarter is the floor.
        (3072, 768, 192),  # A quarter, above the floor.
        (1001, 1001, 251),  # Rounded up.
    ],
)
def test_default_rank_is_a_quarter_with_a_floor_of_128(m, n, want):
  assert _low_rank.resolve_rank(None, m, n) == want
  # An explicit fraction or int is unchanged by the default rule.
  short = min(m, n)
  quarter = max(1, -(-short // 4)) if short else 0
  assert _low_rank.resolve_rank(0.25, m, n) == quarter
  assert _low_rank.resolve_rank(2, m, n) == min(2, short)


def test_traced_rank_names_static_args():
  with pytest.raises(TypeError, match=r"static_args=\('rank',\)"):
    ortho_optax.scale_by_dion(jnp.asarray(0.25))
