"""Argument checks: clear errors that name the argument as the user typed it.

Every public function checks its arguments when it is called (a transform
when it is built, not at its first update). A value that may be traced
(``optax.inject_hyperparams`` turns numbers into arrays, which are tracers
under ``jit``) is only checked when it is concrete.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(value) -> bool:
  """Whether ``value`` is a tracer, whose value cannot be checked."""
  return isinstance(value, jax.core.Tracer)


def check_matrix(x, name: str = "x") -> jax.Array:
  """Checks that ``x`` is a floating or complex array of rank >= 2."""
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    try:
      x = jnp.asarray(x)
    except (TypeError, ValueError) as e:
      raise TypeError(
          f"`{name}` must be a floating-point or complex array, got"
          f" {type(x).__name__}."
      ) from e
  if not (
      jnp.issubdtype(x.dtype, jnp.floating)
      or jnp.issubdtype(x.dtype, jnp.complexfloating)
  ):
    raise TypeError(
        f"`{name}` must be a floating-point or complex array, got dtype"
        f" {x.dtype}."
    )
  if x.ndim < 2:
    raise ValueError(
        f"`{name}` must have rank >= 2 with shape (..., m, n); got shape"
        f" {tuple(x.shape)} (rank {x.ndim})."
    )
  return x


def check_choice(value, name: str, choices: Iterable) -> str | None:
  """Raises unless ``value`` is one of ``choices`` (strings, maybe None)."""
  choices = tuple(choices)
  if not (
      (value is None and None in choices)
      or (isinstance(value, str) and value in choices)
  ):
    raise ValueError(
        f"Unknown `{name}` {value!r}; accepted values are {choices}."
    )
  return value


def check_bool(value, name: str) -> bool:
  """Raises unless ``value`` is ``True`` or ``False``."""
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  raise TypeError(f"`{name}` must be True or False, got {value!r}.")


def _interval(low, high, low_open, high_open) -> str:
  if low is not None and high is not None:
    return (
        f"in {'(' if low_open else '['}{low:g}, {high:g}"
        f"{')' if high_open else ']'}"
    )
  if low is not None:
    return f"{'>' if low_open else '>='} {low:g}"
  if high is not None:
    return f"{'<' if high_open else '<='} {high:g}"
  return "finite"


def check_number(
    value,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
):
  """Raises unless a concrete ``value`` is a finite real in the interval.

  Python numbers, NumPy scalars and concrete 0-d arrays are checked; traced
  values (``inject_hyperparams`` under ``jit``) pass unchecked. ``None``
  passes when ``optional``.

  Returns:
    ``value`` unchanged.
  """
  if optional and value is None:
    return value
  if is_traced(value):
    return value
  where = _interval(low, high, low_open, high_open)
  accepted = f"{where} (a finite real number" + (
      " or None)" if optional else ")"
  )
  if isinstance(value, (bool, np.bool_, str, bytes)) or np.ndim(value) != 0:
    raise TypeError(f"`{name}` must be {accepted}, got {value!r}.")
  dtype = getattr(value, "dtype", None)
  if dtype is not None and not (
      jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
  ):
    raise TypeError(f"`{name}` must be {accepted}, got {value!r}.")
  try:
    v = float(value)
  except (TypeError, ValueError) as e:
    raise TypeError(f"`{name}` must be {accepted}, got {value!r}.") from e
  ok = math.isfinite(v)
  if ok and low is not None:
    ok = v > low if low_open else v >= low
  if ok and high is not None:
    ok = v < high if high_open else v <= high
  if not ok:
    raise ValueError(f"`{name}` must be {accepted}, got {value!r}.")
  return value


def check_nonnegative(value, name: str):
  """Raises unless a concrete ``value`` is a finite number >= 0.

  Returns:
    ``float(value)``, or ``value`` itself when it is traced.
  """
  check_number(value, name, low=0.0)
  return value if is_traced(value) else float(value)


def check_positive(value, name: str, *, optional: bool = False):
  """Raises unless a concrete ``value`` is a finite number > 0."""
  return check_number(value, name, low=0.0, low_open=True, optional=optional)


def check_int(value, name: str, *, low: int | None = None,
              optional: bool = False):
  """Raises unless ``value`` is a Python/NumPy int (not a bool) >= ``low``."""
  if optional and value is None:
    return value
  if is_traced(value):
    return value
  accepted = "an int" + (f" >= {low}" if low is not None else "") + (
      " or None" if optional else ""
  )
  dtype = getattr(value, "dtype", None)
  if (
      dtype is not None
      and np.ndim(value) == 0
      and jnp.issubdtype(dtype, jnp.integer)
  ):
    value = int(value)  # a concrete 0-d array (inject_hyperparams)
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, np.integer)
  ):
    raise TypeError(f"`{name}` must be {accepted}, got {value!r}.")
  if low is not None and value < low:
    raise ValueError(f"`{name}` must be {accepted}, got {value!r}.")
  return int(value)


def check_str(value, name: str, *, optional: bool = False):
  """Raises unless ``value`` is a string (or None when ``optional``)."""
  if (optional and value is None) or isinstance(value, str):
    return value
  raise TypeError(
      f"`{name}` must be a string{' or None' if optional else ''}, got"
      f" {value!r}."
  )


def check_regex(value, name: str, *, optional: bool = False):
  """Raises unless ``value`` is a valid regular expression string."""
  check_str(value, name, optional=optional)
  if value is not None:
    try:
      re.compile(value)
    except re.error as e:
      raise ValueError(
          f"`{name}` is not a valid regular expression ({e}): {value!r}."
      ) from e
  return value


def check_callable(value, name: str):
  if not callable(value):
    raise TypeError(f"`{name}` must be callable, got {value!r}.")
  return value


def _as_dtype(value, name: str, accepted: str):
  try:
    return jnp.dtype(value)
  except TypeError as e:
    raise TypeError(f"`{name}` must be {accepted}, got {value!r}.") from e


def check_state_dtype_for(
    dtype, leaf_dtype, name: str, where: str, *, real_values: bool = False
) -> None:
  """Raises if a state buffer of ``dtype`` cannot serve a ``leaf_dtype`` leaf.

  A real buffer would silently drop a complex leaf's imaginary part (unless
  the buffer holds real values, ``real_values``, as a second moment does);
  a complex buffer for a real leaf is a mistake (twice the memory, and
  optax's complex arithmetic on a real problem).
  """
  if dtype is None or not isinstance(dtype, np.dtype):
    return
  leaf_complex = jnp.issubdtype(leaf_dtype, jnp.complexfloating)
  buffer_complex = jnp.issubdtype(dtype, jnp.complexfloating)
  if buffer_complex and not leaf_complex:
    raise TypeError(
        f"`{name}`={dtype} is complex, but the leaf at {where} is real"
        f" ({leaf_dtype}): a complex `{name}` is for complex parameters."
        f" Pass a floating `{name}` or None."
    )
  if leaf_complex and not buffer_complex and not real_values:
    raise TypeError(
        f"`{name}` {dtype} cannot hold the complex leaf at {where}"
        f" ({leaf_dtype}); pass a complex `{name}` or None."
    )


def is_prng_key(key) -> bool:
  """A typed key (``jax.random.key``) or a raw uint32 one (``PRNGKey``)."""
  dtype = getattr(key, "dtype", None)
  if dtype is None:
    return False
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return True
  return dtype == jnp.uint32 and jnp.ndim(key) >= 1


def check_prng_key(key, name: str = "key", *, optional: bool = False):
  """Raises unless ``key`` is a PRNG key (or None when ``optional``)."""
  if (optional and key is None) or is_prng_key(key):
    return key
  raise TypeError(
      f"`{name}` must be a PRNG key such as `jax.random.key(0)`"
      f"{' or None' if optional else ''}, got {type(key).__name__}."
  )


def check_dtype(value, name: str = "dtype"):
  """Any dtype (e.g. of a shape's array)."""
  return _as_dtype(value, name, "a dtype such as jnp.float32")


def check_shape(value, name: str = "shape") -> tuple[int, ...]:
  """A sequence of non-negative ints."""
  try:
    shape = tuple(value)
  except TypeError as e:
    raise TypeError(
        f"`{name}` must be a sequence of ints, got {value!r}."
    ) from e
  for s in shape:
    if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)):
      raise TypeError(f"`{name}` must be a sequence of ints, got {value!r}.")
    if s < 0:
      raise ValueError(f"`{name}` must have sizes >= 0, got {value!r}.")
  return tuple(int(s) for s in shape)


def check_compute_dtype(compute_dtype, x_dtype):
  """Returns the dtype the matmuls run in."""
  if compute_dtype is None:
    return jnp.dtype(x_dtype)
  try:
    dt = jnp.dtype(compute_dtype)
  except TypeError as e:
    raise TypeError(
        f"`compute_dtype` must be a dtype or None, got {compute_dtype!r}."
    ) from e
  if not jnp.issubdtype(dt, jnp.inexact):
    raise TypeError(
        "`compute_dtype` must be a floating or complex dtype (e.g."
        f" jnp.bfloat16, jnp.float32), got {dt}."
    )
  if jnp.issubdtype(x_dtype, jnp.complexfloating) and not jnp.issubdtype(
      dt, jnp.complexfloating
  ):
    raise ValueError(
        f"`compute_dtype` {dt} is real but the input is complex ({x_dtype});"
        " pass a complex compute_dtype or None."
    )
  return dt
