"""Times ROOT's per-matrix 90th percentile: bisection select vs jnp.quantile.

Usage: ``python benchmarks/quantile.py`` (prints one Markdown table).
"""

import os
import statistics
import time

# One OpenBLAS thread: its LAPACK calls (the QR of Dion and Dion2) otherwise
# spin against XLA's own threads, 10-100x slower or stalled, on a few cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax
import jax.numpy as jnp

from ortho_optax.transforms.quantile_clip import quantile_of_magnitudes


def _time(f, x, repeats=20):
  jax.block_until_ready(f(x))
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(x))
    ts.append(time.perf_counter() - t0)
  return statistics.median(ts) * 1e3


def _flat(a):
  return a.reshape(a.shape[0], -1)


def select(a):
  return quantile_of_magnitudes(_flat(a), 0.9)


def sort(a):
  return jnp.quantile(jnp.abs(_flat(a)), 0.9, axis=-1)


def main():
  dev = jax.devices()[0]
  print(f"{dev.platform} ({dev.device_kind}), jax {jax.__version__}\n")
  print("| matrices | select ms | jnp.quantile ms | select / sort |")
  print("|---|---:|---:|---:|")
  for shape in [(12, 768, 768), (12, 768, 3072), (4, 4096, 4096)]:
    x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    a, b = _time(jax.jit(select), x), _time(jax.jit(sort), x)
    print(f"| {shape} | {a:.2f} | {b:.2f} | {a / b:.2f} |")


if __name__ == "__main__":
  main()
