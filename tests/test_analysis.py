"""Tests for bn.analysis: the tests a claim runs and the verdict rule, each against an independent reference --
SciPy's one-sample t-test, hand-worked verdict tables and censored curves, a plain percentile bootstrap -- in
both directions (what should be decided is, what should not be is not).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats

from bn import analysis


def test_p_values_are_two_sided():
  v = np.array([0.1, 0.2, 0.15, 0.12, 0.18, 0.11])
  t = analysis.test("x", v, "higher")
  assert t["p"] == pytest.approx(scipy.stats.ttest_1samp(v, 0.0).pvalue, rel=1e-9)


def _run(curves, steps, lr=0.5):
  """A run dict with ``test_accuracy`` per seed over ``steps``."""
  rows = [{"step": s, "seed": i, "run": i, "lr": lr, "test_accuracy": a, "diverged": False}
          for i, c in enumerate(curves) for s, a in zip(steps, c)]
  return {"metrics": rows}


def test_restricted_log2_steps_and_its_censoring():
  steps = [10, 20, 30, 40]
  run = _run([[0.5, 0.7, 0.8, 0.9],  # reaches 0.75 halfway between 20 and 30: 25
              [0.8, 0.9, 0.9, 0.9],  # at the first evaluation: left-censored (at most 10)
              [0.1, 0.2, 0.3, 0.4]],  # never: counted at tau = 40, right-censored
             steps)
  v, left, right = analysis.restricted_log2_steps(run, 0.75)
  np.testing.assert_allclose(v, np.log2([25, 10, 40]))
  assert left.tolist() == [False, True, False] and right.tolist() == [False, False, True]


def test_no_interval_over_censored_values():
  v = np.array([-1.0, -1.2, -0.9, -1.1, -1.3, -1.0])
  clean = analysis.test("x", v, "lower")
  assert clean["outcome"] == "as predicted" and clean["censored"] == 0
  cens = analysis.test("x", v, "lower", censored=np.array([0, 1, 0, 0, 0, 0], bool))
  assert cens["outcome"] == "unclear" and cens["censored"] == 1
  assert math.isnan(cens["lo"]) and math.isnan(cens["hi"]) and "censored" in cens["note"]


def _t(mean, part, role="primary", kind="lower"):
  v = mean + np.array([0.01, -0.01, 0.02, -0.02, 0.0, 0.005])
  return analysis.test(f"{part} {role}", v, kind, role=role, part=part)


def test_claim_verdict_every_combination():
  V = analysis.PART_VERDICTS
  for n in (1, 2, 3):
    for combo in itertools.product(V, repeat=n):
      got = analysis.claim_verdict(combo)
      if "contradicted" in combo:
        assert got == "contradicted"
      elif all(x == "supported" for x in combo):
        assert got == "supported"
      elif "supported" in combo:
        assert got == "mixed"  # never "supported" while a part is undecided or untested
      elif len(set(combo)) == 1:
        assert got == combo[0]
      else:
        assert got == "inconclusive"
  with pytest.raises(ValueError):
    analysis.claim_verdict([])
  with pytest.raises(ValueError):
    analysis.claim_verdict(["mixed"])  # a claim verdict is not a part verdict


def test_part_verdicts_read_their_own_primary_and_sanity():
  tests = [_t(-1.0, "a"), _t(+1.0, "b"), _t(-1.0, "a", role="sanity", kind="higher")]
  assert analysis.verdict(tests, "a") == "invalid design"  # a's sanity check failed
  assert analysis.verdict(tests, "b") == "contradicted"  # b is not touched by a's sanity check
  tests.append(analysis.check("whole-claim sanity", False, "broken"))  # part None: every part's
  assert analysis.verdict(tests, "b") == "invalid design"
  with pytest.raises(ValueError, match="exactly one primary"):
    analysis.verdict([_t(-1.0, "a"), _t(-2.0, "a")], "a")


def test_holm_turns_a_marginal_supported_into_inconclusive():
  # three parts: one clear (p ~ 1e-6), one marginal (raw p just under 0.05), one null
  rng = np.random.default_rng(1)
  clear = analysis.test("clear", -1.0 + 0.01 * rng.standard_normal(6), "lower", role="primary", part="clear")
  base = np.array([0.3, -0.25, 0.2, -0.1, 0.15, -0.05])
  marginal = analysis.test("marginal", base - 0.28, "lower", role="primary", part="marginal")
  null = analysis.test("null", base, "lower", role="primary", part="null")
  assert marginal["outcome"] == "as predicted" and 0.025 < marginal["p"] < 0.05  # raw p 0.038
  analysis.adjust([clear, marginal, null])
  assert clear["outcome"] == "as predicted" and clear["family_size"] == 3
  assert marginal["outcome_raw"] == "as predicted" and marginal["outcome"] == "unclear"
  assert marginal["p_adjusted"] == pytest.approx(min(1, 2 * marginal["p"]))  # second smallest: (m - 1) p
  assert marginal["lo_adjusted"] < marginal["lo"] and marginal["hi_adjusted"] > 0  # wider, and now reaching 0
  assert analysis.verdict([marginal], "marginal") == "inconclusive"
  assert analysis.claim_verdict([analysis.verdict([clear], "clear"), analysis.verdict([marginal], "marginal")]) == "mixed"


def test_selection_bootstrap_carries_the_choice():
  """analysis.selection_bootstrap against an independent percentile bootstrap: with one setting best on validation
  in every resample it is the plain bootstrap of the paired difference at that setting; with a near-tie on validation
  between settings whose test scores differ by 10, the interval spans both choices."""
  rng = np.random.default_rng(5)
  n = 8
  test_a, test_b = rng.normal(size=(3, n)), rng.normal(size=(3, n))
  clear = np.array([[0.0] * n, [5.0] * n, [9.0] * n])  # setting 0 always best on validation
  idx = np.random.default_rng(0).integers(0, n, (2000, n))
  plain = np.mean(test_a[0][idx] - test_b[0][idx], axis=1)
  want = (np.quantile(plain, 0.025), np.quantile(plain, 0.975))
  np.testing.assert_allclose(analysis.selection_bootstrap(clear, test_a, clear, test_b), want, rtol=1e-12)
  base = rng.normal(0, 1, n)
  tie = np.stack([base, base + 0.5 * (-1.0) ** np.arange(n), np.full(n, 9.0)])  # 0 or 1 wins, by resample
  shifted = test_a.copy()
  shifted[1] += 10.0
  lo, hi = analysis.selection_bootstrap(tie, shifted, clear, test_b)
  assert lo < 2.0 and hi > 8.0  # the interval holds the resamples that chose setting 0 and those that chose 1


def test_p_below_alpha_exactly_when_the_interval_decides():
  """The p-value each test reports is the t-test dual of its 95% interval, for every kind (what lets Holm's
  adjustment act on the p-values alone)."""
  rng = np.random.default_rng(7)
  seen = set()
  for _ in range(400):
    v = rng.normal(rng.uniform(-1, 1), rng.uniform(0.05, 1), int(rng.integers(3, 12)))
    for kind in analysis.KINDS:
      t = analysis.test("x", v, kind, margin=0.3)
      assert (t["p"] < 0.05) == (t["outcome"] != "unclear"), (kind, t["lo"], t["hi"], t["p"])
      seen.add((kind, t["outcome"]))
  assert len(seen) == 3 * len(analysis.KINDS)  # every kind came out every way


# ----------------------------------------------------------------------------- outcomes and the verdict rule on made-up results


@pytest.mark.parametrize("diffs,kind,outcome", [
    ([-1.0, -1.1, -0.9], "lower", "as predicted"),
    ([1.0, 1.1, 0.9], "lower", "opposite"),
    ([-1.0, 1.0, 0.1], "lower", "unclear"),
    ([0.5, 0.6, 0.55], "higher", "as predicted"),
    ([-0.5, -0.6, -0.55], "higher", "opposite"),
    ([0.001, -0.002, 0.0005], "equivalent", "as predicted"),
    ([0.5, 0.6, 0.55], "equivalent", "opposite"),
    ([0.0, 0.03, -0.01], "equivalent", "unclear"),
    ([0.01, 0.005, 0.012], "not_higher", "as predicted"),  # any increase is below the margin 0.02
    ([0.3, 0.25, 0.28], "not_higher", "opposite"),
    ([0.0, 0.1, 0.05], "not_higher", "unclear"),
    ([0.3, 0.25, 0.28], "not_lower", "as predicted"),
    ([-0.3, -0.2, -0.25], "not_lower", "opposite"),
    ([0.3, -0.2, 0.1], "not_lower", "unclear"),  # a CI that reaches below -0.02 cannot show "not lower"
])
def test_outcomes(diffs, kind, outcome):
  assert analysis.test("t", diffs, kind, margin=0.02)["outcome"] == outcome


def test_outcome_uses_t_interval():
  # mean 1, sd 1, n = 3: the t interval (t_0.975,2 = 4.303) is 1 +- 2.48 and includes 0,
  # although a normal interval (1 +- 1.13) would not.
  t = analysis.test("t", [0.0, 1.0, 2.0], "higher")
  assert t["outcome"] == "unclear"
  assert t["lo"] == pytest.approx(1 - 4.302652729911275 / math.sqrt(3), rel=1e-9)
  # power: (t_0.975,2 + t_0.8,2) * sd / sqrt(n) = (4.3027 + 1.0607) * 1 / sqrt(3)
  assert t["mde"] == pytest.approx((4.302652729911275 + 1.0606601717798214) / math.sqrt(3), rel=1e-6)


def test_nan_or_single_seed_is_unclear():
  t = analysis.test("t", [1.0, float("nan"), 2.0], "higher")
  assert t["outcome"] == "unclear" and "1 of 3 seeds have no value" in t["note"]
  assert analysis.test("t", [1.0, float("inf"), 2.0], "higher")["outcome"] == "unclear"
  assert analysis.test("t", [1.0], "higher")["outcome"] == "unclear"


def test_zero_spread_uses_an_exact_sign_test():
  t = analysis.test("t", [1.0] * 10, "higher")  # a discrete grid: every seed one decade higher
  assert t["outcome"] == "as predicted" and t["lo"] == t["hi"] == 1.0 and "sign test p = 0.002" in t["note"]
  assert analysis.test("t", [1.0] * 5, "higher")["outcome"] == "unclear"  # p = 0.0625: 5 seeds are not enough
  assert analysis.test("t", [-1.0] * 6, "higher")["outcome"] == "opposite"
  assert analysis.test("t", [0.0] * 10, "higher")["outcome"] == "unclear"


def _row(outcome, role):
  """A test row with just what the verdict rule reads."""
  return {"outcome": outcome, "role": role, "name": role}


@pytest.mark.parametrize("primary,sanity,secondary,verdict", [
    ("as predicted", [], [], "supported"),
    ("opposite", [], [], "contradicted"),
    ("unclear", [], [], "inconclusive"),
    ("as predicted", ["as predicted"], ["opposite", "unclear"], "supported"),  # secondary tests never decide
    ("opposite", ["as predicted"], ["as predicted"], "contradicted"),
    ("as predicted", ["unclear"], [], "invalid design"),  # a sanity check that cannot be confirmed
    ("opposite", ["opposite"], [], "invalid design"),  # a failed sanity check is not a contradiction
    ("unclear", ["as predicted", "opposite"], [], "invalid design"),
])
def test_verdict_rule(primary, sanity, secondary, verdict):
  tests = [_row(primary, "primary")] + [_row(o, "sanity") for o in sanity] + [_row(o, "secondary") for o in secondary]
  assert analysis.verdict(tests) == verdict


@pytest.mark.parametrize("kind,values,outcome,says", [
    ("not_lower", [-0.002, -0.001, -0.0015, -0.001, -0.002, -0.001], "as predicted", "reaches below -0.01"),
    ("not_lower", [-0.05, -0.06, -0.055, -0.05, -0.06, -0.05], "opposite", "comes back across -0.01"),
    ("not_higher", [0.002, 0.001, 0.0015, 0.001, 0.002, 0.001], "as predicted", "reaches above +0.01"),
    ("not_higher", [0.0, 0.02, -0.01, 0.03, 0.0, 0.01], "unclear", "entirely on the predicted side of +0.01"),
])
def test_what_would_change_names_the_margin_on_its_side(kind, values, outcome, says):
  t = analysis.test("t", values, kind, margin=0.01, role="primary")
  assert t["outcome"] == outcome
  assert says in analysis.what_would_change(t, analysis.verdict([t]))


def test_verdict_needs_exactly_one_primary_and_known_kinds():
  with pytest.raises(ValueError, match="exactly one primary"):
    analysis.verdict([_row("as predicted", "secondary")])
  with pytest.raises(ValueError, match="exactly one primary"):
    analysis.verdict([_row("as predicted", "primary"), _row("opposite", "primary")])
  with pytest.raises(ValueError, match="unknown test kind"):
    analysis.test("t", [1.0, 2.0], "bigger")
  with pytest.raises(ValueError, match="unknown test role"):
    analysis.test("t", [1.0, 2.0], "higher", role="main")
  with pytest.raises(ValueError, match="margin"):
    analysis.test("t", [1.0, 2.0], "equivalent")


@pytest.mark.parametrize("kind", ["lower", "higher"])
@pytest.mark.parametrize("beyond,outcome", [(1e-9, "as predicted"), (-1e-9, "unclear")])
def test_a_ci_bound_at_zero_decides_by_a_hair(kind, beyond, outcome):
  """A CI that ends just past 0 on the predicted side is as predicted; one that just touches 0 is not."""
  base = np.array([-1.5, -0.5, 0.5, 1.5])
  h = 3.182446305284263 * np.std(base, ddof=1) / 2.0  # t_0.975,3 * sd / sqrt(4)
  shift = h + beyond
  t = analysis.test("t", base + (shift if kind == "higher" else -shift), kind)
  assert (t["lo"] if kind == "higher" else -t["hi"]) == pytest.approx(beyond, abs=1e-12)
  assert t["outcome"] == outcome


@pytest.mark.parametrize("beyond,outcome", [(1e-9, "as predicted"), (-1e-9, "unclear")])
def test_an_equivalence_ci_at_the_margin(beyond, outcome):
  base = np.array([-1.5, -0.5, 0.5, 1.5]) * 0.01
  h = 3.182446305284263 * np.std(base, ddof=1) / 2.0
  margin = h + beyond  # the CI (mean 0) spans +-h: inside the margin by `beyond`
  assert analysis.test("t", base, "equivalent", margin=margin)["outcome"] == outcome


def test_power_statement_of_a_margin_test_is_about_the_margin():
  t = analysis.test("x", [0.001, -0.002, 0.0, -0.001, 0.002], "not_lower", margin=0.01)
  text = analysis.power_statement(t)
  assert "the margin -0.01" in text and "non-inferior" in text and f"{t['mde']:.3g}" in text
  assert "non-inferior" not in analysis.power_statement(analysis.test("y", [0.1, 0.2, 0.15], "lower"))


def test_tuned_picks_the_best_mean_and_counts_nan_as_worst():
  """``analysis.tuned``: per group, the setting with the largest mean over seeds; a NaN (a diverged run) makes its
  setting the worst, even where the other seeds are best there."""
  scores = np.array([[[1.0, 1.0], [2.0, 0.5], [3.0, np.nan]],    # means 1, 1.25, NaN -> 1
                     [[0.0, 0.1], [-1.0, -1.0], [0.2, 0.2]]])    # -> 2
  np.testing.assert_array_equal(analysis.tuned(scores), [1, 2])
