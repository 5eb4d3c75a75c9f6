"""Split routing (fused QKV per head, gate/up per half) and expert kernels.

A :class:`ortho_optax.SplitDimensionNumbers` cuts one axis into equal parts
and makes each part a matrix of its own; expert kernels ``(experts, in,
out)`` are batch axes, spread over devices by ``sharding="distribute"``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from engine_inputs import x64
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import ortho_optax
from ortho_optax import routing as _routing
from ortho_optax.parallel import sharding as _sharding
from ortho_optax.parallel import stateful as _stateful
from ortho_optax.transforms import neuron_norm as _neuron_norm

D, HEADS, HEAD_DIM = 32, 4, 8


def _normal(seed, shape, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(seed), shape, dtype)


def per_head(heads=HEADS, head_dim=HEAD_DIM):
  return ortho_optax.SplitDimensionNumbers(
      0, 1, split_axis=1, split_sizes=(head_dim,) * (3 * heads)
  )


def _parts(x, sizes, axis):
  bounds = np.cumsum((0,) + tuple(sizes))
  return [
      jax.lax.slice_in_dim(x, a, b, axis=axis)
      for a, b in zip(bounds[:-1], bounds[1:])
  ]


@pytest.mark.parametrize(
    "shape, dn, matrix_shape",
    [
        # Fused QKV (d, 3 * heads * head_dim) per head.
        ((32, 96), ((0, 1, 1), (8,) * 12), (12, 32, 8)),
        # Split of the fan-in axis, negative split axis.
        ((24, 16), ((0, 1, -2), (8,) * 3), (3, 8, 16)),
        # Stacked layers (L, d, 2 * hidden), gate/up halves.
        ((2, 16, 40), ((1, 2, 2), (20, 20)), (4, 16, 20)),
        # A split inside a merged fan-in group (conv-like (k, in, out)).
        ((3, 12, 5), (((0, 1), 2, 1), (4,) * 3), (3, 12, 5)),
        # One part: the unsplit matrix.
        ((8, 12), ((0, 1, 1), (12,)), (1, 8, 12)),
    ],
)
def test_to_matrix_from_matrix_round_trip(shape, dn, matrix_shape):
  (red, out, axis), sizes = dn
  dn = ortho_optax.SplitDimensionNumbers(red, out, axis, sizes)
  x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
  m = _routing.to_matrix(x, dn)
  assert m.shape == matrix_shape
  assert _routing.fan_in_out(shape, dn) == matrix_shape[1:]
  np.testing.assert_array_equal(_routing.from_matrix(m, dn, shape), x)


def test_parts_are_the_column_blocks():
  x = _normal(0, (D, 3 * HEADS * HEAD_DIM))
  m = _routing.to_matrix(x, per_head())
  for i, part in enumerate(_parts(x, per_head().split_sizes, 1)):
    np.testing.assert_array_equal(m[i], part)
  # Stacked layers: the layer is the major batch index, the part the minor.
  xs = _normal(1, (2, 6, 10))
  dn = ortho_optax.SplitDimensionNumbers(1, 2, split_axis=2, split_sizes=(5, 5))
  m = _routing.to_matrix(xs, dn)
  np.testing.assert_array_equal(m[3], xs[1, :, 5:])


@pytest.mark.parametrize("split", ["per_head", "per_projection"])
def test_split_equals_separate_orthogonalize_calls(split):
  """The target: a fused QKV kernel orthogonalized per part equals one
  ``orthogonalize`` call per part, to 1e-6 (float64, so that the batched
  and single-matrix matmuls' float32 rounding, ~1e-6, is not what is
  compared)."""
  size = HEAD_DIM if split == "per_head" else HEADS * HEAD_DIM
  sizes = (size,) * (3 * HEADS * HEAD_DIM // size)
  dn = ortho_optax.SplitDimensionNumbers(0, 1, split_axis=1, split_sizes=sizes)
  with x64():
    g = {"qkv": _normal(2, (D, 3 * HEADS * HEAD_DIM), jnp.float64)}
    tx = ortho_optax.scale_by_orthogonalization(dimension_numbers=dn)
    out = jax.jit(tx.update)(g, tx.init(g))[0]["qkv"]
    one = jax.jit(ortho_optax.orthogonalize)  # one matrix per call
    expected = jnp.concatenate(
        [one(p) for p in _parts(g["qkv"], sizes, 1)], axis=1
    )
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    # Each part is (nearly) orthogonal on its own, and the fused matrix as
    # a whole is not: the split changed the result.
    for p in _parts(out, sizes, 1):
      s = np.linalg.svd(np.asarray(p), compute_uv=False)
      assert 0.6 < s.min() and s.max() < 1.3, s
    assert np.abs(out - one(g["qkv"])).max() > 0.1


def test_split_in_float32_matches_separate_calls():
  g = {"qkv": _normal(3, (D, 3 * HEADS * HEAD_DIM))}
  tx = ortho_optax.scale_by_orthogonalization(dimension_numbers=per_head())
  out = jax.jit(tx.update)(g, tx.init(g))[0]["qkv"]
  one = jax.jit(ortho_optax.orthogonalize)  # one matrix per call
  expected = jnp.concatenate(
      [one(p) for p in _parts(g["qkv"], per_head().split_sizes, 1)], axis=1
  )
  np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5)


def test_flops_equal_the_sum_of_the_parts():
  """FLOPs counted from the jaxpr: the split kernel costs exactly its
  parts, one batched call (and less than the fused matrix)."""
  g = {"qkv": jax.ShapeDtypeStruct((D, 3 * HEADS * HEAD_DIM), jnp.float32)}
  tx = ortho_optax.scale_by_orthogonalization(dimension_numbers=per_head())
  state = tx.init(g)
  counted = ortho_optax.count_matmul_flops(lambda u: tx.update(u, state)[0], g)
  part = jax.ShapeDtypeStruct((D, HEAD_DIM), jnp.float32)
  one = ortho_optax.count_matmul_flops(ortho_optax.orthogonalize, part)
  assert one > 0
  assert counted == 3 * HEADS * one
  assert counted == ortho_optax.orthogonalize_flops(
      (3 * HEADS, D, HEAD_DIM)
  )
  fused = ortho_optax.orthogonalize_flops((D, 3 * HEADS * HEAD_DIM))
  assert counted < fused


def test_shape_factor_is_that_of_one_part():
  # Parts of 16 columns on 8 rows: muon's factor sqrt(16 / 8) per part,
  # not sqrt(48 / 8) of the fused (8, 48) kernel.
  dn = ortho_optax.SplitDimensionNumbers(0, 1, split_axis=1, split_sizes=(16,) * 3)
  g = {"w": _normal(4, (8, 48))}
  for rule, factor in [("muon", np.sqrt(2.0)), ("spectral", np.sqrt(2.0)),
                       ("moonlight", 0.2 * 4.0)]:
    tx = ortho_optax.scale_by_shape(rule, dimension_numbers=dn)
    out = tx.update(g, tx.init(g))[0]["w"]
    np.testing.assert_allclose(out, g["w"] * factor, rtol=1e-6)
  assert _stateful.oriented_shape((8, 48), dn) == (3, 8, 16)


def _separate_tree(fused, sizes, axis):
  return {f"p{i}": p for i, p in enumerate(_parts(fused, sizes, axis))}


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "name, axis",
    [
        ("normuon", 0),
        ("adamuon", 1),
        pytest.param("muon", 1, marks=SLOW),
        pytest.param("muon", 0, marks=SLOW),
        pytest.param("normuon", 1, marks=SLOW),
        pytest.param("adamuon", 0, marks=SLOW),
    ],
)
def test_named_optimizer_split_equals_separate_leaves(name, axis):
  """Through a named optimizer's ``rules``: two steps on a fused kernel
  split into parts equal two steps on the parts as separate leaves
  (momentum, NorMuon's per-neuron and AdaMuon's per-element second
  moments included), for a split of the fan-out (axis 1) and of the
  fan-in (axis 0)."""
  shape = (16, 36) if axis == 1 else (36, 16)
  sizes = (12,) * 3
  dn = ortho_optax.SplitDimensionNumbers(0, 1, split_axis=axis, split_sizes=sizes)
  factory = getattr(ortho_optax, name)
  fused = {"w": _normal(5, shape)}
  grads = [_normal(6 + t, shape) for t in range(2)]
  opt = factory(0.1, rules=[("w", dn)])
  sep_opt = factory(0.1)

  @jax.jit
  def run(fused, grads):
    params, state = fused, opt.init(fused)
    sep_params = _separate_tree(fused["w"], sizes, axis)
    sep_state = sep_opt.init(sep_params)
    for g in grads:
      u, state = opt.update({"w": g}, state, params)
      params = optax.apply_updates(params, u)
      su, sep_state = sep_opt.update(
          _separate_tree(g, sizes, axis), sep_state, sep_params
      )
      sep_params = optax.apply_updates(sep_params, su)
    return params, sep_params

  params, sep_params = run(fused, grads)
  expected = jnp.concatenate(
      [sep_params[f"p{i}"] for i in range(len(sizes))], axis=axis
  )
  np.testing.assert_allclose(params["w"], expected, rtol=0, atol=1e-5)


def test_normuon_state_of_a_split_fan_in_axis():
  # One v per output neuron of each part: 3 parts x 16 outputs.
  dn = ortho_optax.SplitDimensionNumbers(0, 1, split_axis=0, split_sizes=(12,) * 3)
  assert _neuron_norm.reduced_shape((36, 16), dn) == (3, 16)
  dn_out = dn._replace(split_axis=1, split_sizes=(4,) * 4)
  assert _neuron_norm.reduced_shape((36, 16), dn_out) == (1, 16)


@pytest.mark.parametrize("name", ["dion", pytest.param("trion", marks=SLOW)])
def test_low_rank_state_is_per_part(name):
  """Stateful low-rank steps: one factor per part (Dion's ``Q`` is
  ``(parts, m, r)``), and a step runs."""
  dn = per_head()
  params = {"qkv": _normal(7, (D, 3 * HEADS * HEAD_DIM))}
  opt = getattr(ortho_optax, name)(0.01, rules=[("qkv", dn)])
  state = opt.init(params)
  shapes = {tuple(x.shape) for x in jax.tree.leaves(state)}
  if name == "dion":
    batch, m, _ = _stateful.oriented_shape(params["qkv"].shape, dn)
    assert batch == 3 * HEADS and m == HEAD_DIM
    assert any(s[:2] == (batch, m) for s in shapes), shapes
  u, state = jax.jit(opt.update)(params, state, params)
  assert u["qkv"].shape == params["qkv"].shape
  assert bool(jnp.all(jnp.isfinite(u["qkv"])))
  assert float(jnp.abs(u["qkv"]).max()) > 0


def test_muon_dimension_numbers_still_accepted():
  """optax's MuonDimensionNumbers and 2-field DimensionNumbers keep their
  meaning (no split) next to split ones in one tree."""
  dn_tree = {
      "a": optax.contrib.MuonDimensionNumbers(0, 1),
      "b": ortho_optax.DimensionNumbers(0, 1),
      "c": ortho_optax.SplitDimensionNumbers(0, 1, 1, (4, 4)),
  }
  params = {k: _normal(8, (6, 8)) for k in dn_tree}
  dns = ortho_optax.dimension_numbers_tree(params, dimension_numbers=dn_tree)
  assert dns["a"] == (0, 1) and dns["b"] == (0, 1)
  assert isinstance(dns["c"], ortho_optax.SplitDimensionNumbers)
  assert dns["c"].split_sizes == (4, 4)
  # Built positionally, DimensionNumbers is still a pair.
  red, out = ortho_optax.DimensionNumbers(0, 1)
  assert (red, out) == (0, 1)


def test_split_of_a_wrong_length_names_the_leaf():
  dn = ortho_optax.SplitDimensionNumbers(0, 1, split_axis=1, split_sizes=(5, 5))
  with pytest.raises(ValueError, match=r"\['w'\].*`split_sizes`"):
    ortho_optax.label_params({"w": jnp.ones((4, 8))}, rules=[("w", dn)])


def _mesh(shape, names, axis_type):
  return jax.make_mesh(shape, names, axis_types=(axis_type,) * len(names))


EP = ((8,), ("expert",), P("expert"))  # each device holds whole experts
# Experts over one axis, the fan-in FSDP-sharded over the other.
EP_FSDP = ((4, 2), ("expert", "fsdp"), P("expert", "fsdp"))
DP = ((8,), ("data",), P())  # replicated experts (data parallelism)
EXPLICIT, AUTO = AxisType.Explicit, AxisType.Auto


@pytest.mark.parametrize(
    "mesh_shape, names, spec, axis_type",
    [
        EP_FSDP + (EXPLICIT,),
        EP + (AUTO,),
        pytest.param(*EP, EXPLICIT, marks=SLOW),
        pytest.param(*EP_FSDP, AUTO, marks=SLOW),
        pytest.param(*DP, EXPLICIT, marks=SLOW),
        pytest.param(*DP, AUTO, marks=SLOW),
    ],
)
def test_expert_kernels_distributed_equal_single_device(
    mesh_shape, names, spec, axis_type
):
  """MoE kernels ``(experts, in, out)``: the expert axis is a batch axis,
  each expert a matrix; ``sharding="distribute"`` gives the single-device
  result and keeps the kernels' sharding."""
  grads = {
      "moe": {"w_in": _normal(9, (8, 16, 32)), "w_out": _normal(10, (8, 32, 16))},
      "qkv": _normal(11, (16, 3 * 2 * 8)),
  }
  rules = [("qkv", per_head(heads=2, head_dim=8))]
  tx1 = ortho_optax.scale_by_orthogonalization(
      method="newton_schulz", rules=rules
  )
  ref = jax.jit(tx1.update)(grads, tx1.init(grads))[0]
  mesh = _mesh(mesh_shape, names, axis_type)
  placed = {
      "moe": jax.device_put(grads["moe"], NamedSharding(mesh, spec)),
      "qkv": jax.device_put(grads["qkv"], NamedSharding(mesh, P())),
  }
  tx = ortho_optax.scale_by_orthogonalization(
      method="newton_schulz", rules=rules, sharding="distribute"
  )
  state = tx.init(placed)
  out = jax.jit(lambda g: tx.update(g, state)[0])(placed)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
      out, ref,
  )
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(placed)):
    assert a.sharding.is_equivalent_to(b.sharding, a.ndim)


@pytest.mark.parametrize(
    "mesh_shape, names, spec, most, ops",
    [
        # Experts already whole on their devices: orthogonalized in place.
        EP + (0.0, set()),
        # Experts over 4 devices, each split over 2 (FSDP): one all-to-all
        # over `fsdp` makes them whole and one brings them back, 0.5x the
        # kernel's bytes in all (XLA alone, sharding=None: 4.7x).
        EP_FSDP + (0.5, {"all-to-all"}),
    ],
)
def test_expert_kernels_collective_bytes(mesh_shape, names, spec, most, ops):
  mesh = _mesh(mesh_shape, names, AxisType.Explicit)
  g = jax.device_put(
      {"moe": _normal(12, (8, 64, 128))}, NamedSharding(mesh, spec)
  )
  tx = ortho_optax.scale_by_orthogonalization(
      method="newton_schulz", sharding="distribute"
  )
  text = jax.jit(lambda u: tx.update(u, tx.init(u))[0]).lower(g).compile()
  stats = ortho_optax.collective_bytes(text.as_text())
  assert stats.total <= most * g["moe"].nbytes, stats
  assert set(stats.count) == ops, stats


def test_matrix_spec_of_split_kernels():
  dn = per_head(heads=2, head_dim=8)  # (16, 48) -> (6, 16, 8)
  # FSDP on the fan-in: rows of the (8, 16) wide part... (tall: transposed).
  assert _sharding.matrix_spec((16, 48), dn, P("fsdp", None)) == (
      (), ("fsdp",)
  )
  # Tensor parallelism over the heads shards the parts: a batch axis.
  assert _sharding.matrix_spec((16, 48), dn, P(None, "model")) is None
  assert _sharding.matrix_spec((16, 48), dn, P()) == ((), ())


def test_nnx_lm_with_per_head_qkv_trains():
  """The examples' LM (a fused ``qkv`` kernel per block), routed per head
  with ``examples.models.per_head_qkv_rules``, trains under
  ``nnx.Optimizer``; its first muon update of ``qkv`` is, head by head, the
  orthogonalized gradient block."""
  import pathlib  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  from flax import nnx  # pylint: disable=import-outside-toplevel

  repo = str(pathlib.Path(__file__).resolve().parents[1])
  if repo not in sys.path:
    sys.path.insert(0, repo)
  from examples import models  # pylint: disable=import-outside-toplevel

  vocab, d, heads = 16, 16, 2
  model = models.TransformerLM(vocab, d, 1, heads, 2, rngs=nnx.Rngs(0))
  rules = models.per_head_qkv_rules(d, heads)
  params = nnx.state(model, nnx.Param)
  dns = ortho_optax.dimension_numbers_tree(params, rules=rules)
  qkv_dn = dns["blocks"][0]["attn"]["qkv"]["kernel"]
  qkv_dn = qkv_dn.get_value() if isinstance(qkv_dn, nnx.Variable) else qkv_dn
  assert isinstance(qkv_dn, ortho_optax.SplitDimensionNumbers), qkv_dn
  assert _stateful.oriented_shape((d, 3 * d), qkv_dn) == (3 * heads, 8, d)

  lr = 0.02
  tx = ortho_optax.muon(lr, rules=rules, weight_decay=0.0, nesterov=False)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  tokens = jax.random.randint(jax.random.key(1), (4, 12), 0, vocab)

  def loss_fn(model):
    logits = model(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, tokens[:, 1:]
    ).mean()

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss, grads

  before = model.blocks[0].attn.qkv.kernel[...]
  loss0, grads = train_step(model, optimizer)
  step = model.blocks[0].attn.qkv.kernel[...] - before
  g = grads["blocks"][0]["attn"]["qkv"]["kernel"][...]
  sizes = qkv_dn.split_sizes
  # Momentum (1 - beta) g after one step is a scaled g: the polar factor of
  # each head's block, times -lr and muon's shape factor (fan-out 8 <
  # fan-in 16: 1).
  one = jax.jit(ortho_optax.orthogonalize)
  expected = jnp.concatenate([one(p) for p in _parts(g, sizes, 1)], axis=1)
  np.testing.assert_allclose(step, -lr * expected, rtol=0, atol=2e-6)
  losses = [float(loss0)] + [
      float(train_step(model, optimizer)[0]) for _ in range(5)
  ]
  assert losses[-1] < losses[0] - 0.05, losses
