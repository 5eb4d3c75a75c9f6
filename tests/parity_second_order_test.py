"""Parity of SOAP and Shampoo with float64 NumPy re-derivations.

SOAP is re-derived from the authors' ``soap.py`` (nikhilvyas/SOAP): its
first moment kept in the projected space and rotated whenever the basis
changes, ``lerp`` statistics, ``eigh`` bases (flipped to descending
eigenvalues) on the first call, which makes no update, and the refresh by
sorting, one power step and a QR every ``precondition_frequency`` steps.
It runs per matrix in the layout the transform sees, ``(fan_in,
fan_out)`` (a stacked ``(layers, in, out)`` leaf is ``layers`` matrices).
Our transforms run in float32, the references in float64.

Which cases are well posed: after one gradient, the statistic of the long
side of an ``m x n`` matrix (``m < n``) has ``n - m`` zero eigenvalues, and
``eigh`` may return any basis of that null space. SOAP's Adam is not
invariant to it (its second moment is per coordinate), so two correct
implementations may drift apart there. The 10-step trajectories therefore
use square matrices and a non-square one whose long side is above
``max_precond_dim`` (one-sided, as the reference for vocabulary sides); a
two-sided non-square matrix is checked step by step, the reference step
starting from our state.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ortho_optax

STEPS = 10
RTOL = 1e-4
LR = 0.01


def _normal(seed, shape, scale=1.0):
  rng = np.random.default_rng(seed)
  return (scale * rng.standard_normal(shape)).astype(np.float32)


def _grads(shapes, seed=0, steps=STEPS):
  return [
      {k: _normal(seed + 100 * t + i, s) for i, (k, s) in enumerate(
          shapes.items())}
      for t in range(steps)
  ]


def _matrices(x):
  """A leaf as its ``(B, fan_in, fan_out)`` matrices (the default
  routing: stacked leading axes, conv windows folded into fan-in)."""
  x = np.asarray(x, np.float64)
  if x.ndim == 2:
    return x[None]
  if x.ndim == 3:
    return x
  return x.reshape(1, -1, x.shape[-1])


class SoapReference:
  """The authors' ``SOAP.step`` for one 2-D matrix, in float64 NumPy.

  ``__call__`` returns the update ``u`` (the parameter moves by ``-lr *
  u``; weight decay is left out).
  """

  def __init__(self, shape, *, b1=0.95, b2=0.95, shampoo_beta=None,
               eps=1e-8, freq=10, max_dim=10000, correct_bias=True,
               normalize_grads=False, warmup=0):
    self.b1, self.b2, self.eps, self.freq = b1, b2, eps, freq
    # Ours, not the authors': also refresh after each of the first steps.
    self.warmup = warmup
    self.sb = b2 if shampoo_beta is None else shampoo_beta
    self.correct_bias, self.normalize_grads = correct_bias, normalize_grads
    self.step = 0
    self.exp_avg = np.zeros(shape)
    self.exp_avg_sq = np.zeros(shape)
    self.gg = [np.zeros((k, k)) if k <= max_dim else None for k in shape]
    self.q = None

  def project(self, x):
    for q in self.q:  # tensordot(x, q, [[0], [0]]) per axis, in turn
      x = np.tensordot(x, q, axes=([0], [0])) if q is not None else x.T
    return x

  def project_back(self, x):
    for q in self.q:  # tensordot(x, q, [[0], [1]])
      x = np.tensordot(x, q, axes=([0], [1])) if q is not None else x.T
    return x

  def _update_preconditioner(self, g):
    if self.q is not None:
      self.exp_avg = self.project_back(self.exp_avg)
    for axis in range(2):
      if self.gg[axis] is None:
        continue
      outer = g @ g.T if axis == 0 else g.T @ g
      self.gg[axis] = self.gg[axis] + (1 - self.sb) * (outer - self.gg[axis])
    if self.q is None:
      self.q = [
          None if m is None
          else np.flip(np.linalg.eigh(m + 1e-30 * np.eye(len(m)))[1], 1)
          for m in self.gg
      ]
    if self.step > 0 and (
        self.step % self.freq == 0 or self.step < self.warmup
    ):
      self._refresh()
    if self.step > 0:
      self.exp_avg = self.project(self.exp_avg)

  def _refresh(self):
    new = []
    for axis, (m, o) in enumerate(zip(self.gg, self.q)):
      if m is None:
        new.append(None)
        continue
      est = np.diag(o.T @ m @ o)
      idx = np.argsort(-est, kind="stable")
      self.exp_avg_sq = np.take(self.exp_avg_sq, idx, axis=axis)
      o = o[:, idx]
      new.append(np.linalg.qr(m @ o)[0])
    self.q = new

  def __call__(self, g):
    g = np.asarray(g, np.float64)
    if self.q is None:
      self._update_preconditioner(g)
      return np.zeros_like(g)
    gp = self.project(g)
    self.step += 1
    self.exp_avg = self.b1 * self.exp_avg + (1 - self.b1) * gp
    self.exp_avg_sq = self.b2 * self.exp_avg_sq + (1 - self.b2) * gp**2
    denom = np.sqrt(self.exp_avg_sq) + self.eps
    size = 1.0
    if self.correct_bias:
      size = np.sqrt(1 - self.b2**self.step) / (1 - self.b1**self.step)
    u = self.project_back(self.exp_avg / denom)
    if self.normalize_grads:
      u = u / (1e-30 + np.mean(u**2) ** 0.5)
    self._update_preconditioner(g)
    return size * u


def _reference_trajectory(make, params, grads):
  """``params`` after ``-LR * u`` steps of one reference per matrix."""
  out = {}
  for k, x in params.items():
    mats = _matrices(x).copy()
    refs = [make(m.shape) for m in mats]
    for g in grads:
      gm = _matrices(g[k])
      for b, ref in enumerate(refs):
        mats[b] = mats[b] - LR * ref(gm[b])
    out[k] = mats.reshape(np.shape(x))
  return out


def _run(tx, params, grads):
  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params)
  step = jax.jit(tx.update)
  for g in grads:
    updates, state = step(jax.tree.map(jnp.asarray, g), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _displacement_errors(actual, expected, start):
  errs = {}
  for k in expected:
    a = np.asarray(actual[k], np.float64)
    moved = np.linalg.norm(expected[k] - np.asarray(start[k], np.float64))
    errs[k] = np.linalg.norm(a - expected[k]) / moved
  return errs


# Square, a stacked (layers, in, out) leaf, a conv kernel (3x3 window, 2 in,
# 18 = fan-in > max_precond_dim, so one-sided) and a non-square dense
# kernel whose long side is above max_precond_dim.
SOAP_SHAPES = {
    "square": (8, 8),
    "stacked": (2, 6, 6),
    "conv": (3, 3, 2, 5),
    "wide": (6, 20),
}
SOAP_MAX_DIM = 12


def test_soap_equals_the_authors_reference_over_ten_steps():
  params = {k: _normal(7 + i, s, 0.5) for i, (k, s) in enumerate(
      SOAP_SHAPES.items())}
  grads = _grads(SOAP_SHAPES)
  kw = dict(b1=0.9, b2=0.95, shampoo_beta=0.9, eps=1e-8)
  tx = optax.chain(
      ortho_optax.scale_by_soap(
          **kw, precondition_every=3, precondition_warmup=0,
          max_precond_dim=SOAP_MAX_DIM,
      ),
      optax.scale(-LR),
  )
  actual, _ = _run(tx, params, grads)
  expected = _reference_trajectory(
      lambda shape: SoapReference(
          shape, freq=3, max_dim=SOAP_MAX_DIM, **kw
      ),
      params, grads,
  )
  errs = _displacement_errors(actual, expected, params)
  assert max(errs.values()) < RTOL, errs


def test_soap_with_a_refresh_warmup_equals_the_reference_over_ten_steps():
  """``precondition_warmup``: the reference refreshed after each of its
  first steps too (calls 2-4 here), then every third."""
  params = {k: _normal(7 + i, s, 0.5) for i, (k, s) in enumerate(
      SOAP_SHAPES.items())}
  grads = _grads(SOAP_SHAPES, seed=2)
  tx = optax.chain(
      ortho_optax.scale_by_soap(
          precondition_every=3, precondition_warmup=4,
          max_precond_dim=SOAP_MAX_DIM,
      ),
      optax.scale(-LR),
  )
  actual, _ = _run(tx, params, grads)
  expected = _reference_trajectory(
      lambda shape: SoapReference(
          shape, freq=3, warmup=4, max_dim=SOAP_MAX_DIM
      ),
      params, grads,
  )
  errs = _displacement_errors(actual, expected, params)
  assert max(errs.values()) < RTOL, errs
  # The warm-up changes the trajectory: the same reference without it is
  # far off.
  plain = _reference_trajectory(
      lambda shape: SoapReference(shape, freq=3, max_dim=SOAP_MAX_DIM),
      params, grads,
  )
  assert max(_displacement_errors(actual, plain, params).values()) > 100 * RTOL


def test_soap_normalize_grads_and_no_bias_correction():
  shapes = {"square": (8, 8)}
  params = {"square": _normal(3, (8, 8), 0.5)}
  grads = _grads(shapes, seed=5, steps=6)
  tx = optax.chain(
      ortho_optax.scale_by_soap(
          precondition_every=2, precondition_warmup=0, normalize_grads=True,
          correct_bias=False,
      ),
      optax.scale(-LR),
  )
  actual, _ = _run(tx, params, grads)
  expected = _reference_trajectory(
      lambda shape: SoapReference(
          shape, freq=2, normalize_grads=True, correct_bias=False
      ),
      params, grads,
  )
  errs = _displacement_errors(actual, expected, params)
  assert max(errs.values()) < RTOL, errs


def _aligned(q, q_ref):
  """``q`` with each column's sign matched to ``q_ref``'s."""
  signs = np.sign(np.sum(q * q_ref, axis=0))
  return q * signs


def test_soap_step_by_step_on_a_two_sided_non_square_matrix():
  """Each reference step starts from our state (our bases, moments and
  statistics, in float64): the update, the statistics, the second moment
  and the refreshed bases agree at every step."""
  shape = (6, 10)  # (fan_in, fan_out): oriented as is (6 <= 10)
  tx = ortho_optax.scale_by_soap(
      b1=0.9, b2=0.95, precondition_every=2, precondition_warmup=0
  )
  params = {"w": jnp.zeros(shape)}
  state = tx.init(params)
  step = jax.jit(tx.update)
  ref = None
  worst = 0.0
  for t, g in enumerate(_grads({"w": shape}, seed=11, steps=8)):
    g = g["w"]
    if ref is not None:
      # Our state, as the reference keeps it.
      ref.q = [np.asarray(state.q_left["w"][0], np.float64),
               np.asarray(state.q_right["w"][0], np.float64)]
      ref.gg = [np.asarray(state.left["w"][0], np.float64),
                np.asarray(state.right["w"][0], np.float64)]
      ref.exp_avg = np.asarray(state.mu["w"], np.float64)
      ref.exp_avg_sq = np.asarray(state.nu["w"][0], np.float64)
      ref.step = t - 1
    else:
      ref = SoapReference(shape, b1=0.9, b2=0.95, freq=2)
    u_ref = ref(g)
    u, state = step({"w": jnp.asarray(g)}, state)
    u = np.asarray(u["w"], np.float64)
    if t == 0:
      assert np.all(u == 0)
      # The first bases: eigenvectors of the statistics, eigenvalues
      # descending (the null space of the long side is arbitrary).
      for s, q in ((state.left, state.q_left), (state.right, state.q_right)):
        s, q = np.asarray(s["w"][0], np.float64), np.asarray(q["w"][0])
        lam = np.diag(q.T @ s @ q)
        assert np.all(np.diff(lam) <= 1e-6 * lam[0])
        np.testing.assert_allclose(
            s @ q, q * lam, atol=1e-5 * np.abs(s).max()
        )
      continue
    err = np.linalg.norm(u - u_ref) / np.linalg.norm(u_ref)
    worst = max(worst, err)
    assert err < RTOL, (t, err)
    for ours, theirs in (
        (state.left, ref.gg[0]), (state.right, ref.gg[1]),
        (state.nu, ref.exp_avg_sq),
    ):
      np.testing.assert_allclose(
          np.asarray(ours["w"][0]), theirs, rtol=1e-5,
          atol=1e-6 * np.abs(theirs).max(),
      )
    if t % 2 == 0:  # a refresh step (the reference's step is t)
      for ours, theirs in ((state.q_left, ref.q[0]),
                           (state.q_right, ref.q[1])):
        ours = np.asarray(ours["w"][0], np.float64)
        np.testing.assert_allclose(
            _aligned(ours, theirs), theirs, atol=1e-4
        )
  assert worst > 0


# ------------------------------------------------------------------ Shampoo


def _inverse_root(a, p, eps):
  """:math:`(A + \\epsilon \\lambda_{max} I)^{-1/p}` by float64 eigh."""
  lam, u = np.linalg.eigh((a + a.T) / 2)
  lam = np.maximum(lam, 0)
  lam = lam + eps * lam.max()
  return (u * lam ** (-1.0 / p)) @ u.T


class ShampooReference:
  """Distributed Shampoo's update (Anil et al.) for one matrix, float64:
  EMA statistics, roots from the statistics every ``every`` steps, an
  Adam (RMSProp with bias correction) graft of each matrix's norm, then
  averaged Nesterov momentum."""

  def __init__(self, shape, *, b1=0.9, b2=0.999, eps=1e-6, graft_eps=1e-8,
               every=10, max_dim=4096, nesterov=True, graft=True):
    self.b1, self.b2, self.eps, self.graft_eps = b1, b2, eps, graft_eps
    self.every, self.nesterov, self.graft = every, nesterov, graft
    m, n = shape
    self.left = np.zeros((m, m)) if m <= max_dim else None
    self.right = np.zeros((n, n)) if n <= max_dim else None
    self.p = 2 * ((self.left is not None) + (self.right is not None))
    self.roots = [None, None]
    self.v = np.zeros(shape)
    self.m = np.zeros(shape)
    self.t = 0

  def __call__(self, g):
    g = np.asarray(g, np.float64)
    self.t += 1
    b1, b2 = self.b1, self.b2
    if self.left is not None:
      self.left = b2 * self.left + (1 - b2) * g @ g.T
    if self.right is not None:
      self.right = b2 * self.right + (1 - b2) * g.T @ g
    if (self.t - 1) % self.every == 0:
      self.roots = [
          None if s is None else _inverse_root(s, self.p, self.eps)
          for s in (self.left, self.right)
      ]
    self.v = b2 * self.v + (1 - b2) * g**2
    a = g / (np.sqrt(self.v / (1 - b2**self.t)) + self.graft_eps)
    if not self.graft:
      a = g
    if self.p:
      s = g
      if self.roots[0] is not None:
        s = self.roots[0] @ s
      if self.roots[1] is not None:
        s = s @ self.roots[1]
      u = s * np.linalg.norm(a) / np.linalg.norm(s) if self.graft else s
    else:
      u = a
    self.m = b1 * self.m + (1 - b1) * u
    return (1 - b1) * u + b1 * self.m if self.nesterov else self.m


# Square, non-square (both sides preconditioned), stacked, a conv kernel
# (18 x 4: the long side is above max_precond_dim, one-sided with p = 2).
SHAMPOO_SHAPES = {
    "square": (8, 8),
    "wide": (6, 10),
    "stacked": (2, 5, 7),
    "conv": (3, 3, 2, 4),
}


def test_shampoo_equals_the_reference_over_ten_steps():
  params = {k: _normal(17 + i, s, 0.5) for i, (k, s) in enumerate(
      SHAMPOO_SHAPES.items())}
  grads = _grads(SHAMPOO_SHAPES, seed=3)
  # eps 1e-3 (relative): the roots of the long side's statistic, rank
  # deficient for the first steps, are then not driven by the float32
  # round-off of its zero eigenvalues.
  kw = dict(b1=0.9, b2=0.95, eps=1e-3)
  tx = optax.chain(
      ortho_optax.scale_by_shampoo(
          **kw, precondition_every=3, max_precond_dim=12
      ),
      optax.scale(-LR),
  )
  actual, _ = _run(tx, params, grads)
  expected = _reference_trajectory(
      lambda shape: ShampooReference(shape, every=3, max_dim=12, **kw),
      params, grads,
  )
  errs = _displacement_errors(actual, expected, params)
  assert max(errs.values()) < RTOL, errs


def test_shampoo_without_graft_or_momentum():
  shapes = {"wide": (6, 10)}
  params = {"wide": _normal(1, (6, 10), 0.5)}
  grads = _grads(shapes, seed=9, steps=5)
  kw = dict(b1=0.0, b2=0.9, eps=1e-3)
  tx = optax.chain(
      ortho_optax.scale_by_shampoo(
          **kw, graft=None, nesterov=False, precondition_every=1
      ),
      optax.scale(-LR),
  )
  actual, _ = _run(tx, params, grads)
  expected = _reference_trajectory(
      lambda shape: ShampooReference(
          shape, every=1, graft=False, nesterov=False, **kw
      ),
      params, grads,
  )
  errs = _displacement_errors(actual, expected, params)
  assert max(errs.values()) < RTOL, errs


def test_shampoo_one_step_without_accumulation_is_the_polar_factor():
  """Muon is Shampoo without accumulation: with beta2 = 0, no graft, no
  momentum and eps -> 0, one step is (G G^T)^{-1/4} G (G^T G)^{-1/4} =
  U V^T (Bernstein and Newhouse, arXiv 2409.20325)."""
  tx = ortho_optax.scale_by_shampoo(
      b1=0.0, b2=0.0, eps=0.0, graft=None, nesterov=False
  )
  shapes = {"square": (8, 8), "wide": (6, 16), "tall": (16, 6),
            "stacked": (2, 5, 7)}
  g = {k: jnp.asarray(_normal(sum(s), s)) for k, s in shapes.items()}
  u, _ = jax.jit(tx.update)(g, tx.init(g))
  for k, shape in shapes.items():
    us, _, vts = np.linalg.svd(_matrices(g[k]), full_matrices=False)
    polar = (us @ vts).reshape(shape)
    err = np.abs(np.asarray(u[k], np.float64) - polar).max()
    assert err < 1e-4, (shape, err)
  # ... and the named optimizer, at learning rate 1, steps by -U V^T.
  named = ortho_optax.shampoo(
      1.0, b1=0.0, b2=0.0, eps=0.0, graft=None, nesterov=False
  )
  u_named, _ = jax.jit(named.update)(g, named.init(g), g)
  for k in shapes:
    np.testing.assert_allclose(
        -np.asarray(u_named[k]), np.asarray(u[k]), rtol=1e-6, atol=1e-6
    )
