"""Tests of scale_by_lmo (Scion's LMOs in the (in, out) layout) and presets."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ortho_optax
from ortho_optax.transforms import lmo as _lmo

LMONorm = ortho_optax.LMONorm


def _normal(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _polar(x):
  u, _, vh = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
  return u @ vh


def _dual(norm, tree, **kwargs):
  tx = ortho_optax.scale_by_lmo(norm, method="polar_svd", **kwargs)
  out, _ = tx.update(tree, tx.init(tree))
  return out


# ----------------------------------------------- NumPy Scion, PyTorch layout
# Transcriptions of LIONS-EPFL/scion's LMOs on g of shape (d_out, d_in).


def _scion_spectral(g, normalized=True, use_max=False):
  d_out, d_in = g.shape
  s = math.sqrt(d_out / d_in) if normalized else math.sqrt(d_out)
  if use_max:
    s = max(1.0, s)
  return _polar(g) * s


def _scion_spectral_conv(g):  # g: (O, I, kh, kw)
  o, i, kh, kw = g.shape
  out = _polar(g.reshape(o, -1)).reshape(g.shape)
  return out * math.sqrt(o / i) / (kh * kw)


def _scion_col_norm(g, normalized=False):
  g = np.asarray(g, np.float64)
  rms = np.sqrt(np.sum(g**2, axis=0, keepdims=True)) / math.sqrt(g.shape[0])
  if normalized:
    rms = rms * g.shape[1]
  return g / (rms + 1e-8)


def _scion_row_norm(g, normalized=True):
  g = np.asarray(g, np.float64)
  rms = np.sqrt(np.sum(g**2, axis=-1, keepdims=True))
  if normalized:
    rms = rms * math.sqrt(g.shape[-1])
  return g / (rms + 1e-8)


def _scion_sign(g, normalized=True):
  return np.sign(g) / g.shape[1] if normalized else np.sign(g)


def _scion_bias_rms(g):
  g = np.asarray(g, np.float64)
  return g / (np.sqrt(np.mean(g**2, axis=0, keepdims=True)) + 1e-8)


# Each case: (norm, JAX-layout function via the PyTorch layout).
_MATRIX_CASES = {
    "spectral": ("spectral", lambda w: _scion_spectral(w.T).T),
    "spectral_unnormalized": (
        LMONorm("spectral", normalized=False),
        lambda w: _scion_spectral(w.T, normalized=False).T,
    ),
    "spectral_max": (
        LMONorm("spectral", max=True),
        lambda w: _scion_spectral(w.T, use_max=True).T,
    ),
    "col_norm": ("col_norm", lambda w: _scion_col_norm(w.T).T),
    "col_norm_normalized": (
        LMONorm("col_norm", normalized=True),
        lambda w: _scion_col_norm(w.T, normalized=True).T,
    ),
    "row_norm": ("row_norm", lambda w: _scion_row_norm(w.T).T),
    "row_norm_unnormalized": (
        LMONorm("row_norm", normalized=False),
        lambda w: _scion_row_norm(w.T, normalized=False).T,
    ),
    "sign": ("sign", lambda w: _scion_sign(w.T).T),
    "sign_unnormalized": (
        LMONorm("sign", normalized=False),
        lambda w: _scion_sign(w.T, normalized=False).T,
    ),
}


@pytest.mark.parametrize("case", sorted(_MATRIX_CASES))
@pytest.mark.parametrize("shape", [(6, 4), (4, 9)])
def test_scion_scaling_matches_pytorch_layout(case, shape):
  norm, reference = _MATRIX_CASES[case]
  w = _normal(0, shape)  # (fan_in, fan_out)
  out = _dual(norm, {"w": jnp.asarray(w)})["w"]
  np.testing.assert_allclose(out, reference(w), rtol=2e-5, atol=2e-6)


def test_spectral_conv_matches_pytorch_layout():
  w = _normal(1, (3, 3, 2, 5))  # HWIO
  out = _dual("spectral_conv", {"conv": jnp.asarray(w)})["conv"]
  oihw = np.transpose(w, (3, 2, 0, 1))
  expected = np.transpose(_scion_spectral_conv(oihw), (2, 3, 1, 0))
  np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-6)


def test_spectral_conv_1d():
  w = _normal(2, (3, 4, 6))  # (width, in, out)
  dn = ortho_optax.DimensionNumbers((0, 1), 2)
  out = _dual("spectral_conv", {"c": jnp.asarray(w)}, dimension_numbers=dn)
  expected = _polar(w.reshape(12, 6)).reshape(w.shape) * math.sqrt(6 / 4) / 3
  np.testing.assert_allclose(out["c"], expected, rtol=2e-5, atol=2e-6)


def test_bias_rms_matches_scion():
  b = _normal(3, (7,))
  out = _dual("bias_rms", {"b": jnp.asarray(b)})["b"]
  np.testing.assert_allclose(out, _scion_bias_rms(b), rtol=1e-5)
  np.testing.assert_allclose(np.sqrt(np.mean(np.square(out))), 1.0, rtol=1e-5)


def test_auto_picks_by_rank():
  tree = {
      "b": jnp.asarray(_normal(4, (5,))),
      "w": jnp.asarray(_normal(5, (5, 3))),
      "conv": jnp.asarray(_normal(6, (3, 3, 2, 4))),
  }
  auto = _dual("auto", tree)
  explicit = _dual(
      {"b": "bias_rms", "w": "spectral", "conv": "spectral_conv"}, tree
  )
  for k in tree:
    np.testing.assert_allclose(auto[k], explicit[k], rtol=1e-6, atol=1e-7)


# ----------------------------------------------------- dual-norm identities


def _nuclear(x):
  return float(np.sum(np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)))


@pytest.mark.parametrize(
    "norm, dual_norm",
    [
        (LMONorm("spectral", unit=True), _nuclear),
        ("frobenius", lambda x: float(np.linalg.norm(x))),
        (LMONorm("sign", unit=True), lambda x: float(np.sum(np.abs(x)))),
        (LMONorm("sign", normalized=False), lambda x: float(np.sum(np.abs(x)))),
    ],
)
def test_inner_product_is_dual_norm(norm, dual_norm):
  d = _normal(7, (6, 4))
  out = _dual(norm, {"w": jnp.asarray(d)})["w"]
  np.testing.assert_allclose(
      np.vdot(d.astype(np.float64), np.asarray(out, np.float64)),
      dual_norm(d),
      rtol=1e-5,
  )


def _complex(seed, shape):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(
      np.complex64
  )


@pytest.mark.parametrize(
    "norm, dual_norm",
    [
        (LMONorm("spectral", unit=True), lambda x: float(np.sum(
            np.linalg.svd(x.astype(np.complex128), compute_uv=False)))),
        ("frobenius", lambda x: float(np.linalg.norm(x))),
        (LMONorm("sign", unit=True), lambda x: float(np.sum(np.abs(x)))),
        (LMONorm("col_norm", unit=True),
         lambda x: float(np.sum(np.linalg.norm(x, axis=1)))),
        (LMONorm("row_norm", unit=True),
         lambda x: float(np.sum(np.linalg.norm(x, axis=0)))),
        ("bias_rms", lambda x: float(
            np.sum(np.abs(x) ** 2 / np.sqrt(np.mean(np.abs(x) ** 2, axis=0))))
        ),
    ],
)
def test_complex_inner_product_is_dual_norm(norm, dual_norm):
  """Complex leaves: Re <d, dual(d)> is the dual norm (the norms are over
  |d|; sign(d) = d / |d|), and the imaginary part vanishes. With x * x for
  |x|^2 the Frobenius, row, column and bias-RMS duals missed this."""
  d = _complex(7, (6, 4))
  out = _dual(norm, {"w": jnp.asarray(d)})["w"]
  assert out.dtype == jnp.complex64
  ip = np.vdot(d.astype(np.complex128), np.asarray(out, np.complex128))
  np.testing.assert_allclose(ip.real, dual_norm(d), rtol=1e-5)
  np.testing.assert_allclose(ip.imag, 0.0, atol=1e-4 * abs(ip.real))


def test_complex_vector_bias_rms_matches_numpy():
  b = _complex(3, (7,))
  out = _dual("bias_rms", {"b": jnp.asarray(b)})["b"]
  want = b / (np.sqrt(np.mean(np.abs(b) ** 2)) + 1e-8)
  np.testing.assert_allclose(out, want, rtol=1e-5)


def test_scion_spectral_inner_product_is_scaled_nuclear_norm():
  d = _normal(8, (6, 4))  # fan_in 6, fan_out 4
  out = _dual("spectral", {"w": jnp.asarray(d)})["w"]
  np.testing.assert_allclose(
      np.vdot(d, out), math.sqrt(4 / 6) * _nuclear(d), rtol=1e-5
  )


@pytest.mark.parametrize("norm", [n for n in _lmo.NORMS])
@pytest.mark.parametrize("c", [0.01, 7.0])
def test_scale_invariance(norm, c):
  tree = {
      "w": jnp.asarray(_normal(9, (6, 4))),
      "b": jnp.asarray(_normal(10, (4,))),
  }
  scaled = jax.tree.map(lambda x: c * x, tree)
  a, b = _dual(norm, tree), _dual(norm, scaled)
  for k in tree:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_frobenius_is_per_matrix_for_stacked_layers():
  w = _normal(11, (3, 4, 5))  # (layers, in, out)
  out = _dual("frobenius", {"w": jnp.asarray(w)})["w"]
  np.testing.assert_allclose(
      np.linalg.norm(np.asarray(out), axis=(1, 2)), np.ones(3), rtol=1e-5
  )


def test_vector_leaf_is_a_row_matrix():
  # A bias maps the constant input 1: a 1 x n matrix, whose Scion spectral
  # dual sqrt(n) b / ||b|| is BiasRMS.
  b = _normal(12, (9,))
  spectral = _dual("spectral", {"b": jnp.asarray(b)})["b"]
  np.testing.assert_allclose(spectral, _scion_bias_rms(b), rtol=1e-5)
  sign = _dual("sign", {"b": jnp.asarray(b)})["b"]
  np.testing.assert_array_equal(sign, np.sign(b))


# ------------------------------------------------ trees, radii, callables


def test_tree_norms_and_radii():
  tree = {
      "w": jnp.asarray(_normal(13, (6, 4))),
      "head": jnp.asarray(_normal(14, (4, 10))),
      "b": jnp.asarray(_normal(15, (4,))),
  }
  norms = {"w": "spectral", "head": "sign", "b": None}
  radii = {"w": 3.0, "head": 10.0, "b": 5.0}
  out = _dual(norms, tree, radius=radii)
  np.testing.assert_allclose(
      out["w"], 3.0 * _scion_spectral(np.asarray(tree["w"]).T).T, rtol=2e-5,
      atol=2e-6,
  )
  np.testing.assert_allclose(out["head"], 10.0 * np.sign(tree["head"]) / 4)
  np.testing.assert_array_equal(out["b"], tree["b"])  # None: unchanged
  # Callables of the params give the same.
  out2 = _dual(lambda p: norms, tree, radius=lambda p: radii)
  for k in tree:
    np.testing.assert_allclose(out[k], out2[k])


def test_prefix_tree_norms():
  tree = {"block": {"a": jnp.ones((3, 3)), "b": jnp.ones((3, 5))},
          "out": jnp.ones((5, 2))}
  out = _dual({"block": "frobenius", "out": "sign"}, tree, radius=2.0)
  np.testing.assert_allclose(out["block"]["a"], 2.0 * np.ones((3, 3)) / 3)
  np.testing.assert_allclose(out["out"], 2.0 * np.ones((5, 2)) / 5)


def test_inside_partition_and_jit():
  tree = {"w": jnp.asarray(_normal(16, (4, 4))), "b": jnp.ones(4)}
  tx = optax.partition(
      {
          "lmo": ortho_optax.scale_by_lmo(
              {"w": "spectral", "b": "sign"}, method="polar_svd"
          ),
          "sgd": optax.sgd(1.0),
      },
      {"w": "lmo", "b": "sgd"},
  )
  state = tx.init(tree)
  out, _ = jax.jit(tx.update)(tree, state, tree)
  np.testing.assert_allclose(out["w"], _polar(tree["w"]), atol=1e-5)
  np.testing.assert_allclose(out["b"], -np.ones(4))


@pytest.mark.parametrize("dtype", [
    "complex64", pytest.param("float32", marks=pytest.mark.slow)])
def test_scion_constrained_reaches_the_projection_on_complex_targets(dtype):
  """SCG on optax's 2x2 matrix parabola (goal ``[[3, -2], [1, 4]]``, times
  ``1 + 1j`` when complex; spectral norm 4.5, 6.4 complex) from zero: the
  iterates stay in the spectral ball of radius 3 (the "gpt" preset's hidden
  radius) and converge to the goal's projection on it, ``U min(S, 3) V^H``,
  complex as real. The goal itself is out of reach by design; this is why
  the constrained step "neither converges nor raises" on that target.
  (With Muon's Newton-Schulz coefficients, whose outputs' singular values
  range over about [0.7, 1.1], the limit is off the projection, complex
  and real alike; the exact polar factor isolates the algorithm.)"""
  c = 1 + 1j if dtype == "complex64" else 1.0
  goal = jnp.asarray(np.array([[3.0, -2.0], [1.0, 4.0]]) * c, dtype)
  tx = ortho_optax.scion(1e-2, method="polar_svd")

  def loss(p):
    d = p["w"] - goal
    return jnp.sum(jnp.real(jnp.conj(d) * d))

  def step(carry, _):
    p, s = carry
    g = jax.tree.map(jnp.conj, jax.grad(loss)(p))
    u, s = tx.update(g, s, p)
    p = optax.apply_updates(p, u)
    return (p, s), jnp.linalg.norm(p["w"], 2)

  p0 = {"w": jnp.zeros((2, 2), dtype)}
  (p, _), norms = jax.jit(
      lambda p: jax.lax.scan(step, (p, tx.init(p)), length=2000)
  )(p0)
  u, sv, vh = np.linalg.svd(np.asarray(goal, np.complex128))
  projection = (u * np.minimum(sv, 3.0)) @ vh
  assert p["w"].dtype == jnp.dtype(dtype)
  assert float(jnp.max(norms)) <= 3.0 + 1e-4
  np.testing.assert_allclose(np.asarray(p["w"]), projection, atol=1e-4)
  assert np.abs(projection - np.asarray(goal)).max() > 1.0


def test_bf16_keeps_dtype():
  tree = {"w": jnp.ones((4, 6), jnp.bfloat16), "b": jnp.ones(6, jnp.bfloat16)}
  out = _dual("auto", tree)
  assert out["w"].dtype == jnp.bfloat16 and out["b"].dtype == jnp.bfloat16


# ---------------------------------------------------------------- errors


def test_unknown_norm_raises_at_construction():
  with pytest.raises(ValueError, match="`norm`"):
    ortho_optax.scale_by_lmo("nuclear")
  with pytest.raises(ValueError, match="`norm`"):
    ortho_optax.scale_by_lmo({"w": "spectral", "b": "l1"})
  with pytest.raises(ValueError, match="`name`"):
    LMONorm("rms")


def test_negative_radius_raises():
  with pytest.raises(ValueError, match="`radius`"):
    ortho_optax.scale_by_lmo("sign", radius=-1.0)


# --------------------------------------------------------------- presets


def _mlp_tree():
  return {
      "layers_0": {"kernel": jnp.zeros((8, 16)), "bias": jnp.zeros(16)},
      "layers_1": {"kernel": jnp.zeros((16, 16)), "bias": jnp.zeros(16)},
      "layers_2": {"kernel": jnp.zeros((16, 3)), "bias": jnp.zeros(3)},
  }


def test_scion_norms_mlp_roles():
  norms, radii = ortho_optax.scion_norms(_mlp_tree(), "mlp")
  assert norms["layers_0"]["kernel"] == LMONorm("spectral", max=True)
  assert norms["layers_1"]["kernel"] == LMONorm("spectral")
  assert norms["layers_2"]["kernel"] == LMONorm("sign")
  assert norms["layers_0"]["bias"] == LMONorm("bias_rms")
  assert radii["layers_2"]["kernel"] == 2.0**10
  assert radii["layers_1"]["kernel"] == 1.0


def test_scion_norms_mlp_named_head_first_in_tree_order():
  """A Flax MLP whose head sorts before its layers: the head stays the
  output and the first unnamed matrix is the input."""
  tree = {
      "head": {"kernel": jnp.zeros((16, 3)), "bias": jnp.zeros(3)},
      "layers": [{"kernel": jnp.zeros((8, 16))}, {"kernel": jnp.zeros((16, 16))}],
  }
  norms, radii = ortho_optax.scion_norms(tree, "mlp")
  assert norms["head"]["kernel"] == LMONorm("sign")
  assert radii["head"]["kernel"] == 2.0**10
  assert norms["layers"][0]["kernel"] == LMONorm("spectral", max=True)
  assert norms["layers"][1]["kernel"] == LMONorm("spectral")


def test_scion_norms_gpt_roles_by_name():
  tree = {
      "wte": {"embedding": jnp.zeros((32, 8))},
      "block": {"attn": {"kernel": jnp.zeros((8, 8))},
                "norm": {"scale": jnp.ones(8)}},
      "lm_head": {"kernel": jnp.zeros((8, 32))},
  }
  norms, radii = ortho_optax.scion_norms(tree, "gpt")
  assert norms["wte"]["embedding"] == LMONorm("sign", normalized=False)
  assert radii["wte"]["embedding"] == 1.0
  assert norms["block"]["attn"]["kernel"] == LMONorm("spectral")
  assert radii["block"]["attn"]["kernel"] == 3.0
  assert norms["lm_head"]["kernel"] == LMONorm("sign")
  assert radii["lm_head"]["kernel"] == 10.0
  assert norms["block"]["norm"]["scale"] == LMONorm("bias_rms")


def test_scion_norms_patterns_and_unknown_preset():
  norms, _ = ortho_optax.scion_norms(
      _mlp_tree(), "cnn", output_pattern="layers_1"
  )
  assert norms["layers_1"]["kernel"] == LMONorm("sign")
  assert norms["layers_2"]["kernel"] == LMONorm("auto")
  with pytest.raises(ValueError, match="`preset`"):
    ortho_optax.scion_norms(_mlp_tree(), "vit")


def _gpt_tree(dtype=jnp.float32):
  return {
      "wte": {"embedding": jnp.zeros((32, 8), dtype)},
      "block": {"fc": {"kernel": jnp.zeros((8, 24), dtype)},
                "out": {"kernel": jnp.zeros((24, 8), dtype)},
                "norm": {"scale": jnp.full(8, 0.5, dtype)}},
      "lm_head": {"kernel": jnp.zeros((8, 32), dtype)},
  }


def test_scion_init_gpt_matches_the_norm_spheres():
  params = ortho_optax.scion_init(jax.random.key(0), _gpt_tree())
  # Spectral, radius 3, s = sqrt(fan_out / fan_in): every singular value
  # of the (in, out) kernel equals 3 * sqrt(out / in) (an SVD reference).
  for name, (fan_in, fan_out) in {"fc": (8, 24), "out": (24, 8)}.items():
    w = np.asarray(params["block"][name]["kernel"], np.float64)
    sv = np.linalg.svd(w, compute_uv=False)
    np.testing.assert_allclose(sv, 3.0 * math.sqrt(fan_out / fan_in),
                               rtol=1e-5)
  # Sign, unnormalized, radius 1 (embedding); normalized, radius 10 (head).
  emb = np.asarray(params["wte"]["embedding"])
  np.testing.assert_array_equal(np.abs(emb), 1.0)
  head = np.asarray(params["lm_head"]["kernel"])
  np.testing.assert_allclose(np.abs(head), 10.0 / 8, rtol=1e-6)
  # Both signs occur (a random draw, not a constant).
  assert 0.3 < (emb > 0).mean() < 0.7 and 0.3 < (head > 0).mean() < 0.7
  # Rank < 2 leaves (norm gains) are kept.
  np.testing.assert_array_equal(params["block"]["norm"]["scale"], 0.5)


def test_scion_init_is_a_random_draw_of_the_key():
  a = ortho_optax.scion_init(jax.random.key(0), _gpt_tree())
  b = ortho_optax.scion_init(jax.random.key(0), _gpt_tree())
  c = ortho_optax.scion_init(jax.random.key(1), _gpt_tree())
  chex.assert_trees_all_equal(a, b)
  fa = np.asarray(a["block"]["fc"]["kernel"])
  fc = np.asarray(c["block"]["fc"]["kernel"])
  assert np.abs(fa - fc).max() > 0.1
  # Distinct leaves of one shape get distinct draws.
  tree = {"h1": jnp.zeros((8, 8)), "h2": jnp.zeros((8, 8))}
  d = ortho_optax.scion_init(jax.random.key(0), tree, norms="spectral")
  assert np.abs(np.asarray(d["h1"]) - np.asarray(d["h2"])).max() > 0.1


def test_scion_init_explicit_norms_radii_and_dtype():
  tree = {"a": jnp.zeros((6, 10), jnp.bfloat16), "b": jnp.zeros((5, 4))}
  out = ortho_optax.scion_init(
      jax.random.key(2), tree,
      norms={"a": "col_norm", "b": LMONorm("row_norm")},
      radii={"a": 2.0, "b": 0.5},
  )
  assert out["a"].dtype == jnp.bfloat16 and out["b"].dtype == jnp.float32
  kept = ortho_optax.scion_init(
      jax.random.key(2), tree, norms={"a": None, "b": "spectral"}
  )
  np.testing.assert_array_equal(kept["a"], tree["a"])
  a = np.asarray(out["a"], np.float64)
  # ColNorm (unnormalized): each fan-in row has l2 norm radius * sqrt(fan_out).
  np.testing.assert_allclose(np.linalg.norm(a, axis=1),
                             2.0 * math.sqrt(10), rtol=1e-2)
  b = np.asarray(out["b"], np.float64)
  # RowNorm (normalized): each fan-out column has norm radius / sqrt(fan_in).
  np.testing.assert_allclose(np.linalg.norm(b, axis=0),
                             0.5 / math.sqrt(5), rtol=1e-5)


def test_scion_init_mlp_preset_and_unknown_preset():
  out = ortho_optax.scion_init(jax.random.key(0), _mlp_tree(), preset="mlp")
  # Input layer Spectral(max=True) radius 1: s = max(1, sqrt(16/8)).
  sv = np.linalg.svd(np.asarray(out["layers_0"]["kernel"]), compute_uv=False)
  np.testing.assert_allclose(sv, math.sqrt(2.0), rtol=1e-5)
  np.testing.assert_array_equal(out["layers_0"]["bias"], 0.0)
  with pytest.raises(ValueError, match="`preset`"):
    ortho_optax.scion_init(jax.random.key(0), _mlp_tree(), preset="vit")
  with pytest.raises(TypeError, match="`key`"):
    ortho_optax.scion_init(0, _mlp_tree())
  with pytest.raises(TypeError, match="`key`"):
    ortho_optax.scion_init(jnp.array(0), _mlp_tree())
  # A raw uint32 key draws what the typed key with the same data draws.
  raw = ortho_optax.scion_init(jax.random.PRNGKey(0), _mlp_tree(),
                               preset="mlp")
  chex.assert_trees_all_close(raw, out, atol=1e-6)


def test_scion_init_conv_kernel_and_bias_rms_leaves():
  tree = {
      "conv": {"kernel": jnp.zeros((3, 3, 4, 8))},  # Flax HWIO
      "pos_embed": jnp.full((1, 5, 4), 0.25),
  }
  out = ortho_optax.scion_init(
      jax.random.key(3), tree,
      norms={"conv": {"kernel": "spectral_conv"}, "pos_embed": "bias_rms"},
      radii=2.0,
  )
  # The flattened (kh kw in, out) view is a semi-orthogonal matrix times the
  # LMO's factor radius * sqrt(out / in) / (kh kw).
  w = np.asarray(out["conv"]["kernel"], np.float64).reshape(36, 8)
  np.testing.assert_allclose(np.linalg.svd(w, compute_uv=False),
                             2.0 * math.sqrt(8 / 4) / 9, rtol=1e-5)
  # A bias_rms leaf is kept whatever its rank.
  np.testing.assert_array_equal(out["pos_embed"], tree["pos_embed"])
