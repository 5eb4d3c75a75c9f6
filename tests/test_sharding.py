"""Sharding of the orthogonalization on 8 fake CPU devices (see conftest.py).

Meshes: 1-D ``fsdp`` (8) and 2-D ``fsdp x model`` (2 x 4). Matrices are
64 x 128 and 128 x 64 (tall ones are transposed into the same stacks). The
engine is plain Newton-Schulz: the Gram form amplifies float32 round-off so
much that one device already differs by ~1e-5 between a batch of 1 and a
batch of 8, which says nothing about sharding.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import ortho_optax
from ortho_optax.parallel import sharding as _sharding

ENGINE = {"method": "newton_schulz"}
MESHES = {
    "fsdp8": ((8,), ("fsdp",), P("fsdp", None)),
    "fsdp2x4": ((2, 4), ("fsdp", "model"), P("fsdp", "model")),
}
STRATEGIES = (None, "gather", "distribute")


def make_mesh(name, axis_type=AxisType.Explicit):
  shape, names, _ = MESHES[name]
  return jax.make_mesh(shape, names, axis_types=(axis_type,) * len(names))


def make_tree(n, shape=(64, 128), mixed=True):
  """``n`` matrices (every other one tall when ``mixed``) and a bias."""
  keys = jax.random.split(jax.random.key(0), n + 1)
  tree = {
      f"layer{i:02d}": {
          "w": jax.random.normal(
              keys[i], shape[::-1] if mixed and i % 2 else shape
          )
      }
      for i in range(n)
  }
  tree["bias"] = jax.random.normal(keys[n], (shape[1],))
  return tree


def shard(tree, mesh, spec):
  return jax.tree.map(
      lambda x: jax.device_put(
          x, NamedSharding(mesh, spec if x.ndim == 2 else P())
      ),
      tree,
  )


def tx_for(sharding=None):
  return ortho_optax.scale_by_orthogonalization(sharding=sharding, **ENGINE)


@functools.cache
def reference(n, mixed=True):
  """The single-device result for ``make_tree(n, mixed=mixed)``."""
  tree = jax.device_put(make_tree(n, mixed=mixed), jax.devices()[0])
  tx = tx_for()
  return jax.jit(tx.update)(tree, tx.init(tree))[0]


def assert_close(out, ref):
  def check(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if np.issubdtype(a.dtype, np.inexact):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    else:
      np.testing.assert_array_equal(a, b)

  jax.tree.map(check, out, ref)


def assert_same_shardings(out, params):
  def check(a, b):
    assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (
        a.sharding,
        b.sharding,
    )

  jax.tree.map(check, out, params)


def param_bytes(tree):
  return sum(x.nbytes for x in jax.tree.leaves(tree) if x.ndim == 2)


def updates_of(tx, grads):
  return tx.update(grads, tx.init(grads))[0]


def compiled_text(fn, *args):
  return jax.jit(fn).lower(*args).compile().as_text()


# Counts chosen against the 8 devices: more, fewer, and not a multiple.
@pytest.mark.parametrize("n", [16, 4, 11])
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_explicit_axes_match_single_device(mesh_name, strategy, n):
  mesh = make_mesh(mesh_name)
  params = shard(make_tree(n), mesh, MESHES[mesh_name][2])
  tx = tx_for(strategy)
  out, _ = jax.jit(tx.update)(params, tx.init(params))
  assert_close(out, reference(n))
  assert_same_shardings(out, params)
  jax.tree.map(
      lambda a, b: assert_equal_types(jax.typeof(a), jax.typeof(b)),
      out,
      params,
  )


def assert_equal_types(a, b):
  assert a.sharding.spec == b.sharding.spec, (a, b)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_auto_axes_with_param_shardings(mesh_name, strategy):
  mesh = make_mesh(mesh_name, AxisType.Auto)
  spec = MESHES[mesh_name][2]
  params = shard(make_tree(11), mesh, spec)
  targets = jax.tree.map(lambda x: x.sharding, params)
  tx = tx_for(_sharding.ShardingOptions(strategy, param_shardings=targets))
  out, _ = jax.jit(tx.update)(params, tx.init(params))
  assert_close(out, reference(11))
  assert_same_shardings(out, params)


@pytest.mark.parametrize("form", ["callable", "prefix"])
def test_param_shardings_through_a_named_optimizer(form):
  """The transform sees muon's masked tree; targets still line up."""
  mesh = make_mesh("fsdp2x4", AxisType.Auto)
  spec = P("fsdp", "model")
  params = shard(make_tree(3), mesh, spec)
  if form == "callable":
    targets = lambda u: jax.tree.map(  # noqa: E731
        lambda x: spec if x.ndim == 2 else P(), u
    )
  else:
    targets = NamedSharding(mesh, spec)
  options = _sharding.ShardingOptions("distribute", param_shardings=targets)
  tx = ortho_optax.muon(0.02, sharding=options, **ENGINE)
  out, _ = jax.jit(tx.update)(params, tx.init(params), params)
  for name in ("layer00", "layer01", "layer02"):
    assert out[name]["w"].sharding.spec == spec


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_auto_axes_train_step_keeps_param_sharding(mesh_name):
  # No param_shardings: XLA takes the layout from apply_updates.
  mesh = make_mesh(mesh_name, AxisType.Auto)
  params = shard(make_tree(11), mesh, MESHES[mesh_name][2])
  tx = tx_for("distribute")

  @jax.jit
  def step(params, grads):
    updates, _ = tx.update(grads, tx.init(grads))
    return optax.apply_updates(params, jax.tree.map(lambda u: -u, updates))

  new = step(params, params)
  assert_close(new, jax.tree.map(jnp.subtract, make_tree(11), reference(11)))
  assert_same_shardings(new, params)


@pytest.mark.parametrize("strategy", ["gather", "distribute"])
@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_auto_axes_layouts_from_init(mesh_name, strategy):
  """No hints: init saw the placed parameters, update (jitted) uses that."""
  mesh = make_mesh(mesh_name, AxisType.Auto)
  params = shard(make_tree(11), mesh, MESHES[mesh_name][2])
  tx = tx_for(strategy)
  out, _ = jax.jit(tx.update)(params, tx.init(params))
  assert_close(out, reference(11))
  # Returned as they are, with nothing downstream to pin them.
  assert_same_shardings(out, params)


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_auto_axes_no_hints_collective_bytes(mesh_name, capfd):
  """A train step on Auto axes without hints moves <= 1.5x the params.

  Without the layouts recorded at ``init`` the 2-D mesh moved 4.25x on the
  benchmark's tree, and XLA warned of "Involuntary full rematerialization".
  """
  mesh = make_mesh(mesh_name, AxisType.Auto)
  params = shard(make_tree(16), mesh, MESHES[mesh_name][2])
  tx = ortho_optax.muon(0.02, sharding="distribute", **ENGINE)
  state = tx.init(params)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  capfd.readouterr()
  text = jax.jit(step).lower(params, state, params).compile().as_text()
  stats = ortho_optax.collective_bytes(text)
  assert stats.total <= 1.5 * param_bytes(params), stats
  assert "all-to-all" in stats.count, stats
  assert "rematerialization" not in capfd.readouterr().err


def test_auto_axes_stale_or_missing_layouts_stay_exact():
  """Layouts are hints: moved parameters, or a jitted init, change no value."""
  mesh = make_mesh("fsdp2x4", AxisType.Auto)
  tree = make_tree(4)
  tx = tx_for("distribute")
  state = tx.init(shard(tree, mesh, P("fsdp", "model")))
  moved = shard(tree, mesh, P("model", "fsdp"))
  assert_close(jax.jit(tx.update)(moved, state)[0], reference(4))
  fresh = tx_for("distribute")
  state = jax.jit(fresh.init)(moved)  # traced: nothing to record
  assert_close(jax.jit(fresh.update)(moved, state)[0], reference(4))


def test_eager_auto_axes_keep_sharding():
  mesh = make_mesh("fsdp8", AxisType.Auto)
  params = shard(make_tree(4), mesh, P("fsdp"))
  tx = tx_for("distribute")
  out, _ = tx.update(params, tx.init(params))
  assert_close(out, reference(4))
  assert_same_shardings(out, params)


def test_ambient_mesh_from_set_mesh():
  mesh = make_mesh("fsdp8", AxisType.Auto)
  tree = make_tree(4)
  tx = tx_for("distribute")
  with jax.set_mesh(mesh):
    out, _ = jax.jit(tx.update)(tree, tx.init(tree))
  assert_close(out, reference(4))


def test_no_mesh_raises():
  tx = tx_for("distribute")
  tree = make_tree(2)
  with pytest.raises(ValueError, match="needs a mesh"):
    jax.jit(tx.update)(tree, tx.init(tree))


@pytest.mark.parametrize(
    "sharding, error",
    [
        ("scatter", ValueError),
        (3, TypeError),
        (_sharding.ShardingOptions("distribute", max_matrix_bytes=-1),
         ValueError),
        (_sharding.ShardingOptions("distribute", mesh="fsdp"), TypeError),
    ],
)
def test_bad_sharding_raises(sharding, error):
  with pytest.raises(error):
    tx_for(sharding)


def test_unknown_axis_raises():
  mesh = make_mesh("fsdp8")
  params = shard(make_tree(2), mesh, P("fsdp"))
  tx = tx_for(_sharding.ShardingOptions("distribute", axes="data"))
  with pytest.raises(ValueError, match="Unknown mesh axis 'data'"):
    jax.jit(tx.update)(params, tx.init(params))


def test_fsdp_collective_bytes():
  """distribute: <= 2.5x the parameters' bytes and < half of XLA's own.

  Bytes are counted by :func:`ortho_optax.collective_bytes`: operand plus
  result bytes of every collective in the per-device compiled program,
  loop bodies times their trip count.
  """
  mesh = make_mesh("fsdp8")
  params = shard(make_tree(16), mesh, P("fsdp"))
  size = param_bytes(params)
  moved = {}
  for strategy in (None, "distribute"):
    text = compiled_text(functools.partial(updates_of, tx_for(strategy)), params)
    moved[strategy] = ortho_optax.collective_bytes(text).total / size
  assert moved["distribute"] <= 2.5, moved
  assert moved[None] >= 2 * moved["distribute"], moved
  assert moved[None] >= 8, moved  # measured ~14: all-gathers in every step


def test_two_dim_mesh_collective_bytes():
  mesh = make_mesh("fsdp2x4")
  params = shard(make_tree(11), mesh, P("fsdp", "model"))
  tx = tx_for("distribute")
  text = compiled_text(lambda g: tx.update(g, tx.init(g))[0], params)
  stats = ortho_optax.collective_bytes(text)
  assert stats.total <= 2.5 * param_bytes(params), stats
  assert set(stats.count) == {"all-to-all"}, stats


def test_single_matrix_is_gathered_not_padded():
  """One matrix on 8 devices: an all-gather beats 7 zero matrices' trips."""
  mesh = make_mesh("fsdp8")
  params = shard(make_tree(1), mesh, P("fsdp"))
  text = compiled_text(functools.partial(updates_of, tx_for("distribute")),
                       params)
  stats = ortho_optax.collective_bytes(text)
  assert set(stats.count) == {"all-gather"}, stats
  assert stats.total <= 1.25 * param_bytes(params), stats


def test_replicated_params_flops():
  """Plain data parallelism: each device orthogonalizes 1/8 of the stack."""
  n = 8
  tree = make_tree(n, mixed=False)
  tx = tx_for("distribute")
  plain = tx_for()

  def flops(tx, params):
    """cost_analysis (loop bodies once) and matmuls (loops x trips)."""
    compiled = jax.jit(functools.partial(updates_of, tx)).lower(params)
    compiled = compiled.compile()
    return np.array([
        compiled.cost_analysis()["flops"],
        ortho_optax.compiled_matmul_flops(compiled.as_text()),
    ])

  single = flops(plain, jax.device_put(tree, jax.devices()[0]))
  assert single[1] == ortho_optax.orthogonalize_flops((n, 64, 128), **ENGINE)
  mesh = make_mesh("fsdp2x4")
  per_device = flops(tx, shard(tree, mesh, P()))
  assert np.all(per_device <= 1.25 * single / 8), (per_device, single)
  # Without the strategy every device does all the work.
  assert np.all(flops(plain, shard(tree, mesh, P())) >= 0.9 * single)


def test_large_matrix_path_stays_sharded():
  mesh = make_mesh("fsdp8")
  params = shard(make_tree(5, mixed=False), mesh, P("fsdp"))
  tx = tx_for(_sharding.ShardingOptions("distribute", max_matrix_bytes=0))
  fn = jax.jit(lambda g: tx.update(g, tx.init(g))[0])
  out = fn(params)
  assert_close(out, reference(5, mixed=False))
  assert_same_shardings(out, params)
  stats = ortho_optax.collective_bytes(fn.lower(params).compile().as_text())
  # The Gram matrix is all-reduced; no matrix is ever gathered whole.
  assert "all-gather" not in stats.count, stats
  assert stats.count["all-reduce"] >= 5, stats


def test_works_where_optax_muon_fails():
  """Explicit sharding of a matrix's own axes: optax raises, we do not."""
  mesh = make_mesh("fsdp2x4")
  tree = {"w": make_tree(1)["layer00"]["w"]}
  params = shard(tree, mesh, P("fsdp", "model"))
  contrib = optax.contrib.muon(0.02)
  with pytest.raises(Exception, match="sharded") as info:
    jax.jit(contrib.update)(params, contrib.init(params), params)
  assert type(info.value).__name__ == "ShardingTypeError"
  single = ortho_optax.muon(0.02, **ENGINE)
  local = jax.device_put(tree, jax.devices()[0])
  ref, _ = jax.jit(single.update)(local, single.init(local), local)
  for strategy in STRATEGIES:
    tx = ortho_optax.muon(0.02, sharding=strategy, **ENGINE)
    state = tx.init(params)
    out, state = jax.jit(tx.update)(params, state, params)
    assert_close(out, ref)
    assert_same_shardings(out, params)


def _matrix_leaves(state):
  return [
      x for x in jax.tree.leaves(state) if getattr(x, "ndim", 0) == 2
  ]


def test_normuon_exact_under_distribute():
  """NorMuon's neuron statistics come after the reshard back: exact."""
  mesh = make_mesh("fsdp2x4")
  tree = make_tree(5)
  params = shard(tree, mesh, P("fsdp", "model"))
  single = ortho_optax.normuon(0.02, **ENGINE)
  tx = ortho_optax.normuon(0.02, sharding="distribute", **ENGINE)
  local = jax.device_put(tree, jax.devices()[0])
  ref_state, state = single.init(local), tx.init(params)
  ref_step, step = jax.jit(single.update), jax.jit(tx.update)
  for t in (1, 2):
    grads = jax.tree.map(functools.partial(jnp.multiply, float(t)), tree)
    grads = jax.tree.map(jnp.cos, grads)
    ref, ref_state = ref_step(
        jax.device_put(grads, jax.devices()[0]), ref_state, local
    )
    out, state = step(shard(grads, mesh, P("fsdp", "model")), state, params)
    assert_close(out, ref)
  assert_close(state, ref_state)
  assert_same_shardings(out, params)
  # The momentum keeps the parameters' sharding.
  for x in _matrix_leaves(state):
    if x.shape in ((64, 128), (128, 64)):
      assert jax.typeof(x).sharding.spec == P("fsdp", "model")


@pytest.mark.parametrize(
    "shape, dn, spec, expected",
    [
        ((64, 128), (0, 1), P("fsdp", "model"), (("fsdp",), ("model",))),
        ((128, 64), (0, 1), P("fsdp", None), ((), ("fsdp",))),
        ((4, 64, 128), (1, 2), P(None, "fsdp"), (("fsdp",), ())),
        ((4, 64, 128), (1, 2), P("fsdp"), None),  # sharded batch axis
        ((3, 3, 8, 128), ((0, 1, 2), 3), P("fsdp"), (("fsdp",), ())),
        ((3, 3, 8, 128), ((0, 1, 2), 3), P(None, None, "fsdp"), None),
        ((64, 128), (0, 1), P(("fsdp", "model")), (("fsdp", "model"), ())),
    ],
)
def test_matrix_spec(shape, dn, spec, expected):
  dn = ortho_optax.DimensionNumbers(*dn)
  assert _sharding.matrix_spec(shape, dn, spec) == expected


_HLO = """\
HloModule m

%body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %p = (s32[], f32[4,8]{1,0}) parameter(0)
  %x = f32[4,8]{1,0} get-tuple-element(%p), index=1
  %ag = f32[32,8]{1,0} all-gather(%x), dimensions={0}
  %ars = f32[4,8]{1,0} all-reduce-start(%x), to_apply=%add
  %ard = f32[4,8]{1,0} all-reduce-done(%ars)
  ROOT %t = (s32[], f32[4,8]{1,0}) tuple(%i, %ard)
}

%cond (p: (s32[], f32[4,8])) -> pred[] {
  %p.1 = (s32[], f32[4,8]{1,0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

ENTRY %main (a: f32[4,8]) -> f32[4,8] {
  %a = f32[4,8]{1,0} parameter(0)
  %a2a = (bf16[2,8]{1,0}, /*index=1*/bf16[2,8]{1,0}) all-to-all(%a, %a)
  %w = (s32[], f32[4,8]{1,0}) while(%t0), condition=%cond, body=%body, \
backend_config={"known_trip_count":{"n":"3"}}
  ROOT %r = f32[4,8]{1,0} get-tuple-element(%w), index=1
}
"""


def test_collective_bytes_counts_operands_results_and_trips():
  stats = ortho_optax.collective_bytes(_HLO)
  shard = 4 * 8 * 4
  # all-to-all: two f32 operands in, two bf16 results out.
  assert stats.by_op["all-to-all"] == 2 * shard + 2 * (2 * 8 * 2)
  # all-gather in a 3-trip loop: (operand + 8x result) x 3.
  assert stats.by_op["all-gather"] == 3 * (shard + 8 * shard)
  # async all-reduce: operand from -start, result from -done, x 3.
  assert stats.by_op["all-reduce"] == 3 * 2 * shard
  assert stats.count == {"all-to-all": 1, "all-gather": 3, "all-reduce": 3}
  assert stats.static_total == (
      stats.by_op["all-to-all"] + (stats.total - stats.by_op["all-to-all"]) // 3
  )
  assert stats.unknown_trip_counts == 0
