"""Plot helpers shared by the claim modules: matplotlib set-up, bands with confidence intervals, axes.

Reads nothing; every function draws arrays it is given.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from bn import stats
from bn.analysis import probe_series

COLORS = {"bn": "C0", "none": "C3", "noisy": "C2", "group": "C4", "layer": "C5", "renorm": "C1", "population": "C6"}


def quietly(f):
  """``f`` with numpy's RuntimeWarnings silenced: all-NaN slices (every run of a condition
  diverged) give NaN, which the plots and tables show as missing."""
  def g(*args, **kw):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)
      return f(*args, **kw)
  return g


nanmean, nanstd = quietly(np.nanmean), quietly(np.nanstd)


def plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as pyplot

  return pyplot


def size_axis(ax, sizes):
  """A log2 x-axis labelled with exactly the batch sizes used (no overlapping minor labels)."""
  ax.set_xscale("log", base=2)
  ax.set_xticks(list(sizes), [str(x) for x in sizes])
  ax.minorticks_off()


def band(ax, steps, vals, label, color, log: bool = False, style: str = "-"):
  """Mean over seeds with its 95% t-interval; ``log``: geometric mean and interval in log10
  space (for positive quantities drawn on a log axis, where a linear CI can cross 0)."""
  if vals.size == 0:
    return
  if log:
    with np.errstate(divide="ignore", invalid="ignore"):
      vals = np.log10(np.where(vals > 0, vals, np.nan))
  back = (lambda t: 10.0 ** t) if log else (lambda t: t)
  mean = nanmean(vals, axis=0)
  ax.plot(steps, back(mean), style, label=label, color=color)
  if vals.shape[0] >= 2 and np.all(np.isfinite(vals)):
    _, lo, hi = stats.mean_ci(vals, axis=0)
    ax.fill_between(steps, back(lo), back(hi), color=color, alpha=0.2)


def save(fig, out: Path, name: str) -> str:
  fig.tight_layout()
  fig.savefig(Path(out) / name, dpi=90)
  plt().close(fig)
  return name


def probe_curves(runs, out, name, title, getters, conds=("bn", "none")) -> str:
  """Per-probe-point curves of ``conds`` (geometric mean over seeds, 95% CI), one panel per getter;
  ``runs`` maps a condition to its loaded workdir (probe rows under ``"probes"``)."""
  fig, axes = plt().subplots(1, len(getters), figsize=(5 * len(getters), 4))
  axes = np.atleast_1d(axes)
  for ax, (label, get) in zip(axes, getters):
    for cond in conds:
      s, v = probe_series(runs[cond]["probes"], get)
      band(ax, s, v, cond, COLORS[cond], log=True)
    ax.set(title=label + " (geometric mean, 95% CI)", xlabel="step", yscale="log")
    ax.legend()
  fig.suptitle(title)
  return save(fig, out, name)
