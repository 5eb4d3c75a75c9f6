r"""How a transform keeps a moment buffer: a float array or quantized codes.

A transform's ``mu_dtype`` / ``nu_dtype`` is one of

* ``None``: the buffer takes the parameter's dtype;
* a floating dtype (``jnp.float32``, ``jnp.bfloat16``, ``"float32"``, ...);
* a complex dtype (``jnp.complex64``, ...), for complex parameters only
  (:func:`check_leaves`: a real parameter's buffer must be real, and a
  complex parameter's first moment complex);
* a quantized format: ``"q8"``, ``"q4"`` or ``"n4"`` or a
  :class:`~ortho_optax.QuantFormat` (:mod:`ortho_optax.state.quantized`).

A quantized format is never a plain integer dtype: ``jnp.int8``,
``"int8"``, ``"uint8"`` are refused (an integer buffer would hold the
rounded moment, 0 for any gradient below 1). Momenta and first moments are
signed (``"q8"``, ``"q4"``, ``"n4"``); a second moment is stored in the unsigned code
of the same width (``"q8"`` means ``"u8"`` there, see
:func:`as_storage`).

Each step reads the buffer back in float32 (:func:`load`), updates it, and
writes it again (:func:`store`): no full-precision copy is kept across
steps. Stochastic rounding (``QuantFormat(..., stochastic=True)``) draws
from :func:`rounding_key`, a key derived from the transform's step count,
so the state needs no key of its own.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ortho_optax import checks as _checks
from ortho_optax.state import quantized as _quantized

Storage = None | np.dtype | _quantized.QuantFormat

_INTEGER_HINT = (
    "a quantized format is 'q8', 'q4' or 'n4' (or a QuantFormat), not an"
    " integer"
    " dtype"
)


def as_storage(
    value, name: str, *, second_moment: bool = False, complex_ok: bool = True
) -> Storage:
  """Checks a ``mu_dtype``-like argument and returns its storage.

  Args:
    value: ``None``, a floating or complex dtype (or its name), ``"q8"``,
      ``"q4"``, ``"n4"`` or a :class:`QuantFormat`; for a second moment also
      ``"u8"``, ``"u4"``.
    name: the argument's name, for errors.
    second_moment: the buffer is non-negative (Adam's ``v``): a signed
      quantized format is replaced by its unsigned counterpart of the same
      width, block size and rounding (``"q8"`` -> ``"u8"``).
    complex_ok: a complex dtype is accepted (the default; whether it fits
      each leaf is checked at ``init``, see :func:`check_leaves`).

  Returns:
    ``None``, a ``numpy`` floating (or complex) dtype, or a
    :class:`QuantFormat`.

  Raises:
    ValueError / TypeError naming ``name`` and the accepted values.
  """
  accepted = (
      "None, a floating"
      + (" or complex" if complex_ok else "")
      + " dtype (e.g. jnp.float32, jnp.bfloat16), 'q8', 'q4', 'n4'"
      + (", 'u8', 'u4'" if second_moment else "")
      + " or a QuantFormat"
  )
  if value is None:
    return None
  if isinstance(value, str) and value in _quantized.FORMATS:
    value = _quantized.QuantFormat(value)
  if isinstance(value, _quantized.QuantFormat):
    signed = value.book.signed
    if second_moment and signed:
      return _quantized.QuantFormat(
          "u" + value.code[1:], value.block_size, value.stochastic
      )
    if not second_moment and not signed:
      raise ValueError(
          f"`{name}` stores a signed moment; {value.code!r} is an unsigned"
          " (second-moment) format. Use 'q8', 'q4' or 'n4'."
      )
    return value
  try:
    dtype = jnp.dtype(value)
  except TypeError as e:
    raise TypeError(f"`{name}` must be {accepted}; got {value!r}.") from e
  if jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_:
    raise TypeError(
        f"`{name}` must be {accepted}; got the integer dtype {dtype}:"
        f" {_INTEGER_HINT}."
    )
  kinds = jnp.inexact if complex_ok else jnp.floating
  if not jnp.issubdtype(dtype, kinds):
    raise TypeError(f"`{name}` must be {accepted}; got {value!r}.")
  return np.dtype(dtype)


def is_quantized(storage: Storage) -> bool:
  return isinstance(storage, _quantized.QuantFormat)


def float_dtype(storage: Storage) -> np.dtype | None:
  """A float storage's dtype; ``None`` for ``None`` and quantized ones."""
  return None if isinstance(storage, _quantized.QuantFormat) else storage


def is_quantized_leaf(x) -> bool:
  """Whether ``x`` is a quantized buffer (a ``QuantizedArray``)."""
  return _is_leaf(x)


def _is_array_like(x) -> bool:
  """An array, or a wrapper of one that has its shape and dtype."""
  return hasattr(x, "shape") and hasattr(x, "dtype") and not _is_leaf(x)


def _is_leaf(x) -> bool:
  return isinstance(x, _quantized.QuantizedArray)


def _is_leaf_or_empty(x) -> bool:
  return _is_leaf(x) or not jax.tree.leaves(x, is_leaf=_is_leaf)


def check_leaves(
    tree, storage: Storage, name: str, *, real_values: bool = False
) -> None:
  """Raises unless a buffer in ``storage`` fits every leaf of ``tree``.

  A complex storage serves complex leaves only. A complex leaf needs a
  complex (or ``None``) storage, unless the buffer holds real values
  (``real_values``: Adam's second moment): a real buffer would drop the
  imaginary part of its moment.

  Args:
    tree: the parameters the buffers are for (``None`` and masked leaves
      are skipped).
    storage: from :func:`as_storage`.
    name: the argument's name, for errors.
    real_values: the buffer's values are real for any leaf.

  Raises:
    TypeError naming ``name`` and the leaf's path.
  """
  if storage is None or is_quantized(storage):
    return
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    dtype = getattr(x, "dtype", None)
    if dtype is None:
      dtype = jnp.result_type(x)
    _checks.check_state_dtype_for(
        storage, dtype, name, jax.tree_util.keystr(path),
        real_values=real_values,
    )


def zeros(
    tree,
    storage: Storage,
    name: str = "mu_dtype",
    *,
    real_values: bool = False,
    check: bool = True,
):
  """A zero buffer for every array of ``tree`` (other nodes kept).

  Args:
    tree: the parameters (or arrays like the buffers).
    storage: from :func:`as_storage`.
    name: the argument's name, for errors.
    real_values: the buffer's values are real even for a complex leaf (see
      :func:`check_leaves`).
    check: check the storage against ``tree``'s leaves
      (:func:`check_leaves`); ``False`` when ``tree`` is not the
      parameters and the caller checked them.

  Raises:
    TypeError naming ``name`` for a quantized storage of a leaf that is not
    real floating (complex parameters need a float storage), and for a
    float storage that does not fit a leaf (:func:`check_leaves`).
  """
  if check:
    check_leaves(tree, storage, name, real_values=real_values)

  def one(x):
    if not isinstance(storage, _quantized.QuantFormat):
      return jnp.zeros_like(x, dtype=storage)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(
          f"`{name}`={storage.code!r} quantizes real floating buffers only;"
          f" a parameter has dtype {x.dtype} (use a float `{name}`)."
      )
    x = x if isinstance(x, jax.Array) else jnp.asarray(x)
    # Zeros round exactly: no key needed, whatever the rounding.
    exact = dataclasses.replace(storage, stochastic=False)
    return _quantized.quantize(jnp.zeros_like(x, jnp.float32), exact)

  if not is_quantized(storage):
    return jax.tree.map(one, tree)
  # A quantized buffer replaces the whole leaf, wrapper included: a Flax
  # NNX Variable holding a QuantizedArray would not survive nnx.split.
  return jax.tree.map(one, tree, is_leaf=_is_array_like)


def as_arrays(tree):
  """Each array of ``tree`` as a plain ``jax.Array``, wrappers removed.

  A buffer built from the parameters' tree (a Flax NNX ``Variable`` around
  each array) must lose the wrapper before it is quantized, as in
  :func:`zeros`: ``nnx.split`` would not keep a wrapped ``QuantizedArray``.
  """
  return jax.tree.map(jnp.asarray, tree, is_leaf=_is_array_like)


def load(tree, like=None):
  """The buffers as arrays: quantized ones dequantized to float32.

  Args:
    tree: buffers from :func:`zeros` or :func:`store`.
    like: the updates the buffers meet (optional): under Explicit mesh
      axes a dequantized buffer takes its update's sharding.
  """

  def one(b, u=None):
    if not _is_leaf(b):
      return b
    s = _quantized._explicit_sharding(u) if u is not None else None
    return _quantized.dequantize(b, jnp.float32, out_sharding=s)

  if like is None:
    return jax.tree.map(one, tree, is_leaf=_is_leaf)
  # An empty node (optax.MaskedNode, None) stands for a leaf that has no
  # buffer; it meets an array in ``like``, so it must not be recursed into.
  return jax.tree.map(one, tree, like, is_leaf=_is_leaf_or_empty)


# Stochastic-rounding salts, one per kind of stored buffer, so that two
# buffers rounded at the same step draw different bits. The values are part
# of a run's reproducibility: changing one changes every later draw.
MOMENTUM_SALT = 0  # scale_by_momentum's mu
ADAM_MU_SALT, ADAM_NU_SALT = 1, 2  # scale_by_adam's moments
DION_SALT, DION2_SALT, TRION_SALT = 3, 4, 5  # the low-rank momenta
DION_Q_SALT = 6  # Dion's right factor
ELEMENTWISE_NU_SALT = 7  # AdaMuon's elementwise second moment
SOAP_MU_SALT, SOAP_NU_SALT = 8, 9  # SOAP's Adam moments
SHAMPOO_MU_SALT, SHAMPOO_NU_SALT = 10, 11  # Shampoo's momentum and graft
PRECOND_LEFT_SALT, PRECOND_RIGHT_SALT = 12, 13  # eigenvector matrices
# Quantized SOAP's statistics (their normalized off-diagonals).
PRECOND_STAT_LEFT_SALT, PRECOND_STAT_RIGHT_SALT = 14, 15


def store(tree, storage: Storage, like, count=None, salt: int = 0):
  """The new values ``tree`` in ``storage``.

  Args:
    tree: the updated buffers (float arrays).
    storage: from :func:`as_storage`.
    like: the previous buffers: ``None`` storage keeps their dtypes.
    count: the step count, for stochastic formats (:func:`rounding_key`).
    salt: tells apart the buffers of one transform (different draws).

  Returns:
    A tree like ``like``.
  """
  if isinstance(storage, _quantized.QuantFormat):
    key = None
    if storage.stochastic:
      if count is None:
        raise ValueError("A stochastic format needs the step `count`.")
      key = rounding_key(count, salt)
    leaves, treedef = jax.tree.flatten(tree)
    out = [
        _quantized.quantize(
            x, storage, key=None if key is None else jax.random.fold_in(key, i)
        )
        for i, x in enumerate(leaves)
    ]
    return treedef.unflatten(out)
  if storage is None:
    return jax.tree.map(lambda x, b: x.astype(b.dtype), tree, like)
  return jax.tree.map(lambda x: x.astype(storage), tree)


def rounding_key(count, salt: int = 0):
  """The stochastic-rounding key of step ``count``.

  An ``rbg`` key (XLA's random bit generator, which compiles in a fraction
  of threefry's time on CPU) folded with the step count and ``salt`` (to
  tell apart two buffers of one transform).
  """
  key = jax.random.key(salt, impl="rbg")
  return jax.random.fold_in(key, count)
