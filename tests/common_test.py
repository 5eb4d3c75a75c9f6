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
    # Low-rank methods: an explicit rank (int or fraction) is static.
    "dion": Entry(ortho_optax.dion, _LR, ("rank", "seed")),
    "dion2": Entry(ortho_optax.dion2, _LR, ("rank",)),
    "trion": Entry(ortho_optax.trion, _LR, ("rank",)),
    # Second-order: integer periods and sizes default to None (static).
    "soap": Entry(ortho_optax.soap, _LR),
    "shampoo": Entry(ortho_optax.shampoo, _LR),
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


# ------------------------------------- leaf kinds and optax idioms (issue 11)


def _optax_inject_case():
  """optax's common inject_hyperparams case: rank-1 gradients, which the
  Newton-Schulz iteration amplifies rounding differences on."""
  params = [-jnp.ones((2, 3)), jnp.ones((2, 5, 2))]
  grads = [jnp.ones((2, 3)), -jnp.ones((2, 5, 2))]
  return params, grads


def _complex_targets():
  """The targets of ``test_converges``, complex, as optax's alias tests make
  them: the goal times ``1 + 1j``."""
  def to_c(x):
    return jnp.asarray(x, jnp.complex64)

  return {
      key: (
          jax.tree.map(to_c, init),
          jax.tree.map(lambda g: to_c(g) * (1 + 1j), goal),
      )
      for key, (init, goal) in _targets().items()
  }


def _abs_sq_loss(params, target):
  return sum(
      jnp.sum(jnp.real(jnp.conj(p - t) * (p - t)))
      for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(target))
  )


def _explicit_mesh():
  return jax.make_mesh(
      (jax.device_count(),), ("x",),
      axis_types=(jax.sharding.AxisType.Explicit,),
  )


STRATEGIES = [dict(sharding=s) for s in ("none", "gather", "distribute")]
# The optimizers of issue 11 and the second-order ones.
FULL_RANK = [
    dict(name=n) for n in (
        "muon", "turbo_muon", "normuon", "adamuon", "root", "auon",
        "hybrid_auon", "scion", "trust_region", "soap", "shampoo",
    )
]
# Every named optimizer: the low-rank ones' default rank (`rank=None`) stays
# static under inject_hyperparams, as turbo_muon's `steps=None` does.
ALL_NAMED = FULL_RANK + [dict(name=n) for n in ("dion", "dion2", "trion")]


class LeafKindsAndIdiomsTest(chex.TestCase):
  """Every leaf a parameter tree can hold, every optax idiom at the defaults."""

  def setUp(self):
    super().setUp()
    chex.clear_trace_counter()

  @parameterized.named_parameters(_named(FULL_RANK))
  def test_integer_and_bool_leaves_pass_through(self, name):
    """Counters, masks and index tables get a zero update of their dtype
    (under the default ``skip_nonfinite=True``), change nothing else, and
    a skipped (NaN) step keeps them too."""
    floats = _mixed_params()
    ints = {
        "step": jnp.array(3, jnp.int32),
        "mask": jnp.array([True, False, True]),
        "table": jnp.arange(24, dtype=jnp.int32).reshape(4, 6),
    }
    params = {**floats, "ints": ints}
    tx = _make(name)
    update = jax.jit(tx.update)
    state = tx.init(params)
    grads = {**_grads_like(floats, 0), "ints": ints}
    updates, state = update(grads, state, params)
    chex.assert_trees_all_equal(
        updates["ints"], jax.tree.map(jnp.zeros_like, ints)
    )
    chex.assert_trees_all_equal_dtypes(updates["ints"], ints)
    new = optax.apply_updates(params, updates)
    chex.assert_trees_all_equal(new["ints"], ints)
    chex.assert_trees_all_equal_dtypes(new["ints"], ints)
    want, _ = _updates(tx, floats, steps=1)
    _assert_trees_close({k: updates[k] for k in floats}, want[0])
    # A skipped step (NaN gradients) with the integer leaves in the tree.
    nan_grads = {
        **_tree_map(lambda p: jnp.full_like(p, jnp.nan), floats),
        "ints": ints,
    }
    skipped, state = update(nan_grads, state, params)
    chex.assert_trees_all_equal(
        skipped, _tree_map(jnp.zeros_like, params)
    )
    # float0 gradients (jax.grad with allow_int=True) are applied too.
    def loss(p):
      return _loss({k: p[k] for k in floats}, floats) + jnp.sum(
          p["ints"]["table"]
      ).astype(jnp.float32)

    grads = jax.grad(loss, allow_int=True)(
        jax.tree.map(
            lambda x: x + 0.5 if jnp.issubdtype(x.dtype, jnp.inexact) else x,
            params,
        )
    )
    updates, _ = update(grads, state, params)
    chex.assert_trees_all_equal(
        optax.apply_updates(params, updates)["ints"], ints
    )

  @parameterized.named_parameters(_named(FULL_RANK))
  def test_zero_size_leaves(self, name):
    """Empty leaves get empty updates of their shape and dtype, and change
    neither the other updates nor the state's finiteness."""
    floats = _mixed_params()
    empty = {
        "rows": jnp.zeros((0, 5)),
        "cols": jnp.zeros((5, 0)),
        "vector": jnp.zeros((0,)),
        "stack": jnp.zeros((2, 0, 3)),
    }
    params = {**floats, "empty": empty}
    tx = _make(name)
    update = jax.jit(tx.update)
    state = tx.init(params)
    for t in range(2):
      grads = {**_grads_like(floats, t), "empty": empty}
      updates, state = update(grads, state, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates["empty"], empty)
    chex.assert_tree_all_finite(state)
    want, _ = _updates(tx, floats, steps=2)
    _assert_trees_close({k: updates[k] for k in floats}, want[1])

  @parameterized.named_parameters(_named(FULL_RANK))
  def test_complex_parameters_converge(self, name):
    """Complex parameters (optax's complex targets: the goal times 1 + 1j,
    conjugated gradients) reach the goal as the real ones do.

    The complex goals are further from the (real) starting points, so the
    run is twice as long as ``test_converges``' (ROOT's steps of RMS 0.2 x
    learning rate need 2400 of them).
    """
    targets = _complex_targets()
    init = {k: v[0] for k, v in targets.items()}
    goal = {k: v[1] for k, v in targets.items()}
    tx = _make(name)

    def step(carry, _):
      params, state = carry
      grads = jax.tree.map(jnp.conj, jax.grad(_abs_sq_loss)(params, goal))
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    @jax.jit
    def run(params):
      (params, _), _ = jax.lax.scan(
          step, (params, tx.init(params)), length=4000
      )
      return params

    final = run(init)
    for target in targets:
      with self.subTest(target):
        chex.assert_trees_all_equal_dtypes(final[target], init[target])
        chex.assert_trees_all_close(
            final[target], goal[target], rtol=3e-2, atol=3e-2
        )

  @parameterized.named_parameters(_named(ALL_NAMED))
  def test_inject_hyperparams_without_static_args(self, name):
    """``inject_hyperparams(factory)`` with every numeric argument injected
    (no ``static_args``) gives the plain optimizer's updates."""
    entry = REGISTRY[name]
    injected_tx = optax.inject_hyperparams(entry.factory)(**entry.kwargs)
    tx = _make(name)
    # Trion's step differs by float32 rounding of the injected (array)
    # hyperparameters: 1.7e-6 relative at most, measured; a wrong update
    # would differ at order one.
    rtol = 1e-5 if name == "trion" else 1e-6
    for case in ("optax", "mixed"):
      with self.subTest(case):
        if case == "optax":
          params, grads = _optax_inject_case()
          grads = [grads, grads]
        else:
          params = _mixed_params()
          grads = [_grads_like(params, t) for t in range(2)]
        plain_update = jax.jit(tx.update)
        injected_update = jax.jit(injected_tx.update)
        state, injected_state = tx.init(params), injected_tx.init(params)
        for g in grads:
          want, state = plain_update(g, state, params)
          got, injected_state = injected_update(g, injected_state, params)
          chex.assert_trees_all_close(got, want, rtol=rtol, atol=1e-12)

  @parameterized.named_parameters(_named(FULL_RANK, STRATEGIES))
  def test_explicit_mesh_parameters(self, name, sharding):
    """optax's sharding-in-types test at the defaults: parameters on an
    Explicit mesh keep every array's type through ``init`` and ``update``
    (eager and jitted), a skipped step included."""
    sharding = None if sharding == "none" else sharding
    mesh = _explicit_mesh()
    tx = _make(name, sharding=sharding)
    with jax.set_mesh(mesh):
      params = {
          "w": jnp.zeros(
              (2, 8, 4), jnp.float16,
              out_sharding=jax.NamedSharding(mesh, jax.P(None, "x")),
          ),
          "b": jnp.zeros(
              (8,), jnp.float32,
              out_sharding=jax.NamedSharding(mesh, jax.P("x")),
          ),
          # A matrix sharded along its output axis: the per-neuron and
          # per-matrix reductions (NorMuon, ROOT's quantile) cross devices.
          "k": jnp.zeros(
              (8, 16), jnp.float32,
              out_sharding=jax.NamedSharding(mesh, jax.P(None, "x")),
          ),
      }
      grads = jax.tree.map(lambda p: p + 1, params)
      types = jax.tree.map(jax.typeof, params)
      state0 = tx.init(params)
      state_types = jax.tree.map(jax.typeof, state0)
      self.assertEqual(
          jax.tree.map(jax.typeof, jax.jit(tx.init)(params)), state_types
      )
      # optax's own test: eager, the params as gradients.
      _, state1 = tx.update(params, state0, params)
      self.assertEqual(jax.tree.map(jax.typeof, state1), state_types)
      update = jax.jit(tx.update)
      updates, state1 = update(grads, state0, params)
      self.assertEqual(jax.tree.map(jax.typeof, updates), types)
      self.assertEqual(jax.tree.map(jax.typeof, state1), state_types)
      nan = jax.tree.map(lambda g: g * jnp.nan, grads)
      updates, state2 = update(nan, state1, params)
      self.assertEqual(jax.tree.map(jax.typeof, updates), types)
      self.assertEqual(jax.tree.map(jax.typeof, state2), state_types)
      chex.assert_trees_all_equal(updates, _tree_map(jnp.zeros_like, params))
      # Skipped: the optimizer's own state is unchanged.
      chex.assert_trees_all_equal(state2.inner_state, state1.inner_state)

  @parameterized.named_parameters(_named(FULL_RANK))
  def test_mu_dtype_applies_to_adam_branch(self, name):
    """``mu_dtype`` sets AdamW's first moment as well as the momentum, as in
    ``optax.contrib.muon``."""
    params = _mixed_params()
    # Scion gives every leaf an LMO by default; route the usual leaves to
    # AdamW so that its branch has a state.
    tx = _make(name, mu_dtype=jnp.bfloat16, labels=ortho_optax.label_params)
    state = tx.init(params)
    for t in range(2):
      updates, state = jax.jit(tx.update)(
          _grads_like(params, t), state, params
      )
    chex.assert_trees_all_equal_dtypes(updates, params)
    adam = [
        s for s in jax.tree.leaves(
            state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)
        )
        if isinstance(s, optax.ScaleByAdamState)
    ]
    self.assertLen(adam, 1)
    mu = jax.tree.leaves(adam[0].mu)
    self.assertNotEmpty(mu)
    for m in mu:
      self.assertEqual(m.dtype, jnp.bfloat16)



def _mu_dtypes(state) -> set:
  """The dtypes of every first-moment buffer (a ``mu`` field) in ``state``."""
  out = set()
  for path, x in jax.tree_util.tree_leaves_with_path(state):
    if any(getattr(k, "name", None) == "mu" for k in path):
      out.add(jnp.dtype(x.dtype))
  return out


# optax's alias tests (optax/_src/alias_test.py), adapted: the targets of
# `test_optimization` and contrib's matrix and mixed targets, complex as
# optax makes them (the goal times 1 + 1j, gradients conjugated).
def _optax_targets(dtype):
  c = 1 + 1j if jnp.issubdtype(dtype, jnp.complexfloating) else 1.0
  a = 1.0 * c
  targets = {
      "parabola": (
          jnp.array([-1.0, 10.0, 1.0], dtype),
          jnp.array([1.0, -1.0, 1.0], dtype) * c,
      ),
      "rosenbrock": (jnp.zeros(2, dtype), jnp.array([a, a**2], dtype)),
      "matrix_parabola": (
          jnp.zeros((2, 2), dtype),
          jnp.array([[3.0, -2.0], [1.0, 4.0]], dtype) * c,
      ),
      "mixed": (
          (jnp.zeros(3, dtype), jnp.zeros((2, 2), dtype)),
          (
              jnp.array([1.0, -1.0, 2.0], dtype) * c,
              jnp.array([[1.0, 0.0], [-1.0, 1.0]], dtype) * c,
          ),
      ),
  }

  def loss(params):
    total = 0.0
    for key, (_, goal) in targets.items():
      p = params[key]
      if key == "rosenbrock":
        total += _abs_sq(a - p[0]) + 100.0 * _abs_sq(p[1] - p[0] ** 2)
      else:
        total += sum(
            jnp.sum(_abs_sq(x - g))
            for x, g in zip(jax.tree.leaves(p), jax.tree.leaves(goal))
        )
    return total

  init = {k: v[0] for k, v in targets.items()}
  goal = {k: v[1] for k, v in targets.items()}
  return init, goal, loss


def _abs_sq(x):
  return jnp.real(jnp.conj(x) * x)


# Settings under which optax's targets are reachable. ROOT's reference
# weight decay (0.1 on both branches) moves the optimum of the regularized
# problem away from the targets, real or complex. Scion's constrained step
# (SCG) keeps the iterates in a norm ball of radius 3, and the matrix
# target's spectral norm is 4.5 (6.4 complex): see
# test_scion_constrained_reaches_the_projection_on_complex_targets. Its
# unconstrained steps are of fixed size, which (as optax says of sign_sgd)
# needs a decaying learning rate in Rosenbrock's valley.
_OPTAX_TARGET_KWARGS = {
    "root": dict(weight_decay=0.0, adam_weight_decay=0.0),
    "scion": dict(
        constrained=False,
        learning_rate=optax.cosine_decay_schedule(3e-3, 3000),
    ),
}


class OptaxAliasTest(chex.TestCase):
  """optax's alias tests on complex parameters and state dtypes, and the
  weight decay modes, for every optimizer."""

  @parameterized.named_parameters(_named(NAMES))
  def test_weight_decay_mode(self, name):
    """Cautious against decoupled decay on both branches: with ``d`` the
    decoupled update, the update without decay is ``u0 = d + lr lam p``,
    and the cautious one ``u0 - lr lam p`` only where the step and the
    decay agree (``u0 * p <= 0``), ``u0`` elsewhere."""
    params = _mixed_params()
    grads = _grads_like(params, 1)
    lam, lr = 0.5, REGISTRY[name].kwargs["learning_rate"]
    has_matrix_decay = "weight_decay" in inspect.signature(
        REGISTRY[name].factory
    ).parameters
    decay = dict(adam_weight_decay=lam)
    if has_matrix_decay:
      decay["weight_decay"] = lam
    # Scion: its usual leaves to AdamW, so that both branches are seen.
    common = dict(labels=ortho_optax.label_params, **decay)
    out = {}
    for mode in ("decoupled", "cautious"):
      tx = _make(name, weight_decay_mode=mode, **common)
      out[mode], _ = jax.jit(tx.update)(grads, tx.init(params), params)
    labels = ortho_optax.label_params(params)

    def get(tree, path):
      return functools.reduce(lambda t, k: t[k.key], path, tree)

    masked = 0
    for path, d in jax.tree_util.tree_leaves_with_path(out["decoupled"]):
      p = np.asarray(get(params, path), np.float64)
      decayed = has_matrix_decay or get(labels, path) == "adam"
      step = lr * lam * p if decayed else 0.0 * p
      u0 = np.asarray(d, np.float64) + step
      # Zero entries (Dion2 updates some rows only) agree ("u p >= 0"); the
      # sum above leaves them at rounding level, of either sign.
      u0 = np.where(np.abs(u0) < 1e-8, 0.0, u0)
      agree = u0 * p <= 0
      masked += int(decayed) * int(np.sum(~agree))
      with self.subTest(jax.tree_util.keystr(path)):
        np.testing.assert_allclose(
            get(out["cautious"], path), u0 - np.where(agree, step, 0),
            atol=1e-6,
        )
    self.assertGreater(masked, 0)

  @parameterized.named_parameters(_named(NAMES))
  def test_explicit_dtype(self, name):
    """optax's ``test_explicit_dtype``: ``mu_dtype`` bf16 / f32 / complex64
    / None on bf16, f32 and complex64 parameters sets every first moment's
    dtype; a complex ``mu_dtype`` on real parameters, and a real one on
    complex parameters (it would drop the imaginary part), raise at init
    naming the argument and the leaf."""
    kinds = ("bfloat16", "float32", "complex64")
    labels = ortho_optax.label_params  # Scion: an AdamW branch too.
    for params_dtype, state_dtype in itertools.product(
        kinds, kinds + (None,)
    ):
      params = {
          "w": jnp.ones((4, 6), params_dtype),
          "b": jnp.ones(6, params_dtype),
      }
      tx = _make(name, mu_dtype=state_dtype, labels=labels)
      p_complex = jnp.issubdtype(params_dtype, jnp.complexfloating)
      s_complex = state_dtype is not None and jnp.issubdtype(
          state_dtype, jnp.complexfloating
      )
      with self.subTest(f"{params_dtype}-{state_dtype}"):
        if state_dtype is not None and s_complex != p_complex:
          with self.assertRaisesRegex(
              TypeError, r"`mu_dtype`.*leaf at \['[wb]'\]"
          ):
            tx.init(params)
          continue
        # Updates with a complex state: test_optax_targets_complex (its
        # scan also holds the state's types fixed).
        want = jnp.dtype(state_dtype or params_dtype)
        self.assertEqual(_mu_dtypes(tx.init(params)), {want})
    # nu_dtype: AdamW's (and AdaMuon's) second moment is real-valued, so a
    # real buffer serves complex leaves too; a complex one real leaves not.
    real = {"w": jnp.ones((4, 6)), "b": jnp.ones(6)}
    complex_ = jax.tree.map(lambda x: x.astype(jnp.complex64), real)
    with self.assertRaisesRegex(TypeError, r"`nu_dtype`.*leaf at \['[wb]'\]"):
      _make(name, nu_dtype="complex64", labels=labels).init(real)
    for nu_dtype in ("complex64", "float32"):
      state = _make(name, nu_dtype=nu_dtype, labels=labels).init(complex_)
      nus = [
          s.nu["b"] for s in jax.tree.leaves(
              state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)
          ) if isinstance(s, optax.ScaleByAdamState)
      ]
      self.assertLen(nus, 1)
      self.assertEqual(nus[0].dtype, jnp.dtype(nu_dtype))

  @parameterized.named_parameters(_named(NAMES))
  def test_optax_targets_complex(self, name):
    """optax's optimization targets (parabola, Rosenbrock, the 2x2 matrix
    parabola, mixed 1-D + 2-D), complex, with a complex ``mu_dtype``: each
    reaches its goal at optax's tolerance."""
    init, goal, loss = _optax_targets(jnp.complex64)
    tx = _make(name, mu_dtype="complex64",
               **_OPTAX_TARGET_KWARGS.get(name, {}))

    def step(carry, _):
      params, state = carry
      grads = jax.tree.map(jnp.conj, jax.grad(loss)(params))
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    @jax.jit
    def run(params):
      (params, _), _ = jax.lax.scan(
          step, (params, tx.init(params)), length=3000
      )
      return params

    final = run(init)
    for target in goal:
      with self.subTest(target):
        chex.assert_trees_all_equal_dtypes(final[target], init[target])
        chex.assert_trees_all_close(
            final[target], goal[target], rtol=3e-2, atol=3e-2
        )


if __name__ == "__main__":
  absltest.main()
