"""``state_shardings``: the optimizer state's shardings from the params'.

For every named optimizer (and quantized state), on a 2x4 Auto mesh and an
8-device Explicit mesh: a state created with ``jax.jit(tx.init,
out_shardings=state_shardings(...))`` comes out of a jitted step with the
same shardings (Auto axes: what XLA infers; Explicit axes: the types), and
so does one created by an eager ``tx.init`` on the placed parameters.
"""

import contextlib
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import ortho_optax

sys.path.insert(0, os.path.dirname(__file__))
from common_test import REGISTRY  # noqa: E402

_SHAPES = {
    "embedding": (64, 32),
    "layer": {"w1": (32, 64), "w2": (64, 32), "scale": (32,)},
    "head": (32, 64),
    "b": (8,),
}
_SPECS = {
    # FSDP x model on a 2x4 mesh; a replicated vector.
    "auto": {
        "embedding": P("model", "fsdp"),
        "layer": {"w1": P("fsdp", "model"), "w2": P("model", "fsdp"),
                  "scale": P()},
        "head": P("fsdp", "model"),
        "b": P("model"),
    },
    # FSDP on 8 devices, a matrix split along its columns.
    "explicit": {
        "embedding": P("fsdp"),
        "layer": {"w1": P("fsdp"), "w2": P(None, "fsdp"), "scale": P()},
        "head": P("fsdp"),
        "b": P("fsdp"),
    },
}
_OPTIMIZERS = {name: (e.factory, e.kwargs) for name, e in REGISTRY.items()}
_OPTIMIZERS["muon_q8"] = (
    ortho_optax.muon, dict(learning_rate=1e-2, mu_dtype="q8")
)
_OPTIMIZERS["adamuon_q8"] = (
    ortho_optax.adamuon,
    dict(learning_rate=1e-2, mu_dtype="q8", nu_dtype="q8"),
)
# The default run: one optimizer on each mesh (on Auto axes NorMuon: a
# momentum, Adam's moments and a per-neuron moment; on Explicit axes Dion's
# low-rank factors); `-m slow` runs all of them (quantized states too).
_DEFAULT = {("auto", "normuon"), ("explicit", "dion")}


def _mesh(kind):
  if kind == "auto":
    return jax.make_mesh((2, 4), ("fsdp", "model"),
                         axis_types=(AxisType.Auto,) * 2)
  return jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Explicit,))


def _is_shape(x):
  return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def _placed(kind):
  mesh = _mesh(kind)
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), _SPECS[kind])
  params = jax.tree.map(
      lambda shape, s: jax.device_put(
          jnp.linspace(-1.0, 1.0, num=int(jnp.prod(jnp.array(shape))))
          .reshape(shape), s),
      _SHAPES, shardings, is_leaf=_is_shape,
  )
  return mesh, params, shardings


def _shardings(tree):
  return jax.tree.map(lambda x: x.sharding, tree)


def _cases():
  for kind in ("auto", "explicit"):
    for name in _OPTIMIZERS:
      marks = () if (kind, name) in _DEFAULT else (pytest.mark.slow,)
      yield pytest.param(kind, name, marks=marks, id=f"{kind}-{name}")


@pytest.mark.parametrize("kind, name", _cases())
def test_equal_to_what_jit_gives_after_a_step(kind, name):
  mesh, params, param_shardings = _placed(kind)
  factory, kwargs = _OPTIMIZERS[name]
  tx = factory(**kwargs)
  want = ortho_optax.state_shardings(tx, params, param_shardings)
  # Read off the parameters when no shardings are given.
  assert ortho_optax.state_shardings(tx, params) == want
  grads = jax.tree.map(lambda p: 0.5 * p, params)
  ambient = jax.set_mesh(mesh) if kind == "explicit" else (
      contextlib.nullcontext())
  with ambient:
    update = jax.jit(tx.update)
    state = jax.jit(tx.init, out_shardings=want)(params)
    assert _shardings(state) == want
    _, state = update(grads, state, params)
    assert _shardings(state) == want  # What jit inferred (Auto axes).
    _, state = update(grads, tx.init(params), params)
    assert _shardings(state) == want
  for s in jax.tree.leaves(want):
    assert isinstance(s, NamedSharding) and s.mesh == mesh


def test_momentum_follows_its_parameter_and_counters_are_replicated():
  mesh, params, param_shardings = _placed("auto")
  tx = ortho_optax.muon(0.02, sharding="distribute")
  got = ortho_optax.state_shardings(tx, params, param_shardings)
  momentum = got.inner_state.inner_states["orthogonalize"].inner_state[0]
  assert momentum.mu["layer"]["w1"] == param_shardings["layer"]["w1"]
  assert momentum.mu["layer"]["w2"] == param_shardings["layer"]["w2"]
  assert isinstance(momentum.mu["b"], optax.MaskedNode)
  assert momentum.count == NamedSharding(mesh, P())
  # ShapeDtypeStructs: nothing is allocated, the same answer.
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params
  )
  assert ortho_optax.state_shardings(tx, abstract, param_shardings) == got


def test_map_params_needs_the_masked_node_leaf():
  """``optax.tree.map_params`` on our states: with ``is_leaf`` stopping at
  the partition's ``MaskedNode``s it gives ``state_shardings``' answer
  where the state's parameter-shaped parts hold parameter-shaped arrays."""
  mesh, params, param_shardings = _placed("auto")
  tx = ortho_optax.muon(0.02)
  state = tx.init(params)
  replicated = NamedSharding(mesh, P())
  with pytest.raises(ValueError, match="MaskedNode"):
    optax.tree.map_params(
        tx, lambda _, s: s, state, param_shardings,
        transform_non_params=lambda _: replicated,
    )
  masked = lambda x: isinstance(x, optax.MaskedNode)
  got = optax.tree.map_params(
      tx, lambda x, s: x if masked(x) else s, state, param_shardings,
      transform_non_params=lambda _: replicated, is_leaf=masked,
  )
  assert got == ortho_optax.state_shardings(tx, params, param_shardings)


def test_orbax_restores_onto_the_mesh():
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  mesh, params, param_shardings = _placed("auto")
  tx = ortho_optax.dion(0.02)  # A random factor Q_0 besides zeros.
  shardings = ortho_optax.state_shardings(tx, params, param_shardings)
  state = jax.jit(tx.init, out_shardings=shardings)(params)
  target = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      jax.eval_shape(tx.init, params), shardings,
  )
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "state")
    with ocp.StandardCheckpointer() as ckpt:
      ckpt.save(path, state)
      ckpt.wait_until_finished()
      restored = ckpt.restore(path, target)
  assert _shardings(restored) == shardings
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state),
                  strict=True):
    assert jnp.array_equal(a, b)


def test_refuses_unplaced_parameters_and_two_meshes():
  mesh, params, param_shardings = _placed("auto")
  tx = ortho_optax.muon(0.02)
  with pytest.raises(
      TypeError, match=r"NamedSharding.*\['b'\] \(shape \(8,\)\)"
  ):
    ortho_optax.state_shardings(
        tx, params, {**param_shardings, "b": P("model")}
    )
  with pytest.raises(ValueError, match="structure of `params`"):
    ortho_optax.state_shardings(tx, params, [param_shardings])
  other = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Auto,))
  with pytest.raises(ValueError, match="one mesh"):
    ortho_optax.state_shardings(
        tx, params, {**param_shardings, "b": NamedSharding(other, P())}
    )
