"""Dion, Dion2 and Trion on 8 fake CPU devices (see conftest.py).

Every strategy under Explicit mesh axes gives the single-device result, the
updates and the state keep the shardings they came with, and the
communication is low-rank where the method allows it: Dion never gathers a
matrix (only its ``n x r`` and ``m x r`` factors move), and on replicated
parameters (data parallelism) the three bring back only factors, where
Muon's ``"distribute"`` brings back whole matrices.
"""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import ortho_optax
from ortho_optax.parallel import hlo

NS = {"method": "newton_schulz"}
TRANSFORMS = {
    "dion": functools.partial(ortho_optax.scale_by_dion, 0.25),
    "dion2": functools.partial(ortho_optax.scale_by_dion2, 0.25, **NS),
    "trion": functools.partial(ortho_optax.scale_by_trion, 0.25, **NS),
}
MESHES = {
    "fsdp8": ((8,), ("fsdp",), P("fsdp", None)),
    "fsdp2x4": ((2, 4), ("fsdp", "model"), P("fsdp", "model")),
}
SHAPE = (16, 32)


def make_mesh(name, axis_type=AxisType.Explicit):
  shape, names, _ = MESHES[name]
  return jax.make_mesh(shape, names, axis_types=(axis_type,) * len(names))


def make_tree(n, seed=0, shape=SHAPE):
  """``n`` matrices, every other one tall, and a bias."""
  keys = jax.random.split(jax.random.key(seed), n + 1)
  tree = {
      f"layer{i:02d}": jax.random.normal(
          keys[i], shape[::-1] if i % 2 else shape
      )
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


def run(tx, trees):
  """Updates of each step and the final state."""
  state = tx.init(trees[0])
  step = jax.jit(tx.update)
  out = []
  for g in trees:
    u, state = step(g, state)
    out.append(u)
  return out, state


@functools.cache
def reference(name, n):
  trees = [
      jax.device_put(make_tree(n, seed), jax.devices()[0]) for seed in (0, 1)
  ]
  return run(TRANSFORMS[name](), trees)


def assert_close(a, b):
  jax.tree.map(
      lambda x, y: np.testing.assert_allclose(
          np.asarray(x), np.asarray(y), rtol=2e-4, atol=2e-5
      ),
      a,
      b,
  )


def assert_kept_shardings(out, like):
  def check(x, y):
    assert jax.typeof(x).sharding.spec == jax.typeof(y).sharding.spec, (x, y)

  jax.tree.map(check, out, like)


# The default run keeps the hardest case (2-D mesh, padded stacks spread
# over the devices); the other strategies and the 1-D mesh run with -m slow.
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "mesh_name, strategy",
    [
        pytest.param("fsdp2x4", None, marks=SLOW),
        pytest.param("fsdp2x4", "gather", marks=SLOW),
        ("fsdp2x4", "distribute"),
        pytest.param("fsdp8", "distribute", marks=SLOW),
    ],
)
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_explicit_axes_match_single_device(name, mesh_name, strategy):
  mesh = make_mesh(mesh_name)
  n = 11  # not a multiple of the 8 devices: padded stacks
  trees = [shard(make_tree(n, seed), mesh, MESHES[mesh_name][2])
           for seed in (0, 1)]
  tx = TRANSFORMS[name](sharding=strategy)
  out, state = run(tx, trees)
  ref_out, ref_state = reference(name, n)
  for u, ref in zip(out, ref_out):
    assert_close(u, ref)
    assert_kept_shardings(u, trees[0])
  assert_close(state, ref_state)
  # The momentum keeps the parameters' sharding; the state's types are
  # those init gave it.
  matrices = {k: v for k, v in trees[0].items() if k != "bias"}
  assert_kept_shardings({k: state.mu[k] for k in matrices}, matrices)
  init_types = jax.tree.map(jax.typeof, tx.init(trees[0]))
  assert jax.tree.map(jax.typeof, state) == init_types


@pytest.mark.parametrize(
    "name", [pytest.param("dion", marks=SLOW), "dion2",
             pytest.param("trion", marks=SLOW)]
)
def test_named_optimizer_distribute_matches_single_device(name):
  mesh = make_mesh("fsdp2x4")
  params = make_tree(5)
  grads = make_tree(5, seed=1)
  kwargs = {} if name == "dion" else NS
  single = getattr(ortho_optax, name)(0.02, **kwargs)
  tx = getattr(ortho_optax, name)(0.02, sharding="distribute", **kwargs)
  local = jax.device_put((params, grads), jax.devices()[0])
  ref, _ = jax.jit(single.update)(local[1], single.init(local[0]), local[0])
  sharded = shard((params, grads), mesh, P("fsdp", "model"))
  out, _ = jax.jit(tx.update)(sharded[1], tx.init(sharded[0]), sharded[0])
  assert_close(out, ref)
  assert_kept_shardings(out, sharded[0])


def collective_bytes(tx, tree):
  def update(g):
    return tx.update(g, tx.init(g))[0]

  text = jax.jit(update).lower(tree).compile().as_text()
  return ortho_optax.collective_bytes(text)


def matrix_bytes(tree):
  return sum(x.nbytes for x in jax.tree.leaves(tree) if x.ndim == 2)


def test_dion_moves_factors_not_matrices():
  """FSDP: Dion's matmuls run on the shards; only factors move.

  32 x 64 matrices at rank 2: the factors ``B^T Q`` and ``B P`` hold
  ``(m + n) r / (m n) = 3 / 32`` of a matrix. Every device's collectives
  stay under a quarter of the matrices' (global) bytes, with or without
  spreading the QRs; gathering the matrices, as Muon's ``"gather"`` does,
  moves more than all of them.
  """
  mesh = make_mesh("fsdp8")
  tree = shard(make_tree(16, shape=(32, 64)), mesh, P("fsdp", None))
  size = matrix_bytes(tree)
  for strategy in (None, "distribute"):
    tx = ortho_optax.scale_by_dion(2, sharding=strategy)
    stats = collective_bytes(tx, tree)
    assert stats.total < 0.25 * size, (strategy, stats)
  muon = ortho_optax.scale_by_orthogonalization(sharding="gather", **NS)
  assert collective_bytes(muon, tree).total > size


@pytest.mark.parametrize("name", ["dion2", "trion"])
def test_replicated_params_bring_back_factors(name):
  """Data parallelism: each device works on its share of whole matrices and
  only the selected rows (Dion2) or the projections (Trion) are gathered;
  Muon's "distribute" gathers whole orthogonalized matrices."""
  mesh = make_mesh("fsdp2x4")
  tree = shard(make_tree(16), mesh, P())
  tx = TRANSFORMS[name](sharding="distribute")
  muon = ortho_optax.scale_by_orthogonalization(sharding="distribute", **NS)
  ours = collective_bytes(tx, tree).total
  theirs = collective_bytes(muon, tree).total
  # Measured 0.28 for both (16 x 32 matrices, rank 1/4).
  assert ours < 0.4 * theirs, (ours, theirs)


def test_auto_axes_plan_from_the_parameters_init_saw():
  """Auto axes under jit: no hints needed; results equal one device and
  keep the parameters' shardings (recorded by ``init``)."""
  mesh = make_mesh("fsdp2x4", AxisType.Auto)
  n = 11
  trees = [shard(make_tree(n, seed), mesh, MESHES["fsdp2x4"][2])
           for seed in (0, 1)]
  tx = TRANSFORMS["trion"](sharding="distribute")
  state = tx.init(trees[0])
  step = jax.jit(tx.update)
  out = []
  for g in trees:
    u, state = step(g, state)
    out.append(u)
  ref_out, _ = reference("trion", n)
  for u, ref in zip(out, ref_out):
    assert_close(u, ref)
  for k, x in out[-1].items():
    assert x.sharding.is_equivalent_to(trees[0][k].sharding, x.ndim), k


def run_jitted(tx, trees):
  """``run`` with a jitted ``init`` (eager quantization of the zero state
  runs op by op, seconds on 8 devices); also the state's types at init."""
  state = jax.jit(tx.init)(trees[0])
  init_types = jax.tree.map(jax.typeof, state)
  step = jax.jit(tx.update)
  out = []
  for g in trees:
    u, state = step(g, state)
    out.append(u)
  return out, state, init_types


@functools.cache
def quantized_reference(name, fmt, n):
  trees = [
      jax.device_put(make_tree(n, seed), jax.devices()[0]) for seed in (0, 1)
  ]
  return run_jitted(TRANSFORMS[name](mu_dtype=fmt), trees)


# 2-7 s a case on 2 cores (as Muon's quantized counterpart in
# test_quantized_optimizers.py): -m slow.
@SLOW
@pytest.mark.parametrize("strategy", [None, "gather", "distribute"])
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_quantized_momentum_matches_single_device(name, strategy):
  """8-bit momentum: every strategy gives the single-device updates and
  stored momentum, and the codes keep the parameters' sharding."""
  mesh = make_mesh("fsdp2x4")
  n, spec = 5, MESHES["fsdp2x4"][2]
  trees = [shard(make_tree(n, seed), mesh, spec) for seed in (0, 1)]
  tx = TRANSFORMS[name](mu_dtype="q8", sharding=strategy)
  with jax.set_mesh(mesh):
    out, state, init_types = run_jitted(tx, trees)
  ref_out, ref_state, _ = quantized_reference(name, "q8", n)
  for u, ref in zip(out, ref_out):
    assert_close(u, ref)
    assert_kept_shardings(u, trees[0])
  for k in trees[0]:
    if k == "bias":
      continue
    assert jax.typeof(state.mu[k].codes).sharding.spec == spec
    np.testing.assert_array_equal(state.mu[k].codes, ref_state.mu[k].codes)
    np.testing.assert_allclose(state.mu[k].scales, ref_state.mu[k].scales,
                               rtol=1e-6)
  assert jax.tree.map(jax.typeof, state) == init_types


def test_dion_distribute_runs_each_qr_on_one_device():
  """Dion's QR of each factor runs on one device under ``"distribute"``:
  1/8 of ``"gather"``'s LAPACK calls per device for 8 matrices on 8
  devices (before, XLA ran the per-matrix QR loop whole on every device)."""
  mesh = make_mesh("fsdp8")
  params = {
      "w": jax.device_put(
          jax.random.normal(jax.random.key(0), (8, 16, 32)),
          NamedSharding(mesh, P(None, "fsdp")),
      )
  }
  calls = {}
  for strategy in ("gather", "distribute"):
    tx = TRANSFORMS["dion"](sharding=strategy)
    state = tx.init(params)
    text = jax.jit(tx.update).lower(params, state).compile().as_text()
    calls[strategy] = {
        k: v for k, v in hlo.custom_calls(text).items() if "geqrf" in k[0]
    }
  assert sum(calls["gather"].values()) == 8, calls
  assert sum(calls["distribute"].values()) == 1, calls
