"""Named Newton-Schulz coefficient tables, as data, each with its source."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


def _check_rows(rows, name: str) -> None:
  try:
    arr = np.asarray(rows, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise TypeError(
        f"`{name}` must be a sequence of (a, b, c) rows, got {rows!r}."
    ) from e
  if arr.ndim != 2 or arr.shape[-1] != 3 or arr.shape[0] < 1:
    raise ValueError(
        f"`{name}` must have shape (k, 3) with k >= 1; got shape"
        f" {arr.shape}."
    )
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"`{name}` must be finite; got {rows!r}.")


@dataclasses.dataclass(frozen=True)
class CoefficientTable:
  """A named table of quintic Newton-Schulz coefficients.

  Row ``t`` holds ``(a, b, c)`` of step ``t``: ``X <- a X + (b A + c A^2) X``
  with ``A = X X^H``. Rows are used in order and the last row is repeated
  when more steps are asked for than there are rows.

  Attributes:
    name: the preset name.
    rows: tuple of ``(a, b, c)`` triples.
    input_scale: safety factor the input norm is multiplied by before the
      first step (Polar Express: 1.01 or 1.02; 1 otherwise).
    normalization: the normalization the table was designed for.
    source: where the numbers come from.
    by_shape: for shape-keyed tables (ROOT), a mapping from
      ``(min(m, n), max(m, n))`` to a single row; ``rows`` is the fallback.
  """

  name: str
  rows: tuple[tuple[float, float, float], ...]
  input_scale: float = 1.0
  normalization: str = "frobenius"
  source: str = ""
  by_shape: tuple[tuple[tuple[int, int], tuple[float, float, float]], ...] = ()

  def __post_init__(self):
    if not isinstance(self.name, str):
      raise TypeError(f"`name` must be a string, got {self.name!r}.")
    _check_rows(self.rows, "rows")
    try:
      scale = float(self.input_scale)
    except (TypeError, ValueError) as e:
      raise TypeError(
          f"`input_scale` must be a number >= 1, got {self.input_scale!r}."
      ) from e
    if not (np.isfinite(scale) and scale >= 1.0) or isinstance(
        self.input_scale, bool
    ):
      raise ValueError(
          f"`input_scale` must be a finite number >= 1, got"
          f" {self.input_scale!r}."
      )
    normalizations = ("frobenius", "spectral", "aol", "schatten4")
    if self.normalization not in normalizations:
      raise ValueError(
          f"Unknown `normalization` {self.normalization!r}; accepted values"
          f" are {normalizations}."
      )
    if not isinstance(self.source, str):
      raise TypeError(f"`source` must be a string, got {self.source!r}.")
    for entry in self.by_shape:
      try:
        (m, n), row = entry
        ok = all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool)
            and 0 < s
            for s in (m, n)
        ) and m <= n
      except (TypeError, ValueError):
        ok = False
      if not ok:
        raise ValueError(
            "`by_shape` entries must be ((m, n), (a, b, c)) with ints"
            f" 0 < m <= n; got {entry!r}."
        )
      _check_rows((row,), "by_shape")

  def resolve(self, shape: Sequence[int]) -> tuple[tuple[float, float, float], ...]:
    """Returns the rows to use for a matrix of trailing shape ``(m, n)``."""
    if self.by_shape:
      m, n = shape[-2], shape[-1]
      key = (min(m, n), max(m, n))
      for k, row in self.by_shape:
        if k == key:
          return (row,)
    return self.rows


MUON_ROWS = ((3.4445, -4.7750, 2.0315),)

DION_ROWS = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)

# Polar Express, 5 rows with the 1.02 safety factor already applied to rows 1-4
# (modded-nanogpt `polar_express_coeffs`, microsoft/dion `_POLAR_EXPRESS_COEFFS`).
POLAR_EXPRESS_ROWS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

# Polar Express paper table (arXiv 2505.16932, `basic.py`), before the safety
# factor 1.01 is applied to rows 1-7.
POLAR_EXPRESS_PAPER_RAW_ROWS = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)


def apply_safety_factor(
    row: tuple[float, float, float], sf: float
) -> tuple[float, float, float]:
  """Evaluates ``p(x / sf)``: ``(a, b, c) -> (a / sf, b / sf^3, c / sf^5)``."""
  a, b, c = row
  return (a / sf, b / sf**3, c / sf**5)


POLAR_EXPRESS_PAPER_ROWS = tuple(
    apply_safety_factor(r, 1.01) for r in POLAR_EXPRESS_PAPER_RAW_ROWS[:7]
) + (POLAR_EXPRESS_PAPER_RAW_ROWS[7],)

ROOT_BY_SHAPE = (
    ((2048, 2048), (3.4916, -4.8224, 2.1095)),
    ((2048, 3072), (3.4509, -4.5790, 1.9325)),
    ((2048, 8192), (2.9794, -3.6674, 1.6207)),
    ((2048, 16384), (3.1943, -3.8221, 1.5322)),
)

PRESETS: dict[str, CoefficientTable] = {
    "muon": CoefficientTable(
        "muon",
        MUON_ROWS,
        source="Jordan et al. 2024, KellerJordan/Muon (optax 'standard')",
    ),
    "dion": CoefficientTable(
        "dion",
        DION_ROWS,
        source="modded-nanogpt 2025-02-14 tuned rows; microsoft/dion default",
    ),
    "polar_express": CoefficientTable(
        "polar_express",
        POLAR_EXPRESS_ROWS,
        input_scale=1.02,
        source="Amsel et al. 2025, arXiv 2505.16932; modded-nanogpt/dion table",
    ),
    "polar_express_paper": CoefficientTable(
        "polar_express_paper",
        POLAR_EXPRESS_PAPER_ROWS,
        input_scale=1.01,
        source="Amsel et al. 2025, arXiv 2505.16932, paper table (sf 1.01)",
    ),
    "turbo": CoefficientTable(
        "turbo",
        DION_ROWS[1:],
        normalization="aol",
        source="Boissin et al. 2025, arXiv 2512.04632 (last 4 Dion rows)",
    ),
    "root": CoefficientTable(
        "root",
        MUON_ROWS,
        source="He et al. 2025, arXiv 2511.20626, ROOT example_train.py",
        by_shape=ROOT_BY_SHAPE,
    ),
}
PRESETS["standard"] = dataclasses.replace(PRESETS["muon"], name="standard")

PRESET_NAMES = tuple(sorted(PRESETS))


def resolve_coefficients(
    coeffs, shape: Sequence[int], steps: int | None
) -> tuple[tuple[tuple[float, float, float], ...], float]:
  """Resolves ``coeffs`` and ``steps`` to the static per-step rows.

  Args:
    coeffs: a preset name, or an array-like of shape ``(3,)`` or ``(k, 3)``.
    shape: the input's shape (only the last two axes are used).
    steps: number of steps, or ``None`` for the table's length (5 for a
      single row).

  Returns:
    ``(rows, input_scale)`` with exactly ``steps`` rows.
  """
  table = get_table(coeffs)
  if table is not None:
    rows = table.resolve(shape)
    input_scale = table.input_scale
  else:
    rows = _rows_from_array(coeffs)
    input_scale = 1.0
  if steps is None:
    steps = 5 if len(rows) == 1 else len(rows)
  steps = check_steps(steps)
  if steps <= len(rows):
    return tuple(rows[:steps]), input_scale
  return tuple(rows) + (rows[-1],) * (steps - len(rows)), input_scale


def check_steps(steps) -> int:
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
    raise TypeError(
        f"`steps` must be a positive Python int or None, got {steps!r} of type"
        f" {type(steps).__name__}."
    )
  if steps < 1:
    raise ValueError(f"`steps` must be >= 1, got {steps}.")
  return int(steps)


def get_table(coeffs) -> CoefficientTable | None:
  """Returns the preset table for a name, ``None`` for an array-like."""
  if isinstance(coeffs, CoefficientTable):
    return coeffs
  if isinstance(coeffs, str):
    try:
      return PRESETS[coeffs]
    except KeyError:
      raise ValueError(
          f"Unknown `coeffs` preset {coeffs!r}; accepted presets are"
          f" {PRESET_NAMES}, or an array of shape (3,) or (k, 3)."
      ) from None
  return None


def _rows_from_array(coeffs) -> tuple[tuple[float, float, float], ...]:
  try:
    arr = np.asarray(coeffs, dtype=np.float64)
  except Exception as e:  # tracers and ragged lists end up here
    raise TypeError(
        "`coeffs` must be a preset name or a concrete array of shape (3,) or"
        f" (k, 3); got {coeffs!r}."
    ) from e
  if arr.ndim == 1:
    arr = arr[None]
  if arr.ndim != 2 or arr.shape[-1] != 3 or arr.shape[0] < 1:
    raise ValueError(
        "`coeffs` must have shape (3,) or (k, 3) with k >= 1; got shape"
        f" {np.shape(coeffs)}."
    )
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"`coeffs` must be finite; got {coeffs!r}.")
  return tuple((float(a), float(b), float(c)) for a, b, c in arr)
