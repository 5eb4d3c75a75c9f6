"""Gradient projection for continual learning (GPM, ROGO): the bases tools,
the projection transform, its composition with the optimizers, the example."""

import os
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ortho_optax

# ------------------------------------------------------------ references


def _ref_first(r, threshold):
  """GPM's first-task basis, from the eigenvectors of R R^T (float64)."""
  lam, v = np.linalg.eigh(r @ r.T)
  lam, v = lam[::-1], v[:, ::-1]
  total = np.trace(r @ r.T)
  k = 0
  while k < len(lam) and lam[:k].sum() < threshold * total * (1 - 1e-12):
    k += 1
  k = min(k, int(np.sum(lam > lam[0] * 1e-12)))
  return v[:, :k]


def _ref_next(m, r, threshold):
  """GPM's later-task update: the residual's eigenvectors."""
  p = np.eye(len(r)) - m @ m.T
  c = p @ r @ r.T @ p
  lam, v = np.linalg.eigh(c)
  lam, v = lam[::-1], v[:, ::-1]
  total = np.sum(r * r)
  captured = np.sum((m.T @ r) ** 2)
  k = 0
  while k < len(lam) and (
      captured + lam[:k].sum() < threshold * total * (1 - 1e-12)
  ):
    k += 1
  k = min(k, int(np.sum(lam > max(lam[0], 0) * 1e-12)))
  return np.concatenate([m, v[:, :k]], axis=1)


def _projector(m):
  m = np.asarray(m, np.float64)
  return m @ m.T


def _low_rank(rng, d, n, rank, decay=0.6):
  u = np.linalg.qr(rng.standard_normal((d, rank)))[0]
  s = decay ** np.arange(rank)
  return (u * s) @ rng.standard_normal((rank, n))


# ---------------------------------------------------------- update_bases


@pytest.mark.parametrize("threshold", [0.5, 0.9, 0.99, 1.0])
def test_update_bases_matches_numpy(threshold):
  rng = np.random.default_rng(0)
  r1 = {"a": _low_rank(rng, 12, 30, 8), "b": rng.standard_normal((5, 9))}
  r2 = {"a": _low_rank(rng, 12, 30, 8), "b": rng.standard_normal((5, 9))}
  m1 = ortho_optax.update_bases(None, r1, threshold, dtype=jnp.float64)
  m2 = ortho_optax.update_bases(m1, r2, threshold, dtype=jnp.float64)
  for key in r1:
    want1 = _ref_first(r1[key], threshold)
    want2 = _ref_next(want1, r2[key], threshold)
    assert m1[key].shape == want1.shape, key
    assert m2[key].shape == want2.shape, key
    np.testing.assert_allclose(
        _projector(m1[key]), _projector(want1), atol=1e-9
    )
    np.testing.assert_allclose(
        _projector(m2[key]), _projector(want2), atol=1e-9
    )
    # Orthonormal, and the old basis is kept as it was.
    np.testing.assert_allclose(
        m2[key].T @ m2[key], np.eye(m2[key].shape[1]), atol=1e-12
    )
    np.testing.assert_array_equal(m2[key][:, : m1[key].shape[1]], m1[key])


def test_update_bases_cases():
  rng = np.random.default_rng(1)
  r = _low_rank(rng, 10, 20, 4)
  # Threshold 1: the whole span of the representation, exactly.
  m = ortho_optax.update_bases(None, {"w": r}, 1.0)["w"]
  assert m.dtype == jnp.float32 and m.shape == (10, 4)
  np.testing.assert_allclose(
      _projector(m) @ r, r, atol=1e-5 * np.abs(r).max()
  )
  # A representation in the span adds nothing; zero adds nothing.
  again = ortho_optax.update_bases({"w": m}, {"w": r @ rng.random((20, 7))},
                                   0.99)["w"]
  assert again.shape == (10, 4)
  zero = ortho_optax.update_bases(None, {"w": np.zeros((10, 5))}, 0.9)["w"]
  assert zero.shape == (10, 0)
  # Stacked layers: one basis each, padded with zero columns; per-leaf
  # thresholds and unprotected (None) leaves.
  stack = np.stack([_low_rank(rng, 10, 20, 2), _low_rank(rng, 10, 20, 5)])
  out = ortho_optax.update_bases(
      None, {"s": stack, "w": r, "head": None}, {"s": 1.0, "w": 0.5,
                                                "head": 0.9},
  )
  assert out["head"] is None
  assert out["s"].shape == (2, 10, 5)
  for i, rank in enumerate((2, 5)):
    np.testing.assert_allclose(
        _projector(out["s"][i]), _projector(_ref_first(stack[i], 1.0)),
        atol=1e-5,
    )
    assert int(np.sum(np.linalg.norm(out["s"][i], axis=0) > 0.5)) == rank
  np.testing.assert_allclose(
      _projector(out["w"]), _projector(_ref_first(r, 0.5)), atol=1e-5
  )
  # Padded (zero) columns of an input basis are dropped before the update.
  padded = ortho_optax.update_bases({"s": out["s"]}, {"s": stack}, 1.0)["s"]
  assert padded.shape == (2, 10, 5)


def test_update_bases_errors():
  r = {"w": np.ones((4, 3))}
  for bad in (0.0, 1.5, float("nan")):
    with pytest.raises(ValueError, match="threshold"):
      ortho_optax.update_bases(None, r, bad)
  with pytest.raises(ValueError, match=r"\['w'\].*not finite"):
    ortho_optax.update_bases(None, {"w": np.full((4, 3), np.nan)}, 0.9)
  with pytest.raises(ValueError, match=r"`bases` at \['w'\] has shape"):
    ortho_optax.update_bases({"w": np.zeros((5, 1))}, r, 0.9)


# ------------------------------------------------ representations, patches


def test_collect_representations_and_conv_patches():
  from flax import nnx

  rngs = nnx.Rngs(0)
  dense = nnx.Linear(6, 3, use_bias=False, rngs=rngs)
  x = jax.random.normal(jax.random.key(1), (10, 6))

  def fn(model, x):
    return {"kernel": x, "out": model(x)}

  reps = ortho_optax.collect_representations(fn, dense, x)
  np.testing.assert_array_equal(reps["kernel"], x.T)
  chunked = ortho_optax.collect_representations(fn, dense, x, batch_size=4)
  chex.assert_trees_all_close(chunked, reps, atol=1e-6)
  stacked = ortho_optax.collect_representations(
      lambda m, x: {"k": jnp.stack([x, 2 * x])}, dense, x, batch_ndim=1
  )
  assert stacked["k"].shape == (2, 6, 10)
  # A conv layer's representation: its HWIO kernel applied to the patches
  # is the convolution.
  for strides in (2,):  # stride 1: test_outputs_on_old_inputs_do_not_move
    conv = nnx.Conv(2, 4, (3, 3), strides=strides, use_bias=False,
                    rngs=rngs)
    img = jax.random.normal(jax.random.key(2), (3, 7, 7, 2))
    p = ortho_optax.conv_patches(img, (3, 3), strides=strides)
    k = conv.kernel[...]
    np.testing.assert_allclose(
        p @ k.reshape(-1, 4), conv(img), rtol=1e-5, atol=1e-5
    )


# ------------------------------------------------------------- projection


def _random_bases(rng, shape, k, batch=()):
  return jnp.asarray(
      np.linalg.qr(rng.standard_normal((*batch, shape, k)))[0], jnp.float32
  )


def _params():
  rng = np.random.default_rng(0)
  f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa
  return {
      "dense": {"kernel": f(12, 8), "bias": f(8)},
      "conv": {"kernel": f(3, 3, 2, 5)},
      "stack": {"kernel": f(3, 6, 4)},
      "head": {"kernel": f(8, 3)},
  }


def _bases(params):
  rng = np.random.default_rng(1)
  return {
      "dense": {"kernel": _random_bases(rng, 12, 4)},
      "conv": {"kernel": _random_bases(rng, 18, 6)},
      "stack": {"kernel": _random_bases(rng, 6, 2, (3,))},
  }


def _as_matrix(x, name):
  if name == "conv":
    return x.reshape(-1, x.shape[-1])
  return x


def test_projection_matches_numpy():
  params = _params()
  bases = _bases(params)
  grads = jax.tree.map(lambda p: p * 3 - 1, params)
  tx = ortho_optax.project_gradients(bases)
  out, _ = jax.jit(tx.update)(grads, tx.init(params))
  for name in ("dense", "conv", "stack"):
    g = np.asarray(_as_matrix(grads[name]["kernel"], name), np.float64)
    m = np.asarray(bases[name]["kernel"], np.float64)
    want = g - m @ (np.swapaxes(m, -1, -2) @ g)
    got = _as_matrix(out[name]["kernel"], name)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Unprotected leaves pass through; projecting twice changes nothing.
  chex.assert_trees_all_equal(out["head"], grads["head"])
  chex.assert_trees_all_equal(out["dense"]["bias"], grads["dense"]["bias"])
  twice, _ = tx.update(out, tx.init(params))
  chex.assert_trees_all_close(twice, out, atol=1e-5)
  # A shared basis for a stacked leaf is broadcast over its layers.
  shared = {"stack": {"kernel": bases["stack"]["kernel"][0]}}
  tx = ortho_optax.project_gradients(shared)
  out, _ = tx.update(grads, tx.init(params))
  m = np.asarray(shared["stack"]["kernel"], np.float64)
  g = np.asarray(grads["stack"]["kernel"], np.float64)
  np.testing.assert_allclose(
      out["stack"]["kernel"], g - m @ (m.T @ g), rtol=1e-5, atol=1e-5
  )


def _protected_fraction(bases, before, after):
  fracs = {}
  for name in bases:
    m = np.asarray(bases[name]["kernel"], np.float64)
    d = np.asarray(
        _as_matrix(after[name]["kernel"] - before[name]["kernel"], name),
        np.float64,
    )
    assert np.linalg.norm(d) > 0, name
    fracs[name] = np.linalg.norm(np.swapaxes(m, -1, -2) @ d) / np.linalg.norm(
        d
    )
  return fracs


def _run_steps(tx, params, steps=6):
  state = tx.init(params)
  update = jax.jit(tx.update)
  p = params
  for t in range(steps):
    g = jax.tree.map(
        lambda x, t=t: jnp.sin(x * (t + 1.0)) + 0.3 * x, p
    )
    u, state = update(g, state, p)
    p = optax.apply_updates(p, u)
  return p


OPTIMIZERS = {
    "adamw": lambda: optax.adamw(1e-2, weight_decay=0.1),
    "muon": lambda: ortho_optax.muon(2e-2, weight_decay=0.1),
    "adamuon": lambda: ortho_optax.adamuon(2e-2, weight_decay=0.1),
    "dion": lambda: ortho_optax.dion(2e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_protected_directions_get_no_update(name):
  """||M^T dW|| / ||dW|| <= 1e-5 (float32) after several steps, weight
  decay included; the unprotected part of the update is not zero."""
  params = _params()
  bases = _bases(params)
  tx = ortho_optax.with_gradient_projection(OPTIMIZERS[name](), bases)
  final = _run_steps(tx, params)
  for leaf, frac in _protected_fraction(bases, params, final).items():
    assert frac <= 1e-5, (name, leaf, frac)
  if name == "adamw":
    # Projecting only the final update protects as exactly.
    after = ortho_optax.with_gradient_projection(
        OPTIMIZERS[name](), bases, project_before=False
    )
    for leaf, frac in _protected_fraction(
        bases, params, _run_steps(after, params, steps=3)
    ).items():
      assert frac <= 1e-5, (leaf, frac)
    # Without the projection the protected directions do move.
    plain = _run_steps(OPTIMIZERS[name](), params, steps=2)
    assert max(_protected_fraction(bases, params, plain).values()) > 0.1


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    ["turbo_muon", "normuon", "root", "auon", "hybrid_auon", "scion",
     "trust_region", "dion2", "trion"],
)
def test_protected_directions_every_named_optimizer(name):
  params = _params()
  bases = _bases(params)
  lr = 2**-6 if name == "scion" else 1e-2
  tx = ortho_optax.with_gradient_projection(
      getattr(ortho_optax, name)(lr), bases
  )
  final = _run_steps(tx, params)
  for leaf, frac in _protected_fraction(bases, params, final).items():
    assert frac <= 1e-5, (name, leaf, frac)


def test_outputs_on_old_inputs_do_not_move():
  """Flax Dense and Conv layers trained on new data with muon: their outputs
  on the old inputs (spanned by the bases) stay the same up to rounding."""
  from flax import nnx

  class Net(nnx.Module):

    def __init__(self, rngs):
      self.conv = nnx.Conv(2, 4, (3, 3), use_bias=False, rngs=rngs)
      self.dense = nnx.Linear(6, 5, use_bias=False, rngs=rngs)

    def __call__(self, img, x):
      return self.conv(img), self.dense(x)

  model = Net(nnx.Rngs(0))
  key = jax.random.split(jax.random.key(0), 4)
  # Old inputs in a subspace: the images' second channel is a multiple of
  # the first, the vectors lie in a 3-D subspace of R^6.
  base = jax.random.normal(key[0], (4, 6, 6, 1))
  old_img = jnp.concatenate([base, -0.5 * base], -1)
  old_x = jax.random.normal(key[1], (20, 3)) @ jax.random.normal(
      key[2], (3, 6)
  )

  def inputs(model, batch):
    img, x = batch
    return {"conv": {"kernel": ortho_optax.conv_patches(img, (3, 3))},
            "dense": {"kernel": x}}

  reps = ortho_optax.collect_representations(inputs, model, (old_img, old_x))
  bases = ortho_optax.update_bases(None, reps, 1.0)
  assert bases["dense"]["kernel"].shape == (6, 3)
  before = model(old_img, old_x)
  optimizer = nnx.Optimizer(
      model, ortho_optax.with_gradient_projection(
          ortho_optax.muon(0.05, weight_decay=0.1), bases
      ), wrt=nnx.Param,
  )
  new_img = jax.random.normal(key[3], (4, 6, 6, 2))
  new_x = jax.random.normal(key[3], (20, 6))

  @nnx.jit
  def step(model, optimizer):
    def loss(model):
      a, b = model(new_img, new_x)
      return jnp.mean((a - 1.0) ** 2) + jnp.mean((b + 1.0) ** 2)

    optimizer.update(model, nnx.grad(loss)(model))

  new_before = model(new_img, new_x)
  for _ in range(5):
    step(model, optimizer)
  after = model(old_img, old_x)
  new_after = model(new_img, new_x)
  for a, b in zip(before, after):
    np.testing.assert_allclose(b, a, atol=2e-5 * float(jnp.abs(a).max()))
  # The layers did move on the new inputs.
  for a, b in zip(new_before, new_after):
    assert float(jnp.abs(a - b).max()) > 1e-2


# ------------------------------------------------------------------ ROGO


def _ref_relaxing(m, g, threshold, tau):
  """ROGO's reference search, one direction at a time (re-derived)."""
  u, s, _ = np.linalg.svd(g, full_matrices=False)
  e = s**2
  r = 1
  while e[:r].sum() < threshold * e.sum():
    r += 1
  uu = u[:, :r] @ u[:, :r].T
  frozen, found = m.copy(), []
  while frozen.shape[1]:
    lam, x = np.linalg.eigh(frozen.T @ uu @ frozen)
    v = frozen @ x[:, -1]
    v /= np.linalg.norm(v)
    if np.linalg.norm(uu @ v) < tau:
      break
    found.append(v)
    q, _ = np.linalg.qr(np.concatenate([v[:, None], frozen], axis=1))
    frozen = q[:, 1 : frozen.shape[1]]
  return np.stack(found, axis=1) if found else np.zeros((len(m), 0))


def test_relaxing_bases_matches_reference_search():
  rng = np.random.default_rng(3)
  m = np.linalg.qr(rng.standard_normal((10, 6)))[0]
  # A gradient whose input space overlaps the frozen span in 2 directions.
  shared = m[:, :2] @ rng.standard_normal((2, 7))
  g = shared * 3 + 0.05 * rng.standard_normal((10, 7))
  got = ortho_optax.relaxing_bases({"w": m}, {"w": g}, threshold=0.97,
                                   relax_threshold=0.9, dtype=jnp.float64)
  want = _ref_relaxing(m, g, 0.97, 0.9)
  assert got["w"].shape == want.shape and want.shape[1] >= 1
  np.testing.assert_allclose(_projector(got["w"]), _projector(want),
                             atol=1e-8)
  # Searching again in the rest of the frozen space keeps the old ones.
  again = ortho_optax.relaxing_bases({"w": m}, {"w": g}, relaxed=got,
                                     dtype=jnp.float64)["w"]
  np.testing.assert_array_equal(again[:, : want.shape[1]], got["w"])
  # Nothing aligned: nothing relaxed.
  none = ortho_optax.relaxing_bases(
      {"w": m}, {"w": (np.eye(10) - m @ m.T) @ g}
  )
  assert none["w"].shape == (10, 0)


def test_rogo_relaxed_projection():
  """The relaxed update: exactly zero along the frozen directions that are
  not relaxed, of the restricted form S A S^T W along the relaxed ones, and
  its interference with old inputs within the bound."""
  rng = np.random.default_rng(4)
  k = jnp.asarray(rng.standard_normal((10, 7)), jnp.float32)
  params = {"w": k}
  m = np.linalg.qr(rng.standard_normal((10, 5)))[0]
  s = m[:, :2] @ np.linalg.qr(rng.standard_normal((2, 2)))[0]
  bases = {"w": jnp.asarray(m, jnp.float32)}
  relax = {"w": jnp.asarray(s, jnp.float32)}
  tx = ortho_optax.project_gradients(bases, relax=relax)
  g = {"w": jnp.asarray(rng.standard_normal((10, 7)), jnp.float32)}
  out, _ = tx.update(g, tx.init(params), params)
  u = np.asarray(out["w"], np.float64)
  b = s.T @ np.asarray(k, np.float64)
  p_b = np.linalg.pinv(b) @ b
  rest = m[:, 2:]
  want = (np.eye(10) - m @ m.T) @ g["w"] + s @ (s.T @ g["w"]) @ p_b
  np.testing.assert_allclose(u, want, atol=1e-5)
  assert np.linalg.norm(rest.T @ u) <= 1e-5 * np.linalg.norm(u)
  assert np.linalg.norm(s.T @ u) > 0.1 * np.linalg.norm(u)
  # Several steps of muon: the same properties of the total change, and the
  # interference bound on old inputs X in the span of M.
  chain = ortho_optax.with_gradient_projection(
      ortho_optax.muon(0.05, weight_decay=0.1), bases, relax=relax
  )
  final = _run_steps(chain, params)
  d = np.asarray(final["w"] - k, np.float64)
  assert np.linalg.norm(rest.T @ d) <= 1e-5 * np.linalg.norm(d)
  # Row space of S^T dW inside the (moving) row space of S^T W: compare
  # with the final weights' (the relaxed rows only recombine).
  b_final = s.T @ np.asarray(final["w"], np.float64)
  span = np.linalg.pinv(b_final) @ b_final
  np.testing.assert_allclose(
      s.T @ d @ span, s.T @ d, atol=1e-4 * np.abs(s.T @ d).max()
  )
  x_old = m @ rng.standard_normal((5, 30))
  interference = np.linalg.norm(d.T @ x_old)
  bound = np.linalg.norm(s.T @ d, 2) * np.linalg.norm(s.T @ x_old)
  assert 0 < interference <= bound * (1 + 1e-5)


# ------------------------------------------------ properties in a chain


def _chain(params):
  return ortho_optax.with_gradient_projection(
      ortho_optax.muon(1e-2), _bases(params)
  )


def test_chain_jit_inject_orbax_and_wrappers():
  import orbax.checkpoint as ocp

  params = _params()
  bases = _bases(params)
  tx = _chain(params)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(p, state, g):
    return tx.update(g, state, p)

  state = tx.init(params)
  updates = []
  for t in range(3):
    u, state = step(params, state, jax.tree.map(lambda x, t=t: x + t, params))
    updates.append(u)
  # inject_hyperparams inside the chain: the same updates.
  injected = ortho_optax.with_gradient_projection(
      optax.inject_hyperparams(ortho_optax.muon)(learning_rate=1e-2), bases
  )
  s2 = injected.init(params)
  for t in range(3):
    u, s2 = jax.jit(injected.update)(
        jax.tree.map(lambda x, t=t: x + t, params), s2, params
    )
    chex.assert_trees_all_close(u, updates[t], rtol=1e-5, atol=1e-6)
  assert "learning_rate" in s2[1].hyperparams
  # MultiSteps and apply_if_finite around a chain (of AdamW: cheaper to
  # compile, the wrappers only see the chain).
  tx_adamw = ortho_optax.with_gradient_projection(optax.adamw(1e-2), bases)
  multi = optax.MultiSteps(tx_adamw, every_k_schedule=2)
  u, _ = jax.jit(multi.update)(params, multi.init(params), params)
  chex.assert_trees_all_equal(u, jax.tree.map(jnp.zeros_like, params))
  finite = optax.apply_if_finite(tx_adamw, 2)
  nan = jax.tree.map(lambda x: x * jnp.nan, params)
  u, fs = jax.jit(finite.update)(nan, finite.init(params), params)
  chex.assert_tree_all_finite(u)
  assert int(fs.notfinite_count) == 1
  # Orbax: the state and the bases (saved with the checkpoint, None leaves
  # included) round trip, with a target or without one (the bases' ranks
  # change from task to task).
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "ckpt")
    tree = {"state": state, "bases": dict(bases, head={"kernel": None})}
    with ocp.StandardCheckpointer() as ckpt:
      ckpt.save(path, tree)
      ckpt.wait_until_finished()
      target = jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
      restored = ckpt.restore(path, target)
      untargeted = ckpt.restore(path)
  chex.assert_trees_all_equal(restored, tree)
  chex.assert_trees_all_equal(untargeted["bases"], tree["bases"])
  g = jax.tree.map(lambda x: x * 2, params)
  chex.assert_trees_all_close(
      step(params, restored["state"], g), step(params, state, g), atol=1e-6
  )


def test_chain_explicit_mesh_zero_size_and_none_leaves():
  mesh = jax.make_mesh(
      (jax.device_count(),), ("x",),
      axis_types=(jax.sharding.AxisType.Explicit,),
  )
  rng = np.random.default_rng(0)
  bases = {"w": _random_bases(rng, 16, 4), "empty": jnp.zeros((0, 0))}
  tx = ortho_optax.with_gradient_projection(ortho_optax.muon(1e-2), bases)
  with jax.set_mesh(mesh):
    params = {
        "w": jnp.ones(
            (16, 8), jnp.float32,
            out_sharding=jax.NamedSharding(mesh, jax.P("x", None)),
        ),
        "empty": jnp.zeros((0, 5)),
        "frozen": None,
    }
    state = tx.init(params)
    grads = jax.tree.map(lambda p: p + 1, params)
    updates, new_state = jax.jit(tx.update)(grads, state, params)
    assert jax.typeof(updates["w"]) == jax.typeof(params["w"])
    assert jax.tree.map(jax.typeof, new_state) == jax.tree.map(
        jax.typeof, state
    )
  assert updates["frozen"] is None
  assert updates["empty"].shape == (0, 5)
  m = np.asarray(bases["w"], np.float64)
  assert np.linalg.norm(m.T @ np.asarray(updates["w"])) <= 1e-5 * (
      np.linalg.norm(np.asarray(updates["w"]))
  )


def test_nnx_state_matches_plain_dict_bases():
  from flax import nnx

  model = nnx.Linear(6, 4, use_bias=False, rngs=nnx.Rngs(0))
  m = _random_bases(np.random.default_rng(0), 6, 2)
  tx = ortho_optax.with_gradient_projection(
      ortho_optax.muon(0.05), {"kernel": m}
  )
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  before = model.kernel[...]
  x = jnp.ones((3, 6))
  grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
  optimizer.update(model, grads)
  d = np.asarray(model.kernel[...] - before)
  assert np.linalg.norm(d) > 0
  assert np.linalg.norm(np.asarray(m).T @ d) <= 1e-5 * np.linalg.norm(d)


# ---------------------------------------------------------------- errors


def test_bad_bases_raise_at_init():
  params = _params()
  good = np.linalg.qr(np.random.default_rng(0).standard_normal((12, 3)))[0]
  cases = {
      "wrong fan-in": ({"dense": {"kernel": jnp.zeros((8, 2))}},
                       r"\['dense'\]\['kernel'\].*\(8, 2\).*\(12, k\)"),
      "non-orthonormal": ({"dense": {"kernel": jnp.ones((12, 2))}},
                          r"\['dense'\]\['kernel'\].*orthonormal"),
      "nan": ({"dense": {"kernel": jnp.full((12, 2), jnp.nan)}},
              r"\['dense'\]\['kernel'\].*not finite"),
      "too many columns": ({"head": {"kernel": jnp.zeros((8, 9))}},
                           "more than the fan-in"),
      "not a leaf": ({"nope": {"kernel": jnp.asarray(good)}},
                     r"\['nope'\]\['kernel'\].*not leaves"),
      "a bias": ({"dense": {"bias": jnp.ones((8, 1)) / 8**0.5}},
                 r"\['dense'\]\['bias'\].*not a matrix"),
      "batch": ({"stack": {"kernel": jnp.zeros((2, 6, 1))}},
                r"\(3, 6, k\)"),
  }
  for label, (bases, pattern) in cases.items():
    tx = ortho_optax.project_gradients(bases)
    with pytest.raises(ValueError, match=pattern):
      tx.init(params)
    del label
  with pytest.raises(TypeError, match="dtype int32"):
    ortho_optax.project_gradients(
        {"dense": {"kernel": jnp.zeros((12, 2), jnp.int32)}}
    ).init(params)
  # ROGO: a relaxing basis outside the frozen span, or without params.
  m = {"dense": {"kernel": jnp.asarray(good, jnp.float32)}}
  outside = np.eye(12)[:, :1] - good @ (good.T @ np.eye(12)[:, :1])
  outside /= np.linalg.norm(outside)
  tx = ortho_optax.project_gradients(
      m, relax={"dense": {"kernel": jnp.asarray(outside, jnp.float32)}}
  )
  with pytest.raises(ValueError, match="not inside the span"):
    tx.init(params)
  with pytest.raises(ValueError, match="relax.*has a basis.*none there"):
    ortho_optax.project_gradients({}, relax=m)
  tx = ortho_optax.project_gradients(m, relax=m)
  with pytest.raises(ValueError, match="needs `params`"):
    tx.update(params, tx.init(params))
  with pytest.raises(TypeError, match="GradientTransformation"):
    ortho_optax.with_gradient_projection(lambda g: g, m)


# ---------------------------------------------------------------- example


def _example_smoke(tmp_path, benchmarks):
  from configs import continual_digits
  from examples import continual

  config = continual_digits.get_config()
  config.seeds = (0,)
  config.benchmarks = benchmarks
  # muon's composition is tested above; AdamW compiles faster.
  config.optimizers = ("adamw",)
  config.num_tasks = 2
  config.hidden = 16
  config.epochs = {"split": 1, "permuted": 1}
  config.learning_rate.adamw = 1e-2
  config.representation_samples = 50
  config.gradient_samples = 20
  config.plot = False
  results = continual.run_all(config, str(tmp_path))
  for key, runs in results.items():
    acc = np.asarray(runs[0]["acc"])
    assert acc.shape == (2, 2), key
    # Each task is learned (chance: 0.5 split, 0.1 permuted).
    assert np.all(np.diag(acc) > 0.6), (key, acc)
  assert (tmp_path / "continual.md").exists()
  gpm = results["permuted/adamw/gpm"][0]
  assert gpm["ranks"][0]["['hidden_0']['kernel']"] > 0
  assert gpm["ranks"][0]["['head']"] > 0


def test_continual_example_smoke(tmp_path):
  """Permuted digits: a protected shared head, every method."""
  _example_smoke(tmp_path, ("permuted",))


@pytest.mark.slow
def test_continual_example_smoke_both_sequences(tmp_path):
  """Split digits too: one head per task."""
  _example_smoke(tmp_path, ("split", "permuted"))
