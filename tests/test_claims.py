"""Every claim's analysis on hand-written run data with known signs and sizes.

A sign flip in a claim module ("none - BN" for "BN - none"), a wrong key or a wrong condition would
flip or move a verdict while the rest of the suite passes; here every claim's ``analyze`` reads
data built by tests/claim_fixtures.py, and each test pins the primary test's per-seed values
against numbers computed by hand from the design (not by the code under test), the outcomes of the
primary and sanity checks, the verdict (one supported case and one of another verdict per claim),
and the signs of key secondary tests. Plus the shared measurements (``steps_to`` with a diverged run,
``unit_shift``, ``best_lr``, C2's ``largest_stable_lr``, C6's slope) and ``bn.report.build`` on a
hand-written ledger directory. NumPy only: no training.

Where a claim chooses something without the test set -- learning rates on validation accuracy (C1,
C2'), the early-stopping point on validation loss (C3) -- the hand-written test-set curves would choose
differently (decoys), so an analysis that read the test set to choose fails these tests; likewise
probe rows at non-probed LRs and at step 0, the final loss against the early-stopped one, and C7's
rows inside the c3_grid.
"""

import math

import numpy as np
import pytest

from bn import analysis, artifacts, report
from bn.claims import c1_ics, c1p_not_ics, c2_coupling, c2p_lr, c3_noise, c4_landscape, c5_small_batch, c6_depth, c7_attribution

import claim_fixtures as fx
from claim_fixtures import A, B, C, J, SEEDS, SLOPE

N = len(SEEDS)
TOL = 1e-9


def primary(a, part=None):
  (p,) = [t for t in a["tests"] if t["role"] == "primary" and (part is None or t["part"] == part)]
  return p


def sanity(a, part=None):
  return [t for t in a["tests"] if t["role"] == "sanity" and (part is None or t.get("part") in (None, part))]


def named(a, start):
  """The one test whose name starts with ``start``."""
  found = [t for t in a["tests"] if t["name"].startswith(start)]
  assert len(found) == 1, (start, [t["name"] for t in a["tests"]])
  return found[0]


def check(a, *, per_seed, outcome, verdict, sanity_outcomes=(), part=None):
  p = primary(a, part)
  assert p["n"] == N
  np.testing.assert_allclose(p["per_seed"], per_seed, rtol=0, atol=TOL)
  assert p["outcome"] == outcome
  assert [t["outcome"] for t in sanity(a, part)] == list(sanity_outcomes)
  assert analysis.verdict(a["tests"], part) == verdict


def log2(x):
  return np.log2(np.asarray(x, float))


@pytest.fixture(scope="module")
def ioffe_world(tmp_path_factory):
  """The default ioffe experiment (BN helps in every way the claims predict), every condition, written to disk
  and read back by ``load_condition`` once for the module."""
  return fx.roundtrip(tmp_path_factory.mktemp("ioffe"), {"ioffe": fx.ioffe()})["ioffe"]


# ----------------------------------------------------------------------------- shared measurements


def _row(step, seed, acc, diverged, lr=0.5):
  return {"step": step, "run": seed if lr == 0.5 else 10 + seed, "seed": seed, "lr": lr, "weight_decay": 0.0, "test_accuracy": acc, "test_loss": 1.0,
          "train_loss": 1.0, "train_accuracy": acc, "diverged": diverged}


def test_steps_to_interpolates_and_a_diverged_run_never_arrives():
  steps = (100, 200, 300, 400, 500)
  acc = {0: (0.5, 0.7, 0.9, None, None),  # reaches 0.8 at 250 (interpolated), diverges at 400: 250
         1: (0.5, 0.7, 0.95, 0.99, 0.99),  # diverged from step 300 on, its accuracy still recorded: never
         2: (0.5, 0.6, 0.7, 0.75, 0.79),  # never reaches 0.8
         3: (0.85, 0.9, 0.9, 0.9, 0.9)}  # already at the first evaluation: its step
  diverged = {0: (False, False, False, True, True), 1: (False, False, True, True, True)}
  rows = [_row(t, s, acc[s][i], diverged.get(s, (False,) * 5)[i]) for i, t in enumerate(steps) for s in acc]
  rows += [_row(t, s, 0.99, False, lr=2.0) for t in steps for s in acc]  # another LR: filtered out
  got = analysis.steps_to({"metrics": rows}, 0.8, 0.5)
  np.testing.assert_allclose(got, [250.0, math.inf, math.inf, 100.0])
  # the last k evaluations and the mean over training are NaN for a run that diverged
  last = analysis.last({"metrics": rows}, "test_accuracy", 0.5, 2)
  assert np.isnan(last[0]) and np.isnan(last[1]) and last[2] == pytest.approx(0.77) and last[3] == pytest.approx(0.9)
  auc = analysis.auc_at({"metrics": rows}, 0.5)
  assert np.isnan(auc[0]) and np.isnan(auc[1]) and auc[2] == pytest.approx((0.5 + 0.6 + 0.7 + 0.75 + 0.79) / 5)
  # ... or a stated value for a diverged run (the claims count one as chance)
  np.testing.assert_allclose(analysis.last({"metrics": rows}, "test_accuracy", 0.5, 2, diverged=0.1)[:2], [0.1, 0.1])
  # for the tests, a run that never reached the target is counted at its last step: a lower bound
  from bn.claims import _common

  run = {"metrics": rows, "summary": {"steps": 500}}
  np.testing.assert_allclose(_common.log2_steps(run, 0.8, 0.5), np.log2([250.0, 500.0, 500.0, 100.0]))
  # ... or as inf (never="inf": where the bound would flatter the prediction)
  np.testing.assert_allclose(_common.log2_steps(run, 0.8, 0.5, never="inf"), np.log2([250.0, math.inf, math.inf, 100.0]))
  # another metrics field: the validation accuracy (here 0.1 below the test accuracy at every evaluation)
  vrows = [{**r, "val_accuracy": None if r["test_accuracy"] is None else r["test_accuracy"] - 0.1} for r in rows]
  vrun = {"metrics": vrows, "summary": {"steps": 500}}
  np.testing.assert_allclose(_common.log2_steps(vrun, 0.7, 0.5, key="val_accuracy"), np.log2([250.0, 500.0, 500.0, 100.0]))
  np.testing.assert_allclose(analysis.steps_to(vrun, 0.8, 0.5, key="val_accuracy"), [300.0, math.inf, math.inf, 200.0])
  note = _common.censored([(run, 0.5)], 0.8)
  assert note.startswith("2 run(s) never reached 80%")
  assert "1 run(s) reached 80% by the first evaluation (step 100): counted at that step, an upper bound" in note  # seed 3
  assert _common.censored([({"metrics": [r for r in rows if r["seed"] == 0], "summary": {"steps": 500}}, 0.5)], 0.8) == ""
  # diverged evaluations at a stated value in the mean over training (C1' counts them at chance)
  np.testing.assert_allclose(analysis.auc_at({"metrics": rows}, 0.5, diverged=0.1)[:2], [(0.5 + 0.7 + 0.9 + 0.1 + 0.1) / 5,
                                                                                      (0.5 + 0.7 + 0.1 + 0.1 + 0.1) / 5])


def test_early_stopped_by_hand():
  steps = (100, 200, 300, 400, 500)
  val = {0: (0.9, 0.5, 0.6, 0.4, 0.7),  # lowest at 400, where the test loss is 0.6 (the test loss is lowest, 0.2, at 200)
         1: (0.9, 0.8, 0.5, 0.1, 0.1),  # diverged from 400 on, the validation loss still recorded: 300 is the last candidate
         2: (0.3, 0.2, 0.1, 0.1, 0.1)}  # diverged from the first evaluation: no candidate
  test = {0: (1.0, 0.2, 0.8, 0.6, 0.9), 1: (1.0, 0.9, 0.7, 0.05, 0.05), 2: (0.5, 0.5, 0.5, 0.5, 0.5)}
  diverged = {0: (False,) * 5, 1: (False, False, False, True, True), 2: (True,) * 5}
  rows = [{**_row(t, s, 0.5, diverged[s][i]), "test_loss": test[s][i], "val_loss": val[s][i]} for i, t in enumerate(steps) for s in val]
  rows += [{**_row(t, s, 0.5, False, lr=2.0), "test_loss": 9.0, "val_loss": 0.0} for t in steps for s in val]  # another LR
  got = analysis.early_stopped({"metrics": rows}, "test_loss", "val_loss", lr=0.5, diverged=math.log(10))
  np.testing.assert_allclose(got, [0.6, 0.7, math.log(10)])
  assert np.isnan(analysis.early_stopped({"metrics": rows}, lr=0.5)[2])  # NaN unless told what a diverged run counts as
  # a run's chance level: uniform guessing over the dataset's classes
  assert analysis.chance({"config": {"config": {"data": {"name": "fashion_mnist"}}}}) == pytest.approx((math.log(10), 0.1))
  assert analysis.chance({"config": {"config": {"data": {"name": "cifar100"}}}}) == pytest.approx((math.log(100), 0.01))


def test_non_inferiority_kinds_and_checks():
  jit = np.array(A)
  t = lambda v, kind: analysis.test("x", v + jit, kind, margin=0.25)["outcome"]  # noqa: E731
  # not_higher: as predicted when the CI lies below +margin (also far below 0), opposite when entirely above it
  assert [t(v, "not_higher") for v in (0.1, -1.0, 0.5, 0.25)] == ["as predicted", "as predicted", "opposite", "unclear"]
  assert [t(v, "not_lower") for v in (-0.1, 1.0, -0.5, -0.25)] == ["as predicted", "as predicted", "opposite", "unclear"]
  assert analysis.test("x", np.full(N, math.inf), "not_higher", margin=0.25)["outcome"] == "unclear"  # inf: no value
  # a check is decided by its condition; a failed sanity check makes the verdict "invalid design"
  ok, bad = analysis.check("holds", True, "why"), analysis.check("fails", False, "why")
  assert ok["role"] == "sanity" and ok["outcome"] == "as predicted" and bad["outcome"] == "opposite" and bad["note"] == "why"
  p = analysis.test("p", -0.5 + jit, "lower", role="primary")
  assert analysis.verdict([p, ok]) == "supported" and analysis.verdict([p, ok, bad]) == "invalid design"


def _units(step, seed, means, stds, source="units"):
  return {"step": step, "seed": seed, "run": seed, "lr": 0.5, "layers": ["layer0", "head"], source: {"layer0": {"mean": means, "std": stds}}}


def test_unit_shift_by_hand():
  # seed 0: 2 units at steps 0, 10, 20, 40 (given out of order); seed 1: one point with units -> no interval
  mu = [(0.0, 1.0), (1.0, 1.0), (3.0, 0.0), (3.0, 2.0)]
  sd = [(1.0, 2.0), (1.0, 2.0), (3.0, 2.0), (3.0, 2.0)]
  steps = (0, 10, 20, 40)
  rows = [_units(steps[i], 0, list(mu[i]), list(sd[i])) for i in (2, 0, 3, 1)]
  rows += [_units(0, 1, [0.0, 0.0], [1.0, 1.0]), {"step": 10, "seed": 1, "run": 1, "lr": 0.5, "layers": ["layer0", "head"]}]
  rows += [_units(steps[i], 0, [2.0 * i, -2.0 * i], [4.0, 4.0], source="eval_units") for i in range(4)]
  # the unit's reference scale: the RMS of its std over every point, fixed for the whole run
  ref0, ref1 = math.sqrt((1 + 1 + 9 + 9) / 4), math.sqrt((4 + 4 + 4 + 4) / 4)  # sqrt(5), 2
  d0 = [1 / ref0, 2 / ref0, 0 / ref0]  # |Δμ| of unit 0 per interval (ending at 10, 20, 40) / ref
  d1 = [0 / ref1, 1 / ref1, 2 / ref1]
  whole = (sum(d0) + sum(d1)) / 6
  first = (d0[0] + d0[1] + d1[0] + d1[1]) / 4  # window (0, 0.5): intervals ending at 10 and 20 (<= 20)
  second = (d0[1] + d0[2] + d1[1] + d1[2]) / 4  # window (0.5, 1): ending at 20 and 40 (>= 20)
  got = analysis.unit_shift(rows, "layer0")
  assert got[0] == pytest.approx(whole) and np.isnan(got[1])
  assert analysis.unit_shift(rows, "layer0", window=(0, 0.5))[0] == pytest.approx(first)
  assert analysis.unit_shift(rows, "layer0", window=(0.5, 1))[0] == pytest.approx(second)
  ev = analysis.unit_shift(rows, "layer0", source="eval_units")
  assert ev[0] == pytest.approx(0.5) and np.isnan(ev[1])  # seed 1 has no eval rows: NaN


def test_best_lr_selection():
  def finals_run(per):
    return fx.sweep("lr_sweep", {"norm.kind": "batch"}, "bn", per, np.zeros(N))

  acc = lambda a, **kw: dict(test_accuracy=a, train_accuracy=0.9, **kw)  # noqa: E731
  # the highest mean wins; a tie goes to the smaller LR
  r = finals_run({0.1: acc(0.8), 1.0: acc(0.9), 3.0: acc(0.9)})
  assert analysis.best_lr(r, c2p_lr.final_acc, higher_is_better=True) == 1.0
  # a run that diverged counts as chance (0.1 for 10 classes): with one of 6 seeds diverged at LR 10 the
  # mean there is (5 * 0.99 + 0.1) / 6 = 0.842 > 0.8; with three, (3 * 0.99 + 3 * 0.1) / 6 = 0.545 < 0.8
  for diverged_seeds, best in (((5,), 10.0), ((3, 4, 5), 0.1)):
    r = finals_run({0.1: acc(0.8), 10.0: acc(0.99)})
    for x in r["metrics"]:  # these seeds at LR 10 diverged from step 600 on
      if x["seed"] in diverged_seeds and x["lr"] == 10.0 and x["step"] >= 600:
        x.update(diverged=True, test_accuracy=None)
    np.testing.assert_allclose(c2p_lr.final_acc(r, 10.0), [0.1 if s in diverged_seeds else 0.99 for s in range(N)])
    assert analysis.best_lr(r, c2p_lr.final_acc, higher_is_better=True) == best
  # lower is better (log2 steps): inf (never reached) is the worst
  assert analysis.best_lr(r, lambda run, lr: np.full(N, {0.1: 5.0, 10.0: 4.0}[lr])) == 10.0
  assert analysis.best_lr(r, lambda run, lr: np.full(N, {0.1: 5.0, 10.0: math.inf}[lr])) == 0.1


def test_largest_stable_lr():
  runs = []
  for seed in range(3):  # (lr, diverged, final train accuracy); a diverged run records no accuracy
    for lr, div, tr in ((0.01, False, 0.6), (0.1, False, 0.7), (1.0, False, 0.45 if seed == 1 else 0.8),
                        (10.0, seed == 0, None if seed == 0 else 0.9)):
      runs.append({"seed": seed, "lr": lr, "diverged": div, "train_accuracy": tr})
  runs.append({"seed": 3, "lr": 0.01, "diverged": True, "train_accuracy": None})  # nothing stable: NaN
  got = c2p_lr.largest_stable_lr({"runs": runs})
  np.testing.assert_allclose(got[:3], [0.0, 1.0, 1.0])  # seed 0: 1.0 (10 diverged); seed 1: 10 (1.0 below 50% but 10 fine)
  assert np.isnan(got[3])
  strict = c2p_lr.largest_stable_lr({"runs": runs}, threshold=0.85)  # seed 0: nothing above 85% but the diverged 10
  assert np.isnan(strict[0]) and list(strict[1:3]) == [1.0, 1.0]


def test_depth_slope_exact():
  # depths 2, 4, 6; log10 ratios 1, 2, 4 for every seed: slope = sum (x - 4)(r - 7/3) / sum (x - 4)^2 = (-2*1 + 2*4) / 8 = 0.75
  res = fx.depth_result((2, 4, 6), [[1.0] * N, [2.0] * N, [4.0] * N])
  np.testing.assert_allclose(c6_depth.depth_slopes(res), np.full(N, 0.75), atol=TOL)
  # g[-2] is the last hidden layer, not the head: the 123.0 head norm must not enter
  assert res["depths"][0]["grad_norms"][0][-1] == 123.0
  assert np.all(np.isnan(c6_depth.depth_slopes(fx.depth_result((8,), [[1.0] * N])))), "one depth: no slope"


# ----------------------------------------------------------------------------- C1


def c1(world):
  """C1's results: the speed experiment's three nets from the ioffe fixture's LR sweeps (BN; no BN stands for both
  no-BN inits), the stability part from the ioffe experiment itself."""
  speed = {"bn": world["bn"], "none_lecun": world["none"], "none": world["none"]}
  return c1_ics.analyze({"c1_speed": speed, "ioffe": world})


def test_c1_supported(ioffe_world):
  a = c1(ioffe_world)
  assert analysis.lrs_of(ioffe_world["bn"]) == list(fx.IOFFE_LRS) == [0.125, 0.5, 2.0, 8.0]
  # chosen on validation accuracy: BN reaches 75% there fastest at 2 (400 steps; 8 takes 1000), none at 0.5 (1200; 2
  # takes 1500, 8 diverges). The test set would choose BN 8 (300) and none 2 (1000): decoys.
  assert a["best_lr"] == {"bn": 2.0, "none_lecun": 0.5, "none": 0.5}
  # faster: restricted log2 steps at those LRs (all reached before the last evaluation, none at the first)
  check(a, per_seed=-math.log2(3) + A - B, outcome="as predicted", verdict="supported", sanity_outcomes=["as predicted"], part="faster")
  assert primary(a, "faster")["censored"] == 0
  # stable: eval-mode shift per interval after the first = half the designed drift (times 1 + jit), BN 0.05 vs none 0.5
  check(a, per_seed=0.5 * (0.05 * (1 + A) - 0.5 * (1 + B)), outcome="as predicted", verdict="supported", part="stable")
  inside = named(a, "each net's best LR lies inside the grid")
  assert inside["kind"] == "check" and inside["part"] == "faster" and "BN 2, none 0.5" in inside["note"]
  np.testing.assert_allclose(named(a, "the same shift in training mode")["per_seed"], 0.05 * (1 + A) - 0.5 * (1 + B), atol=TOL)
  assert all(t.get("part") in (None, "faster", "stable") for t in a["tests"]) and "because" in a["untested"]  # no drift runs
  assert "nested selection" in a["notes"][0] and "Kaplan-Meier" in a["notes"][1]


def _c1_because(drift_t, drift_shift=1.0):
  """C1 with a drift condition: c1_speed's bn_drift1 reaches 75% (test and validation) at ``drift_t`` steps per LR;
  ioffe's bn_drift1 moves its inputs by ``drift_shift`` per interval (BN 0.05, none 0.5)."""
  world = fx.ioffe(None, ("bn", "none"))
  drift = fx.ioffe_condition("bn", {"t": drift_t})
  speed = {"bn": world["bn"], "none_lecun": world["none"], "none": world["none"], "bn_drift1": drift}
  ioffe = {**world, "bn_drift1": fx.ioffe_condition("bn", {"shift": drift_shift})}
  return c1_ics.analyze({"c1_speed": speed, "ioffe": ioffe})


def test_c1_because_supported_when_the_drift_takes_bn_s_lead():
  # BN at LR 2: 400 steps; none at 0.5: 1200. The drift net is best at 0.5 with 1200 steps (jitter J["bn"]): its lead is gone.
  a = _c1_because({0.125: 1400, 0.5: 1200, 2.0: 1300, 8.0: 1450})
  assert "because" not in a["untested"]
  s_bn, s_none, s_d = math.log2(400) + A, math.log2(1200) + B, math.log2(1200) + A
  check(a, per_seed=(s_d - s_bn) - 0.5 * (s_none - s_bn), outcome="as predicted", verdict="supported", part="because",
        sanity_outcomes=["as predicted", "as predicted"])
  # the premise: eval-mode shift after the warm-up, drift (1.0) - none (0.5), halved in eval mode as the fixture designs
  np.testing.assert_allclose(sanity(a, "because")[1]["per_seed"], 0.5 * (1.0 * (1 + A) - 0.5 * (1 + B)), atol=TOL)


def test_c1_because_contradicted_when_bn_stays_fast_with_drift():
  a = _c1_because({0.125: 1000, 0.5: 600, 2.0: 420, 8.0: 900})  # the drift costs BN 5%: its lead stays
  check(a, per_seed=math.log2(420 / 400) - 0.5 * (math.log2(1200 / 400) + B - A), outcome="opposite", verdict="contradicted",
        part="because", sanity_outcomes=["as predicted", "as predicted"])


def test_c1_because_invalid_design_when_the_drift_moves_the_inputs_less_than_no_bn():
  a = _c1_because({0.125: 1400, 0.5: 1200, 2.0: 1300, 8.0: 1450}, drift_shift=0.2)
  assert analysis.verdict(a["tests"], "because") == "invalid design"
  assert [t["outcome"] for t in sanity(a, "because")] == ["as predicted", "opposite"]


def test_c1_contradicted_when_bn_is_slower():
  m = fx.ioffe({"bn": {"t": {0.125: 1400, 0.5: 1000, 2.0: 800, 8.0: 1200}}, "none": {"t": {0.125: 800, 0.5: 400, 2.0: 600, 8.0: "diverge"}}},
               ("bn", "none"))
  a = c1(m)
  assert a["best_lr"]["bn"] == 2.0 and a["best_lr"]["none_lecun"] == 0.5
  check(a, per_seed=1 + A - B, outcome="opposite", verdict="contradicted", sanity_outcomes=["as predicted"], part="faster")


def test_c1_stable_contradicted_when_bn_inputs_move_more():
  a = c1(fx.ioffe({"bn": {"shift": 1.0}}, ("bn", "none")))
  check(a, per_seed=0.5 * (1.0 * (1 + A) - 0.5 * (1 + B)), outcome="opposite", verdict="contradicted", part="stable")
  assert analysis.verdict(a["tests"], "faster") == "supported"  # the other part stands on its own


def test_c1_faster_invalid_design_when_a_best_lr_is_an_edge_of_the_grid():
  # no BN's validation accuracy reaches 75% fastest at 0.125 (1000 steps), the smallest LR of the grid: its "best LR"
  # may lie outside it. Its test accuracy there is slow (1400 steps): the primary reads the test steps at that LR.
  none_v = {0.125: 1000, 0.5: 1200, 2.0: 1450, 8.0: "diverge"}
  a = c1(fx.ioffe({"none": {"v": none_v, "t": {0.125: 1400, 0.5: 1200, 2.0: 1450, 8.0: "diverge"}}}, ("bn", "none")))
  assert a["best_lr"]["none_lecun"] == 0.125
  check(a, per_seed=log2(400 / 1400) + A - B, outcome="as predicted", verdict="invalid design", sanity_outcomes=["opposite"],
        part="faster")


# ----------------------------------------------------------------------------- C1'


# the primary's dose 2 slows noisy BN by half the fixture's per-dose slope: inside the margin, with spread
D2 = {"slope": SLOPE / 2}


def _ioffe_c1p(changes=None):
  changes = {"noisy_d2": dict(D2), **{k: {**(D2 if k == "noisy_d2" else {}), **v} for k, v in (changes or {}).items()}}
  return fx.ioffe(changes, ("bn", "none", "noisy_d0.5", "noisy_d1", "noisy_d2", "noisy_d4", "stopgrad"))


def design_auc(cond, knobs=None):
  """Per seed: the designed mean test accuracy over the evaluations at LR 0.5 -- the fixture's ramp
  (linear from 0.1 at step 0 through the target at the designed step, capped at cap + jit / 10)."""
  k = {**fx.IOFFE[cond], **(knobs or {})}
  t_hit = fx.ioffe_t(cond, fx.SHARED_LR, k)
  cap = k["cap"] + J[cond] / 10
  steps = np.arange(fx.IOFFE_EVAL, fx.IOFFE_STEPS + 1, fx.IOFFE_EVAL)
  return np.array([np.mean(np.minimum(c, 0.1 + (fx.TARGET - 0.1) / t * steps)) for t, c in zip(t_hit, cap)])


def test_c1p_supported(tmp_path):
  deep = {"bn": fx.measured(fx.config("deep_linear", {"norm.kind": "batch"}), fx.deep_linear_result(-2.0, A)),
          "none": fx.measured(fx.config("deep_linear", {"norm.kind": "none"}), fx.deep_linear_result(-4.0, B))}
  a = c1p_not_ics.analyze({"ioffe": _ioffe_c1p(), **fx.roundtrip(tmp_path, {"deep_linear": deep})})
  # mean test accuracy over training at LR 0.5, noisy (dose 2) - BN: not below -0.01
  want = design_auc("noisy_d2", D2) - design_auc("bn")
  assert np.all(np.abs(want) < 0.01) and np.ptp(want) > 0  # the world is built inside the margin, with spread
  check(a, per_seed=want, outcome="as predicted", verdict="supported", sanity_outcomes=["as predicted", "as predicted"])
  assert primary(a)["kind"] == "not_lower" and primary(a)["margin"] == 0.01
  # sanity (Santurkar's premise): the noisy inputs (dose 2) move more than without BN (shift 1.0 vs 0.5, times 1 + jit)
  np.testing.assert_allclose(sanity(a)[0]["per_seed"], 1.0 * (1 + J["noisy_d2"]) - 0.5 * (1 + B), atol=TOL)
  # sanity: BN trains better than no BN at LR 0.5 by more than twice the margin
  np.testing.assert_allclose(sanity(a)[1]["per_seed"], design_auc("bn") - design_auc("none") - 0.02, atol=TOL)
  steps = named(a, "steps to 75% test accuracy, noisy - BN")  # the first design, now secondary: log2 600 + A + 2 SLOPE/2 vs log2 600 + A
  np.testing.assert_allclose(steps["per_seed"], SLOPE, atol=TOL)
  assert steps["role"] == "secondary" and steps["kind"] == "not_higher" and steps["margin"] == 0.25
  at1 = named(a, "at dose 1")  # the first confirmatory run's primary, now secondary
  np.testing.assert_allclose(at1["per_seed"], design_auc("noisy_d1") - design_auc("bn"), atol=TOL)
  assert at1["role"] == "secondary" and at1["kind"] == "not_lower" and at1["outcome"] == "as predicted"
  premise1 = named(a, "... its inputs move more than without BN")
  np.testing.assert_allclose(premise1["per_seed"], 1.0 * (1 + J["noisy_d1"]) - 0.5 * (1 + B), atol=TOL)
  assert premise1["role"] == "secondary" and premise1["outcome"] == "as predicted"
  faster = named(a, "noisy BN trains faster than no BN")
  np.testing.assert_allclose(faster["per_seed"], log2(600 / 1200) + A + SLOPE - B, atol=TOL)
  assert faster["outcome"] == "as predicted"
  slope = named(a, "dose-response")  # least-squares slope of the designed mean accuracy over the doses 0 (BN), 0.5, 1, 2, 4
  doses = np.array((0.0,) + fx.DOSES)
  y = np.array([design_auc("bn")] + [design_auc(f"noisy_d{d:g}", D2 if d == 2 else None) for d in fx.DOSES])
  xc = doses - doses.mean()
  np.testing.assert_allclose(slope["per_seed"], xc @ (y - y.mean(0)) / (xc @ xc), atol=TOL)
  assert slope["kind"] == "not_lower" and slope["margin"] == 0.005 and slope["outcome"] == "as predicted"
  for name in ("gradient ICS at a matched", "gradient ICS under the actual"):  # 1 - cos: BN 2e-3, none 1e-3 (times 10**jit)
    t = named(a, name)
    np.testing.assert_allclose(t["per_seed"], math.log10(2.0) + A - B, atol=TOL)
    assert t["outcome"] == "as predicted"
  deep_t = named(a, "deep linear net")
  np.testing.assert_allclose(deep_t["per_seed"], 2.0 + A - B, atol=TOL)
  assert deep_t["outcome"] == "as predicted"


# the deep linear net at three fractions of the no-BN net's stability edge: BN's log10 (1 - cos) above no BN's by
# 1.5 and 2 decades at 0.1 and 0.25 (the fraction the original row reads), below it by 0.5 decades at 0.5
DEEP_BN, DEEP_NONE = {0.1: -2.0, 0.25: -2.0, 0.5: -3.0}, {0.1: -3.5, 0.25: -4.0, 0.5: -2.5}


def _deep_fractions(tmp_path, diverge_bn=None, diverge_none=None, bn=DEEP_BN, none=DEEP_NONE):
  deep = {"bn": fx.measured(fx.config("deep_linear", {"norm.kind": "batch"}), fx.deep_linear_fractions(bn, A, diverge=diverge_bn)),
          "none": fx.measured(fx.config("deep_linear", {"norm.kind": "none"}), fx.deep_linear_fractions(none, B, diverge=diverge_none))}
  return {"ioffe": _ioffe_c1p(), **fx.roundtrip(tmp_path, {"deep_linear": deep})}


def test_c1p_deep_linear_one_row_per_fraction_of_the_edge(tmp_path):
  a = c1p_not_ics.analyze(_deep_fractions(tmp_path))
  check(a, per_seed=design_auc("noisy_d2", D2) - design_auc("bn"), outcome="as predicted", verdict="supported",
        sanity_outcomes=["as predicted", "as predicted"])  # the primary and its sanity checks do not move
  main = named(a, "deep linear net (25 x 10")  # the original row reads the top level: fraction 0.25
  np.testing.assert_allclose(main["per_seed"], 2.0 + A - B, atol=TOL)
  assert main["outcome"] == "as predicted" and main["role"] == "secondary" and "0.25 of the no-BN net's stability edge" in main["note"]
  low = named(a, "deep linear net at 0.1 of the no-BN net's stability edge: BN raises matched gradient ICS")
  np.testing.assert_allclose(low["per_seed"], 1.5 + A - B, atol=TOL)
  assert low["outcome"] == "as predicted" and low["role"] == "secondary" and low["kind"] == "higher" and low["unit"] == "decades"
  high = named(a, "deep linear net at 0.5 of the no-BN net's stability edge")
  np.testing.assert_allclose(high["per_seed"], -0.5 + A - B, atol=TOL)
  assert high["outcome"] == "opposite" and high["role"] == "secondary"
  assert not [t for t in a["tests"] if t["name"].startswith("deep linear net at 0.25")]  # not twice
  assert len(a["tests"]) == 10 + 3
  (note,) = [n for n in a["notes"] if n.startswith("deep linear net, runs diverged")]
  assert "0.1: BN 0, none 0 of 6; 0.25: BN 0, none 0 of 6; 0.5: BN 0, none 0 of 6" in note
  # the other direction at every fraction: BN lowers gradient ICS by 1 decade (0.25 reads it too)
  flip = c1p_not_ics.analyze(_deep_fractions(tmp_path / "flip", bn={f: -4.0 for f in DEEP_BN}, none={f: -3.0 for f in DEEP_BN}))
  for name in ("deep linear net (25 x 10", "deep linear net at 0.1 ", "deep linear net at 0.5 "):
    np.testing.assert_allclose(named(flip, name)["per_seed"], -1.0 + A - B, atol=TOL)
    assert named(flip, name)["outcome"] == "opposite"


def test_c1p_deep_linear_diverged_runs_have_no_value(tmp_path):
  a = c1p_not_ics.analyze(_deep_fractions(tmp_path, diverge_bn={0.1: [2]}, diverge_none={0.5: [1, 4]}))
  low, high = named(a, "deep linear net at 0.1 "), named(a, "deep linear net at 0.5 ")
  np.testing.assert_allclose(low["per_seed"], np.where(np.arange(N) == 2, np.nan, 1.5 + A - B), atol=TOL)
  np.testing.assert_allclose(high["per_seed"], np.where(np.isin(np.arange(N), [1, 4]), np.nan, -0.5 + A - B), atol=TOL)
  assert low["outcome"] == high["outcome"] == "unclear"
  assert named(a, "deep linear net (25 x 10")["outcome"] == "as predicted"  # 0.25: nothing diverged
  (note,) = [n for n in a["notes"] if n.startswith("deep linear net, runs diverged")]
  assert "0.1: BN 1, none 0 of 6; 0.25: BN 0, none 0 of 6; 0.5: BN 0, none 2 of 6" in note


def test_c1p_deep_linear_results_of_one_fraction_give_one_row(tmp_path):
  """Results written before ``deep.lr_fractions`` (one run, its ``lr_fraction`` at the top level): the original row only."""
  one = lambda e, jit: {**fx.deep_linear_result(e, jit), "lr_fraction": 0.25}  # noqa: E731
  deep = {"bn": fx.measured(fx.config("deep_linear", {"norm.kind": "batch"}), one(-2.0, A)),
          "none": fx.measured(fx.config("deep_linear", {"norm.kind": "none"}), one(-4.0, B))}
  a = c1p_not_ics.analyze({"ioffe": _ioffe_c1p(), **fx.roundtrip(tmp_path, {"deep_linear": deep})})
  np.testing.assert_allclose(named(a, "deep linear net")["per_seed"], 2.0 + A - B, atol=TOL)
  (note,) = [n for n in a["notes"] if n.startswith("deep linear net, runs diverged")]
  assert "0.25: BN 0, none 0 of 6" in note and len(a["tests"]) == 11


def test_c1p_plot_shows_the_deep_linear_net_over_training_at_every_fraction(tmp_path, monkeypatch):
  from bn import plotting

  figs = []
  monkeypatch.setattr(plotting, "save", lambda fig, out, name: figs.append(fig) or name)
  results = _deep_fractions(tmp_path, diverge_none={0.5: [1]})
  assert c1p_not_ics.plot(results, c1p_not_ics.analyze(results), tmp_path) == ["c1p_not_ics.png"]
  lines = {ln.get_label(): ln for ln in figs[0].axes[3].get_lines()}
  assert sorted(lines) == sorted(f"{c}, {f:g} of the edge" for c in ("bn", "none") for f in (0.1, 0.25, 0.5))
  x, y = lines["bn, 0.1 of the edge"].get_data()
  np.testing.assert_allclose(x, [100, 200])  # the points after step 0
  np.testing.assert_allclose(y, 10 ** (-2.0 + A.mean()), rtol=1e-9)  # geometric mean over layers and seeds
  np.testing.assert_allclose(lines["none, 0.5 of the edge"].get_data()[1], 10 ** (-2.5 + np.delete(B, 1).mean()), rtol=1e-9)  # seed 1 diverged: left out


def test_c1p_noisy_bn_better_than_bn_is_not_a_contradiction():
  # non-inferiority: noisy BN faster and higher than BN (dose 2) is as predicted (an equivalence test would say opposite)
  fast = {f"noisy_d{d:g}": {"slope": -0.3 + SLOPE, "cap": 0.99} for d in fx.DOSES}
  a = c1p_not_ics.analyze({"ioffe": _ioffe_c1p(fast)})
  want = design_auc("noisy_d2", fast["noisy_d2"]) - design_auc("bn")
  assert np.all(want > 0.01)
  check(a, per_seed=want, outcome="as predicted", verdict="supported", sanity_outcomes=["as predicted", "as predicted"])


def test_c1p_contradicted_when_noise_slows_training():
  slow = {f"noisy_d{d:g}": {"slope": 1.0 + SLOPE} for d in fx.DOSES}  # noisy BN twice as slow per dose
  a = c1p_not_ics.analyze({"ioffe": _ioffe_c1p(slow)})
  want = design_auc("noisy_d2", slow["noisy_d2"]) - design_auc("bn")
  assert np.all(want < -0.01)
  check(a, per_seed=want, outcome="opposite", verdict="contradicted", sanity_outcomes=["as predicted", "as predicted"])
  assert named(a, "dose-response")["outcome"] == "opposite"  # accuracy falls with the dose, faster than 0.005 per dose
  assert len(a["tests"]) == 10  # no deep_linear results: no deep-linear test


def test_c1p_contradicted_when_noisy_bn_never_reaches_the_target():
  # noisy BN that never gets to 75% (it creeps to 0.7) trains worse than BN over the whole curve
  a = c1p_not_ics.analyze({"ioffe": _ioffe_c1p({"noisy_d2": {"t": {0.5: None}}})})
  assert primary(a)["outcome"] == "opposite" and analysis.verdict(a["tests"]) == "contradicted"
  steps = named(a, "steps to 75% test accuracy, noisy - BN")  # never reaching counts as inf there: unclear, not flattering
  assert np.all(np.isinf(steps["per_seed"])) and steps["outcome"] == "unclear"


def test_c1p_invalid_design_when_noise_does_not_destabilize():
  # the noisy inputs (dose 2) move more than BN's but less than without BN (0.3 vs 0.5): Santurkar's premise fails, so
  # "noisy BN trains as well as BN" says nothing about whether stable inputs matter
  a = c1p_not_ics.analyze({"ioffe": _ioffe_c1p({"noisy_d2": {"shift": 0.3}})})
  check(a, per_seed=design_auc("noisy_d2", D2) - design_auc("bn"), outcome="as predicted", verdict="invalid design",
        sanity_outcomes=["opposite", "as predicted"])
  np.testing.assert_allclose(sanity(a)[0]["per_seed"], 0.3 * (1 + J["noisy_d2"]) - 0.5 * (1 + B), atol=TOL)


def test_c1p_invalid_design_when_bn_is_not_clearly_better_than_no_bn():
  # no BN at LR 0.5 almost as good as BN (650 steps to 75%, the same cap): BN - none is below twice the margin, so "as good
  # as BN" could not be told apart from "as bad as no BN"
  knobs = {"t": {0.125: 1800, 0.5: 650, 2.0: 1000, 8.0: "diverge"}, "cap": 0.95}
  a = c1p_not_ics.analyze({"ioffe": _ioffe_c1p({"none": knobs})})
  check(a, per_seed=design_auc("noisy_d2", D2) - design_auc("bn"), outcome="as predicted", verdict="invalid design",
        sanity_outcomes=["as predicted", "opposite"])
  np.testing.assert_allclose(sanity(a)[1]["per_seed"], design_auc("bn") - design_auc("none", knobs) - 0.02, atol=TOL)


# ----------------------------------------------------------------------------- C2


BN_DROPS = {"all": 0.1, "layer0": 0.2, "layer1": 0.15, "layer2": 0.1, "head": 0.05}
NONE_DROPS = {"all": 0.1, "layer0": 0.05, "layer1": 0.02, "layer2": 0.02, "head": 0.03}
BEST = {"all": 1, "layer0": 3, "layer1": 3, "layer2": 4, "head": 2}  # tuned LR indices, all inside the 7-value grid


def _alone(bn_drops=BN_DROPS, none_drops=NONE_DROPS, bn_best=BEST, none_best=BEST, **kw):
  return {"bn": fx.measured(fx.config("alone", {"norm.kind": "batch"}), fx.alone_result("batch", bn_drops, bn_best, 0.3, A, **kw)),
          "none": fx.measured(fx.config("alone", {"norm.kind": "none"}), fx.alone_result("none", none_drops, none_best, -0.1, B))}


def test_c2_supported(tmp_path, ioffe_world):
  a = c2_coupling.analyze({"ioffe": ioffe_world, **fx.roundtrip(tmp_path, {"alone": _alone()})})
  # relative-step cross-layer share at point i >= 1 (step 0 skipped): BN 0.05 + A/10 + 0.02 i, none 0.25 + B/10;
  # mean over i = 1..10
  mean_i = sum(range(1, 11)) / 10
  check(a, per_seed=0.05 + 0.02 * mean_i - 0.25 + (A - B) / 10, outcome="as predicted", verdict="supported", part="interact")
  first, second = named(a, "... in the first half"), named(a, "... in the second half")  # i = 1..5 and 6..10
  np.testing.assert_allclose(first["per_seed"], 0.05 + 0.02 * 3 - 0.25 + (A - B) / 10, atol=TOL)
  np.testing.assert_allclose(second["per_seed"], 0.05 + 0.02 * 8 - 0.25 + (A - B) / 10, atol=TOL)
  hess = named(a, "normalized Hessian blocks")  # secondary now: BN 0.2 + A/10, none 0.5 + B/10
  assert hess["role"] == "secondary"
  np.testing.assert_allclose(hess["per_seed"], 0.2 - 0.5 + (A - B) / 10, atol=TOL)
  cross = named(a, "cross-layer share along the optimizer's actual update")
  np.testing.assert_allclose(cross["per_seed"], 0.1 - 0.3 + (A - B) / 10, atol=TOL)
  assert hess["outcome"] == cross["outcome"] == "as predicted"
  # alone: (mean hidden-layer drop - all-layer drop) / branch loss at the tuned LRs (not the one-seed decoy), mean over the
  # levels' branch losses 0.98 and 0.59: BN 0.15 (1 + A) - 0.1, none 0.03 (1 + B) - 0.1 (the head is no hidden layer)
  inv = (1 / 0.98 + 1 / 0.59) / 2
  check(a, per_seed=inv * (0.15 * (1 + A) - 0.03 * (1 + B)), outcome="as predicted", verdict="supported", part="alone",
        sanity_outcomes=["as predicted", "as predicted"])
  # additivity: 1 - together / sum of the solo drops over every layer (head included): BN 1 - 0.3 / (0.5 + 0.45 A),
  # none 1 + 0.1 / (0.12 + 0.09 B)
  gap_bn = 1 - 0.3 / (0.05 + (0.2 + 0.15 + 0.1) * (1 + A))
  gap_none = 1 + 0.1 / (0.03 + (0.05 + 0.02 + 0.02) * (1 + B))
  np.testing.assert_allclose(named(a, "additivity gap")["per_seed"], np.abs(gap_bn) - np.abs(gap_none), atol=TOL)
  np.testing.assert_allclose(named(a, '"each learns essentially by itself" with BN')["per_seed"], gap_bn, atol=TOL)
  assert named(a, "... without BN: additivity gap")["outcome"] == "opposite"  # 1.8 is far outside +-0.25


def test_c2_alone_contradicted_and_invalid_designs():
  a = c2_coupling.analyze({"ioffe": fx.ioffe(None, ("bn", "none")), "alone": _alone(bn_drops=NONE_DROPS, none_drops=BN_DROPS)})
  inv = (1 / 0.98 + 1 / 0.59) / 2
  check(a, per_seed=inv * (0.03 * (1 + A) - 0.15 * (1 + B)), outcome="opposite", verdict="contradicted", part="alone",
        sanity_outcomes=["as predicted", "as predicted"])
  # a tuned LR at the grid's edge (a better one may lie beyond it): invalid design, the check names it
  a = c2_coupling.analyze({"ioffe": fx.ioffe(None, ("bn", "none")), "alone": _alone(bn_best={**BEST, "layer2": 6})})
  assert analysis.verdict(a["tests"], "alone") == "invalid design"
  assert "batch loss 0.6 layer2: LR 256" in sanity(a, "alone")[1]["note"]
  # branch points at unmatched losses
  a = c2_coupling.analyze({"ioffe": fx.ioffe(None, ("bn", "none")), "alone": _alone(branch_loss=(0.8, 0.59))})
  assert analysis.verdict(a["tests"], "alone") == "invalid design" and sanity(a, "alone")[0]["outcome"] == "opposite"


def test_c2_contradicted_reads_the_relative_share_not_the_hessian_or_the_raw_share():
  # BN's relative-step cross-layer share larger than no BN's; the Hessian blocks and the raw share still say BN is less coupled
  a = c2_coupling.analyze({"ioffe": fx.ioffe({"bn": {"rel_cross": 0.5}}, ("bn", "none"))})
  check(a, per_seed=0.5 + 0.02 * 5.5 - 0.25 + (A - B) / 10, outcome="opposite", verdict="contradicted")
  assert named(a, "normalized Hessian blocks")["outcome"] == "as predicted"
  assert named(a, "cross-layer share along the optimizer's actual update")["outcome"] == "as predicted"
  assert len(a["tests"]) == 5 and "alone" in a["untested"]  # no alone results: no alone test
  assert analysis.verdict(a["tests"], "interact") == "contradicted"


# ----------------------------------------------------------------------------- C2'

LRS = (0.01, 0.1, 1.0, 10.0)


def _acc(test, train=0.9, val=None, **kw):
  return dict(test_accuracy=test, train_accuracy=train, **({"val_accuracy": val} if val is not None else {}), **kw)


# no BN: best on validation at 0.1 (0.85); the test set would choose 0.01 (0.86, a decoy)
NONE_SWEEP = {0.01: _acc(0.86, val=0.70), 0.1: _acc(0.84, val=0.85), 1.0: _acc(0.60, train=[0.45, 0.45, 0.45, 0.65, 0.65, 0.65]),
              10.0: _acc(0.1, diverge_at=600)}
# BN: best on validation at 1.0 (0.93); among the LRs <= 0.1, at 0.01 (0.80 vs 0.78). The test set would choose 10
# overall and 0.1 among the small ones (decoys).
BN_SWEEP = {0.01: _acc(0.79, val=0.80), 0.1: _acc(0.87, val=0.78), 1.0: _acc(0.94, val=0.93), 10.0: _acc(0.96, val=0.89)}


def _lr_sweep(bn_per, none_per=NONE_SWEEP):
  return {"bn": fx.sweep("lr_sweep", {"norm.kind": "batch", "sweep.lr": LRS}, "bn", bn_per, A),
          "none": fx.sweep("lr_sweep", {"norm.kind": "none", "sweep.lr": LRS}, "none", none_per, B)}


def _eff_probe(level, jit):
  """wd_sweep probes: log10 effective LR of the hidden layers level + jit + (-0.1, 0, 0.1) at the last point and
  weight decay 0; decoys elsewhere (earlier points, other weight decays, the head)."""
  def make(s, wd):
    def blocks(step):
      if wd != 0.0:
        e = [10.0] * 4
      elif step < 1500:
        e = [1e3] * 4
      else:
        e = [10 ** (level + jit[s] + o) for o in (-0.1, 0.0, 0.1)] + [1e5]
      return {"norms": {"weight": [1.0] * 4, "effective_lr": e, "grad": [0.1] * 4, "relative_update": [0.01] * 4}}
    return blocks
  return make


def _wd_sweep():
  wds = {w: _acc(0.85 - w) for w in (0.0, 1e-4, 1e-3, 1e-2)}
  return {"bn": fx.sweep("wd_sweep", {"norm.kind": "batch"}, "bn", wds, A, key="weight_decay", probe=_eff_probe(-2.0, A), steps=(500, 1000, 1500)),
          "none": fx.sweep("wd_sweep", {"norm.kind": "none"}, "none", wds, B, key="weight_decay", probe=_eff_probe(-1.0, B), steps=(500, 1000, 1500))}


def test_c2p_is_not_tested_here_and_its_statistic_stays_a_secondary(tmp_path):
  res = fx.roundtrip(tmp_path, {"lr_sweep": _lr_sweep(BN_SWEEP), "wd_sweep": _wd_sweep()})
  a = c2p_lr.analyze(res)
  # the one part is untested (a constant LR for 1,000 steps cannot reward a large LR): no primary, no sanity check
  (part,) = c2p_lr.CLAIM.parts
  assert part.untested and "a_best/2" in part.untested
  assert not [t for t in a["tests"] if t["role"] != "secondary"]
  assert a["best_lr"] == {"bn": 1.0, "none": 0.1, "bn_restricted": 0.01}
  # final *test* accuracy at the LRs chosen on validation accuracy
  a_best = (0.94 + A / 10) - (0.84 + B / 10)  # BN at its best LR 1.0 - none at its best 0.1
  a_small = (0.79 + A / 10) - (0.84 + B / 10)  # BN at its best LR <= 0.1, which is 0.01 (not 0.1)
  stat = named(a, "restricted to LRs <= the no-BN best")
  np.testing.assert_allclose(stat["per_seed"], a_small - a_best / 2, atol=TOL)
  np.testing.assert_allclose(stat["per_seed"], -0.10 + (A - B) / 20, atol=TOL)  # the same, simplified
  np.testing.assert_allclose(named(a, "BN has a benefit to explain")["per_seed"], a_best, atol=TOL)
  # largest stable LR: BN 10 for every seed; none: 10 diverged, 1.0 below 50% train accuracy for seeds 0-2 -> 0.1
  stable = named(a, "the premise")
  np.testing.assert_allclose(stable["per_seed"], [2, 2, 2, 1, 1, 1], atol=TOL)
  assert stable["outcome"] == "as predicted"
  matched = named(a, "BN's advantage at the no-BN best LR")  # both at 0.1
  np.testing.assert_allclose(matched["per_seed"], (0.87 + A / 10) - (0.84 + B / 10), atol=TOL)
  # the weight-decay sweep's effective LRs are a table row, not a test (no BN's lr/||W||^2 is no effective LR)
  assert not [t for t in a["tests"] if "effective LR" in t["name"]]
  eff_row = next(row for row in a["table"] if row[0] == "scale invariance")
  assert "wd 0: " in eff_row[2] and "log10 eff. LR BN" in eff_row[2]


def test_c2p_statistic_equals_half_the_benefit_when_bn_is_best_at_the_same_lr():
  # the v2 flaw, kept visible: BN's best LR is no BN's, so a_small = a_best and the statistic is a_best / 2
  a = c2p_lr.analyze({"lr_sweep": _lr_sweep({0.01: _acc(0.70), 0.1: _acc(0.90), 1.0: _acc(0.95, val=0.80), 10.0: _acc(0.75)})})
  assert a["best_lr"] == {"bn": 0.1, "none": 0.1, "bn_restricted": 0.1}
  stat = named(a, "restricted to LRs <= the no-BN best")
  np.testing.assert_allclose(stat["per_seed"], ((0.90 + A / 10) - (0.84 + B / 10)) / 2, atol=TOL)
  assert "is not larger than no BN's" in stat["note"]


# ----------------------------------------------------------------------------- C3

BATCHES = (64, 256, 1024)
# per c3_grid cell (the real quick conditions): early-stopped test loss S (at the lowest validation loss), final test
# loss F, final train loss T. The final losses say the opposite of the early-stopped ones (ghost 8 overfits more by the
# end), so a claim that read the final loss would flip; C7's rows at B = 256 (stopgrad diverges) must not enter C3.
C3_CELLS = {
    "b64_g8": (0.40, 0.90, 0.30), "b64_g32": (0.46, 0.80, 0.25), "b64_g64": (0.53, 0.73, 0.20), "b64_none": (0.70, 0.90, 0.10),
    "b64_reference": (0.52, 0.80, 0.05), "b64_reference_noise8": (0.48, 0.75, 0.15), "b64_wd": (0.50, 0.75, 0.20),
    "b64_dropout0.1": (0.45, 0.70, 0.25), "b64_dropout0.3": (0.30, 0.65, 0.30), "b64_dropout0.5": (0.55, 0.70, 0.35),
    "b256_g8": (0.45, 0.95, 0.30), "b256_g32": (0.52, 0.85, 0.25), "b256_g256": (0.60, 0.80, 0.20), "b256_none": (0.68, 0.88, 0.30),
    "b256_population": (0.65, 0.85, 0.25), "b256_stopgrad": (0.01, 0.01, 0.01), "b256_frozen": (0.70, 0.90, 0.25),
    "b1024_g8": (0.50, 1.00, 0.30), "b1024_g32": (0.58, 0.90, 0.25), "b1024_g64_long": (0.60, 0.90, 0.22), "b1024_g512_long": (0.66, 0.88, 0.20),
    "b1024_g1024": (0.68, 0.88, 0.20), "b1024_none": (0.70, 0.90, 0.10),
}
# the weight-decay sweep at B = 64: {wd: (early-stopped test loss, lowest validation loss)}; 1e-3 has the lowest validation
# loss (the dropout cells' is 0.5); dropout 0.3 has the lowest test loss (0.30, a decoy for a choice made on the test set)
C3_WD = {1e-4: (0.50, 0.50), 1e-3: (0.35, 0.45), 1e-2: (0.60, 0.60)}
C3_ACC = {"g8": 0.86, "g32": 0.855}  # early-stopped test accuracy; every other cell 0.85


# per-seed jitter of each cell kind; every full-statistics cell (g = B) has B
C3_JIT = {"g8": A, "g32": C, "g64": J["noisy_d2"], "g512": J["noisy_d4"], "none": J["frozen"], "population": J["population"],
          "stopgrad": J["noisy_d0.5"], "frozen": J["noisy_d1"], "reference": J["population"], "reference_noise8": J["population_noise"],
          "wd": J["noisy_d1"], "dropout0.1": J["frozen"], "dropout0.3": J["noisy_d0.5"], "dropout0.5": J["noisy_d2"]}


def _c3(cells=C3_CELLS, still_improving=(), best_first=(), wd=C3_WD):
  """The c3_grid cells. Where the test set would stop (its lowest test loss) a full-statistics cell is 0.4 below its
  early-stopped value, every other cell 0.05 (a decoy that flips the primary); C7's stop-gradient cell diverges at
  step 300 (every later evaluation NaN)."""
  assert set(cells) == set(fx.C3_CONDITIONS), "the fixture covers every c3_grid condition"
  out = {}
  for name, (stopped, final, train) in cells.items():
    b, kind = name[1:].split("_", 1)
    kind = kind.removesuffix("_long")
    full = kind == f"g{b}"
    stop = [-1] * N if name in still_improving else [0] * N if name in best_first else fx.C3_STOP  # -1 / 0: the last / first evaluation
    out[name] = fx.c3_cell(name, stopped=stopped, final=final, train=train, jit=B if full else C3_JIT[kind], acc=C3_ACC.get(kind, 0.85),
                           decoy=0.4 if full else 0.05, diverge_at=300 if kind == "stopgrad" else None, stop=stop,
                           weight_decays=wd if kind == "wd" else None)
  return out


def test_c3_regularizes_and_fades_supported(tmp_path):
  a = c3_noise.analyze(fx.roundtrip(tmp_path, {"c3_grid": _c3()}))
  assert a["batches"] == list(BATCHES) and a["untested"] == {}
  # regularizes: at B = 64, early-stopped test loss ghost 8 - full statistics; the jitters A (ghost 8), B (full)
  check(a, per_seed=0.40 - 0.53 + A - B, outcome="as predicted", verdict="supported", part="regularizes",
        sanity_outcomes=["as predicted", "as predicted"])
  # its sanity: the B = 64 full-statistics net overfits (final test - train loss, jit B - B/2); nobody still improving
  np.testing.assert_allclose(sanity(a, "regularizes")[0]["per_seed"], 0.73 - 0.20 + B / 2, atol=TOL)
  # fades: the long B = 1024 cells, ghost 64 - ghost 512
  check(a, per_seed=0.60 - 0.66 + J["noisy_d2"] - J["noisy_d4"], outcome="as predicted", verdict="supported", part="fades",
        sanity_outcomes=["as predicted"])
  # v2's pooled primary is a secondary now
  pooled = named(a, "early-stopped test loss, ghost 8 - full-batch statistics, mean over B")
  np.testing.assert_allclose(pooled["per_seed"], np.mean([0.40 - 0.53, 0.45 - 0.60, 0.50 - 0.68]) + A - B, atol=TOL)
  np.testing.assert_allclose(named(a, "early-stopped test loss, ghost 32")["per_seed"],
                             np.mean([0.46 - 0.53, 0.52 - 0.60, 0.58 - 0.68]) + C - B, atol=TOL)
  np.testing.assert_allclose(named(a, "early-stopped test accuracy at B = 64, ghost 8")["per_seed"], np.full(N, 0.01) + (A - B) / 10, atol=TOL)
  ece = named(a, "early-stopped test calibration error (ECE, 15 bins) at B = 64")  # 0.02 + 0.1 x the test loss
  np.testing.assert_allclose(ece["per_seed"], 0.1 * (0.40 - 0.53 + A - B), atol=TOL)
  final = named(a, "final (not early-stopped) test loss")  # the decoy: at the end ghost 8 is worse
  np.testing.assert_allclose(final["per_seed"], np.mean([0.90 - 0.73, 0.95 - 0.80, 1.00 - 0.88]) + A - B, atol=TOL)
  assert final["outcome"] == "opposite"
  for b, d in ((256, 0.45 - 0.60), (1024, 0.50 - 0.68)):
    np.testing.assert_allclose(named(a, f"early-stopped test loss at B = {b}:")["per_seed"], d + A - B, atol=TOL)
  # nothing leans on population BN (it does not fit here): no test reads it, notes give its final training loss and why
  assert not [t for t in a["tests"] if "population" in t["name"]]
  (pop,) = [n for n in a["notes"] if n.startswith("final training loss, population BN")]
  assert "B = 256: " in pop and "B = 64: " not in pop
  (why,) = [n for n in a["notes"] if n.startswith("why population BN does not fit (B = 256)")]
  assert "population BN at 0.25" in why  # the final train loss 0.25 + jit/2 (its jitter averages 0 here)


def test_c3_noise_alone_and_a_little_supported():
  a = c3_noise.analyze({"c3_grid": _c3()})
  # the noise alone: full-batch BN + ghost-8 noise - full-batch BN, early-stopped test loss
  check(a, per_seed=0.48 - 0.52 + J["population_noise"] - J["population"], outcome="as predicted", verdict="supported",
        part="noise_alone", sanity_outcomes=["as predicted", "as predicted", "as predicted"])
  assert "final training loss 0.05" in sanity(a, "noise_alone")[0]["note"]
  np.testing.assert_allclose(named(a, "early-stopped test calibration error (ECE) at B = 64: full-batch BN")["per_seed"],
                             0.1 * (0.48 - 0.52 + J["population_noise"] - J["population"]), atol=TOL)
  np.testing.assert_allclose(sanity(a, "noise_alone")[1]["per_seed"], 0.80 - 0.05 + J["population"] / 2, atol=TOL)
  # a little: ghost 8 (0.40) - the regularizer with the lowest validation loss (weight decay 1e-3: 0.35), not dropout 0.3
  # (the lowest test loss, 0.30: choosing on the test set would give 0.10)
  check(a, per_seed=0.40 - 0.35 + A - J["noisy_d1"], outcome="as predicted", verdict="supported", part="a_little",
        sanity_outcomes=["as predicted", "as predicted"])
  p = primary(a, "a_little")
  assert "weight decay 0.001" in p["name"] and "chosen in every bootstrap" not in p["note"] and "redone in every bootstrap" in p["note"]
  np.testing.assert_allclose(sanity(a, "a_little")[0]["per_seed"], 0.35 - 0.53 + J["noisy_d1"] - B, atol=TOL)


def test_c3_noise_alone_contradicted_and_not_a_little():
  cells = dict(C3_CELLS)
  cells["b64_reference_noise8"] = (0.60, 0.75, 0.15)  # the noise hurts
  a = c3_noise.analyze({"c3_grid": _c3(cells, wd={1e-4: (0.50, 0.50), 1e-3: (0.45, 0.45), 1e-2: (0.60, 0.60)})})
  check(a, per_seed=0.60 - 0.52 + J["population_noise"] - J["population"], outcome="opposite", verdict="contradicted",
        part="noise_alone", sanity_outcomes=["as predicted", "as predicted", "as predicted"])
  # the tuned regularizer (weight decay 1e-3, 0.45) does worse than ghost 8 (0.40): the noise is not the smaller regularizer
  check(a, per_seed=0.40 - 0.45 + A - J["noisy_d1"], outcome="opposite", verdict="contradicted", part="a_little",
        sanity_outcomes=["as predicted", "as predicted"])


def test_c3_noise_alone_invalid_when_the_control_does_not_fit():
  cells = dict(C3_CELLS)
  cells["b64_reference"] = (0.52, 0.80, 0.40)  # full-batch BN ends far above BN's training loss (0.20)
  a = c3_noise.analyze({"c3_grid": _c3(cells)})
  assert analysis.verdict(a["tests"], "noise_alone") == "invalid design"
  assert sanity(a, "noise_alone")[0]["outcome"] == "opposite"


def test_c3_a_little_invalid_when_no_regularizer_helps():
  cells = {**C3_CELLS, **{f"b64_dropout{p}": (0.60, 0.70, 0.35) for p in (0.1, 0.3, 0.5)}}
  a = c3_noise.analyze({"c3_grid": _c3(cells, wd={1e-4: (0.60, 0.50), 1e-3: (0.62, 0.45), 1e-2: (0.65, 0.60)})})
  assert analysis.verdict(a["tests"], "a_little") == "invalid design"  # the tuned regularizer does not lower the loss itself


def test_c3_part_invalid_design_when_its_cells_are_still_improving():
  a = c3_noise.analyze({"c3_grid": _c3(still_improving=("b1024_g512_long",))})
  # ghost 512 stops at its last evaluation, where its test loss is the final one (0.88)
  check(a, per_seed=0.60 - 0.88 + J["noisy_d2"] - J["noisy_d4"], outcome="as predicted", verdict="invalid design", part="fades",
        sanity_outcomes=["opposite"])
  assert "B = 1024 ghost 512: 6 of 6 seeds stop at the last evaluation" in sanity(a, "fades")[0]["note"]
  assert analysis.verdict(a["tests"], "regularizes") == "supported"  # the other part's cells are fine


def test_c3_part_invalid_design_when_its_cells_are_best_at_their_first_evaluation():
  a = c3_noise.analyze({"c3_grid": _c3(best_first=("b1024_g64_long",))})
  assert analysis.verdict(a["tests"], "fades") == "invalid design"
  assert "B = 1024 ghost 64: 0 of 6 seeds stop at the last evaluation, 6 at the first" in sanity(a, "fades")[0]["note"]
  assert analysis.verdict(a["tests"], "regularizes") == "supported"


def test_c3_fades_untested_without_its_cells():
  cells = {k: v for k, v in C3_CELLS.items() if not k.endswith("_long")}
  a = c3_noise.analyze({"c3_grid": {k: v for k, v in _c3().items() if k in cells}})
  assert "fades" in a["untested"] and not [t for t in a["tests"] if t.get("part") == "fades"]
  new = ("reference", "wd", "dropout")
  a = c3_noise.analyze({"c3_grid": {k: v for k, v in _c3().items() if not any(w in k for w in new)}})
  assert set(a["untested"]) == {"noise_alone", "a_little"}


def test_c3_notes_count_runs_stopped_at_their_last_evaluation():
  def run(val):  # 2 seeds x 3 evaluations of val_loss
    return {"metrics": [{"step": 10 * (i + 1), "seed": sd, "val_loss": v} for sd, vs in enumerate(val) for i, v in enumerate(vs)]}
  assert c3_noise.stopped_last(run([[3, 2, 1], [1, 2, 3]])) == 1  # seed 0 still improving at its last evaluation
  assert c3_noise.stopped_last(run([[3, 2, float("nan")], [3, 1, 2]])) == 0  # a NaN last evaluation is no stopping point
  assert c3_noise.stopped_last({"metrics": [{"step": 10, "seed": 0, "test_loss": 1.0}]}) == 0  # no validation split
  a = c3_noise.analyze({"c3_grid": _c3()})
  assert any(n.startswith("the B = 1024 cells train ") for n in a["notes"])


def test_c3_contradicted_when_small_statistics_batches_hurt():
  # early-stopped, ghost 8 is worse than full statistics by 0.05; at the end of training it is better
  # (early stopping in disguise: it fits more slowly) -- the final loss must not decide
  cells = dict(C3_CELLS)
  for b, full in ((64, "b64_g64"), (256, "b256_g256"), (1024, "b1024_g1024")):
    s_full, f_full, _ = cells[full]
    cells[f"b{b}_g8"] = (s_full + 0.05, f_full - 0.2, 0.30)
  a = c3_noise.analyze({"c3_grid": _c3(cells)})
  check(a, per_seed=0.05 + A - B, outcome="opposite", verdict="contradicted", part="regularizes",
        sanity_outcomes=["as predicted", "as predicted"])
  final = named(a, "final (not early-stopped) test loss")
  np.testing.assert_allclose(final["per_seed"], -0.2 + A - B, atol=TOL)
  assert final["outcome"] == "as predicted"


def test_c3_invalid_design_when_the_full_statistics_net_does_not_overfit():
  cells = dict(C3_CELLS)
  s_full, f_full, _ = cells["b64_g64"]
  cells["b64_g64"] = (s_full, f_full, f_full + 0.1)  # final train loss above the final test loss
  a = c3_noise.analyze({"c3_grid": _c3(cells)})
  check(a, per_seed=0.40 - 0.53 + A - B, outcome="as predicted", verdict="invalid design", part="regularizes",
        sanity_outcomes=["opposite", "as predicted"])
  np.testing.assert_allclose(sanity(a, "regularizes")[0]["per_seed"], -0.1 + B / 2, atol=TOL)


# ----------------------------------------------------------------------------- C4


def test_c4_supported(ioffe_world):
  a = c4_landscape.analyze({"ioffe": ioffe_world})
  # relative beta at point i >= 1: BN 0.1 * 10**(A + 0.02 i), none 1.0 * 10**B; log10, mean over i = 1..10
  check(a, per_seed=-1.0 + 0.02 * 5.5 + A - B, outcome="as predicted", verdict="supported")
  np.testing.assert_allclose(named(a, "... first half")["per_seed"], -1.0 + 0.02 * 3 + A - B, atol=TOL)
  np.testing.assert_allclose(named(a, "... second half")["per_seed"], -1.0 + 0.02 * 8 + A - B, atol=TOL)
  raw = named(a, "the paper's effective β-smoothness")  # raw: BN 0.01, none 1.0
  np.testing.assert_allclose(raw["per_seed"], -2.0 + A - B, atol=TOL)
  for t in a["tests"]:
    assert t["outcome"] == "as predicted", t["name"]


def test_c4_contradicted_reads_the_relative_units_not_the_raw_ones():
  # relative units: BN rougher (10 vs 1); the raw measures still say BN is smoother (0.01 vs 1)
  a = c4_landscape.analyze({"ioffe": fx.ioffe({"bn": {"beta_rel": 10.0, "trend": 0.0}}, ("bn", "none"))})
  check(a, per_seed=1.0 + A - B, outcome="opposite", verdict="contradicted")
  assert named(a, "the paper's effective β-smoothness")["outcome"] == "as predicted"


# ----------------------------------------------------------------------------- C5

C5_ACC = {"bn_g2": 0.80, "bn_g4": 0.84, "bn_g16": 0.86, "bn_g64": 0.87, "renorm_g2": 0.83, "group": 0.86, "layer": 0.85}
C5_JIT = {"bn_g2": A, "bn_g4": C, "bn_g16": J["frozen"], "bn_g64": B, "renorm_g2": J["population"], "group": J["population_noise"],
          "layer": J["noisy_d1"]}


def _c5(experiment, acc):
  ov = {"bn_g2": {"norm.kind": "ghost", "norm.ghost_batch_size": 2}, "bn_g4": {"norm.kind": "ghost", "norm.ghost_batch_size": 4},
        "bn_g16": {"norm.kind": "ghost", "norm.ghost_batch_size": 16}, "bn_g64": {"norm.kind": "batch"},
        "renorm_g2": {"norm.kind": "renorm", "norm.ghost_batch_size": 2}, "group": {"norm.kind": "group"}, "layer": {"norm.kind": "layer"}}
  return {k: fx.finals(experiment, {**ov[k], "train.batch_size": 64}, k, test_accuracy=v, jit=C5_JIT[k]) for k, v in acc.items()}


def test_c5_supported_and_the_cnn_form_never_decides(tmp_path):
  cnn = {**C5_ACC, "bn_g4": 0.90}  # the CNN form (secondary) says the opposite
  a = c5_small_batch.analyze(fx.roundtrip(tmp_path, {"small_batch": _c5("small_batch", C5_ACC), "small_batch_cnn": _c5("small_batch_cnn", cnn)}))
  assert a["ghosts"] == [2, 4, 16, 64]
  # primary at ghost 4 (PRIMARY_GHOST) against the largest, 64: 0.84 + C/10 - (0.87 + B/10)
  assert c5_small_batch.PRIMARY_GHOST == 4 and "ghost 4 - ghost 64" in primary(a)["name"]
  check(a, per_seed=0.84 - 0.87 + (C - B) / 10, outcome="as predicted", verdict="supported")
  two = named(a, "... at ghost 2")  # secondary: every normalized value is ±1 there
  assert two["role"] == "secondary" and two["outcome"] == "as predicted"
  np.testing.assert_allclose(two["per_seed"], 0.80 - 0.87 + (A - B) / 10, atol=TOL)
  gn = named(a, "GroupNorm beats BN at statistics batch 2")
  np.testing.assert_allclose(gn["per_seed"], 0.86 - 0.80 + (J["population_noise"] - A) / 10, atol=TOL)
  assert gn["outcome"] == "as predicted"
  assert named(a, "LayerNorm beats BN")["outcome"] == "as predicted"
  assert named(a, "Batch Renorm recovers")["outcome"] == "as predicted"
  cnn_t = named(a, "CNN form: BN degrades")
  assert cnn_t["role"] == "secondary" and cnn_t["outcome"] == "opposite"
  np.testing.assert_allclose(cnn_t["per_seed"], 0.90 - 0.87 + (C - B) / 10, atol=TOL)
  # without a ghost-4 condition (the tiny ledger: ghosts 2 and 16) the smallest ghost is primary
  no4 = c5_small_batch.analyze({"small_batch": _c5("small_batch", {k: v for k, v in C5_ACC.items() if k != "bn_g4"}), "small_batch_cnn": {}})
  check(no4, per_seed=0.80 - 0.87 + (A - B) / 10, outcome="as predicted", verdict="supported")
  assert not [t for t in no4["tests"] if t["name"].startswith("... at ghost")]


def test_c5_contradicted_when_small_statistics_batches_do_better():
  # ghost 4 beats ghost 64; ghost 2 still degrades, but it does not decide
  a = c5_small_batch.analyze({"small_batch": _c5("small_batch", {**C5_ACC, "bn_g4": 0.90}), "small_batch_cnn": {}})
  check(a, per_seed=0.90 - 0.87 + (C - B) / 10, outcome="opposite", verdict="contradicted")
  assert named(a, "... at ghost 2")["outcome"] == "as predicted"


# ----------------------------------------------------------------------------- C6

DEPTHS = (4, 8, 16, 32)


def _c6(bn_slope, none_slope):
  ratios = lambda slope, off: [[slope[s] * d + off for s in range(N)] for d in DEPTHS]  # noqa: E731
  return {"bn": fx.measured(fx.config("depth_init", {"norm.kind": "batch"}), fx.depth_result(DEPTHS, ratios(bn_slope, 0.5))),
          "none": fx.measured(fx.config("depth_init", {"norm.kind": "none"}), fx.depth_result(DEPTHS, ratios(none_slope, 0.2)))}


def test_c6_supported(tmp_path):
  a = c6_depth.analyze(fx.roundtrip(tmp_path, {"depth_init": _c6(0.1 + A, B / 10)}))
  check(a, per_seed=0.1 + A, outcome="as predicted", verdict="supported")  # log10 ratio exactly linear in depth
  more = named(a, "more than without BN")
  np.testing.assert_allclose(more["per_seed"], 0.1 + A - B / 10, atol=TOL)
  assert more["outcome"] == "as predicted"


def test_c6_contradicted_when_gradients_vanish_with_depth():
  a = c6_depth.analyze({"depth_init": _c6(-0.05 + A / 10, B / 10)})
  check(a, per_seed=-0.05 + A / 10, outcome="opposite", verdict="contradicted")


# ----------------------------------------------------------------------------- C7


def test_c7_supported(tmp_path, ioffe_world):
  a = c7_attribution.analyze({"ioffe": ioffe_world, **fx.roundtrip(tmp_path, {"c3_grid": _c3()})})
  # final test loss at LR 0.5 (mean of the last 2 evaluations): stop-gradient 0.60 + C/10, BN 0.40 + A/10 (the other
  # LRs' runs are 0.5 worse: decoys)
  check(a, per_seed=0.20 + (C - A) / 10, outcome="as predicted", verdict="supported")
  assert a["notes"] == [f"Ioffe & Szegedy's stronger prediction, that the model blows up: 0 of {N} stop-gradient runs diverged at LR 0.5."]
  pop = named(a, "population BN (running statistics) - BN: final test loss")
  np.testing.assert_allclose(pop["per_seed"], 0.15 + (J["population"] - A) / 10, atol=TOL)
  steps = named(a, "population BN (running statistics) - BN: log2 steps")
  np.testing.assert_allclose(steps["per_seed"], log2(800 / 600) + J["population"] - A, atol=TOL)
  noise = named(a, "the noise alone")
  np.testing.assert_allclose(noise["per_seed"], -0.05 + (J["population_noise"] - J["population"]) / 10, atol=TOL)
  # the C3 network's rows at B = 256 (secondary), final *training* loss against BN (full statistics, 0.20 + B / 2; the
  # final test losses differ, so reading them fails the values): the stop-gradient cell diverged at step 300 and counts as
  # chance, ln 10
  c3 = {t["name"]: t for t in a["tests"] if t["name"].startswith("C3 network (B = 256)")}
  assert len(c3) == 4 and all(t["role"] == "secondary" and "training loss" in t["name"] for t in c3.values())
  stop = named(a, "C3 network (B = 256): BN, no gradient through")
  np.testing.assert_allclose(stop["per_seed"], math.log(10) - (0.20 + B / 2), atol=TOL)
  frozen = named(a, "C3 network (B = 256): BN, scale 1 and bias 0 frozen")
  np.testing.assert_allclose(frozen["per_seed"], 0.25 + J["noisy_d1"] / 2 - (0.20 + B / 2), atol=TOL)
  np.testing.assert_allclose(named(a, "C3 network (B = 256): no BN")["per_seed"], 0.30 + J["frozen"] / 2 - (0.20 + B / 2), atol=TOL)
  for t in a["tests"]:
    assert t["outcome"] == "as predicted", t["name"]


def test_c7_a_diverged_run_counts_as_chance_loss(ioffe_world):
  # stop-gradient blew up (diverged at step 100, every later metric NaN): it counts as ln 10, not as missing
  blown = fx.ioffe({"stopgrad": {"t": {0.5: "diverge"}}}, ("stopgrad",))
  a = c7_attribution.analyze({"ioffe": {**ioffe_world, **blown}})
  check(a, per_seed=math.log(10) - (0.40 + A / 10), outcome="as predicted", verdict="supported")
  assert not [t for t in a["tests"] if t["name"].startswith("C3 network")]  # no c3_grid: no C3 rows
  assert f"{N} of {N} stop-gradient runs diverged" in a["notes"][0]


def test_c7_contradicted_when_stopgrad_does_better():
  cond = ("bn", "stopgrad", "population", "population_noise", "frozen", "none")
  a = c7_attribution.analyze({"ioffe": fx.ioffe({"stopgrad": {"loss": 0.35}}, cond)})
  check(a, per_seed=-0.05 + (C - A) / 10, outcome="opposite", verdict="contradicted")


# ----------------------------------------------------------------------------- the report


def _ledger(out, *, unfinished=False):
  exps = {"lr_sweep": _lr_sweep(BN_SWEEP), "wd_sweep": _wd_sweep(), "depth_init": _c6(0.1 + A, B / 10)}
  for exp, conds in exps.items():
    for name, cond in conds.items():
      fx.write_condition(out / exp / name, cond)
  if unfinished:
    (out / "wd_sweep" / "none" / "summary.json").unlink()  # trained part way: not finished
  artifacts.write_json(out / "ledger.json", {"mode": "quick", "dataset": None, "experiments": {e: list(c) for e, c in exps.items()}})


def test_report_build_on_a_hand_written_ledger(tmp_path):
  _ledger(tmp_path)
  path = report.build(tmp_path)
  claims = {c["id"]: c for c in artifacts.read_json(tmp_path / "claims.json")["claims"]}
  assert list(claims) == ["C2'", "C6"]  # only the claims whose experiments this ledger planned
  assert claims["C6"]["verdict"] == "supported" and claims["C2'"]["verdict"] == "not tested here"
  (p6,) = claims["C6"]["parts"]
  np.testing.assert_allclose(p6["test"]["per_seed"], 0.1 + A, atol=TOL)
  assert p6["test"]["family_size"] == 1 and p6["registration"] == "not registered"  # a hand-written ledger: no preregistration
  text = path.read_text()
  for cid, claim in (("C6", c6_depth.CLAIM), ("C2'", c2p_lr.CLAIM)):
    assert f"## {cid} — {claim.title}" in text
    (part,) = claim.parts
    assert f"| {cid}.{part.id}: {part.says} | {part.primary} |" in text  # the summary row says what the part says, no more
  assert "*Primary test:* " + c6_depth.CLAIM.parts[0].primary in text
  section = text[text.index("## C6 —"):]
  assert "raw outcome **as predicted**, after the adjustment **as predicted**" in section
  assert "*Not tested here:* " + c2p_lr.CLAIM.parts[0].untested in text
  assert f"*What the verdicts cover:* {c2p_lr.CLAIM.scope}" in text and "*What the verdicts cover:*" not in section
  assert claims["C2'"]["scope"] == c2p_lr.CLAIM.scope
  assert "## C1 " not in text and "Not finished yet" not in text
  assert (tmp_path / "c6_depth.png").stat().st_size > 1000 and "](c6_depth.png)" in text


def test_report_lists_a_claim_whose_conditions_have_not_finished(tmp_path):
  _ledger(tmp_path, unfinished=True)
  text = report.build(tmp_path).read_text()
  assert [c["id"] for c in artifacts.read_json(tmp_path / "claims.json")["claims"]] == ["C6"]
  assert "Not finished yet: C2'." in text


@pytest.mark.parametrize("cut", ["empty", "short"])
def test_report_refuses_a_finished_condition_whose_metrics_were_cut(tmp_path, capsys, cut):
  """A condition with its summary but an emptied (or cut) metrics.jsonl: `bn report` says which file, in one line."""
  from bn import cli

  _ledger(tmp_path)
  path = tmp_path / "lr_sweep" / "bn" / "metrics.jsonl"
  lines = path.read_text().splitlines(keepends=True)
  path.write_text("" if cut == "empty" else "".join(lines[: len(lines) // 2]))
  assert cli.main(["report", str(tmp_path)]) != 0
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "metrics.jsonl" in err[0] and "delete" in err[0] and "Traceback" not in err[0], err
