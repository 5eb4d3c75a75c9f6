"""Routing of Flax NNX parameter trees (attention kernels, biases, paths)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import ortho_optax
from ortho_optax import routing as _routing


def _attention_state():
  m = nnx.MultiHeadAttention(
      num_heads=4, in_features=32, qkv_features=32, decode=False,
      rngs=nnx.Rngs(0),
  )
  return nnx.state(m, nnx.Param)


def _flat(tree):
  return {
      jax.tree_util.keystr(p): v
      for p, v in jax.tree_util.tree_flatten_with_path(
          tree, is_leaf=lambda x: x is None or isinstance(x, tuple)
      )[0]
  }


def test_attention_kernels_are_fused_projections():
  dns = _flat(ortho_optax.dimension_numbers_tree(_attention_state()))
  for name in ("query", "key", "value"):
    assert dns[f"['{name}']['kernel'].value"] == (0, (1, 2))
    assert dns[f"['{name}']['bias'].value"] is None
  assert dns["['out']['kernel'].value"] == ((0, 1), 2)
  assert dns["['out']['bias'].value"] is None


def test_attention_query_is_orthogonalized_as_in_by_heads_times_dim():
  state = _attention_state()
  dns = ortho_optax.dimension_numbers_tree(state)
  g = jax.tree.map(
      lambda x: jax.random.normal(jax.random.key(1), x.shape), state
  )
  out = ortho_optax.scale_by_orthogonalization(dimension_numbers=dns).update(
      g, optax.EmptyState()
  )[0]
  q = g["query"]["kernel"][...]
  expected = ortho_optax.orthogonalize(q.reshape(32, 32)).reshape(q.shape)
  np.testing.assert_allclose(
      out["query"]["kernel"][...], expected, atol=1e-5
  )
  # Biases pass through.
  np.testing.assert_array_equal(out["key"]["bias"][...], g["key"]["bias"][...])


def test_a_module_named_value_is_not_confused_with_the_variable_value():
  # NNX paths end in `.value`; only a real module named `value` counts.
  state = {"mlp": {"kernel": jnp.ones((3, 4, 8))}}
  assert _routing.default_dimension_numbers(
      jax.tree_util.tree_flatten_with_path(state)[0][0][0], state["mlp"]["kernel"]
  ) == (1, 2)
