"""Verdicts that mean what they say: claim parts, Holm-Bonferroni, censoring, pre-registration, seed ranges.

Every function here is checked against a hand-worked answer or an independent computation (scipy,
a brute-force Kaplan-Meier), in both directions.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import scipy.stats

from bn import analysis, ledger, prereg, stats
from bn.claims import c6_depth
from bn.claims.base import Claim, Part
from bn.errors import UsageError

# ----------------------------------------------------------------------------- statistics


def test_holm_by_hand():
  # sorted 0.01, 0.02, 0.03, 0.04 with m = 4: 4*0.01, max(.04, 3*.02), max(.06, 2*.03), max(.06, .04)
  np.testing.assert_allclose(stats.holm([0.03, 0.01, 0.04, 0.02]), [0.06, 0.04, 0.06, 0.06])
  # NaN (a check, no p-value) is not counted in m; values cap at 1
  np.testing.assert_allclose(stats.holm([0.02, float("nan"), 0.6]), [0.04, float("nan"), 0.6])
  np.testing.assert_allclose(stats.holm([0.9, 0.8]), [1.0, 1.0])  # 2 * 0.8 capped at 1, then monotone


def test_t_sf_matches_scipy_and_p_values_are_two_sided():
  for x, df in ((0.0, 3), (2.0, 5), (-1.5, 9), (7.0, 2)):
    assert stats.t_sf(x, df) == pytest.approx(scipy.stats.t.sf(x, df), rel=1e-12)
  v = np.array([0.1, 0.2, 0.15, 0.12, 0.18, 0.11])
  t = analysis.test("x", v, "higher")
  assert t["p"] == pytest.approx(scipy.stats.ttest_1samp(v, 0.0).pvalue, rel=1e-9)


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


# ----------------------------------------------------------------------------- parts and the claim's verdict


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


def test_claim_parts_need_distinct_ids():
  base = dict(id="X", title="t", predicts="p", paper="", experiments=(), analyze=lambda r: {}, plot=lambda *a: [], order=9.0)
  with pytest.raises(ValueError, match="distinct ids"):
    Claim(parts=(Part("a", "says"), Part("a", "says too")), **base)
  with pytest.raises(ValueError, match="distinct ids"):
    Claim(parts=(), **base)


# ----------------------------------------------------------------------------- pre-registration


def test_preregistration_status(tmp_path):
  claim = c6_depth.CLAIM
  (part,) = claim.parts
  record = prereg.registration([claim], {"depth_init": {"bn": [3000, 3001]}}, mode="quick", seed_base=3000,
                               provenance={"git_commit": "abc", "git_dirty": False, "date": "d"})
  prereg.write(tmp_path, record)
  read = prereg.read(tmp_path)
  assert read["seed_base"] == 3000 and read["commit"] == "abc" and read["experiments"]["depth_init"]["bn"] == [3000, 3001]
  assert prereg.status(read, claim, part) == "pre-registered"
  assert prereg.status(None, claim, part) == "not registered"
  moved = dataclasses.replace(part, margin=0.5)  # the declaration changed after the run
  assert prereg.status(read, claim, moved) == "changed after the run: its declaration (margin)"
  read["claims"][claim.id]["sha256"] = "0" * 64  # the module's code changed after the run
  assert prereg.status(read, claim, part) == f"changed after the run: the code of {claim.analyze.__module__}"
  assert prereg.status({"claims": {}}, claim, part).startswith("changed after the run: the claim was added")
  # a resumed ledger keeps the first record
  prereg.write(tmp_path, {**record, "commit": "later"})
  assert prereg.read(tmp_path)["commit"] == "abc"


# ----------------------------------------------------------------------------- seed ranges


def test_confirmatory_and_pilot_seeds_are_disjoint_and_recorded(tmp_path):
  conf = ledger.condition_configs("depth_init", "quick")
  pilot = ledger.condition_configs("depth_init", "quick", seed_base=ledger.PILOT_SEED_BASE)
  for cond in conf:
    assert min(conf[cond].seeds) >= ledger.CONFIRMATORY_SEED_BASE
    assert not set(conf[cond].seeds) & set(pilot[cond].seeds)
    assert [s - ledger.CONFIRMATORY_SEED_BASE for s in conf[cond].seeds] == list(pilot[cond].seeds)


def test_a_ledger_refuses_another_seed_base(tmp_path):
  (tmp_path / "ledger.json").write_text('{"mode": "quick", "dataset": null, "seed_base": 0, "experiments": {}}')
  with pytest.raises(UsageError, match=f"seeds from 0, not --seed-base {ledger.CONFIRMATORY_SEED_BASE}"):
    ledger.check_out(tmp_path, "quick", None, ledger.CONFIRMATORY_SEED_BASE)
  assert ledger.check_out(tmp_path, "quick", None, 0)["seed_base"] == 0


def test_cli_seed_base_is_checked():
  from bn import cli

  for bad in ("-1", "x", "1.5"):
    try:
      rc = cli.main(["reproduce", "--tiny", "--seed-base", bad, "--out", "/nonexistent/never"])
    except SystemExit as e:  # argparse's own refusal of a non-integer
      rc = e.code
    assert rc == 2, bad


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
