"""Parity of the named optimizers with NumPy re-derivations of their references.

Each reference is written in its own PyTorch layout (``W`` of shape
``(out, in)``) and compared, transposed, with the optimizer on Flax
``(in, out)`` kernels, over several steps in float32.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ortho_optax

STEPS = 8
MUON_ABC = (3.4445, -4.7750, 2.0315)
# Reference settings of the Newton-Schulz step (KellerJordan/Muon's NS5).
NS_REF = dict(
    method="newton_schulz", coeffs="muon", normalization="frobenius",
    ns_eps=1e-7,
)


def _normal(seed, shape, scale=1.0):
  rng = np.random.default_rng(seed)
  return (scale * rng.standard_normal(shape)).astype(np.float32)


def _ns5(g, abc=MUON_ABC, steps=5, eps=1e-7):
  """KellerJordan/Muon's quintic Newton-Schulz, float64."""
  a, b, c = abc
  x = np.asarray(g, np.float64)
  tall = x.shape[0] > x.shape[1]
  if tall:
    x = x.T
  x = x / (np.linalg.norm(x) + eps)
  for _ in range(steps):
    m = x @ x.T
    x = a * x + (b * m + c * m @ m) @ x
  return x.T if tall else x


def _polar(x):
  u, _, vh = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
  return u @ vh


def _grads(shapes, seed=0):
  """A fixed sequence of gradient trees, ``(in, out)`` layout."""
  return [
      {k: _normal(seed + 100 * t + i, s) for i, (k, s) in enumerate(shapes.items())}
      for t in range(STEPS)
  ]


def _run(tx, params, grads):
  """Runs ``tx`` on the gradient sequence; returns the final params."""
  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params)
  step = jax.jit(tx.update)
  for g in grads:
    updates, state = step(jax.tree.map(jnp.asarray, g), state, params)
    params = optax.apply_updates(params, updates)
  return params


def _assert_close(actual, expected, rtol=1e-5, atol=1e-6):
  for k in expected:
    np.testing.assert_allclose(
        np.asarray(actual[k], np.float64), expected[k], rtol=rtol, atol=atol,
        err_msg=k,
    )


SHAPES = {"w1": (6, 4), "w2": (4, 9)}


def _init(seed=50):
  return {k: _normal(seed + i, s, 0.5) for i, (k, s) in enumerate(SHAPES.items())}


# ------------------------------------------------------------ trust region


def _numpy_trust_region(params, grads, lr, alpha, wd, dual):
  w = {k: np.asarray(v, np.float64).T for k, v in params.items()}  # (out, in)
  m = {k: np.zeros_like(v) for k, v in w.items()}
  for g in grads:
    for k in w:
      m[k] = (1 - alpha) * m[k] + alpha * g[k].T
      w[k] = (1 - lr * wd) * w[k] - lr * dual(m[k])
  return {k: v.T for k, v in w.items()}


@pytest.mark.parametrize(
    "norm, dual",
    [
        ("frobenius", lambda m: m / np.linalg.norm(m)),  # normalized SGD-M
        ("sign", np.sign),  # signSGD-M (Signum)
        ("spectral", _polar),  # Muon without Nesterov
    ],
)
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_trust_region_equals_numpy(norm, dual, wd):
  params, grads = _init(), _grads(SHAPES)
  tx = ortho_optax.trust_region(
      0.05, norm=norm, alpha=0.2, weight_decay=wd, method="polar_svd"
  )
  expected = _numpy_trust_region(params, grads, 0.05, 0.2, wd, dual)
  _assert_close(_run(tx, params, grads), expected)


def test_trust_region_vectors_and_per_layer_norms():
  shapes = {"w": (6, 4), "b": (4,)}
  params = {"w": _normal(1, (6, 4)), "b": _normal(2, (4,))}
  grads = _grads(shapes)
  tx = ortho_optax.trust_region(
      0.05, norm={"w": "frobenius", "b": "sign"}, alpha=0.5,
      labels={"w": "orthogonalize", "b": "orthogonalize"},
  )
  m = {k: np.zeros(s) for k, s in shapes.items()}
  w = {k: np.asarray(v, np.float64) for k, v in params.items()}
  for g in grads:
    for k in w:
      m[k] = 0.5 * m[k] + 0.5 * g[k]
    w["w"] -= 0.05 * m["w"] / np.linalg.norm(m["w"])
    w["b"] -= 0.05 * np.sign(m["b"])
  _assert_close(_run(tx, params, grads), w)


# -------------------------------------------------------------------- Scion


def _scion_spectral(g):
  d_out, d_in = g.shape
  return _polar(g) * math.sqrt(d_out / d_in)


def _scion_sign(g):
  return np.sign(g) / g.shape[1]


def _scion_bias_rms(g):
  return g / (np.sqrt(np.mean(g**2, axis=0, keepdims=True)) + 1e-8)


@pytest.mark.parametrize("constrained", [True, False])
def test_scion_equals_numpy(constrained):
  shapes = {"hidden": (6, 4), "head": (4, 9), "b": (4,)}
  params = {k: _normal(10 + i, s, 0.1) for i, (k, s) in enumerate(shapes.items())}
  grads = _grads(shapes)
  duals = {"hidden": _scion_spectral, "head": _scion_sign, "b": _scion_bias_rms}
  radii = {"hidden": 3.0, "head": 10.0, "b": 2.0}
  lr, alpha = 0.05, 0.1
  tx = ortho_optax.scion(
      lr,
      norms={"hidden": "spectral", "head": "sign", "b": "bias_rms"},
      radii=radii, alpha=alpha, constrained=constrained, method="polar_svd",
  )
  # LIONS-EPFL/scion Scion.step, PyTorch layout.
  w = {k: np.asarray(v, np.float64).T for k, v in params.items()}
  buf = {k: np.zeros_like(v) for k, v in w.items()}
  for g in grads:
    for k in w:
      buf[k] = (1 - alpha) * buf[k] + alpha * g[k].T
      update = radii[k] * duals[k](buf[k])
      if constrained:
        w[k] = w[k] * (1 - lr)
      w[k] = w[k] - lr * update
  _assert_close(_run(tx, params, grads), {k: v.T for k, v in w.items()})


def test_scion_constrained_iterates_stay_in_the_ball():
  # SCG: W_0 inside the ball of radius rho stays inside (gamma <= 1). The
  # Scion spectral ball: ||W||_op <= rho * sqrt(fan_out / fan_in).
  shapes = {"w": (6, 4)}
  rho, lr = 2.0, 0.3
  bound = rho * math.sqrt(4 / 6)
  tx = ortho_optax.scion(
      lr, norms="spectral", radii=rho, alpha=0.5, method="polar_svd"
  )
  params = {"w": jnp.zeros((6, 4))}
  state = tx.init(params)
  for g in _grads(shapes):
    updates, state = tx.update({"w": jnp.asarray(50 * g["w"])}, state, params)
    params = optax.apply_updates(params, updates)
    assert np.linalg.norm(np.asarray(params["w"]), 2) <= bound * (1 + 1e-5)


def test_scion_preset_covers_every_leaf():
  params = {
      "embed": {"embedding": jnp.ones((10, 4))},
      "layers_0": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)},
      "lm_head": {"kernel": jnp.ones((4, 10))},
  }
  tx = ortho_optax.scion(0.01, preset="gpt")
  grads = jax.tree.map(lambda x: 2.0 * x, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # SCG: -lr * (W + rho * dual(d)); d = alpha * g after one step.
  np.testing.assert_allclose(
      updates["lm_head"]["kernel"], -0.01 * (1.0 + 10.0 / 4), rtol=1e-6
  )
  np.testing.assert_allclose(
      updates["embed"]["embedding"], -0.01 * (1.0 + 1.0), rtol=1e-6
  )
  np.testing.assert_allclose(
      updates["layers_0"]["bias"], -0.01 * (1.0 + 3.0), rtol=1e-5
  )


# ----------------------------------------------------------------- NorMuon


def _numpy_normuon(params, grads, lr, beta, beta2, wd, rescale="frobenius"):
  """zichongli5/NorMuon normuon.py (and the paper's RMS rule), float64."""
  w = {k: np.asarray(v, np.float64).T for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in w.items()}
  v2 = {k: np.zeros((v.shape[0], 1)) for k, v in w.items()}
  for g in grads:
    for k in w:
      gk = g[k].T
      m[k] = beta * m[k] + (1 - beta) * gk
      u = (1 - beta) * gk + beta * m[k]
      o = _ns5(u)
      v2[k] = beta2 * v2[k] + (1 - beta2) * np.mean(o * o, axis=-1, keepdims=True)
      o_hat = o / (np.sqrt(v2[k]) + 1e-10)
      if rescale == "frobenius":
        o_hat *= np.linalg.norm(o) / (np.linalg.norm(o_hat) + 1e-10)
        o_hat *= math.sqrt(max(1, o.shape[0] / o.shape[1]))
      else:
        o_hat *= 0.2 * math.sqrt(o.size) / (np.linalg.norm(o_hat) + 1e-10)
      w[k] = w[k] * (1 - lr * wd) - lr * o_hat
  return {k: v.T for k, v in w.items()}


@pytest.mark.parametrize("rescale", ["frobenius", "rms"])
def test_normuon_equals_reference(rescale):
  params, grads = _init(), _grads(SHAPES)
  tx = ortho_optax.normuon(
      0.02, beta2=0.9, weight_decay=0.1, rescale=rescale, **NS_REF
  )
  expected = _numpy_normuon(params, grads, 0.02, 0.95, 0.9, 0.1, rescale)
  _assert_close(_run(tx, params, grads), expected)


# ----------------------------------------------------------------- AdaMuon


@pytest.mark.parametrize("sign", [True, False, None])
def test_adamuon_equals_reference(sign):
  """sign=True: Chongjie-Si/AdaMuon; sign=False and the default (None:
  not passed): arXiv:2507.11005v1, no sign."""
  params, grads = _init(), _grads(SHAPES)
  lr, beta, wd, eps = 0.02, 0.95, 0.01, 1e-8
  kwargs = {} if sign is None else {"sign": sign}
  tx = ortho_optax.adamuon(lr, **kwargs, **NS_REF)
  maybe_sign = np.sign if sign else (lambda x: x)
  w = {k: np.asarray(v, np.float64).T for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in w.items()}
  v2 = {k: np.zeros_like(v) for k, v in w.items()}
  for g in grads:
    for k in w:
      gk = g[k].T
      m[k] = beta * m[k] + (1 - beta) * gk
      o = _ns5(maybe_sign((1 - beta) * gk + beta * m[k]))
      v2[k] = beta * v2[k] + (1 - beta) * o * o
      o_hat = o / (np.sqrt(v2[k]) + eps)
      o_hat *= 0.2 * math.sqrt(o.size) / (np.linalg.norm(o_hat) + eps)
      w[k] = w[k] * (1 - lr * wd) - lr * o_hat
  out = _run(tx, params, grads)
  _assert_close(out, {k: v.T for k, v in w.items()})


def test_adamuon_update_rms_is_0_2():
  params = {"w": jnp.zeros((8, 16))}
  tx = ortho_optax.adamuon(1.0, weight_decay=0.0)
  updates, _ = tx.update({"w": jnp.asarray(_normal(3, (8, 16)))},
                         tx.init(params), params)
  np.testing.assert_allclose(
      np.sqrt(np.mean(np.square(updates["w"]))), 0.2, rtol=1e-5
  )


# -------------------------------------------------------------------- ROOT


def test_root_equals_reference():
  params, grads = _init(), _grads(SHAPES)
  lr, mu, wd = 1e-2, 0.95, 0.1
  tx = ortho_optax.root(lr)
  # huawei-noah/noah-research ROOT/examples/example_train.py, float64.
  w = {k: np.asarray(v, np.float64).T for k, v in params.items()}
  buf = {k: np.zeros_like(v) for k, v in w.items()}
  clipped = []
  for g in grads:
    for k in w:
      gk = g[k].T
      buf[k] = mu * buf[k] + gk
      u = gk + mu * buf[k]
      eps = np.quantile(np.abs(u), 0.9) + 1e-9
      b = u - np.sign(u) * np.maximum(np.abs(u) - eps, 0.0)
      clipped.append(np.mean(np.abs(u) > eps))
      o = _ns5(b)  # shapes outside ROOT's table: Muon's coefficients
      w[k] = w[k] * (1 - lr * wd)
      w[k] = w[k] - lr * 0.2 * math.sqrt(max(w[k].shape)) * o
  _assert_close(_run(tx, params, grads), {k: v.T for k, v in w.items()})
  assert 0.05 <= np.mean(clipped) <= 0.15


def test_root_uses_shape_keyed_coefficients():
  table = ortho_optax.COEFFICIENT_PRESETS["root"]
  assert table.resolve((3072, 2048)) == ((3.4509, -4.5790, 1.9325),)
  assert table.resolve((2048, 8192)) == ((2.9794, -3.6674, 1.6207),)
  assert table.resolve((6, 4)) == (MUON_ABC,)


def test_root_costs_what_muon_costs():
  """ROOT's Newton-Schulz takes the Gram form where Muon's does.

  The shape-keyed rows (2048 x 8192 here) are one row repeated five times,
  like Muon's, so the matmul FLOPs of a step are equal; the quantile is
  comparisons, not matmuls.
  """
  shapes = {"wide": (64, 256), "square": (96, 96), "keyed": (2048, 8192)}
  spec = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}
  flops = {}
  for name in ("root", "muon"):
    tx = getattr(ortho_optax, name)(1e-2)
    state = jax.eval_shape(tx.init, spec)
    flops[name] = ortho_optax.count_matmul_flops(tx.update, spec, state, spec)
  assert flops["root"] == flops["muon"], flops
  gram = ortho_optax.orthogonalize_flops(
      (2048, 8192), "gram_newton_schulz", coeffs="root", steps=5
  )
  assert gram < ortho_optax.orthogonalize_flops(
      (2048, 8192), "newton_schulz", coeffs="root", steps=5
  )
  assert flops["root"] == (
      gram
      + ortho_optax.orthogonalize_flops((64, 256), "auto", coeffs="root",
                                        normalization="frobenius")
      + ortho_optax.orthogonalize_flops((96, 96), "newton_schulz", steps=5)
  )


def test_root_gram_form_uses_keyed_rows():
  """A shape-keyed row through the Gram form: the standard form's result.

  ROOT's table is keyed by 2048-sided shapes; the same mechanism with a
  small key keeps the test fast.
  """
  row = (3.4509, -4.5790, 1.9325)  # ROOT's 2048 x 3072 row
  table = dataclasses.replace(
      ortho_optax.COEFFICIENT_PRESETS["root"], by_shape=(((32, 128), row),)
  )
  g = jnp.asarray(_normal(7, (128, 32)))
  opts = dict(coeffs=table, normalization="frobenius", eps=1e-7)
  assert ortho_optax.select_method(g.shape, **opts) == "gram_newton_schulz"
  auto = ortho_optax.orthogonalize(g, "auto", **opts)
  ref = _ns5(g, abc=row)
  np.testing.assert_allclose(auto, ref, atol=1e-4)
  # ... which is not Muon's row.
  assert np.max(np.abs(ref - _ns5(g))) > 1e-2


# -------------------------------------------------------------------- AuON


@pytest.mark.parametrize("hybrid_steps", [0, 1])
def test_auon_equals_reference(hybrid_steps):
  params, grads = _init(), _grads(SHAPES)
  lr, beta = 0.05, 0.95
  factory = ortho_optax.hybrid_auon if hybrid_steps else ortho_optax.auon
  tx = factory(lr)
  # ryyzn9/AuON Auon_Adam_train.py (gamma = 1), float64.
  w = {k: np.asarray(v, np.float64).T for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in w.items()}
  for g in grads:
    for k in w:
      gk = g[k].T
      m[k] = beta * m[k] + (1 - beta) * gk
      u = (1 - beta) * gk + beta * m[k]
      x = u / (np.linalg.norm(u) + 1e-7)
      if hybrid_steps:
        x = _ns5(x, steps=1, eps=0.0)  # x already has unit Frobenius norm
      r = np.sqrt(np.mean(np.cosh(x) ** 2))
      d = x / (r + 1e-8)
      rows, cols = w[k].shape
      w[k] = w[k] - lr * math.sqrt(max(1, rows / cols)) * d
  _assert_close(_run(tx, params, grads), {k: v.T for k, v in w.items()})


@pytest.mark.parametrize("gamma", [1.0, 1.5, 3.0])
@pytest.mark.parametrize("shape", [(2, 3), (8, 8), (30, 40)])
def test_auon_cosh_factor_in_bound(gamma, shape):
  n = shape[0] * shape[1]
  upper = math.sqrt(1 + math.sinh(gamma) ** 2 / n)
  one_hot = np.zeros(shape, np.float32)
  one_hot[0, 0] = 1.0  # attains the upper bound
  for x in (_normal(4, shape), _normal(5, shape) ** 3, one_hot):
    x = jnp.asarray(x / np.linalg.norm(x))
    out = ortho_optax.auon_orthogonalize(x, gamma=gamma, eps=0.0)
    r = float(jnp.linalg.norm(x) / jnp.linalg.norm(out)) - 1e-8
    assert 1.0 - 1e-6 <= r <= upper * (1 + 1e-6)
  np.testing.assert_allclose(r, upper, rtol=1e-5)  # the one-hot case


# -------------------------------------------------------- argument checks


_FACTORIES = {
    "normuon": ortho_optax.normuon,
    "adamuon": ortho_optax.adamuon,
    "root": ortho_optax.root,
    "auon": ortho_optax.auon,
    "hybrid_auon": ortho_optax.hybrid_auon,
    "scion": ortho_optax.scion,
    "trust_region": ortho_optax.trust_region,
}


@pytest.mark.parametrize("name", sorted(_FACTORIES))
def test_negative_learning_rate_raises(name):
  with pytest.raises(ValueError, match="`learning_rate`"):
    _FACTORIES[name](-0.1)


@pytest.mark.parametrize(
    "name, kwargs, arg",
    [
        ("normuon", dict(beta=1.0), "beta"),
        ("normuon", dict(beta2=-0.1), "beta2"),
        ("normuon", dict(rescale="l2"), "rescale"),
        ("normuon", dict(weight_decay=-1.0), "weight_decay"),
        ("adamuon", dict(beta=1.5), "beta"),
        ("adamuon", dict(method="svd"), "method"),
        ("root", dict(beta=1.0), "beta"),
        ("root", dict(q=1.5), "q"),
        ("auon", dict(beta=-0.5), "beta"),
        ("auon", dict(gamma=-1.0), "gamma"),
        ("hybrid_auon", dict(beta=1.0), "beta"),
        ("scion", dict(alpha=0.0), "alpha"),
        ("scion", dict(alpha=1.5), "alpha"),
        ("scion", dict(norms="l1"), "norms"),
        ("scion", dict(preset="vit"), "preset"),
        ("trust_region", dict(alpha=0.0), "alpha"),
        ("trust_region", dict(norm="nuclear"), "norm"),
        ("trust_region", dict(norm={"w": "spectral", "b": "l2"}), "norm"),
    ],
)
def test_bad_hyperparameters_raise(name, kwargs, arg):
  with pytest.raises(ValueError, match=f"`{arg}`"):
    _FACTORIES[name](0.01, **kwargs)


def test_scion_constrained_needs_lr_at_most_one():
  with pytest.raises(ValueError, match="`learning_rate`"):
    ortho_optax.scion(2.0)
  ortho_optax.scion(2.0, constrained=False)
