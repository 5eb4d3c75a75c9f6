"""Tests of the routing: labels, dimension numbers, reshaping, grouping."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ortho_optax
from ortho_optax import routing as _routing

MDN = optax.contrib.MuonDimensionNumbers
ORTHO = "orthogonalize"
ADAM = "adam"


def _normal(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape, np.float32)


def _polar(x):
  """NumPy polar factor of the last two axes."""
  u, _, vh = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
  return (u @ vh).astype(np.float32)


def _gpt_like_tree():
  return {
      "wte": {"embedding": _normal(0, (16, 4))},
      "embed": _normal(1, (16, 4)),
      "embedding": _normal(1, (16, 4)),
      "layers_0": {
          "attn": {"kernel": _normal(2, (4, 4))},
          "mlp": {"kernel": _normal(3, (4, 8)), "bias": np.zeros(8)},
          "norm": {"scale": np.ones(4)},
      },
      "lm_head": {"kernel": _normal(4, (4, 16))},
      "head": {"kernel": _normal(4, (4, 3))},
      "logits": {"kernel": _normal(4, (4, 3))},
      "unembed": _normal(4, (4, 16)),
      "conv": {"kernel": _normal(5, (3, 3, 2, 5))},
      "stacked": _normal(6, (3, 4, 6)),
      "scalar": np.ones(()),
  }


# ------------------------------------------------------------------ labels


def test_default_labels():
  labels = ortho_optax.label_params(_gpt_like_tree())
  assert labels == {
      "wte": {"embedding": ADAM},
      "embed": ADAM,
      "embedding": ADAM,
      "layers_0": {
          "attn": {"kernel": ORTHO},
          "mlp": {"kernel": ORTHO, "bias": ADAM},
          "norm": {"scale": ADAM},
      },
      "lm_head": {"kernel": ADAM},
      "head": {"kernel": ADAM},
      "logits": {"kernel": ADAM},
      "unembed": ADAM,
      "conv": {"kernel": ORTHO},
      "stacked": ORTHO,
      "scalar": ADAM,
  }


def test_default_dimension_numbers_conv_and_stacked():
  dns = ortho_optax.dimension_numbers_tree(_gpt_like_tree())
  conv, stacked = dns["conv"]["kernel"], dns["stacked"]
  # HWIO conv kernel: (kh * kw * in, out).
  assert _routing.normalize_dimension_numbers(conv, 4) == (
      (), (0, 1, 2), (3,))
  assert _routing.fan_in_out((3, 3, 2, 5), conv) == (18, 5)
  # Stacked layers (L, in, out): L is a batch axis.
  assert _routing.normalize_dimension_numbers(stacked, 3) == ((0,), (1,), (2,))
  assert dns["layers_0"]["attn"]["kernel"] == ortho_optax.DimensionNumbers(0, 1)
  assert dns["lm_head"]["kernel"] is None
  assert dns["layers_0"]["mlp"]["bias"] is None


def test_flax_nnx_state_labels():
  nnx = pytest.importorskip("flax.nnx")

  class Model(nnx.Module):

    def __init__(self, rngs):
      self.embed = nnx.Embed(10, 4, rngs=rngs)
      self.hidden = nnx.Linear(4, 4, rngs=rngs)
      self.lm_head = nnx.Linear(4, 10, rngs=rngs)

  state = nnx.state(Model(nnx.Rngs(0)), nnx.Param)
  labels = jax.tree.leaves(ortho_optax.label_params(state))
  paths = [
      jax.tree_util.keystr(p)
      for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]
  ]
  got = dict(zip(paths, labels))
  assert [p for p, lab in got.items() if lab == ORTHO] == [
      "['hidden']['kernel'].value"
  ], got


def test_rules_regex_list_overrides_defaults():
  params = _gpt_like_tree()
  labels = ortho_optax.label_params(
      params,
      rules=[
          (r"lm_head", ORTHO),  # first match wins
          (r"layers_0.*attn", ADAM),
          (r"conv", None),
          (r"stacked", MDN(reduction_axis=(0, 1), output_axis=2)),
      ],
  )
  assert labels["lm_head"]["kernel"] == ORTHO
  assert labels["layers_0"]["attn"]["kernel"] == ADAM
  assert labels["layers_0"]["mlp"]["kernel"] == ORTHO
  assert labels["conv"]["kernel"] == ADAM
  assert labels["stacked"] == ORTHO
  dns = ortho_optax.dimension_numbers_tree(
      params, rules=[(r"stacked", MDN((0, 1), 2))]
  )
  assert _routing.fan_in_out((3, 4, 6), dns["stacked"]) == (12, 6)


def test_rules_callable_overrides_defaults():
  seen = []

  def rule(path, leaf):
    seen.append(path)
    if "embedding" in path:
      return ORTHO
    if leaf.ndim == 2 and leaf.shape[1] == 8:
      return ADAM
    return ...  # keep the default

  labels = ortho_optax.label_params(_gpt_like_tree(), rules=rule)
  assert labels["wte"]["embedding"] == ORTHO
  assert labels["embedding"] == ORTHO
  assert labels["layers_0"]["mlp"]["kernel"] == ADAM
  assert labels["layers_0"]["attn"]["kernel"] == ORTHO
  assert labels["embed"] == ADAM
  assert "['layers_0']['attn']['kernel']" in seen


def test_optax_muon_dimension_numbers_tree_and_callable():
  params = {
      "w": jnp.ones((4, 6)),
      "emb": jnp.ones((10, 4)),  # not named "embed*": routed by the user
      "conv": jnp.ones((3, 3, 2, 5)),
      "b": jnp.ones(6),
  }
  tree = {
      "w": MDN(),
      "emb": None,
      "conv": MDN(reduction_axis=(0, 1, 2), output_axis=3),
      "b": None,
  }
  want = {"w": ORTHO, "emb": ADAM, "conv": ORTHO, "b": ADAM}
  assert ortho_optax.label_params(params, dimension_numbers=tree) == want
  assert (
      ortho_optax.label_params(params, dimension_numbers=lambda p: tree)
      == want
  )
  dns = ortho_optax.dimension_numbers_tree(params, dimension_numbers=tree)
  assert _routing.fan_in_out((3, 3, 2, 5), dns["conv"]) == (18, 5)
  # Migrating optax users: the same routing in muon and in optax's muon.
  tx = ortho_optax.muon(0.1, dimension_numbers=tree)
  state = tx.init(params)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)


def test_optax_dimension_numbers_prefix_tree():
  params = {"blocks": {"a": jnp.ones((2, 3)), "b": jnp.ones((3, 2))},
            "bias": jnp.ones(3)}
  labels = ortho_optax.label_params(
      params, dimension_numbers={"blocks": MDN(), "bias": None}
  )
  assert labels == {"blocks": {"a": ORTHO, "b": ORTHO}, "bias": ADAM}


@pytest.mark.parametrize(
    "leaf, rule, match",
    [
        (jnp.ones((2, 2, 2, 2, 2)), ORTHO, "rank 5"),
        (jnp.ones(3), MDN(), "rank 1"),
        (jnp.ones((3, 4, 5)), MDN(0, 5), "out of range"),
        (jnp.ones((3, 4)), MDN(0, 0), "repeat"),
        (jnp.ones((3, 4), jnp.int32), ORTHO, "dtype int32"),
    ],
)
def test_unhandled_leaf_error_names_path_and_shape(leaf, rule, match):
  params = {"block": {"weird": leaf}, "ok": jnp.ones((2, 2))}
  path = "['block']['weird']"
  with pytest.raises(ValueError, match=match) as err:
    ortho_optax.label_params(params, rules=[("weird", rule)])
  assert path in str(err.value)
  assert str(tuple(leaf.shape)) in str(err.value)
  if not jnp.issubdtype(leaf.dtype, jnp.inexact):
    # The named optimizers never update integer leaves, whatever the
    # routing: they pass through with a zero update.
    tx = ortho_optax.muon(0.1, rules=[("weird", rule)])
    updates, _ = tx.update(params, tx.init(params), params)
    assert updates["block"]["weird"].dtype == leaf.dtype
    assert not jnp.any(updates["block"]["weird"])
    return
  # The named optimizers fail the same way, at init.
  with pytest.raises(ValueError) as err:
    ortho_optax.muon(0.1, rules=[("weird", rule)]).init(params)
  assert path in str(err.value)


def test_unknown_rule_value_fails_at_construction():
  params = {"w": jnp.ones((3, 4))}
  with pytest.raises(ValueError, match="Unknown `rules` value 'sideways'"):
    ortho_optax.label_params(params, rules=[("w", "sideways")])
  with pytest.raises(ValueError, match="Unknown `rules` value 'sideways'"):
    ortho_optax.muon(0.1, rules=[("w", "sideways")])


def test_none_leaves_are_not_matrices():
  params = {"w": jnp.ones((3, 3)), "frozen": None}
  assert ortho_optax.dimension_numbers_tree(params)["frozen"] is None
  assert ortho_optax.label_params(params)["w"] == ORTHO


# --------------------------------------------------------------- reshaping


@pytest.mark.parametrize(
    "shape, dn, matrix_shape",
    [
        ((4, 6), MDN(0, 1), (1, 4, 6)),
        ((4, 6), MDN(1, 0), (1, 6, 4)),
        ((3, 3, 2, 5), MDN((0, 1, 2), 3), (1, 18, 5)),
        ((7, 4, 6), MDN(1, 2), (7, 4, 6)),
        ((4, 7, 6), MDN(0, -1), (7, 4, 6)),  # batch axis in the middle
        ((2, 3, 4, 5), MDN(-1, (0, 2)), (3, 5, 8)),
        ((2, 3, 4, 5), MDN((3, 1), 0), (4, 15, 2)),
    ],
)
def test_to_matrix_from_matrix_round_trip(shape, dn, matrix_shape):
  x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
  m = _routing.to_matrix(x, dn)
  assert m.shape == matrix_shape
  np.testing.assert_array_equal(_routing.from_matrix(m, dn, shape), x)
  # A plain 2-D (in, out) kernel is itself.
  if dn == MDN(0, 1):
    np.testing.assert_array_equal(m[0], x)


def test_to_matrix_orders_fan_in_like_numpy_reshape():
  x = jnp.arange(3 * 3 * 2 * 5.0).reshape(3, 3, 2, 5)
  m = _routing.to_matrix(x, MDN((0, 1, 2), 3))
  np.testing.assert_array_equal(m[0], np.asarray(x).reshape(18, 5))


# ---------------------------------------------------------------- grouping


def _grouping_tree():
  return {
      "a": jnp.asarray(_normal(10, (4, 8))),
      "b": jnp.asarray(_normal(11, (4, 8))),
      "c": jnp.asarray(_normal(12, (8, 4))),  # transposed shape
      "stack": jnp.asarray(_normal(13, (3, 4, 8))),  # 3 more (4, 8)s
      "d": jnp.asarray(_normal(14, (5, 6))),
      "conv": jnp.asarray(_normal(15, (1, 2, 3, 6))),  # (6, 6)
      "e": jnp.asarray(_normal(16, (6, 6))),
      "bias": jnp.asarray(_normal(17, (8,))),
      "none": None,
  }


def test_map_matrix_groups_one_call_per_shape():
  params = _grouping_tree()
  dns = ortho_optax.dimension_numbers_tree(params)
  calls = []

  def fn(stack):
    calls.append(stack.shape)
    return jnp.asarray(_polar(stack))

  out = _routing.map_matrix_groups(fn, params, dns)
  # (4, 8): a, b, c^T and the 3 stacked layers; (5, 6): d; (6, 6): conv, e.
  assert sorted(calls) == [(1, 5, 6), (2, 6, 6), (6, 4, 8)]
  assert out["none"] is None
  np.testing.assert_array_equal(out["bias"], params["bias"])
  for key in ("a", "b", "c", "stack", "d", "conv", "e"):
    dn = dns[key]
    want = _routing.from_matrix(
        _polar(_routing.to_matrix(params[key], dn)), dn, params[key].shape
    )
    assert out[key].shape == params[key].shape
    np.testing.assert_allclose(out[key], want, rtol=1e-5, atol=1e-5)


def test_map_matrix_groups_equals_per_leaf_newton_schulz():
  params = _grouping_tree()
  dns = ortho_optax.dimension_numbers_tree(params)
  grouped = jax.jit(
      lambda p: _routing.map_matrix_groups(ortho_optax.orthogonalize, p, dns)
  )(params)
  per_leaf = jax.jit(
      lambda p: _routing.map_matrices(ortho_optax.orthogonalize, p, dns)
  )(params)
  for g, p in zip(jax.tree.leaves(grouped), jax.tree.leaves(per_leaf)):
    np.testing.assert_allclose(g, p, rtol=1e-5, atol=1e-5)


def test_map_matrix_groups_keeps_dtypes_apart():
  params = {"f32": jnp.ones((4, 8)), "bf16": jnp.ones((4, 8), jnp.bfloat16)}
  dns = ortho_optax.dimension_numbers_tree(params)
  calls = []

  def fn(stack):
    calls.append(stack.dtype)
    return stack

  out = _routing.map_matrix_groups(fn, params, dns)
  assert len(calls) == 2
  assert out["bf16"].dtype == jnp.bfloat16 and out["f32"].dtype == jnp.float32


def test_masked_node_in_dimension_numbers_is_not_a_matrix():
  """optax's test_scale_by_shape_handles_masked_node: a MaskedNode in the
  user's dimension numbers (tree or callable) means "not a matrix"."""
  params = {"w1": jnp.ones((5, 20)), "w2": jnp.ones((5, 5))}

  def dims(_):
    return {"w1": MDN(0, 1), "w2": optax.MaskedNode()}

  tx = ortho_optax.scale_by_shape(dimension_numbers=dims)
  updates, _ = tx.update(params, tx.init(params), params)
  np.testing.assert_array_equal(updates["w1"], 2.0 * params["w1"])
  np.testing.assert_array_equal(updates["w2"], params["w2"])
  assert ortho_optax.label_params(params, dimension_numbers=dims) == {
      "w1": ORTHO, "w2": ADAM
  }
  # Through a named optimizer, as a tree and as a callable: w2 is AdamW's.
  for dn in (dims, dims(params)):
    tx = ortho_optax.muon(0.1, dimension_numbers=dn)
    updates, _ = tx.update(params, tx.init(params), params)
    np.testing.assert_allclose(updates["w2"], -0.1 * np.ones((5, 5)),
                               rtol=1e-5)


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (2, 0, 3), (0, 3, 3)])
def test_zero_size_leaves_are_not_matrices(shape):
  """An empty leaf has nothing to orthogonalize, whatever the routing."""
  params = {"w": jnp.ones((3, 4)), "empty": jnp.zeros(shape)}
  dns = _routing.dimension_numbers_tree(params)
  assert dns["empty"] is None
  dns = _routing.resolve_dimension_numbers(params, MDN(len(shape) - 2,
                                                       len(shape) - 1))
  assert dns["empty"] is None and dns["w"] is not None
  tx = ortho_optax.scale_by_orthogonalization(dimension_numbers=MDN(-2, -1))
  updates, _ = tx.update(params, tx.init(params), params)
  assert updates["empty"].shape == shape


def test_integer_leaves_are_not_matrices_by_default():
  params = {"w": jnp.ones((3, 4)), "table": jnp.ones((3, 4), jnp.int32),
            "mask": jnp.ones((3, 4), bool)}
  assert ortho_optax.label_params(params) == {
      "w": ORTHO, "table": ADAM, "mask": ADAM
  }
  # A prefix broadcast does not make them matrices either.
  dns = _routing.dimension_numbers_tree(params, dimension_numbers=MDN())
  assert dns["table"] is None and dns["mask"] is None
