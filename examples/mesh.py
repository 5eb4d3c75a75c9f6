"""Device mesh for the examples: FSDP (and model-axis) sharding of a model.

``config.mesh`` (absent, or ``shape=()``: no mesh, one device as before):

* ``shape``: the mesh shape; one ``-1`` entry takes the devices left over,
  so ``(-1,)`` is every device of the job, on one CPU, one GPU host or a
  TPU pod slice alike.
* ``axis_names``: one name per entry. The first axis is the FSDP axis: the
  batch is split along it, and every parameter of rank >= 2 along its
  largest dimension divisible by the axis size. A second axis (e.g.
  ``"model"``) splits the largest remaining divisible dimension. Vectors
  (norm scales, biases) are replicated.

Parameters are placed with ``NamedSharding`` on Auto mesh axes: XLA
partitions the model's forward and backward; the optimizer state follows
the parameters; ``ortho_optax``'s ``sharding=`` decides where each matrix is
orthogonalized. Every array is built with ``jax.make_array_from_callback``
from the host copy, which is the same on every process (same seed, same
batch order), so the code runs unchanged under ``jax.distributed`` on
several hosts.
"""

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(config) -> jax.sharding.Mesh | None:
  """The mesh of ``config.mesh``, or ``None`` when no mesh is configured."""
  if config is None or not config.get("shape"):
    return None
  shape = tuple(int(s) for s in config.shape)
  names = tuple(config.axis_names)
  if len(names) != len(shape):
    raise ValueError(
        f"`mesh.axis_names` {names} must name each of the {len(shape)} axes"
        f" of `mesh.shape` {shape}."
    )
  if shape.count(-1) > 1:
    raise ValueError(f"`mesh.shape` {shape} may hold at most one -1.")
  devices = jax.device_count()
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if devices % known:
      raise ValueError(
          f"`mesh.shape` {shape}: {devices} devices are not a multiple of"
          f" {known}."
      )
    shape = tuple(devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != devices:
    raise ValueError(
        f"`mesh.shape` {shape} needs {math.prod(shape)} devices; this job"
        f" has {devices} ({jax.devices()[0].platform})."
    )
  return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))


def param_spec(shape, mesh) -> P:
  """FSDP spec: each mesh axis splits the largest free divisible dimension."""
  spec = [None] * len(shape)
  if len(shape) >= 2:
    for axis in mesh.axis_names:
      size = mesh.shape[axis]
      free = [
          d
          for d in range(len(shape))
          if spec[d] is None and size > 1 and shape[d] % size == 0
      ]
      if free:
        spec[max(free, key=lambda d: shape[d])] = axis
  # Without trailing Nones: a jitted step returns P() for a replicated
  # vector, and an input placed as P(None) would not match it, so the step
  # would compile a second time for the arrays it returned.
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


def _place(x, sharding):
  host = np.asarray(x)
  return jax.make_array_from_callback(
      host.shape, sharding, lambda index: host[index]
  )


def shard_model(model: nnx.Module, mesh) -> None:
  """Places ``model``'s state on ``mesh`` (FSDP specs), in place."""
  state = nnx.state(model)
  nnx.update(
      model,
      jax.tree.map(
          lambda x: _place(x, NamedSharding(mesh, param_spec(x.shape, mesh))),
          state,
      ),
  )


def replicate_unplaced(module: nnx.Module, mesh) -> None:
  """Puts ``module``'s arrays that live replicated off the mesh on it, in place.

  ``nnx.Optimizer`` builds its step counter, and ``tx.init`` the state of
  leaves that need none, as arrays replicated in XLA's own terms
  (``GSPMDSharding``) or on one device. The jitted step returns them as
  ``NamedSharding(mesh, P())``; placing them so beforehand saves the
  training step's second compilation.
  """
  replicated = NamedSharding(mesh, P())

  def place(x):
    if not isinstance(x, jax.Array) or isinstance(x.sharding, NamedSharding):
      return x
    if not x.sharding.is_fully_replicated:
      return x
    return jax.device_put(x, replicated)

  nnx.update(module, jax.tree.map(place, nnx.state(module)))


def shard_batch(batch: dict, mesh) -> dict:
  """Splits every array of ``batch`` along its first axis (the FSDP axis)."""
  axis = mesh.axis_names[0]
  out = {}
  for key, x in batch.items():
    if x.shape[0] % mesh.shape[axis]:
      raise ValueError(
          f"The batch's {key!r} has {x.shape[0]} rows, not divisible by the"
          f" {mesh.shape[axis]} devices of mesh axis {axis!r}; change"
          " `batch_size`."
      )
    out[key] = _place(x, NamedSharding(mesh, P(axis)))
  return out


def describe(mesh) -> str:
  return " x ".join(f"{a}={n}" for a, n in mesh.shape.items())
