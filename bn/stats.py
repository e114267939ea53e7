"""Host-side statistics for reports: confidence intervals over seeds, convergence speed, gaps.

Pure NumPy and the standard library (no SciPy at run time; the tests check the
Student-t quantile against ``scipy.stats.t``). Not meant for ``jit``.

NaN policy: a diverged seed (NaN metric) makes ``mean_ci`` return NaN rather
than being dropped silently; filter explicitly if that is what you mean.
"""

from __future__ import annotations

import math

import numpy as np


# ----------------------------------------------------------------------------- Student t quantile


def _betacf(a: float, b: float, x: float) -> float:
  """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes §6.4)."""
  fpmin, eps = 1e-300, 1e-16
  c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
  d = 1.0 / (d if abs(d) > fpmin else fpmin)
  h = d
  for m in range(1, 1000):
    for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
      d = 1.0 + num * d
      d = 1.0 / (d if abs(d) > fpmin else fpmin)
      c = 1.0 + num / c
      c = c if abs(c) > fpmin else fpmin
      h *= d * c
    if abs(d * c - 1.0) < eps:
      break
  return h


def betainc(a: float, b: float, x: float) -> float:
  """Regularized incomplete beta function I_x(a, b) for a, b > 0, 0 <= x <= 1."""
  if x <= 0.0:
    return 0.0
  if x >= 1.0:
    return 1.0
  front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
  if x < (a + 1.0) / (a + b + 2.0):
    return front * _betacf(a, b, x) / a
  return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_ppf(q: float, df: float) -> float:
  """Quantile of Student's t with ``df > 0`` degrees of freedom, 0 < q < 1.

  Uses ``P(|T| > t) = I_{df/(df+t^2)}(df/2, 1/2)``: bisection (200 halvings) on
  ``x = df/(df+t^2)`` in (0, 1], where the right side is increasing, then
  ``t = sqrt(df (1-x)/x)``; accurate to ~1e-10 relative or better."""
  if not (0.0 < q < 1.0) or not df > 0:
    raise ValueError(f"t_ppf needs 0 < q < 1 and df > 0, got q={q}, df={df}.")
  if q == 0.5:
    return 0.0
  tail = 2.0 * min(q, 1.0 - q)  # two-sided tail probability P(|T| > |t|)
  lo, hi = 0.0, 1.0
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    if betainc(0.5 * df, 0.5, mid) < tail:
      lo = mid
    else:
      hi = mid
  x = 0.5 * (lo + hi)
  t = math.sqrt(df * (1.0 - x) / x)
  return t if q > 0.5 else -t


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
