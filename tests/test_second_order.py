"""Shampoo and SOAP: state, fallbacks, quantized eigenvectors, sharding.

Their update rules are checked against float64 re-derivations in
``parity_second_order_test.py``; the named optimizers' common properties in
``common_test.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import ortho_optax
from ortho_optax.engines import matrix_roots
from ortho_optax.parallel import hlo
from ortho_optax.state import quantized
from ortho_optax.transforms import kronecker
from ortho_optax.transforms import soap

TRANSFORMS = {
    "shampoo": ortho_optax.scale_by_shampoo,
    "soap": ortho_optax.scale_by_soap,
}
BASES = {"shampoo": ("root_left", "root_right"), "soap": ("q_left", "q_right")}


def _normal(seed, shape, scale=1.0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)


def _statistic(n, seed=0):
  """An EMA of ``G G^T`` over 20 gradients with a decaying spectrum."""
  rng = np.random.default_rng(seed)
  gs = rng.standard_normal((20, n, 2 * n)) * np.linspace(1, 0.05, n)[:, None]
  return sum(0.95 ** (20 - i) * g @ g.T for i, g in enumerate(gs))


@pytest.mark.parametrize(
    "code, steps, tol",
    # Measured at n = 64 (and 16, 256): q8 8e-4 with one step; q4 1.3e-1
    # raw, 2.4e-2 - 4.6e-2 after one step, 1.0e-2 after two.
    [pytest.param("q8", 1, 2e-3, marks=pytest.mark.slow), ("q4", 1, 6e-2),
     pytest.param("q4", 2, 2e-2, marks=pytest.mark.slow)],
)
def test_quantized_eigenvectors_after_bjorck_give_float32_roots(
    code, steps, tol
):
  """4-bit Shampoo: the inverse 4th root rebuilt from quantized
  eigenvectors (float32 eigenvalues) after Björck steps is close to the
  float32 one, and much closer than without the steps."""
  a = _statistic(64)
  lam, u = matrix_roots.eigh(jnp.asarray(a, jnp.float32))
  exact = np.linalg.eigh(a)
  ref = (exact[1] * (exact[0] + 1e-6 * exact[0].max()) ** -0.25) @ exact[1].T
  ud = quantized.dequantize(quantized.quantize(u, code), jnp.float32)

  def err(basis):
    root = matrix_roots.root_from_eigh(lam, basis, 4, 1e-6)
    return np.linalg.norm(np.asarray(root, np.float64) - ref) / (
        np.linalg.norm(ref)
    )

  rectified = err(matrix_roots.bjorck(ud, steps))
  assert rectified < tol
  assert err(u) < 1e-4  # the float32 root itself
  assert err(ud) > 2.5 * rectified  # the steps do the work


def _tree():
  return {
      "dense": _normal(0, (16, 24), 0.5),
      "stacked": _normal(1, (2, 8, 8), 0.5),
      "bias": jnp.zeros(8),
  }


def _grads(steps, seed=10):
  return [
      jax.tree.map(lambda x, i=i: _normal(seed + i, x.shape), _tree())
      for i in range(steps)
  ]


def _run(tx, grads, params=None):
  params = _tree() if params is None else params
  state = tx.init(params)
  step = jax.jit(tx.update)
  for g in grads:
    u, state = step(g, state, params)
    params = optax.apply_updates(params, u)
  return params, state


def _precond_bytes(state, fields):
  return sum(
      x.size * x.dtype.itemsize
      for f in fields
      for x in jax.tree.leaves(getattr(state, f))
  )


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_quantized_state_layout_and_size(name):
  """Eigenvectors as codes; Shampoo's eigenvalues in float32, SOAP's
  statistic in its basis as a float32 diagonal and an 8-bit normalized
  off-diagonal: the 4-bit preconditioner state is below 0.2x the float32
  one."""
  params = {"w": jnp.zeros((64, 128))}
  fields = ("left", "right") + BASES[name]
  sizes = {}
  for code in (None, "q8", "q4"):
    # Shapes only (no quantization is run).
    state = jax.eval_shape(TRANSFORMS[name](precond_dtype=code).init, params)
    sizes[code] = _precond_bytes(state, fields)
    if code is not None:
      basis = getattr(state, BASES[name][0])["w"]
      assert isinstance(basis, quantized.QuantizedArray), basis
      assert basis.shape == (1, 64, 64)
      left = state.left["w"]
      if name == "soap":
        assert isinstance(left, soap.QuantizedStatistic), left
        assert left.correlation.shape == (1, 64, 64)
        assert left.correlation.code == "q8"
        left = left.diagonal
      assert left.shape == (1, 64)
      assert left.dtype == jnp.float32
  assert sizes["q8"] < (0.3 if name == "shampoo" else 0.26) * sizes[None], sizes
  assert sizes["q4"] < 0.2 * sizes[None], sizes


def _soap_statistics(state, bjorck_steps):
  """Quantized SOAP's float statistics :math:`\\hat Q^{-H} S \\hat Q^{-1}`
  of the ``"w"`` leaf, float64 (left, right)."""
  out = []
  for stat, basis in ((state.left, state.q_left), (state.right, state.q_right)):
    q = np.asarray(kronecker.load_basis(
        basis, bjorck_steps)["w"][0], np.float64)
    d = np.asarray(stat["w"].diagonal[0], np.float64)
    c = np.asarray(quantized.dequantize(stat["w"].correlation)[0], np.float64)
    s = c * np.sqrt(np.outer(d, d)) + np.diag(d)
    qi = np.linalg.inv(q)
    out.append(qi.T @ s @ qi)
  return out


@pytest.mark.parametrize(
    "code, bjorck_steps",
    [("q4", 1), pytest.param("q8", 1, marks=pytest.mark.slow),
     pytest.param("q4", 2, marks=pytest.mark.slow)],
)
def test_quantized_soap_statistics_take_every_gradient(code, bjorck_steps):
  """Quantized SOAP keeps SOAP's statistics, :math:`L \\leftarrow \\beta L
  + (1 - \\beta) G G^T` every step (not at the refreshes only), in its
  stored basis: read back, they are the float64 EMA of every gradient up to
  the 8-bit rounding of their normalized off-diagonal, between refreshes
  and across them (the basis' 4-bit rounding does not enter them). Measured
  relative error over 12 steps: 1.4e-2 (q4 and q8, one Björck step or
  two); before, with the statistics updated from the refresh steps'
  gradients only, the state held eigenvalues only."""
  rng = np.random.default_rng(0)
  m, n = 16, 24
  tx = ortho_optax.scale_by_soap(
      precond_dtype=code, precondition_every=5, precondition_warmup=0,
      bjorck_steps=bjorck_steps,
  )
  state = tx.init({"w": jnp.zeros((m, n))})
  step = jax.jit(tx.update)
  ref = [np.zeros((m, m)), np.zeros((n, n))]
  for _ in range(12):
    g = rng.standard_normal((m, n)) * np.linspace(1, 0.1, m)[:, None]
    _, state = step({"w": jnp.asarray(g, jnp.float32)}, state)
    ref = [0.95 * ref[0] + 0.05 * g @ g.T, 0.95 * ref[1] + 0.05 * g.T @ g]
    for ours, theirs in zip(_soap_statistics(state, bjorck_steps), ref):
      err = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
      assert err < 3e-2, err


@pytest.mark.parametrize(
    "code, floor", [("q8", 0.97), pytest.param("q4", 0.88, marks=pytest.mark.slow)]
)
def test_quantized_soap_tracks_float32_updates(code, floor):
  """On one stream of gradients (anisotropic, a drifting mean), quantized
  SOAP's updates point where float32 SOAP's do. Mean cosine over 80 steps
  at the default period 10, measured: q8 0.99, q4 0.93; before (statistics
  from the refresh steps' gradients only) q8 0.89, q4 0.84."""
  rng = np.random.default_rng(0)
  m, n = 32, 64
  a = np.linalg.qr(rng.standard_normal((m, m)))[0] * np.exp(-np.arange(m) / 12)
  b = np.linalg.qr(rng.standard_normal((n, n)))[0] * np.exp(-np.arange(n) / 24)
  mean = rng.standard_normal((m, n))
  grads = []
  for _ in range(80):
    mean = 0.99 * mean + 0.14 * rng.standard_normal((m, n))
    grads.append(a @ (mean + rng.standard_normal((m, n))) @ b.T)

  def updates(precond_dtype):
    tx = ortho_optax.scale_by_soap(precond_dtype=precond_dtype)
    state = tx.init({"w": jnp.zeros((m, n))})
    step = jax.jit(tx.update)
    out = []
    for g in grads:
      u, state = step({"w": jnp.asarray(g, jnp.float32)}, state)
      out.append(np.asarray(u["w"], np.float64).ravel())
    return np.array(out[1:])

  ref, got = updates(None), updates(code)
  cos = np.sum(ref * got, 1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(
      got, axis=1
  )
  assert np.mean(cos) > floor, np.mean(cos)


@pytest.mark.parametrize("name", list(TRANSFORMS))
@pytest.mark.parametrize("every, warmup, refreshed", [
    (10, 3, (1, 2, 3, 11, 21)),
    (3, 0, (1, 4, 7, 10, 13, 16, 19)),
    (4, 6, (1, 2, 3, 4, 5, 6, 9, 13, 17, 21)),
])
def test_refreshes_each_warmup_step_then_every_period(
    name, every, warmup, refreshed
):
  """``precondition_warmup``: the bases (SOAP) or roots (Shampoo) change
  at each of the first calls, then every ``precondition_every``-th call
  from the first on, and only then."""
  tx = TRANSFORMS[name](
      b2=0.5, precondition_every=every, precondition_warmup=warmup
  )
  params = {"w": jnp.zeros((5, 7))}
  state = tx.init(params)
  step = jax.jit(tx.update)
  changed = []
  for t in range(1, 22):
    old = np.asarray(getattr(state, BASES[name][0])["w"])
    _, state = step({"w": _normal(t, (5, 7))}, state)
    if not np.array_equal(old, np.asarray(getattr(state, BASES[name][0])["w"])):
      changed.append(t)
  assert tuple(changed) == refreshed


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_quantized_codes_change_on_refresh_steps_only(name):
  tx = TRANSFORMS[name](
      precond_dtype="q4", precondition_every=3, precondition_warmup=0
  )
  params = _tree()
  state = tx.init(params)
  step = jax.jit(tx.update)
  codes = []
  for g in _grads(5):
    _, state = step(g, state, params)
    codes.append(np.asarray(getattr(state, BASES[name][0])["dense"].codes))
  # Refreshes at steps 1 and 4 (count - 1 divisible by 3).
  assert np.array_equal(codes[0], codes[1])
  assert np.array_equal(codes[1], codes[2])
  assert not np.array_equal(codes[2], codes[3])


@pytest.mark.slow
@pytest.mark.parametrize("code, tol", [("q8", 0.006), ("q4", 0.08)])
def test_quantized_shampoo_tracks_float32(code, tol):
  """Refreshed every step, the quantized preconditioner updates its
  statistics every step too: the trajectory stays near float32's
  (measured relative displacement error over 8 steps: q8 1.9e-3, q4
  2.7e-2, the same with one Björck step or two)."""
  grads = _grads(8)
  kw = dict(b2=0.95, precondition_every=1, bjorck_steps=2)
  start = _tree()
  ref, _ = _run(optax.chain(ortho_optax.scale_by_shampoo(**kw),
                            optax.scale(-0.01)), grads)
  out, _ = _run(optax.chain(
      ortho_optax.scale_by_shampoo(precond_dtype=code, **kw),
      optax.scale(-0.01)), grads)
  for k in ("dense", "stacked"):
    moved = np.linalg.norm(np.asarray(ref[k]) - np.asarray(start[k]))
    err = np.linalg.norm(np.asarray(out[k]) - np.asarray(ref[k])) / moved
    assert err < tol, (k, err)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_quantized_optimizers_train(name):
  """A least-squares problem: the quantized named optimizers reach about
  the float32 loss."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((64, 16)), jnp.float32)
  w_true = jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)
  y = x @ w_true

  def loss(p):
    return jnp.mean((x @ p["w"] - y) ** 2)

  def train(precond_dtype):
    tx = getattr(ortho_optax, name)(0.05, precond_dtype=precond_dtype,
                                    precondition_every=5)
    p = {"w": jnp.zeros((16, 8))}
    state = tx.init(p)

    @jax.jit
    def step(p, state):
      g = jax.grad(loss)(p)
      u, state = tx.update(g, state, p)
      return optax.apply_updates(p, u), state

    for _ in range(100):
      p, state = step(p, state)
    return float(loss(p))

  start = float(loss({"w": jnp.zeros((16, 8))}))
  full = train(None)
  q4 = train("q4")
  assert full < 0.05 * start
  # Measured (float32, q4): SOAP 0.107, 0.409; Shampoo 1e-4, 2e-4 from 14.6.
  assert q4 < max(5 * full, 0.05 * start), (full, q4)


def test_sides_above_max_precond_dim_fall_back():
  """Both sides above the bound: Shampoo's update is its Adam graft
  (with b1 = 0, ``g / (|g| + eps)`` at step 1) and SOAP is Adam."""
  g = {"w": _normal(3, (4, 6))}
  tx = ortho_optax.scale_by_shampoo(b1=0.0, max_precond_dim=3)
  state = tx.init(g)
  assert state.left["w"].shape == (1, 0, 0)
  u, _ = tx.update(g, state)
  np.testing.assert_allclose(
      u["w"], g["w"] / (jnp.abs(g["w"]) + 1e-8), rtol=1e-5
  )
  # Before start_preconditioning_step, Shampoo's update is the graft too.
  late = ortho_optax.scale_by_shampoo(start_preconditioning_step=3)
  diagonal = ortho_optax.scale_by_shampoo(max_precond_dim=3)
  s1, s2 = late.init(g), diagonal.init(g)
  for i in range(3):
    gi = {"w": _normal(30 + i, (4, 6))}
    u1, s1 = late.update(gi, s1)
    u2, s2 = diagonal.update(gi, s2)
    same = np.allclose(u1["w"], u2["w"], rtol=1e-6, atol=1e-7)
    assert same == (i < 2), i
  soap = ortho_optax.scale_by_soap(b1=0.9, b2=0.95, max_precond_dim=3)
  adam = optax.scale_by_adam(b1=0.9, b2=0.95, eps=0.0)
  s, a = soap.init(g), adam.init(g)
  _, s = soap.update(g, s)  # SOAP's first step only initializes
  for i in range(3):
    gi = {"w": _normal(20 + i, (4, 6))}
    us, s = soap.update(gi, s)
    ua, a = adam.update(gi, a)
    np.testing.assert_allclose(us["w"], ua["w"], rtol=1e-4)


@pytest.mark.slow
def test_one_sided_shampoo_uses_the_square_root():
  """One side preconditioned: p = 2, and with b2 = 0 and no graft the
  step is (G G^T)^{-1/2} G, the polar factor again."""
  g = _normal(4, (4, 40))
  tx = ortho_optax.scale_by_shampoo(
      b1=0.0, b2=0.0, eps=0.0, graft=None, max_precond_dim=8
  )
  state = tx.init({"w": g})
  assert state.right["w"].shape == (1, 0, 0)
  u, _ = tx.update({"w": g}, state)
  us, _, vts = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
  np.testing.assert_allclose(u["w"], us @ vts, atol=1e-4)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_argument_errors(name):
  tx = TRANSFORMS[name]
  with pytest.raises(ValueError, match="precondition_every"):
    tx(precondition_every=0)
  with pytest.raises(TypeError, match="static_args"):
    tx(precondition_every=jnp.asarray(3))
  with pytest.raises(TypeError, match="max_precond_dim"):
    tx(max_precond_dim=1.5)
  with pytest.raises(TypeError, match="precond_dtype"):
    tx(precond_dtype="int8")
  with pytest.raises(ValueError, match="b2"):
    tx(b2=1.0)
  with pytest.raises(TypeError, match="precond_dtype"):
    tx(precond_dtype="q4").init({"w": jnp.zeros((4, 4), jnp.complex64)})
  if name == "shampoo":
    with pytest.raises(ValueError, match="root_method"):
      tx(root_method="svd")
    with pytest.raises(ValueError, match="graft"):
      tx(graft="sgd")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_zero_and_tiny_gradients_stay_finite(name):
  tx = TRANSFORMS[name](precondition_every=2)
  params = {"w": jnp.zeros((6, 10))}
  state = tx.init(params)
  step = jax.jit(tx.update)
  for scale in (0.0, 1e-30, 1e10, 0.0):
    u, state = step({"w": _normal(5, (6, 10), scale)}, state)
    assert np.all(np.isfinite(np.asarray(u["w"]))), scale
    assert all(
        np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state)
    ), scale


def _mesh():
  return jax.make_mesh(
      (2, 4), ("fsdp", "model"), axis_types=(AxisType.Explicit,) * 2
  )


def _sharded_tree(shapes, seed, mesh):
  keys = jax.random.split(jax.random.key(seed), len(shapes))
  tree = {
      f"layer{i}": jax.random.normal(keys[i], shape)
      for i, shape in enumerate(shapes)
  }
  local = jax.device_put(tree, jax.devices()[0])
  sharded = jax.tree.map(
      lambda x: jax.device_put(x, NamedSharding(mesh, P("fsdp", "model"))),
      tree,
  )
  return local, sharded


@pytest.mark.parametrize(
    "name, code",
    [("shampoo", None), pytest.param("soap", None, marks=pytest.mark.slow),
     pytest.param("soap", "q4", marks=pytest.mark.slow)],
)
def test_distribute_matches_single_device(name, code):
  """``sharding="distribute"``: each matrix's eigh / roots / QR run on one
  of the 8 devices; updates and state equal the single-device ones, and
  keep the shardings and types ``init`` gave them."""
  mesh = _mesh()
  if name == "soap":
    # Square: a long side's statistic has a null space after one step,
    # whose eigh basis is arbitrary, and SOAP's Adam depends on it.
    shapes, kw = [(8, 8), (16, 16)] * 2 + [(8, 8)], {}
    if code is not None:
      kw["precond_dtype"] = code
  else:
    # eps 1e-2: with 1e-6, the roots on the long side's null space (31x
    # the others) follow the float32 round-off of its zero eigenvalues,
    # which depends on the order of the sums (0.6% apart after one step).
    # Three matrices over two steps (a refresh, then none) keep it cheap.
    shapes, kw = [(8, 16), (16, 8), (8, 16)], {"eps": 1e-2}
  seeds = (0, 1, 2) if name == "soap" else (0, 1)
  trees = [_sharded_tree(shapes, seed, mesh) for seed in seeds]
  kw["precondition_warmup"] = 0
  single = TRANSFORMS[name](precondition_every=2, **kw)
  dist = TRANSFORMS[name](precondition_every=2, sharding="distribute", **kw)
  s1 = single.init(trees[0][0])
  s2 = dist.init(trees[0][1])
  init_types = jax.tree.map(jax.typeof, s2)
  step1, step2 = jax.jit(single.update), jax.jit(dist.update)
  for local, sharded in trees:
    u1, s1 = step1(local, s1)
    u2, s2 = step2(sharded, s2)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5
        ),
        u2, u1,
    )
    for k in u2:
      assert jax.typeof(u2[k]).sharding.spec == P("fsdp", "model")
  assert jax.tree.map(jax.typeof, s2) == init_types


@pytest.mark.parametrize(
    "name, kw, targets",
    [
        pytest.param("shampoo", {}, ("lapack_ssyevd_ffi",), id="shampoo"),
        # The power-iteration refresh (and, in the first step's branch, eigh).
        pytest.param(
            "soap", {}, ("lapack_sgeqrf_ffi", "lapack_ssyevd_ffi"), id="soap"
        ),
        pytest.param(
            "shampoo", {"precond_dtype": "q8"}, ("lapack_ssyevd_ffi",),
            marks=pytest.mark.slow, id="shampoo-q8",
        ),
    ],
)
def test_distribute_runs_each_matrix_on_one_device(name, kw, targets):
  """With ``sharding="distribute"`` each device factors 1/8 of the
  matrices (8 per side on 8 devices: one each), where ``"gather"`` factors
  all of them on every device; read from the compiled per-device program
  (LAPACK calls, loops times trip counts; matmul FLOPs)."""
  mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Explicit,))
  # A stacked (layers, in, out) leaf: 8 matrices.
  params = {
      "w": jax.device_put(
          _normal(0, (8, 16, 24)), NamedSharding(mesh, P(None, "fsdp"))
      )
  }
  out = {}
  for strategy in ("gather", "distribute"):
    tx = TRANSFORMS[name](precondition_every=1, sharding=strategy, **kw)
    state = tx.init(params)
    text = jax.jit(tx.update).lower(params, state).compile().as_text()
    out[strategy] = (
        hlo.custom_calls(text),
        ortho_optax.compiled_matmul_flops(text),
    )
  (calls_g, flops_g), (calls_d, flops_d) = out["gather"], out["distribute"]
  for target in targets:
    for k in (16, 24):
      key = (target, f"f32[{k},{k}]")
      # One step: gather runs the 8 matrices of each side on each device.
      assert calls_g.get(key, 0) >= 8, calls_g
      assert calls_d.get(key, 0) * 8 == calls_g[key], (calls_d, calls_g)
  assert flops_d < flops_g, (flops_d, flops_g)


@pytest.mark.parametrize(
    "name", ["soap", pytest.param("shampoo", marks=pytest.mark.slow)]
)
def test_quantized_state_with_nnx(name):
  """Quantized eigenvectors replace NNX Variables whole (nnx.jit splits the
  state), and every state kind is quantized."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  model = nnx.Linear(8, 16, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(
      model,
      getattr(ortho_optax, name)(
          1e-2, precond_dtype="q4", mu_dtype="q8", nu_dtype="q8",
          precondition_every=2,
      ),
      wrt=nnx.Param,
  )
  x = jnp.ones((4, 8))

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(5)]
  assert losses[-1] < losses[0], losses
