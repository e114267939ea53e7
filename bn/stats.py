"""Host-side statistics for reports: confidence intervals over seeds, convergence speed, gaps.

NumPy, plus SciPy for the Student-t quantile (SciPy comes with jax). Not meant for ``jit``.

NaN policy: a diverged seed (NaN metric) makes ``mean_ci`` return NaN rather
than being dropped silently; filter explicitly if that is what you mean.
"""

from __future__ import annotations

import math

import numpy as np


def t_ppf(q: float, df: float) -> float:
  """Quantile of Student's t with ``df > 0`` degrees of freedom, 0 < q < 1 (``scipy.stats.t.ppf``).

  Raises ``ValueError`` outside that range (SciPy would return NaN)."""
  if not (0.0 < q < 1.0) or not df > 0:
    raise ValueError(f"t_ppf needs 0 < q < 1 and df > 0, got q={q}, df={df}.")
  import scipy.stats  # here: importing it takes ~1 s, and most commands never ask

  return float(scipy.stats.t.ppf(q, df))


def t_sf(x: float, df: float) -> float:
  """Upper tail ``P(T > x)`` of Student's t with ``df > 0`` degrees of freedom (``scipy.stats.t.sf``)."""
  if not df > 0:
    raise ValueError(f"t_sf needs df > 0, got df={df}.")
  import scipy.stats

  return float(scipy.stats.t.sf(x, df))


def holm(p_values) -> np.ndarray:
  """Holm-Bonferroni adjusted p-values of a family of tests (same order as given).

  With the m p-values sorted ascending, ``p_(i)`` is adjusted to
  ``max_{j <= i} min(1, (m - j + 1) p_(j))``; rejecting where the adjusted value is below
  alpha controls the family-wise error rate at alpha (Holm 1979). NaN p-values (tests
  without one) stay NaN and do not count towards m."""
  p = np.asarray(p_values, np.float64)
  out = np.full(p.shape, np.nan)
  idx = np.flatnonzero(np.isfinite(p))
  m = idx.size
  running = 0.0
  for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
    running = max(running, min(1.0, (m - rank) * p[i]))
    out[i] = running
  return out


def km_median(times, reached) -> float:
  """Kaplan-Meier median of right-censored times: ``times`` (per subject: the event time, or the
  last time observed when ``reached`` is False). The smallest event time at which the estimated
  survival falls to 0.5 or below; ``inf`` when it never does (more than half censored before)."""
  t, e = np.asarray(times, np.float64), np.asarray(reached, bool)
  if t.shape != e.shape or t.ndim != 1:
    raise ValueError(f"times and reached must be 1-D of equal length, got {t.shape} and {e.shape}.")
  surv = 1.0
  for u in np.unique(t[e]):
    at_risk = np.sum(t >= u)
    surv *= 1.0 - np.sum((t == u) & e) / at_risk
    if surv <= 0.5:
      return float(u)
  return math.inf


# ----------------------------------------------------------------------------- intervals


def mean_ci(values, confidence: float = 0.95, *, axis: int = 0):
  """``(mean, lo, hi)``: the sample mean and its two-sided Student-t confidence interval.

  ``mean +- t_{(1+confidence)/2, n-1} * s / sqrt(n)`` with ``s`` the unbiased
  (ddof=1) standard deviation over ``axis`` (n seeds); the same interval as
  ``scipy.stats.t.interval(confidence, n-1, loc=mean, scale=s/sqrt(n))``. With
  one value, ``lo = hi = NaN``. Scalars for 1-D input, arrays otherwise (e.g.
  curves ``(seeds, steps)`` give per-step bands).
  """
  v = np.asarray(values, np.float64)
  n = v.shape[axis]
  mean = np.mean(v, axis=axis)
  if n < 2:
    nan = np.full_like(mean, np.nan)
    return mean, nan, nan.copy()
  half = t_ppf(0.5 + 0.5 * confidence, n - 1) * np.std(v, axis=axis, ddof=1) / math.sqrt(n)
  return mean, mean - half, mean + half


def paired_diff_ci(a, b, confidence: float = 0.95, *, axis: int = 0):
  """``(mean, lo, hi)`` of ``a - b`` paired by position (e.g. the same seed with and
  without BN): :func:`mean_ci` of the differences (paired t interval)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"paired values need equal shapes, got {a.shape} and {b.shape}.")
  return mean_ci(a - b, confidence, axis=axis)


# ----------------------------------------------------------------------------- convergence and gaps


def steps_to_target(steps, values, target: float, *, higher_is_better: bool = True) -> float:
  """First step at which ``values`` reaches ``target``, linearly interpolated between evaluations.

  With the first evaluation i where ``values[i] >= target`` (``<=`` when
  ``higher_is_better=False``, e.g. for losses): ``steps[0]`` if i = 0, else
  ``s_{i-1} + (target - v_{i-1}) / (v_i - v_{i-1}) * (s_i - s_{i-1})``.
  Never reached (NaN values count as not reached) -> ``math.inf``: it orders
  after every finite step, so medians, comparisons and "fraction reached" stay
  meaningful, while a mean over seeds honestly becomes inf.
  """
  s, v = np.asarray(steps, np.float64), np.asarray(values, np.float64)
  if s.shape != v.shape or s.ndim != 1:
    raise ValueError(f"steps and values must be 1-D of equal length, got {s.shape} and {v.shape}.")
  hit = v >= target if higher_is_better else v <= target
  if not hit.any():
    return math.inf
  i = int(np.argmax(hit))
  if i == 0:
    return float(s[0])
  frac = (target - v[i - 1]) / (v[i] - v[i - 1]) if np.isfinite(v[i - 1]) else 1.0
  return float(s[i - 1] + frac * (s[i] - s[i - 1]))


def gap(train_metric, test_metric, *, higher_is_better: bool = True):
  """Generalization gap, positive when the model does better on train than on test:
  ``train - test`` for accuracies, ``test - train`` for losses (``higher_is_better=False``)."""
  train, test = np.asarray(train_metric, np.float64), np.asarray(test_metric, np.float64)
  return train - test if higher_is_better else test - train
