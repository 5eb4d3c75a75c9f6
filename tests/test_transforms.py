"""Tests of scale_by_momentum, scale_by_shape and scale_by_orthogonalization."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ortho_optax

MDN = optax.contrib.MuonDimensionNumbers
BETA = 0.9


def _normal(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape, np.float32)


def _grads(steps=6):
  return [
      {"w": _normal(2 * t, (3, 4)), "b": _normal(2 * t + 1, (4,))}
      for t in range(steps)
  ]


def _run(tx, grads):
  """Updates for a gradient sequence (params never change)."""
  params = jax.tree.map(np.zeros_like, grads[0])
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for g in grads:
    u, state = update(g, state, params)
    out.append(u)
  return out, state


def _numpy_momentum(grads, beta, form, nesterov, bias_correction):
  """The momentum outputs for a list of dicts of arrays, in float64."""
  out = []
  m = {k: np.zeros_like(v, np.float64) for k, v in grads[0].items()}
  for t, gt in enumerate(grads, start=1):
    u = {}
    for k, g in gt.items():
      g = np.asarray(g, np.float64)
      m[k] = beta * m[k] + (1 - beta if form == "ema" else 1.0) * g
      if bias_correction:
        if nesterov:
          u[k] = beta * m[k] / (1 - beta ** (t + 1)) + (1 - beta) * g / (
              1 - beta**t
          )
        else:
          u[k] = m[k] / (1 - beta**t)
      elif nesterov:
        u[k] = beta * m[k] + (1 - beta if form == "ema" else 1.0) * g
      else:
        u[k] = m[k]
    out.append(u)
  return out


# ---------------------------------------------------------------- momentum


@pytest.mark.parametrize(
    "form, nesterov, bias_correction",
    [
        ("ema", True, False),
        ("ema", False, False),
        ("sum", True, False),
        ("sum", False, False),
        ("ema", True, True),
        ("ema", False, True),
    ],
)
def test_momentum_matches_numpy(form, nesterov, bias_correction):
  grads = _grads()
  tx = ortho_optax.scale_by_momentum(
      BETA, nesterov=nesterov, form=form, bias_correction=bias_correction
  )
  got, state = _run(tx, grads)
  want = _numpy_momentum(grads, BETA, form, nesterov, bias_correction)
  for g, w in zip(got, want):
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(w)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert state.count == len(grads) and state.count.dtype == jnp.int32


def test_momentum_bias_correction_equals_optax_contrib():
  """With ``ns_steps=0``, optax's scale_by_muon is its momentum / ||.||_F."""
  grads = [{"w": g["w"]} for g in _grads()]
  ours, _ = _run(
      ortho_optax.scale_by_momentum(BETA, bias_correction=True), grads
  )
  theirs, _ = _run(
      optax.contrib.scale_by_muon(
          beta=BETA, ns_steps=0, eps=0.0, weight_dimension_numbers={"w": MDN()}
      ),
      grads,
  )
  for a, b in zip(ours, theirs):
    a = np.asarray(a["w"])
    np.testing.assert_allclose(a / np.linalg.norm(a), b["w"], rtol=1e-5,
                               atol=1e-6)
  # Without bias correction the direction differs (after step 1).
  plain, _ = _run(ortho_optax.scale_by_momentum(BETA), grads)
  a = np.asarray(plain[2]["w"])
  assert not np.allclose(a / np.linalg.norm(a), theirs[2]["w"], atol=1e-4)


def test_momentum_mu_dtype_and_none_leaves():
  params = {"w": jnp.ones((2, 3)), "frozen": None}
  tx = ortho_optax.scale_by_momentum(mu_dtype=jnp.bfloat16)
  state = tx.init(params)
  assert state.mu["w"].dtype == jnp.bfloat16 and state.mu["frozen"] is None
  u, new_state = jax.jit(tx.update)(params, state, params)
  assert u["w"].dtype == jnp.float32 and u["frozen"] is None
  assert jax.tree.map(jax.typeof, new_state) == jax.tree.map(
      jax.typeof, state
  )


@pytest.mark.parametrize(
    "kwargs", [dict(beta=1.0), dict(beta=-0.1), dict(form="nope"),
               dict(form="sum", bias_correction=True)]
)
def test_momentum_rejects_bad_arguments(kwargs):
  with pytest.raises((ValueError, TypeError)):
    ortho_optax.scale_by_momentum(**kwargs)


# ------------------------------------------------------------------- shape


SHAPE_TREE = {
    "wide": (4, 8),
    "tall": (8, 4),
    "conv": (3, 3, 2, 5),  # HWIO: fan_in 18, fan_out 5
    "stacked": (3, 4, 6),  # (layers, in, out)
    "bias": (6,),
}
FANS = {"wide": (4, 8), "tall": (8, 4), "conv": (18, 5), "stacked": (4, 6)}
RULES = {
    "muon": lambda fi, fo: math.sqrt(max(1.0, fo / fi)),
    "moonlight": lambda fi, fo: 0.3 * math.sqrt(max(fi, fo)),
    "spectral": lambda fi, fo: math.sqrt(fo / fi),
    "none": lambda fi, fo: 1.0,
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_scale_by_shape_rules(rule):
  updates = {k: _normal(i, s) for i, (k, s) in enumerate(SHAPE_TREE.items())}
  tx = ortho_optax.scale_by_shape(rule, rms=0.3)
  out, _ = tx.update(updates, tx.init(updates))
  for key, (fi, fo) in FANS.items():
    np.testing.assert_allclose(
        out[key], updates[key] * RULES[rule](fi, fo), rtol=1e-6
    )
  np.testing.assert_array_equal(out["bias"], updates["bias"])


def test_scale_by_shape_explicit_dimension_numbers():
  updates = {"w": jnp.ones((6, 2))}
  tx = ortho_optax.scale_by_shape(
      "spectral", dimension_numbers={"w": MDN(reduction_axis=1, output_axis=0)}
  )
  out, _ = tx.update(updates, tx.init(updates))
  np.testing.assert_allclose(out["w"], math.sqrt(6 / 2) * updates["w"])


def test_scale_by_shape_rejects_unknown_rule():
  with pytest.raises(ValueError, match="rule"):
    ortho_optax.scale_by_shape("sideways")


# -------------------------------------------------------- orthogonalization


def _ortho_tree():
  return {
      "a": jnp.asarray(_normal(0, (4, 8))),
      "b": jnp.asarray(_normal(1, (4, 8))),
      "tall": jnp.asarray(_normal(2, (8, 4))),
      "conv": jnp.asarray(_normal(3, (3, 3, 2, 5))),
      "stacked": jnp.asarray(_normal(4, (3, 4, 6))),
      "bias": jnp.asarray(_normal(5, (8,))),
      "embed": jnp.asarray(_normal(6, (10, 4))),
      "frozen": None,
  }


@pytest.mark.parametrize(
    "method, options",
    [
        ("auto", {}),
        ("newton_schulz", dict(coeffs="muon", normalization="frobenius")),
        ("gram_newton_schulz", {}),
        ("polar_svd", {}),
    ],
)
def test_orthogonalization_per_leaf_equals_orthogonalize(method, options):
  updates = _ortho_tree()
  tx = ortho_optax.scale_by_orthogonalization(method=method, **options)
  out, _ = jax.jit(tx.update)(updates, tx.init(updates))

  def orth(x):
    return ortho_optax.orthogonalize(x, method, **options)

  tol = dict(rtol=2e-5, atol=2e-5)
  for key in ("a", "b", "tall"):
    np.testing.assert_allclose(out[key], orth(updates[key]), **tol)
  # Conv kernel HWIO -> (kh * kw * in, out), orthogonalized, reshaped back.
  np.testing.assert_allclose(
      out["conv"],
      orth(updates["conv"].reshape(18, 5)).reshape(3, 3, 2, 5),
      **tol,
  )
  # Stacked layers: one polar factor per layer.
  for i in range(3):
    np.testing.assert_allclose(
        out["stacked"][i], orth(updates["stacked"][i]), **tol
    )
  # Not matrices (rank < 2, embedding name, None): passed through.
  np.testing.assert_array_equal(out["bias"], updates["bias"])
  np.testing.assert_array_equal(out["embed"], updates["embed"])
  assert out["frozen"] is None


def test_orthogonalization_polar_svd_is_orthogonal():
  updates = {"w": jnp.asarray(_normal(0, (5, 9))),
             "conv": jnp.asarray(_normal(1, (2, 2, 3, 4)))}
  tx = ortho_optax.scale_by_orthogonalization(method="polar_svd")
  out, _ = tx.update(updates, tx.init(updates))
  w = np.asarray(out["w"])
  np.testing.assert_allclose(w @ w.T, np.eye(5), atol=1e-5)
  c = np.asarray(out["conv"]).reshape(12, 4)
  np.testing.assert_allclose(c.T @ c, np.eye(4), atol=1e-5)


def test_orthogonalization_with_explicit_dimension_numbers():
  # An (out, in) PyTorch-layout leaf routed like optax users would.
  x = jnp.asarray(_normal(0, (6, 3)))
  tx = ortho_optax.scale_by_orthogonalization(
      method="polar_svd", dimension_numbers={"w": MDN(1, 0)}
  )
  out, _ = tx.update({"w": x}, tx.init({"w": x}))
  np.testing.assert_allclose(out["w"], ortho_optax.polar_svd(x), atol=1e-5)


def test_orthogonalization_inside_optax_masked():
  """Masked (MaskedNode) leaves, as inside optax.partition, pass through."""
  updates = {"w": jnp.asarray(_normal(0, (4, 6))), "b": jnp.ones(6)}
  inner = ortho_optax.scale_by_orthogonalization(method="polar_svd")
  tx = optax.masked(inner, {"w": True, "b": False})
  out, _ = tx.update(updates, tx.init(updates))
  np.testing.assert_allclose(
      out["w"], ortho_optax.polar_svd(updates["w"]), atol=1e-5
  )
  np.testing.assert_array_equal(out["b"], updates["b"])


def test_orthogonalization_rejects_bad_arguments():
  with pytest.raises(ValueError, match="method"):
    ortho_optax.scale_by_orthogonalization(method="qr")
  with pytest.raises((ValueError, TypeError)):
    ortho_optax.scale_by_orthogonalization(no_such_option=1)
