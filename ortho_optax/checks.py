"""Argument checks shared by the engines: clear errors naming the argument."""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp


def check_matrix(x, name: str = "x") -> jax.Array:
  """Checks that ``x`` is a floating or complex array of rank >= 2."""
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    x = jnp.asarray(x)
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


def check_choice(value, name: str, choices: Iterable[str]) -> str:
  choices = tuple(choices)
  if not isinstance(value, str) or value not in choices:
    raise ValueError(
        f"Unknown `{name}` {value!r}; accepted values are {choices}."
    )
  return value


def check_nonnegative(value, name: str) -> float:
  try:
    v = float(value)
  except (TypeError, ValueError) as e:
    raise TypeError(
        f"`{name}` must be a real number, got {value!r}."
    ) from e
  if not v >= 0.0:
    raise ValueError(f"`{name}` must be >= 0, got {value!r}.")
  return v


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
