"""Readable tick labels on a logarithmic axis, for the examples' plots.

Matplotlib labels a log axis at the powers of ten and, when it spans less
than a few decades, at every minor tick in scientific notation. A loss
between 1.5 and 4.5 then gets labels at 2, 3 and 4 only, and a learning-rate
sweep over 0.01-0.04 gets ``2x10^-2 3x10^-2 4x10^-2`` printed into each
other. ``label_log_axis`` instead labels the finest of a few "nice" series
(1, 1.2, 1.5, 2, ... per decade down to 1 per decade) whose labels are at
least a given distance apart on the page, in plain numbers (``0.02``,
``1.5``).
"""

import math

import matplotlib.ticker

# Tick positions within a decade, finest first.
_SERIES = (
    (1, 1.2, 1.4, 1.6, 1.8, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 9),
    (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8),
    (1, 1.5, 2, 3, 4, 5, 7),
    (1, 2, 3, 5),
    (1, 2, 5),
    (1, 3),
    (1,),
)


def _min_gap_decades(series) -> float:
  """The smallest distance between neighbouring ticks, in decades."""
  logs = [math.log10(s) for s in series] + [1.0]  # The next decade's 1.
  return min(b - a for a, b in zip(logs, logs[1:]))


def log_ticks(lo: float, hi: float, length: float, min_gap: float):
  """Tick positions for a log axis from ``lo`` to ``hi``.

  Args:
    lo: the axis's lower limit (> 0).
    hi: its upper limit.
    length: the axis's length on the page (inches).
    min_gap: the least distance between two labels (inches).

  Returns:
    The ticks of the finest series whose neighbours are ``min_gap`` apart;
    if fewer than two of its ticks fall inside the axis (a range much
    narrower than a decade), evenly spaced round numbers instead.
  """
  per_decade = length / max(math.log10(hi / lo), 1e-12)
  series = next(
      (s for s in _SERIES if _min_gap_decades(s) * per_decade >= min_gap),
      _SERIES[-1],
  )
  ticks = [
      s * 10.0**e
      for e in range(math.floor(math.log10(lo)),
                     math.floor(math.log10(hi)) + 1)
      for s in series
      if lo <= s * 10.0**e <= hi
  ]
  if len(ticks) < 2:
    ticks = [
        t for t in matplotlib.ticker.MaxNLocator(4).tick_values(lo, hi)
        if lo <= t <= hi
    ]
  # Round off the float noise of s * 10**e (0.30000000000000004).
  return [float(f"{t:.6g}") for t in ticks]


def label_log_axis(ax, which: str, min_gap: float) -> None:
  """Labels ``ax``'s log-scaled ``which`` axis ("x" or "y") readably.

  Call it after the data are plotted and the limits set.

  Args:
    ax: a matplotlib ``Axes`` whose ``which`` axis is log-scaled.
    which: ``"x"`` or ``"y"``.
    min_gap: the least distance between two labels, in inches (about a
      label's width on an x axis, its height on a y axis).
  """
  box = ax.get_window_extent().transformed(
      ax.figure.dpi_scale_trans.inverted()
  )
  if which == "x":
    axis, (lo, hi), length = ax.xaxis, ax.get_xlim(), box.width
  else:
    axis, (lo, hi), length = ax.yaxis, ax.get_ylim(), box.height
  axis.set_major_locator(
      matplotlib.ticker.FixedLocator(log_ticks(lo, hi, length, min_gap))
  )
  axis.set_major_formatter(matplotlib.ticker.FuncFormatter(
      lambda v, _: f"{v:g}"
  ))
  axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
