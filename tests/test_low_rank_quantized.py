"""Dion, Dion2 and Trion with a quantized momentum (``mu_dtype="q8"``...).

Each step reads the stored codes back in float32, runs the float step and
stores the new momentum again: checked here step by step against the float
transform run from the dequantized state, and over many steps against the
float32 run, within the bound the format implies. The named optimizers'
state properties (inject_hyperparams, MultiSteps, Orbax...) with every
format are in ``test_quantized_optimizers.py``; sharding in
``test_low_rank_sharding.py``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ortho_optax
from ortho_optax.state import codes as codes_lib
from ortho_optax.state import quantized as Q
from ortho_optax.state import storage as S

NS = {"method": "newton_schulz"}
TRANSFORMS = {
    "dion": functools.partial(ortho_optax.scale_by_dion, 0.25),
    "dion2": functools.partial(ortho_optax.scale_by_dion2, 0.25, **NS),
    "trion": functools.partial(ortho_optax.scale_by_trion, 0.25, **NS),
}
SALTS = {"dion": S.DION_SALT, "dion2": S.DION2_SALT,
         "trion": S.TRION_SALT}
SHAPES = {"wide": (32, 64), "tall": (64, 32), "bias": (64,)}


def _grads(t):
  """A fixed drift plus fresh noise: a momentum with structure."""
  drift = np.random.default_rng(0)
  noise = np.random.default_rng(t + 1)
  return {
      k: jnp.asarray(
          drift.standard_normal(s) + noise.standard_normal(s), jnp.float32
      )
      for k, s in SHAPES.items()
  }


def _per_entry(q):
  """``q``'s block scales, one per entry (2-D leaves)."""
  l_m, l_n = q.block
  s = np.repeat(np.repeat(np.asarray(q.scales, np.float64), l_m, 0), l_n, 1)
  return s[: q.shape[0], : q.shape[1]]


_load = jax.jit(S.load)


@functools.partial(jax.jit, static_argnums=(1, 3))
def _store(mu, fmt, count, salt):
  return S.store(mu, fmt, None, count, salt=salt)


@functools.cache
def _compiled(name, fmt=None):
  """The transform with momentum storage ``fmt`` and its jitted update."""
  tx = TRANSFORMS[name](mu_dtype=fmt)
  return tx, jax.jit(tx.update)


STOCHASTIC = Q.QuantFormat("q8", stochastic=True)
SLOW = pytest.mark.slow
# The default run keeps Dion2 (the cheapest to compile, 1-2 s a case on 2
# cores) with both roundings; the other cases run with -m slow.
TRACKING = [
    pytest.param(name, fmt, id=f"{name}-{fmt_id}",
                 marks=() if (name, fmt_id) in (
                     ("dion2", "q8"), ("dion2", "stochastic")) else SLOW)
    for name in TRANSFORMS
    for fmt, fmt_id in (("q8", "q8"), ("q4", "q4"),
                        (STOCHASTIC, "stochastic"))
]


@pytest.mark.parametrize("name, fmt", TRACKING)
def test_quantized_momentum_tracks_float32(name, fmt):
  r"""Each step is the float step from the stored state; over 20 steps the
  momentum stays within the sum of the per-step rounding bounds of the
  float32 run's.

  Step t stores :math:`\tilde M_t = F_t(\tilde M_{t-1}) + r_t`, with
  :math:`|r_t| \le e\, s_b` entrywise (``e`` the code's ``max_error``,
  twice that stochastically, ``s_b`` the block scale). :math:`F_t` is
  :math:`B \mapsto B (I - (1 - \beta) P P^\top)` (Dion),
  :math:`(I - (1 - \beta) V^\top V) B` (Trion) or a row scaling by
  :math:`\beta` or 1 (Dion2), of norm at most 1 for a given basis, so
  while the float run picks the same basis the error is at most
  :math:`\sum_t \|r_t\|_F` (measured: 10-17x inside).
  """
  tq, update_q = _compiled(name, fmt)
  tf, update_f = _compiled(name)
  fmt = S.as_storage(fmt, "mu_dtype")
  e = codes_lib.CODES[fmt.code].max_error * (2 if fmt.stochastic else 1)
  params = {k: jnp.zeros(s) for k, s in SHAPES.items()}
  sq, sf = tq.init(params), tf.init(params)
  for k in ("wide", "tall"):
    assert isinstance(sq.mu[k], Q.QuantizedArray) and sq.mu[k].code == fmt.code
    assert sq.mu[k].codes.dtype == jnp.uint8
  assert isinstance(sq.mu["bias"], optax.MaskedNode)
  if name == "dion":  # the right factors are stored in the same format
    assert all(isinstance(sq.q[k], Q.QuantizedArray)
               and sq.q[k].code == fmt.code for k in ("wide", "tall"))
  bound = 0.0
  for t in range(20):
    g = _grads(t)
    # The float step from the dequantized state (and the same Q, count).
    forced = sf._replace(count=sq.count, mu=_load(sq.mu))
    if name == "dion":
      forced = forced._replace(q=_load(sq.q))
    u_want, s_want = update_f(g, forced)
    u, sq = update_q(g, sq)
    want = _store(s_want.mu, fmt, sq.count, SALTS[name])
    got = _load(sq.mu)
    for k in ("wide", "tall"):
      np.testing.assert_allclose(u[k], u_want[k], rtol=1e-5, atol=1e-5)
      # The stored codes are the float step's, quantized (the two programs
      # may differ by an ulp, which can move an entry across a midpoint).
      np.testing.assert_allclose(sq.mu[k].scales, want[k].scales, rtol=1e-6)
      assert np.mean(sq.mu[k].codes != want[k].codes) <= 0.01
      s_b = _per_entry(sq.mu[k])
      assert np.all(np.abs(got[k] - s_want.mu[k]) <= (e + 2**-20) * s_b)
      bound += e * np.sqrt(np.sum(s_b**2))
    if name == "dion":
      # Q is the float step's, rounded: within the format's error of each
      # block's scale, which is at most the matrix's largest entry.
      got_q = _load(sq.q)
      for k in ("wide", "tall"):
        top = np.max(np.abs(s_want.q[k]), axis=(-2, -1), keepdims=True)
        assert np.all(np.abs(got_q[k] - s_want.q[k]) <= (e + 2**-20) * top)
    _, sf = update_f(g, sf)
  err = np.sqrt(sum(
      np.sum((np.asarray(_load(sq.mu)[k], np.float64) - sf.mu[k]) ** 2)
      for k in ("wide", "tall")))
  assert err <= bound, (err, bound)
  assert jax.tree.map(jax.typeof, sq) == jax.tree.map(
      jax.typeof, tq.init(params))


NAMED = ("dion", "dion2", "trion")


def _named_params(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  shapes = {"w1": (32, 16), "w2": (16, 32), "b": (16,),
            "wte": {"embedding": (40, 8)}}
  return jax.tree.map(
      lambda s: jnp.asarray(rng.standard_normal(s) * 0.1, dtype), shapes,
      is_leaf=lambda s: isinstance(s, tuple))


def _quantized_leaves(state):
  leaves = jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, Q.QuantizedArray))
  return [x for x in leaves if isinstance(x, Q.QuantizedArray)]


# The named optimizers compile AdamW too (3-7 s a case on 2 cores): -m slow.
@SLOW
@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("fmt", ["q8", "q4"])
def test_named_optimizer_state_is_codes_and_scales(name, fmt):
  """Momentum, Dion's Q and AdamW's moments are codes and scales."""
  params = _named_params(jnp.bfloat16)
  tx = getattr(ortho_optax, name)(1e-2, mu_dtype=fmt, nu_dtype=fmt)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for t in range(2):
    g = jax.tree.map(lambda p, t=t: jnp.full_like(p, 0.1 * (t + 1)) + p,
                     params)
    u, new_state = update(g, state, params)
    assert jax.tree.map(jax.typeof, new_state) == jax.tree.map(
        jax.typeof, state)
    state = new_state
  assert jax.tree.map(lambda x: x.dtype, u) == jax.tree.map(
      lambda x: x.dtype, params)
  assert all(np.all(np.isfinite(np.asarray(x, np.float32)))
             for x in jax.tree.leaves(u))
  quantized = _quantized_leaves(state)
  # w1, w2 (momentum; Dion: and their Q), and AdamW's two moments of b and
  # the embedding.
  assert len(quantized) == (8 if name == "dion" else 6)
  assert {q.code for q in quantized} == {fmt, "u" + fmt[1:]}
  assert all(q.codes.dtype == jnp.uint8 for q in quantized)
  scale_ids = {id(q.scales) for q in quantized}
  floats = [x for x in jax.tree.leaves(state)
            if jnp.issubdtype(x.dtype, jnp.floating)
            and id(x) not in scale_ids]
  assert not floats


@SLOW
@pytest.mark.parametrize("name", NAMED)
def test_named_optimizer_stochastic_rounding(name):
  params = _named_params()
  stochastic = getattr(ortho_optax, name)(
      1e-2, mu_dtype=STOCHASTIC, nu_dtype=STOCHASTIC)
  nearest = getattr(ortho_optax, name)(1e-2, mu_dtype="q8", nu_dtype="q8")

  def run(tx, update):
    state = tx.init(params)
    for t in range(3):
      g = jax.tree.map(lambda p, t=t: p * (t + 1) + 0.01, params)
      _, state = update(g, state, params)
    return _quantized_leaves(state)

  update = jax.jit(stochastic.update)
  a, b = run(stochastic, update), run(stochastic, update)
  c = run(nearest, jax.jit(nearest.update))
  # Keyed by the step count: the same draws on every run.
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x.codes, y.codes)
  assert any(not np.array_equal(x.codes, y.codes) for x, y in zip(a, c))


def test_quantized_momentum_refuses_complex_leaves():
  g = {"w": jnp.ones((4, 6), jnp.complex64)}
  for name, factory in TRANSFORMS.items():
    with pytest.raises(TypeError, match="`mu_dtype`='q8'.*complex64"):
      factory(mu_dtype="q8").init(g)
    # A complex float storage is the buffer's own.
    state = factory(mu_dtype=jnp.complex64).init(g)
    assert state.mu["w"].dtype == jnp.complex64, name


@pytest.mark.parametrize("name, fmt", [
    pytest.param(n, f, marks=() if (n, f) == ("dion2", "q8") else SLOW)
    for n in TRANSFORMS for f in ("q8", "q4")
])
def test_quantized_momentum_over_the_float32_range(name, fmt):
  """Gradients scaled by 1e-30 or 1e30 give the same updates: the codes
  and block scales follow the scale (exactly for a power of two)."""
  tx, update = _compiled(name, fmt)
  params = {k: jnp.zeros(s) for k, s in SHAPES.items()}

  def last_update(scale):
    state = tx.init(params)
    for t in range(4):
      g = jax.tree.map(lambda x, s=scale: x * s, _grads(t))
      u, state = update(g, state)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(u))
    return u

  base = last_update(1.0)
  for scale in (1e-30, 1e30, 2.0**-100):
    u = last_update(scale)
    for k in ("wide", "tall"):
      if scale == 2.0**-100:
        np.testing.assert_array_equal(u[k], base[k])
      else:
        np.testing.assert_allclose(u[k], base[k], atol=2e-5)
