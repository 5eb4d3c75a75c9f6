"""Tests of qk_clip (MuonClip's per-head query/key rescaling)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ortho_optax


def _normal(seed, shape, scale=1.0):
  rng = np.random.default_rng(seed)
  return (scale * rng.standard_normal(shape)).astype(np.float32)


def _max_logits(attn, x):
  """Per-head max of q.k / sqrt(d) for an (in, heads, head_dim) layout."""
  q = jnp.einsum("ti,ihd->thd", x, attn["query"]["kernel"])
  k = jnp.einsum("ti,ihd->thd", x, attn["key"]["kernel"])
  if "bias" in attn["query"]:
    q = q + attn["query"]["bias"][None]
    k = k + attn["key"]["bias"][None]
  d = q.shape[-1]
  logits = jnp.einsum("qhd,khd->hqk", q, k) / np.sqrt(d)
  return jnp.max(logits, axis=(1, 2))


def _attention(seed, heads=4, in_features=16, head_dim=8, bias=True):
  attn = {}
  for i, name in enumerate(("query", "key", "value")):
    attn[name] = {
        "kernel": jnp.asarray(
            _normal(seed + i, (in_features, heads, head_dim), 1.5)
        )
    }
    if bias:
      attn[name]["bias"] = jnp.asarray(_normal(seed + 10 + i, (heads, head_dim)))
  return attn


def test_clipped_heads_reach_tau_exactly():
  attn = _attention(0)
  x = jnp.asarray(_normal(5, (12, 16)))
  s = _max_logits(attn, x)
  tau = float(np.median(np.asarray(s)))
  over = np.asarray(s) > tau
  assert over.any() and not over.all()
  new = ortho_optax.qk_clip({"attn": attn}, {"attn": s}, tau=tau)["attn"]
  s_new = np.asarray(_max_logits(new, x))
  np.testing.assert_allclose(s_new[over], tau, rtol=1e-5)
  np.testing.assert_allclose(s_new[~over], np.asarray(s)[~over], rtol=1e-6)
  # Values are never touched; query and key share the scaling (alpha 0.5).
  np.testing.assert_array_equal(new["value"]["kernel"], attn["value"]["kernel"])
  gamma = tau / np.asarray(s)
  for h in np.flatnonzero(over):
    for name in ("query", "key"):
      np.testing.assert_allclose(
          new[name]["kernel"][:, h], np.sqrt(gamma[h]) * attn[name]["kernel"][:, h],
          rtol=1e-6,
      )
  for h in np.flatnonzero(~over):
    np.testing.assert_array_equal(
        new["query"]["kernel"][:, h], attn["query"]["kernel"][:, h]
    )


def test_alpha_splits_the_scaling():
  attn = _attention(1, bias=False)
  s = jnp.array([400.0, 50.0, 100.0, 200.0])
  new = ortho_optax.qk_clip({"a": attn}, {"a": s}, tau=100.0, alpha=1.0)["a"]
  np.testing.assert_allclose(
      new["query"]["kernel"][:, 0], 0.25 * attn["query"]["kernel"][:, 0]
  )
  np.testing.assert_array_equal(new["key"]["kernel"], attn["key"]["kernel"])


def test_stacked_layers_and_jit():
  attn = {
      name: {"kernel": jnp.asarray(_normal(i, (3, 16, 2, 8)))}
      for i, name in enumerate(("query", "key"))
  }
  s = jnp.array([[200.0, 10.0], [10.0, 10.0], [10.0, 400.0]])
  new = jax.jit(ortho_optax.qk_clip)({"blocks": attn}, {"blocks": s})["blocks"]
  np.testing.assert_allclose(
      new["query"]["kernel"][0, :, 0],
      np.sqrt(0.5) * attn["query"]["kernel"][0, :, 0], rtol=1e-6,
  )
  np.testing.assert_allclose(
      new["key"]["kernel"][2, :, 1],
      0.5 * attn["key"]["kernel"][2, :, 1], rtol=1e-6,
  )
  np.testing.assert_array_equal(
      new["key"]["kernel"][1], attn["key"]["kernel"][1]
  )


def test_nnx_multihead_attention_state():
  model = nnx.MultiHeadAttention(
      num_heads=2, in_features=8, qkv_features=8, decode=False,
      rngs=nnx.Rngs(0),
  )
  state = nnx.state(model, nnx.Param)
  new = ortho_optax.qk_clip(state, {}, tau=1.0)  # nothing to clip
  chex_leaves = zip(jax.tree.leaves(state), jax.tree.leaves(new))
  for a, b in chex_leaves:
    np.testing.assert_array_equal(a, b)
  new = ortho_optax.qk_clip(
      {"mha": state}, {"mha": jnp.array([4.0, 0.5])}, tau=1.0
  )["mha"]
  np.testing.assert_allclose(
      new["query"]["kernel"][...][:, 0], 0.5 * state["query"]["kernel"][...][:, 0],
      rtol=1e-6,
  )
  nnx.update(model, new)  # the clipped state loads back into the module


def test_errors():
  attn = _attention(2, heads=4)
  with pytest.raises(ValueError, match="max_logits"):
    ortho_optax.qk_clip({"a": attn}, {"a": jnp.ones(3)})
  with pytest.raises(ValueError, match="no 'query'"):
    ortho_optax.qk_clip({"a": attn}, {"b": jnp.ones(4)})
  with pytest.raises(ValueError, match="`tau`"):
    ortho_optax.qk_clip({"a": attn}, {"a": jnp.ones(4)}, tau=0.0)
  with pytest.raises(ValueError, match="`alpha`"):
    ortho_optax.qk_clip({"a": attn}, {"a": jnp.ones(4)}, alpha=2.0)
