"""Tests for bn.stats, the report's statistics, each against an independent reference: SciPy (Student-t
quantiles and tails, t intervals), hand-worked answers (Holm-Bonferroni, Kaplan-Meier medians, interpolated steps
to a target) and a brute-force Kaplan-Meier estimate by its definition.
"""

import math

import numpy as np
import pytest
import scipy.stats

from bn import stats

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("df", [1, 2, 3, 7.5, 30, 1000])
def test_t_ppf_matches_scipy(df):
  for q in (1e-4, 0.025, 0.3, 0.5, 0.9, 0.975, 0.9999):
    assert stats.t_ppf(q, df) == pytest.approx(scipy.stats.t.ppf(q, df), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("q,df", [(0.0, 3), (1.0, 3), (0.5, 0), (0.5, -1), (float("nan"), 3)])
def test_t_ppf_refuses_what_scipy_answers_with_nan(q, df):
  with pytest.raises(ValueError, match="0 < q < 1 and df > 0"):
    stats.t_ppf(q, df)


def test_mean_ci_and_paired_diff_ci_match_scipy():
  for n, conf in ((2, 0.95), (5, 0.9), (12, 0.99)):
    v = RNG.normal(size=n)
    mean, lo, hi = stats.mean_ci(v, conf)
    ref = scipy.stats.t.interval(conf, n - 1, loc=v.mean(), scale=scipy.stats.sem(v))
    assert mean == pytest.approx(v.mean()) and (lo, hi) == pytest.approx(ref, rel=1e-9)
  a, b = RNG.normal(size=8), RNG.normal(size=8)
  d = a - b
  m, lo, hi = stats.paired_diff_ci(a, b)
  assert m == pytest.approx(d.mean()) and (lo, hi) == pytest.approx(
      scipy.stats.t.interval(0.95, 7, loc=d.mean(), scale=scipy.stats.sem(d)), rel=1e-9)
  curves = RNG.normal(size=(4, 6))
  m, lo, hi = stats.mean_ci(curves)
  assert m.shape == (6,) and lo[2] == pytest.approx(scipy.stats.t.interval(0.95, 3, loc=curves[:, 2].mean(),
                                                                   scale=scipy.stats.sem(curves[:, 2]))[0], rel=1e-9)
  m, lo, hi = stats.mean_ci([3.0])
  assert m == 3.0 and math.isnan(lo) and math.isnan(hi)
  assert math.isnan(stats.mean_ci([1.0, float("nan"), 2.0])[0])
  with pytest.raises(ValueError):
    stats.paired_diff_ci([1, 2], [1, 2, 3])


def test_steps_to_target_and_gap():
  steps, accs = [0, 100, 200, 300], [0.1, 0.5, 0.8, 0.9]
  assert stats.steps_to_target(steps, accs, 0.7) == pytest.approx(100 + 0.2 / 0.3 * 100)
  assert stats.steps_to_target(steps, accs, 0.8) == pytest.approx(200)
  assert stats.steps_to_target(steps, accs, 0.05) == 0
  assert stats.steps_to_target(steps, accs, 0.95) == math.inf
  assert stats.steps_to_target(steps, [0.1, float("nan"), 0.2, 0.3], 0.5) == math.inf
  assert stats.steps_to_target(steps, [2.0, 1.0, 0.5, 0.4], 0.75, higher_is_better=False) == pytest.approx(150)
  np.testing.assert_allclose(stats.gap([0.99, 0.95], [0.9, 0.95]), [0.09, 0.0], atol=1e-12)
  assert stats.gap(0.2, 0.5, higher_is_better=False) == pytest.approx(0.3)


def test_t_sf_matches_scipy():
  for x, df in ((0.0, 3), (2.0, 5), (-1.5, 9), (7.0, 2)):
    assert stats.t_sf(x, df) == pytest.approx(scipy.stats.t.sf(x, df), rel=1e-12)
  with pytest.raises(ValueError, match="df > 0"):
    stats.t_sf(1.0, 0)


def test_holm_by_hand():
  # sorted 0.01, 0.02, 0.03, 0.04 with m = 4: 4*0.01, max(.04, 3*.02), max(.06, 2*.03), max(.06, .04)
  np.testing.assert_allclose(stats.holm([0.03, 0.01, 0.04, 0.02]), [0.06, 0.04, 0.06, 0.06])
  # NaN (a check, no p-value) is not counted in m; values cap at 1
  np.testing.assert_allclose(stats.holm([0.02, float("nan"), 0.6]), [0.04, float("nan"), 0.6])
  np.testing.assert_allclose(stats.holm([0.9, 0.8]), [1.0, 1.0])  # 2 * 0.8 capped at 1, then monotone


def _km_bruteforce(times, reached):
  """Kaplan-Meier survival by its definition, evaluated at every distinct event time."""
  times, reached = np.asarray(times, float), np.asarray(reached, bool)
  s = 1.0
  for u in sorted(set(times[reached])):
    s *= 1 - np.sum((times == u) & reached) / np.sum(times >= u)
    if s <= 0.5:
      return u
  return math.inf


def test_km_median_by_hand_and_against_the_definition():
  # no censoring: the median of 10, 20, 30, 40 is where S falls to 0.5: 20
  assert stats.km_median([10, 20, 30, 40], [1, 1, 1, 1]) == 20
  # 10 (event), 15 (censored), 20, 30: S(10) = 3/4, S(20) = 3/4 * 1/2 = 0.375 -> 20
  assert stats.km_median([10, 15, 20, 30], [1, 0, 1, 1]) == 20
  # three censored at 5, one event at 40: the one left at risk falls, S(40) = 0 -> 40
  assert stats.km_median([5, 5, 5, 40], [0, 0, 0, 1]) == 40
  assert math.isinf(stats.km_median([100, 100, 100], [0, 0, 0]))
  rng = np.random.default_rng(0)
  for _ in range(50):
    t = rng.integers(1, 20, 9).astype(float)
    e = rng.random(9) < 0.7
    assert stats.km_median(t, e) == _km_bruteforce(t, e)
