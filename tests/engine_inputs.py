"""Shared test inputs and float64 oracles for the orthogonalization engines.

The published coefficient tables are copied here digit for digit from the
spec (``newton_schulz.md`` §1, §1b, §2, §3, §4), independently of
``ortho_optax.engines.coefficients``, so the tests compare the library
against the published numbers rather than against itself.
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np

# --- Published tables (spec newton_schulz.md) ---------------------------------

MUON_REF = (3.4445, -4.7750, 2.0315)  # §1

DION_5 = (  # §1b
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)

PE_PAPER_RAW = (  # §2, before the 1.01 safety factor on rows 1-7
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)

PE_5 = (  # §2, safety 1.02 baked into rows 1-4
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

TURBO_GA_4 = (  # §3, earlier genetic-algorithm set
    (4.6051, -9.6552, 5.6769),
    (4.7505, -6.0861, 2.1790),
    (2.7763, -2.3190, 0.5523),
    (2.4231, -2.2861, 0.8193),
)

ROOT_BY_SHAPE = {  # §4
    (2048, 2048): (3.4916, -4.8224, 2.1095),
    (2048, 3072): (3.4509, -4.5790, 1.9325),
    (2048, 8192): (2.9794, -3.6674, 1.6207),
    (2048, 16384): (3.1943, -3.8221, 1.5322),
}


def scale_row(row, sf):
  """``p(x / sf)``: ``(a, b, c) -> (a / sf, b / sf^3, c / sf^5)``."""
  a, b, c = row
  return (a / sf, b / sf**3, c / sf**5)


PE_PAPER = tuple(scale_row(r, 1.01) for r in PE_PAPER_RAW[:7]) + (
    PE_PAPER_RAW[7],
)
PE_GRAM = tuple(scale_row(r, 1.05) for r in PE_PAPER_RAW[:5])  # §2

# Published rows and input pre-factor (1 / input_scale) of each preset, for
# the default number of steps.
PUBLISHED = {
    "muon": ((MUON_REF,) * 5, 1.0),
    "dion": (DION_5, 1.0),
    "polar_express": (PE_5, 1 / 1.02),
    "polar_express_paper": (PE_PAPER, 1 / 1.01),
    "turbo": (DION_5[1:], 1.0),
}

# --- Oracles ------------------------------------------------------------------


def composite(rows, x):
  """``p_T o ... o p_1 (x)`` in float64."""
  x = np.asarray(x, np.float64)
  for a, b, c in rows:
    x = a * x + b * x**3 + c * x**5
  return x


def predicted_error(x, rows, pre=1.0, normalization="frobenius", eps=0.0):
  """Exact ``orthogonality_error`` of a scalar-normalized Newton-Schulz run.

  With a normalization that multiplies ``x`` by one scalar ``s`` (Frobenius
  or Schatten-4) the output is ``U p(s Sigma) V^H``; returns
  ``(polar_error, sv_min, sv_max)`` of it, computed in float64.
  """
  x = np.asarray(x, np.complex128 if np.iscomplexobj(x) else np.float64)
  sig = np.linalg.svd(x, compute_uv=False)
  if normalization == "frobenius":
    norm = np.sqrt(np.sum(sig**2))
    s = 1.0 / (norm / pre + eps)
  elif normalization == "schatten4":
    s = pre / np.sum(sig**4) ** 0.25
  else:
    raise ValueError(normalization)
  p = composite(rows, sig * s)
  err = np.sqrt(np.mean((p - 1.0) ** 2))
  return err, p.min(), p.max()


def polar_f64(x):
  """``U V^H`` of a full-rank ``x`` in float64 (numpy)."""
  x = np.asarray(x)
  u, _, vh = np.linalg.svd(x, full_matrices=False)
  return u @ vh


# --- Inputs -------------------------------------------------------------------


def random_orthonormal(rng, p, q):
  """A ``(p, q)`` matrix with orthonormal columns (``q <= p``)."""
  z = rng.standard_normal((p, q))
  qm, r = np.linalg.qr(z)
  return qm * np.sign(np.diag(r))


def gaussian(m, n, seed=0):
  return np.random.default_rng(seed).standard_normal((m, n))


def with_spectrum(m, n, sigma, seed=0):
  """``U diag(sigma) V^T`` with random orthonormal ``U``, ``V``."""
  rng = np.random.default_rng(seed)
  k = min(m, n)
  u = random_orthonormal(rng, m, k)
  v = random_orthonormal(rng, n, k)
  return (u * np.asarray(sigma)) @ v.T


def power_law(m, n, seed=0):
  """Low-rank-dominated: ``sigma_i = 1 / i``, random singular vectors."""
  k = min(m, n)
  return with_spectrum(m, n, 1.0 / np.arange(1, k + 1), seed)


def ill_conditioned(m, n, seed=0, kappa=1e3):
  """Log-uniform singular values in ``[1 / kappa, 1]`` (both ends included)."""
  k = min(m, n)
  rng = np.random.default_rng(seed + 1000)
  logs = rng.uniform(-np.log(kappa), 0.0, k)
  logs[0], logs[-1] = 0.0, -np.log(kappa)
  return with_spectrum(m, n, np.exp(logs), seed)


INPUT_CLASSES = {
    "gaussian": gaussian,
    "power_law": power_law,
    "ill_conditioned": ill_conditioned,
}


def make_input(kind, m, n, seed=0):
  return INPUT_CLASSES[kind](m, n, seed)


@contextlib.contextmanager
def x64():
  """Enables float64 inside the block and restores the previous setting."""
  old = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", old)
