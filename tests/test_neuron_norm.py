"""Tests of scale_by_neuron_norm (NorMuon's per-neuron second moment)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ortho_optax


def _normal(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _numpy_normuon(os_, beta2, eps, rescale, rms=0.2):
  """NorMuon's normalization written out on (in, out) matrices, float64."""
  v = np.zeros((1, os_[0].shape[1]))
  outs = []
  for o in os_:
    o = np.asarray(o, np.float64)
    v = beta2 * v + (1 - beta2) * np.mean(o * o, axis=0, keepdims=True)
    o_hat = o / (np.sqrt(v) + eps)
    if rescale == "frobenius":
      target = np.linalg.norm(o)
    else:
      target = rms * np.sqrt(o.size)
    outs.append(o_hat * target / (np.linalg.norm(o_hat) + eps))
  return outs, v


@pytest.mark.parametrize("rescale", ["frobenius", "rms"])
def test_matches_numpy_over_steps(rescale):
  tx = ortho_optax.scale_by_neuron_norm(0.9, 1e-8, rescale=rescale)
  os_ = [_normal(s, (6, 4)) for s in range(5)]
  state = tx.init({"w": jnp.zeros((6, 4))})
  expected, v = _numpy_normuon(os_, 0.9, 1e-8, rescale)
  for o, e in zip(os_, expected):
    out, state = tx.update({"w": jnp.asarray(o)}, state)
    np.testing.assert_allclose(out["w"], e, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.nu["w"], v, rtol=1e-5)


def test_frobenius_rescale_keeps_norm():
  tx = ortho_optax.scale_by_neuron_norm()
  o = _normal(1, (8, 5))
  out, _ = tx.update({"w": jnp.asarray(o)}, tx.init({"w": jnp.zeros((8, 5))}))
  np.testing.assert_allclose(
      np.linalg.norm(out["w"]), np.linalg.norm(o), rtol=1e-5
  )


def test_rms_rescale_gives_rms():
  tx = ortho_optax.scale_by_neuron_norm(rescale="rms", rms=0.2)
  o = _normal(2, (8, 5))
  out, _ = tx.update({"w": jnp.asarray(o)}, tx.init({"w": jnp.zeros((8, 5))}))
  np.testing.assert_allclose(np.sqrt(np.mean(out["w"] ** 2)), 0.2, rtol=1e-5)


def test_beta2_zero_equalizes_neuron_rms():
  # With beta2 = 0, v is this step's mean square per output column, so all
  # output neurons (columns of an (in, out) kernel) get the same RMS.
  tx = ortho_optax.scale_by_neuron_norm(0.0)
  o = _normal(3, (7, 4)) * np.array([0.1, 1.0, 3.0, 10.0], np.float32)
  out, _ = tx.update({"w": jnp.asarray(o)}, tx.init({"w": jnp.zeros((7, 4))}))
  col_rms = np.sqrt(np.mean(np.asarray(out["w"]) ** 2, axis=0))
  np.testing.assert_allclose(col_rms, np.full(4, col_rms[0]), rtol=1e-5)


def test_state_shapes():
  params = {
      "w": jnp.zeros((6, 4)),
      "stacked": jnp.zeros((3, 6, 4)),
      "conv": jnp.zeros((3, 3, 2, 5)),
      "b": jnp.zeros(4),
  }
  state = ortho_optax.scale_by_neuron_norm().init(params)
  assert state.nu["w"].shape == (1, 4)
  assert state.nu["stacked"].shape == (3, 1, 4)
  assert state.nu["conv"].shape == (1, 1, 1, 5)
  assert isinstance(state.nu["b"], optax.MaskedNode)


def test_stacked_layers_are_independent():
  tx = ortho_optax.scale_by_neuron_norm(0.5)
  o = _normal(4, (3, 6, 4))
  out, _ = tx.update({"s": jnp.asarray(o)}, tx.init({"s": jnp.zeros(o.shape)}))
  for i in range(3):
    expected, _ = _numpy_normuon([o[i]], 0.5, 1e-8, "frobenius")
    np.testing.assert_allclose(out["s"][i], expected[0], rtol=1e-5, atol=1e-6)


def test_conv_statistic_over_flattened_fan_in():
  tx = ortho_optax.scale_by_neuron_norm(0.5)
  o = _normal(5, (3, 3, 2, 5))
  out, _ = tx.update({"c": jnp.asarray(o)}, tx.init({"c": jnp.zeros(o.shape)}))
  expected, _ = _numpy_normuon([o.reshape(18, 5)], 0.5, 1e-8, "frobenius")
  np.testing.assert_allclose(
      out["c"], expected[0].reshape(o.shape), rtol=1e-5, atol=1e-6
  )


def test_vectors_pass_through_and_jit_and_bf16():
  params = {"w": jnp.ones((4, 6), jnp.bfloat16), "b": jnp.ones(6, jnp.bfloat16)}
  tx = ortho_optax.scale_by_neuron_norm()
  state = tx.init(params)
  out, new_state = jax.jit(tx.update)(params, state)
  assert out["w"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(out["b"], params["b"])
  dtypes = lambda t: jax.tree.map(lambda x: x.dtype, t)  # noqa: E731
  assert dtypes(state) == dtypes(new_state)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="`beta2`"):
    ortho_optax.scale_by_neuron_norm(1.0)
  with pytest.raises(ValueError, match="`rescale`"):
    ortho_optax.scale_by_neuron_norm(rescale="l2")
  with pytest.raises(ValueError, match="`eps`"):
    ortho_optax.scale_by_neuron_norm(eps=-1.0)


def _complex_normal(seed, shape):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(
      np.complex64
  )


@pytest.mark.parametrize("rescale", ["frobenius", "rms"])
def test_complex_matches_numpy_with_magnitudes(rescale):
  """Complex updates: the second moment is of |O|^2 (real), as in NumPy's
  re-derivation with o * conj(o); x * x would rotate the phases."""
  tx = ortho_optax.scale_by_neuron_norm(0.9, 1e-8, rescale=rescale)
  os_ = [_complex_normal(s, (6, 4)) for s in range(4)]
  state = tx.init({"w": jnp.zeros((6, 4), jnp.complex64)})
  assert state.nu["w"].dtype == jnp.float32
  v = np.zeros((1, 4))
  for o in os_:
    out, state = tx.update({"w": jnp.asarray(o)}, state)
    o64 = o.astype(np.complex128)
    v = 0.9 * v + 0.1 * np.mean(np.abs(o64) ** 2, axis=0, keepdims=True)
    o_hat = o64 / (np.sqrt(v) + 1e-8)
    target = np.linalg.norm(o64) if rescale == "frobenius" else 0.2 * np.sqrt(
        o.size
    )
    want = o_hat * target / (np.linalg.norm(o_hat) + 1e-8)
    assert out["w"].dtype == jnp.complex64
    np.testing.assert_allclose(out["w"], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.nu["w"], v, rtol=1e-5)
