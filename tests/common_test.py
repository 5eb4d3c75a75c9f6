"""Properties every named optimizer of ortho_optax must have.

One suite, parameterized by optimizer name over ``REGISTRY``: every public
optimizer (a public function whose first argument is ``learning_rate``) must
be listed there, which ``test_registry_lists_every_public_optimizer``
checks. Test names carry the optimizer's name, so ``pytest -k muon`` works.
"""

import functools
import inspect
import itertools
import os
import tempfile
from typing import Any
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest
from absl.testing import parameterized

import ortho_optax


class Entry(NamedTuple):
  """How the common suite builds one optimizer.

  Attributes:
    factory: the public optimizer function.
    kwargs: its arguments (``learning_rate`` included) for the property
      tests and the convergence tests.
    static_args: the arguments ``optax.inject_hyperparams`` must keep static
      (integers and strings that shape the program).
  """

  factory: Any
  kwargs: dict
  static_args: tuple = ()


_LR = dict(learning_rate=1e-2)
REGISTRY = {
    "muon": Entry(ortho_optax.muon, _LR),
    "turbo_muon": Entry(ortho_optax.turbo_muon, _LR, ("steps",)),
    "normuon": Entry(ortho_optax.normuon, _LR),
    "adamuon": Entry(ortho_optax.adamuon, _LR),
    "root": Entry(ortho_optax.root, _LR, ("steps",)),
    "auon": Entry(ortho_optax.auon, _LR, ("hybrid_steps",)),
    "hybrid_auon": Entry(ortho_optax.hybrid_auon, _LR, ("hybrid_steps",)),
    # Scion's preset radius is 3: lr * radius is its step size.
    "scion": Entry(ortho_optax.scion, dict(learning_rate=3e-3)),
    "trust_region": Entry(ortho_optax.trust_region, _LR),
    # Low-rank methods: the rank is a Python int or fraction (static).
    "dion": Entry(ortho_optax.dion, _LR, ("rank", "seed")),
    "dion2": Entry(ortho_optax.dion2, _LR, ("rank",)),
    "trion": Entry(ortho_optax.trion, _LR, ("rank",)),
}


def public_optimizers() -> set[str]:
  """Public functions of ortho_optax whose first argument is the lr."""
  names = set()
  for name in ortho_optax.__all__:
    obj = getattr(ortho_optax, name)
    # Functions and functools.partial variants, not classes.
    if not callable(obj) or inspect.isclass(obj):
      continue
    params = list(inspect.signature(obj).parameters)
    if params and params[0] == "learning_rate":
      names.add(name)
  return names


def _make(name, **overrides):
  entry = REGISTRY[name]
  return entry.factory(**{**entry.kwargs, **overrides})


@functools.cache
def _plain(name):
  """The registry's optimizer and its jitted update, shared by the tests.

  Most properties are checked on the same optimizer and tree, so the
  update is compiled once per optimizer (and dtype) rather than per test.
  """
  tx = _make(name)
  return tx, jax.jit(tx.update)


def _named(*axes):
  """``named_parameters`` cases for the product of ``axes`` (dicts)."""
  cases = []
  for combo in itertools.product(*axes):
    kwargs = {}
    for part in combo:
      kwargs.update(part)
    label = "_".join(str(v) for v in kwargs.values())
    cases.append(dict(testcase_name=label, **kwargs))
  return cases


NAMES = [dict(name=n) for n in REGISTRY]
DTYPES = [dict(dtype="float32"), dict(dtype="bfloat16")]


# ----------------------------------------------------------------- targets


def _targets():
  """``{name: (init, goal)}``: 1-D, 2x2 and mixed 1-D + 2-D quadratics."""
  return {
      "parabola": (
          jnp.array([1.0, -2.0, 3.0]),
          jnp.array([0.5, 0.0, -1.0]),
      ),
      "matrix": (
          jnp.array([[1.0, 2.0], [3.0, 4.0]]),
          jnp.array([[0.0, 1.0], [-1.0, 0.5]]),
      ),
      "mixed": (
          {
              "b": jnp.array([1.0, -1.0, 2.0]),
              "w": jnp.arange(12.0).reshape(3, 4) / 10,
          },
          {
              "b": jnp.array([0.0, 0.5, 1.0]),
              "w": 0.3 * jnp.ones((3, 4)) - jnp.eye(3, 4),
          },
      ),
  }


def _loss(params, target):
  return sum(
      jnp.sum((p - t) ** 2)
      for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(target))
  )


def _mixed_params(dtype="float32"):
  """Hidden matrix, head, bias and a ``None`` leaf (an equinox-style
  filtered tree): exercises both branches."""
  rng = np.random.default_rng(0)
  dtype = jnp.dtype(dtype)
  return {
      "hidden": {
          "kernel": jnp.asarray(rng.standard_normal((4, 6)), dtype),
          "bias": jnp.zeros(6, dtype),
      },
      "head": {"kernel": jnp.asarray(rng.standard_normal((6, 3)), dtype)},
      "frozen": None,
  }


def _tree_map(fn, *trees):
  """``jax.tree.map`` that keeps ``None`` leaves."""
  return jax.tree.map(
      lambda x, *r: None if x is None else fn(x, *r),
      *trees,
      is_leaf=lambda x: x is None,
  )


def _grads_like(params, seed):
  rng = np.random.default_rng(seed)
  return _tree_map(
      lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params
  )


def _updates(tx, params, steps=3, update=None):
  """The updates for ``steps`` fixed gradients (params do not move)."""
  state = tx.init(params)
  update = update or jax.jit(tx.update)
  out = []
  for t in range(steps):
    u, state = update(_grads_like(params, t), state, params)
    out.append(u)
  return out, state


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


# ------------------------------------------------------------------- tests


class RegistryTest(absltest.TestCase):

  def test_registry_lists_every_public_optimizer(self):
    missing = public_optimizers() - set(REGISTRY)
    self.assertEmpty(missing, f"add these optimizers to REGISTRY: {missing}")

  def test_static_args_are_parameters(self):
    for name, entry in REGISTRY.items():
      params = inspect.signature(entry.factory).parameters
      for arg in entry.static_args:
        self.assertIn(arg, params, f"{name}: unknown static arg {arg}")

  def test_learning_rate_is_schedule_annotated(self):
    for name, entry in REGISTRY.items():
      ann = inspect.signature(entry.factory).parameters["learning_rate"]
      self.assertIn("ScalarOrSchedule", str(ann.annotation), name)


class CommonTest(chex.TestCase):

  def setUp(self):
    super().setUp()
    # chex counts traces per code location, not per test case.
    chex.clear_trace_counter()

  @parameterized.named_parameters(_named(NAMES))
  def test_converges(self, name):
    """Each target is its own subtree; the leaves do not interact."""
    targets = _targets()
    init = {k: v[0] for k, v in targets.items()}
    goal = {k: v[1] for k, v in targets.items()}
    tx = _make(name)

    def step(carry, _):
      params, state = carry
      grads = jax.grad(_loss)(params, goal)
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    @jax.jit
    def run(params):
      (params, _), _ = jax.lax.scan(
          step, (params, tx.init(params)), length=2000
      )
      return params

    final = run(init)
    for target in targets:
      with self.subTest(target):
        chex.assert_trees_all_close(
            final[target], goal[target], rtol=3e-2, atol=3e-2
        )

  @parameterized.named_parameters(_named(NAMES))
  def test_no_retrace_and_extra_args(self, name):
    tx = optax.with_extra_args_support(_make(name))
    params = _mixed_params()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state, grads):
      updates, state = tx.update(grads, state, params, unexpected_kwarg=1.0)
      return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for t in range(3):
      params, state = step(params, state, _grads_like(params, t))
    chex.assert_tree_all_finite(params)

  @parameterized.named_parameters(_named(NAMES, DTYPES))
  def test_dtypes_and_state_types_stable(self, name, dtype):
    params = _mixed_params(dtype)
    tx, update = _plain(name)
    state = tx.init(params)
    updates, new_state = update(_grads_like(params, 0), state, params)
    chex.assert_trees_all_equal_dtypes(updates, params)
    # jax.typeof also shows weak types, which cause retraces.
    self.assertEqual(
        jax.tree.map(jax.typeof, state), jax.tree.map(jax.typeof, new_state)
    )
    chex.assert_trees_all_equal_dtypes(
        optax.apply_updates(params, updates), params
    )

  @parameterized.named_parameters(_named(NAMES))
  def test_none_leaf(self, name):
    """Equinox-style filtered trees have ``None`` leaves."""
    params = _mixed_params()
    tx, update = _plain(name)
    updates, _ = update(_grads_like(params, 0), tx.init(params), params)
    self.assertIsNone(updates["frozen"])
    chex.assert_tree_all_finite(updates)

  @parameterized.named_parameters(_named(NAMES))
  def test_inject_hyperparams_matches(self, name):
    entry = REGISTRY[name]
    params = _mixed_params()
    tx, update = _plain(name)
    plain, _ = _updates(tx, params, update=update)
    tx = optax.inject_hyperparams(
        entry.factory, static_args=entry.static_args
    )(**entry.kwargs)
    injected, state = _updates(tx, params)
    _assert_trees_close(injected, plain)
    self.assertIn("learning_rate", state.hyperparams)

  @parameterized.named_parameters(_named(NAMES))
  def test_multisteps_first_update_is_zero(self, name):
    params = _mixed_params()
    tx = optax.MultiSteps(_make(name), every_k_schedule=4)
    state = tx.init(params)
    updates, _ = jax.jit(tx.update)(_grads_like(params, 0), state, params)
    chex.assert_trees_all_equal(updates, _tree_map(jnp.zeros_like, params))

  @parameterized.named_parameters(_named(NAMES))
  def test_constant_schedule_equals_float(self, name):
    params = _mixed_params()
    lr = REGISTRY[name].kwargs["learning_rate"]
    tx, update = _plain(name)
    plain, _ = _updates(tx, params, steps=4, update=update)
    sched, _ = _updates(
        _make(name, learning_rate=optax.constant_schedule(lr)), params, steps=4
    )
    _assert_trees_close(sched, plain)

  @parameterized.named_parameters(_named(NAMES))
  def test_schedule_is_stepped(self, name):
    """The update at step t is lr(t) / lr times the constant-lr update."""
    params = _mixed_params()
    lr = REGISTRY[name].kwargs["learning_rate"]
    schedule = optax.linear_schedule(lr, 4 * lr, transition_steps=3)
    tx, update = _plain(name)
    plain, _ = _updates(tx, params, steps=4, update=update)
    sched, _ = _updates(_make(name, learning_rate=schedule), params, steps=4)
    for t in range(4):
      want = _tree_map(lambda u, t=t: u * (schedule(t) / lr), plain[t])
      _assert_trees_close(sched[t], want)
    # The schedule really changes: the last update is 4x the first.
    np.testing.assert_allclose(schedule(3) / schedule(0), 4.0, rtol=1e-6)

  @parameterized.named_parameters(_named(NAMES))
  def test_nonfinite_gradients_are_skipped(self, name):
    params = _mixed_params()
    nan_grads = _tree_map(lambda p: jnp.full_like(p, jnp.nan), params)
    # Wrapped by the user in optax.apply_if_finite.
    tx = optax.apply_if_finite(
        _make(name, skip_nonfinite=False), max_consecutive_errors=3
    )
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(nan_grads, state, params)
    chex.assert_tree_all_finite(optax.apply_updates(params, updates))
    self.assertEqual(int(state.notfinite_count), 1)
    # The optimizer's own default (skip_nonfinite=True): the params stay as
    # they were, and the next finite step is the same as a first step.
    tx, update = _plain(name)
    updates, state = update(nan_grads, tx.init(params), params)
    chex.assert_trees_all_equal(optax.apply_updates(params, updates), params)
    updates, _ = update(_grads_like(params, 0), state, params)
    want, _ = _updates(tx, params, steps=1, update=update)
    _assert_trees_close(updates, want[0])

  @parameterized.named_parameters(_named(NAMES))
  def test_map_params(self, name):
    params = _mixed_params()
    tx, update = _plain(name)
    _, state = _updates(tx, params, steps=1, update=update)
    same = optax.tree.map_params(tx, lambda v: v, state)
    chex.assert_trees_all_equal(same, state)
    # The params-shaped parts of the state (momenta) are mapped; counters
    # are not.
    moved = optax.tree.map_params(tx, lambda v: v + 1, state)
    pairs = list(zip(jax.tree.leaves(state), jax.tree.leaves(moved)))
    self.assertTrue(any(bool(jnp.any(a != b)) for a, b in pairs))
    for a, b in pairs:
      if jnp.issubdtype(a.dtype, jnp.integer):
        chex.assert_trees_all_equal(a, b)

  @parameterized.named_parameters(_named(NAMES))
  def test_state_roundtrips_orbax(self, name):
    import orbax.checkpoint as ocp

    params = _mixed_params()
    tx, update = _plain(name)
    _, state = _updates(tx, params, steps=2, update=update)
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "state")
      with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path, state)
        ckpt.wait_until_finished()
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = ckpt.restore(path, target)
    chex.assert_trees_all_equal(restored, state)
    self.assertEqual(
        jax.tree.map(jax.typeof, restored), jax.tree.map(jax.typeof, state)
    )
    grads = _grads_like(params, 7)
    _assert_trees_close(
        update(grads, restored, params), update(grads, state, params)
    )

  @parameterized.named_parameters(_named(NAMES))
  def test_nnx_optimizer(self, name):
    from flax import nnx

    class MLP(nnx.Module):

      def __init__(self, rngs):
        self.hidden = nnx.Linear(4, 8, rngs=rngs)
        self.head = nnx.Linear(8, 2, rngs=rngs)

      def __call__(self, x):
        return self.head(jax.nn.relu(self.hidden(x)))

    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, _make(name), wrt=nnx.Param)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((16, 4)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((16, 2)), jnp.float32)

    def loss_fn(model):
      return jnp.mean((model(x) - y) ** 2)

    @nnx.jit
    def train_step(model, optimizer):
      loss, grads = nnx.value_and_grad(loss_fn)(model)
      optimizer.update(model, grads)
      return loss

    losses = [float(train_step(model, optimizer)) for _ in range(20)]
    self.assertEqual(int(optimizer.step[...]), 20)
    self.assertLess(losses[-1], losses[0])


# ------------------------------------------- init/update mismatch errors


def _mismatched_trees(params):
  """``{case: (tree, [what the message must name])}``, against
  :func:`_mixed_params`: a hidden kernel (4, 6), its bias (6,), a head
  kernel (6, 3)."""
  def edit(**hidden):
    return dict(params, hidden=dict(params["hidden"], **hidden))

  return {
      "transposed_matrix": (
          edit(kernel=params["hidden"]["kernel"].T),
          ["['hidden']['kernel']", "(6, 4)", "(4, 6)"],
      ),
      "reshaped_bias": (
          edit(bias=params["hidden"]["bias"].reshape(2, 3)),
          ["['hidden']['bias']", "(2, 3)", "(6,)"],
      ),
      "added_leaf": (
          dict(params, extra=jnp.ones(3)),
          ["['extra']", "(3,)"],
      ),
      "removed_leaf": (
          {k: v for k, v in params.items() if k != "head"},
          ["['head']['kernel']", "(6, 3)"],
      ),
  }


class InitUpdateMismatchTest(parameterized.TestCase):
  """A tree that changed between ``init`` and ``update`` is a ValueError
  naming the leaf's path and both shapes, with or without ``params``, under
  ``jit`` (trace time) or not; the Optax wrappers still work."""

  @parameterized.named_parameters(_named(NAMES))
  def test_mismatch_names_leaf_and_shapes(self, name):
    params = _mixed_params()
    tx = _make(name)
    state = tx.init(params)
    for case, (tree, parts) in _mismatched_trees(params).items():
      for with_params in (True, False):
        with self.subTest(case=case, with_params=with_params):
          with self.assertRaises(ValueError) as cm:
            # Traced, as under jit: the check is static.
            jax.eval_shape(
                tx.update, tree, state, tree if with_params else None
            )
          for part in parts:
            self.assertIn(part, str(cm.exception))
    # Eagerly too, before anything is computed.
    tree, parts = _mismatched_trees(params)["transposed_matrix"]
    with self.assertRaisesRegex(ValueError, r"\['hidden'\]\['kernel'\]"):
      tx.update(tree, state, tree)

  @parameterized.named_parameters(_named(NAMES))
  def test_updates_must_match_params(self, name):
    params = _mixed_params()
    tx = _make(name)
    grads = dict(params, head={"kernel": jnp.ones((3, 6))})
    with self.assertRaisesRegex(
        ValueError, r"\['head'\]\['kernel'\].*\(3, 6\).*\(6, 3\)"
    ):
      jax.eval_shape(tx.update, grads, tx.init(params), params)

  @parameterized.named_parameters(_named(NAMES))
  def test_mismatch_check_inside_optax_wrappers(self, name):
    params = {k: v for k, v in _mixed_params().items() if k != "frozen"}
    bad, parts = _mismatched_trees(params)["transposed_matrix"]
    entry = REGISTRY[name]
    wrapped = {
        "masked": optax.masked(_make(name), {"hidden": True, "head": False}),
        "partition": optax.partition(
            {"ours": _make(name), "sgd": optax.sgd(0.1)},
            {"hidden": "ours", "head": "sgd"},
        ),
        "multi_steps": optax.MultiSteps(_make(name), every_k_schedule=2),
        "inject_hyperparams": optax.inject_hyperparams(
            entry.factory, static_args=entry.static_args
        )(**entry.kwargs),
    }
    for label, tx in wrapped.items():
      with self.subTest(label):
        state = tx.init(params)
        out, _ = jax.eval_shape(tx.update, params, state, params)
        self.assertEqual(
            jax.tree.map(lambda x: x.shape, out),
            jax.tree.map(jnp.shape, params),
        )
        with self.assertRaises(ValueError) as cm:
          jax.eval_shape(tx.update, bad, state, bad)
        for part in parts:
          self.assertIn(part, str(cm.exception))


if __name__ == "__main__":
  absltest.main()
