"""Every claim's analysis on hand-written run data with known signs and sizes.

A sign flip in a claim module ("none - BN" for "BN - none"), a wrong key or a wrong condition would
flip or move a verdict while the rest of the suite passes; here every claim's ``analyze`` reads
data built by tests/claim_fixtures.py, and each test pins the primary test's per-seed values
against numbers computed by hand from the design (not by the code under test), the outcomes of the
primary and sanity checks, the verdict (one supported case and one of another verdict per claim),
and the signs of key secondary tests. Plus the shared measurements (``steps_to`` with a diverged run,
``unit_shift``, ``best_lr``, C2's ``largest_stable_lr``, C6's slope) and ``bn.report.build`` on a
hand-written ledger directory. NumPy only: no training.
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


def primary(a):
  (p,) = [t for t in a["tests"] if t["role"] == "primary"]
  return p


def sanity(a):
  return [t for t in a["tests"] if t["role"] == "sanity"]


def named(a, start):
  """The one test whose name starts with ``start``."""
  found = [t for t in a["tests"] if t["name"].startswith(start)]
  assert len(found) == 1, (start, [t["name"] for t in a["tests"]])
  return found[0]


def check(a, *, per_seed, outcome, verdict, sanity_outcomes=()):
  p = primary(a)
  assert p["n"] == N
  np.testing.assert_allclose(p["per_seed"], per_seed, rtol=0, atol=TOL)
  assert p["outcome"] == outcome
  assert [t["outcome"] for t in sanity(a)] == list(sanity_outcomes)
  assert analysis.verdict(a["tests"]) == verdict


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
  assert _common.censored([(run, 0.5)], 0.8).startswith("2 run(s) never reached 80%")
  assert _common.censored([({"metrics": [r for r in rows if r["seed"] in (0, 3)], "summary": {"steps": 500}}, 0.5)], 0.8) == ""


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


def test_c1_supported(ioffe_world):
  a = c1_ics.analyze({"ioffe": ioffe_world})
  assert a["best_lr"] == {"bn": 2.0, "none": 0.5}  # BN fastest at 2.0 (400 steps), none at 0.5 (800; it diverges at 2.0)
  # per seed: log2(400 * 2**A) - log2(800 * 2**B) = -1 + A - B
  check(a, per_seed=-1 + A - B, outcome="as predicted", verdict="supported", sanity_outcomes=["as predicted"])
  # sanity: shift per interval = designed drift (times 1 + jit), BN 0.05 vs none 0.5 (LR 0.5; the other LRs are decoys)
  np.testing.assert_allclose(sanity(a)[0]["per_seed"], 0.05 * (1 + A) - 0.5 * (1 + B), atol=TOL)
  np.testing.assert_allclose(named(a, "... in eval mode")["per_seed"], 0.5 * (0.05 * (1 + A) - 0.5 * (1 + B)), atol=TOL)
  for name in ("... in the first half", "... in the second half", "... in eval mode"):
    assert named(a, name)["outcome"] == "as predicted"
  np.testing.assert_allclose(named(a, "at the shared LR")["per_seed"], log2(600 / 800) + A - B, atol=TOL)
  assert named(a, "mean test accuracy over training")["outcome"] == "as predicted"
  fin = named(a, "final test accuracy")
  np.testing.assert_allclose(fin["per_seed"], (0.95 + A / 10) - (0.90 + B / 10), atol=TOL)  # the caps
  assert fin["outcome"] == "as predicted"


def test_c1_contradicted_when_bn_is_slower():
  m = fx.ioffe({"bn": {"t": {0.1: 1600, 0.5: 1000, 2.0: 800}}, "none": {"t": {0.1: 600, 0.5: 400, 2.0: "diverge"}}}, ("bn", "none"))
  a = c1_ics.analyze({"ioffe": m})
  assert a["best_lr"] == {"bn": 2.0, "none": 0.5}
  check(a, per_seed=1 + A - B, outcome="opposite", verdict="contradicted", sanity_outcomes=["as predicted"])


def test_c1_invalid_design_when_bn_inputs_move_more():
  a = c1_ics.analyze({"ioffe": fx.ioffe({"bn": {"shift": 1.0}}, ("bn", "none"))})
  check(a, per_seed=-1 + A - B, outcome="as predicted", verdict="invalid design", sanity_outcomes=["opposite"])
  np.testing.assert_allclose(sanity(a)[0]["per_seed"], 1.0 * (1 + A) - 0.5 * (1 + B), atol=TOL)


# ----------------------------------------------------------------------------- C1'


def _ioffe_c1p(changes=None):
  return fx.ioffe(changes, ("bn", "none", "noisy_d0.5", "noisy_d1", "noisy_d2", "noisy_d4", "stopgrad"))


def test_c1p_supported(tmp_path, ioffe_world):
  deep = {"bn": fx.measured(fx.config("deep_linear", {"norm.kind": "batch"}), fx.deep_linear_result(-2.0, A)),
          "none": fx.measured(fx.config("deep_linear", {"norm.kind": "none"}), fx.deep_linear_result(-4.0, B))}
  a = c1p_not_ics.analyze({"ioffe": ioffe_world, **fx.roundtrip(tmp_path, {"deep_linear": deep})})
  # noisy (dose 1): log2 steps = log2 600 + A + SLOPE; BN at LR 0.5: log2 600 + A -> SLOPE per seed, within ±0.25
  check(a, per_seed=SLOPE, outcome="as predicted", verdict="supported", sanity_outcomes=["as predicted"])
  np.testing.assert_allclose(sanity(a)[0]["per_seed"], 1.0 * (1 + J["noisy_d1"]) - 0.5 * (1 + B), atol=TOL)
  faster = named(a, "noisy BN trains faster than no BN")
  np.testing.assert_allclose(faster["per_seed"], log2(600 / 800) + A + SLOPE - B, atol=TOL)
  assert faster["outcome"] == "as predicted"
  slope = named(a, "dose-response")  # log2 steps are exactly linear in the dose: the LS slope is SLOPE
  np.testing.assert_allclose(slope["per_seed"], SLOPE, atol=TOL)
  assert slope["outcome"] == "as predicted"
  for name in ("gradient ICS at a matched", "gradient ICS under the actual"):  # 1 - cos: BN 2e-3, none 1e-3 (times 10**jit)
    t = named(a, name)
    np.testing.assert_allclose(t["per_seed"], math.log10(2.0) + A - B, atol=TOL)
    assert t["outcome"] == "as predicted"
  deep_t = named(a, "deep linear net")
  np.testing.assert_allclose(deep_t["per_seed"], 2.0 + A - B, atol=TOL)
  assert deep_t["outcome"] == "as predicted"


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the dose slope of never-reached doses (inf - inf)
def test_c1p_contradicted_when_noise_slows_training():
  slow = {f"noisy_d{d:g}": {"slope": 1.0 + SLOPE} for d in fx.DOSES}  # noisy BN twice as slow per dose
  a = c1p_not_ics.analyze({"ioffe": _ioffe_c1p(slow)})
  check(a, per_seed=1.0 + SLOPE, outcome="opposite", verdict="contradicted", sanity_outcomes=["as predicted"])
  assert len(a["tests"]) == 6  # no deep_linear results: no deep-linear test


def test_c1p_invalid_design_when_noise_does_not_destabilize():
  a = c1p_not_ics.analyze({"ioffe": _ioffe_c1p({"noisy_d1": {"shift": 0.2}})})
  check(a, per_seed=SLOPE, outcome="as predicted", verdict="invalid design", sanity_outcomes=["opposite"])


# ----------------------------------------------------------------------------- C2


def test_c2_supported(tmp_path, ioffe_world):
  freeze = {"bn": fx.measured(fx.config("freeze", {"norm.kind": "batch"}), fx.freeze_result((0.5, 0.4, 0.3), A)),
            "none": fx.measured(fx.config("freeze", {"norm.kind": "none"}), fx.freeze_result((0.2, 0.1, 0.15), B))}
  a = c2_coupling.analyze({"ioffe": ioffe_world, **fx.roundtrip(tmp_path, {"freeze": freeze})})
  # Hessian coupling at point i >= 1 (step 0 skipped): BN 0.2 + A/10 + 0.02 i, none 0.5 + B/10; mean over i = 1..10
  mean_i = sum(range(1, 11)) / 10
  check(a, per_seed=0.2 + 0.02 * mean_i - 0.5 + (A - B) / 10, outcome="as predicted", verdict="supported")
  first, second = named(a, "... in the first half"), named(a, "... in the second half")  # i = 1..5 and 6..10
  np.testing.assert_allclose(first["per_seed"], 0.2 + 0.02 * 3 - 0.5 + (A - B) / 10, atol=TOL)
  np.testing.assert_allclose(second["per_seed"], 0.2 + 0.02 * 8 - 0.5 + (A - B) / 10, atol=TOL)
  cross = named(a, "cross-layer share")
  np.testing.assert_allclose(cross["per_seed"], 0.1 - 0.3 + (A - B) / 10, atol=TOL)
  assert cross["outcome"] == "as predicted"
  alone = named(a, "each learns on its own")  # mean of the hidden layers' shares: 0.4 + A/10 vs 0.15 + B/10
  np.testing.assert_allclose(alone["per_seed"], 0.25 + (A - B) / 10, atol=TOL)
  assert alone["outcome"] == "as predicted"


def test_c2_contradicted_when_bn_couples_more():
  a = c2_coupling.analyze({"ioffe": fx.ioffe({"bn": {"hessian": 0.8}}, ("bn", "none"))})
  check(a, per_seed=0.8 + 0.02 * 5.5 - 0.5 + (A - B) / 10, outcome="opposite", verdict="contradicted")
  assert len(a["tests"]) == 4  # no freeze results: no freezing test


# ----------------------------------------------------------------------------- C2'

LRS = (0.01, 0.1, 1.0, 10.0)


def _acc(test, train=0.9, **kw):
  return dict(test_accuracy=test, train_accuracy=train, **kw)


NONE_SWEEP = {0.01: _acc(0.69), 0.1: _acc(0.85), 1.0: _acc(0.60, train=[0.45, 0.45, 0.45, 0.65, 0.65, 0.65]),
              10.0: _acc(0.1, diverge_at=600)}


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


BN_SWEEP = {0.01: _acc(0.70), 0.1: _acc(0.86), 1.0: _acc(0.92), 10.0: _acc(0.88)}


def test_c2p_supported(tmp_path):
  res = fx.roundtrip(tmp_path, {"lr_sweep": _lr_sweep(BN_SWEEP), "wd_sweep": _wd_sweep()})
  a = c2p_lr.analyze(res)
  assert a["best_lr"] == {"bn": 1.0, "none": 0.1}
  a_best = (0.92 + A / 10) - (0.85 + B / 10)  # BN at its best LR 1.0 - none at its best 0.1
  a_matched = (0.86 + A / 10) - (0.85 + B / 10)  # both at 0.1
  check(a, per_seed=a_matched - a_best / 2, outcome="as predicted", verdict="supported", sanity_outcomes=["as predicted"])
  np.testing.assert_allclose(sanity(a)[0]["per_seed"], a_best, atol=TOL)
  # largest stable LR: BN 10 for every seed; none: 10 diverged, 1.0 below 50% train accuracy for seeds 0-2 -> 0.1
  stable = named(a, "the premise")
  np.testing.assert_allclose(stable["per_seed"], [2, 2, 2, 1, 1, 1], atol=TOL)
  assert stable["outcome"] == "as predicted"
  assert named(a, "BN's advantage at the no-BN best LR")["outcome"] == "as predicted"
  eff = named(a, "without weight decay")  # hidden-layer mean of log10 effective LR at the last point, wd 0
  np.testing.assert_allclose(eff["per_seed"], -1.0 + A - B, atol=TOL)
  assert eff["outcome"] == "as predicted"


def test_c2p_contradicted_when_bn_is_best_at_the_same_lr():
  a = c2p_lr.analyze({"lr_sweep": _lr_sweep({0.01: _acc(0.70), 0.1: _acc(0.90), 1.0: _acc(0.80), 10.0: _acc(0.75)})})
  assert a["best_lr"] == {"bn": 0.1, "none": 0.1}
  a_best = (0.90 + A / 10) - (0.85 + B / 10)  # = a_matched
  check(a, per_seed=a_best / 2, outcome="opposite", verdict="contradicted", sanity_outcomes=["as predicted"])


def test_c2p_invalid_design_when_bn_has_no_benefit():
  a = c2p_lr.analyze({"lr_sweep": _lr_sweep({0.01: _acc(0.60), 0.1: _acc(0.80), 1.0: _acc(0.82), 10.0: _acc(0.70)})})
  a_best = (0.82 + A / 10) - (0.85 + B / 10)
  a_matched = (0.80 + A / 10) - (0.85 + B / 10)
  check(a, per_seed=a_matched - a_best / 2, outcome="as predicted", verdict="invalid design", sanity_outcomes=["opposite"])


# ----------------------------------------------------------------------------- C3

BATCHES = (64, 256, 1024)
# final test loss per (B, cell); g = B is full-batch statistics
C3_LOSS = {64: {8: 0.40, 32: 0.46, 64: 0.53, "none": 0.70, "population": 0.60, "population_noise8": 0.50},
           256: {8: 0.45, 32: 0.52, 256: 0.60, "none": 0.68, "population": 0.65, "population_noise8": 0.55},
           1024: {8: 0.50, 32: 0.58, 1024: 0.68, "none": 0.70, "population": 0.72, "population_noise8": 0.60}}
C3_JIT = {8: A, 32: C, "full": B, "none": J["frozen"], "population": J["population"], "population_noise8": J["population_noise"]}


def _c3(loss=C3_LOSS):
  out = {}
  for b in BATCHES:
    for cell, tl in loss[b].items():
      if isinstance(cell, int):
        ov = {"norm.kind": "batch" if cell == b else "ghost", "norm.ghost_batch_size": 0 if cell == b else cell}
        name, jit = f"b{b}_g{cell}", C3_JIT["full" if cell == b else cell]
        train, acc = {8: 0.30, 32: 0.25}.get(cell, 0.20), {8: 0.86, 32: 0.855}.get(cell, 0.85)
      else:
        ov = {"norm.kind": "none"} if cell == "none" else {"norm.kind": "population", "norm.population_noise": 8 if cell.endswith("8") else 0}
        name, jit, train, acc = f"b{b}_{cell}", C3_JIT[cell], {"none": 0.10, "population": 0.25}.get(cell, 0.28), 0.8
      out[name] = fx.finals("c3_grid", {**ov, "train.batch_size": b}, name, test_loss=tl, train_loss=train, test_accuracy=acc, jit=jit)
  return out


def test_c3_supported_pools_over_batch_sizes(tmp_path):
  a = c3_noise.analyze(fx.roundtrip(tmp_path, {"c3_grid": _c3()}))
  assert a["batches"] == list(BATCHES)
  pooled = np.mean([0.40 - 0.53, 0.45 - 0.60, 0.50 - 0.68])  # ghost 8 - full statistics, mean over B (= -0.46 / 3)
  check(a, per_seed=pooled + A - B, outcome="as predicted", verdict="supported")
  np.testing.assert_allclose(named(a, "test loss, ghost 32")["per_seed"], np.mean([0.46 - 0.53, 0.52 - 0.60, 0.58 - 0.68]) + C - B, atol=TOL)
  np.testing.assert_allclose(named(a, "train-test loss gap")["per_seed"], np.full(N, pooled - 0.10), atol=TOL)  # train loss 0.30 vs 0.20
  np.testing.assert_allclose(named(a, "test accuracy, ghost 8")["per_seed"], np.full(N, 0.01) + (A - B) / 10, atol=TOL)
  for b, d in ((64, 0.40 - 0.53), (256, 0.45 - 0.60), (1024, 0.50 - 0.68)):
    np.testing.assert_allclose(named(a, f"test loss at B = {b}:")["per_seed"], d + A - B, atol=TOL)
  fades = named(a, "the benefit fades")  # (0.53 - 0.70) - (0.68 - 0.70)
  np.testing.assert_allclose(fades["per_seed"], np.full(N, -0.15), atol=TOL)
  assert fades["outcome"] == "as predicted"
  pop = named(a, "no batch statistics")
  np.testing.assert_allclose(pop["per_seed"], np.mean([0.60 - 0.53, 0.65 - 0.60, 0.72 - 0.68]) + J["population"] - B, atol=TOL)
  noise = named(a, "the noise alone")
  np.testing.assert_allclose(noise["per_seed"], np.mean([0.50 - 0.60, 0.55 - 0.65, 0.60 - 0.72]) + J["population_noise"] - J["population"], atol=TOL)
  for t in a["tests"]:
    assert t["outcome"] == "as predicted", t["name"]


def test_c3_contradicted_when_small_statistics_batches_hurt():
  loss = {b: {**cells, 8: cells[b] + 0.05} for b, cells in C3_LOSS.items()}
  a = c3_noise.analyze({"c3_grid": _c3(loss)})
  check(a, per_seed=0.05 + A - B, outcome="opposite", verdict="contradicted")


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
  cnn = {**C5_ACC, "bn_g2": 0.90}  # the CNN form (secondary) says the opposite
  a = c5_small_batch.analyze(fx.roundtrip(tmp_path, {"small_batch": _c5("small_batch", C5_ACC), "small_batch_cnn": _c5("small_batch_cnn", cnn)}))
  assert a["ghosts"] == [2, 4, 16, 64]
  check(a, per_seed=0.80 - 0.87 + (A - B) / 10, outcome="as predicted", verdict="supported")
  gn = named(a, "GroupNorm beats BN")
  np.testing.assert_allclose(gn["per_seed"], 0.86 - 0.80 + (J["population_noise"] - A) / 10, atol=TOL)
  assert gn["outcome"] == "as predicted"
  assert named(a, "LayerNorm beats BN")["outcome"] == "as predicted"
  assert named(a, "Batch Renorm recovers")["outcome"] == "as predicted"
  cnn_t = named(a, "CNN form: BN degrades")
  assert cnn_t["role"] == "secondary" and cnn_t["outcome"] == "opposite"
  np.testing.assert_allclose(cnn_t["per_seed"], 0.90 - 0.87 + (A - B) / 10, atol=TOL)


def test_c5_contradicted_when_small_statistics_batches_do_better():
  a = c5_small_batch.analyze({"small_batch": _c5("small_batch", {**C5_ACC, "bn_g2": 0.90}), "small_batch_cnn": {}})
  check(a, per_seed=0.90 - 0.87 + (A - B) / 10, outcome="opposite", verdict="contradicted")


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


def test_c7_supported(ioffe_world):
  a = c7_attribution.analyze({"ioffe": ioffe_world})
  # final test loss at LR 0.5 (mean of the last 2 evaluations): stop-gradient 0.60 + C/10, BN 0.40 + A/10
  check(a, per_seed=0.20 + (C - A) / 10, outcome="as predicted", verdict="supported")
  pop = named(a, "population BN (running statistics) - BN: final test loss")
  np.testing.assert_allclose(pop["per_seed"], 0.15 + (J["population"] - A) / 10, atol=TOL)
  steps = named(a, "population BN (running statistics) - BN: log2 steps")
  np.testing.assert_allclose(steps["per_seed"], log2(800 / 600) + J["population"] - A, atol=TOL)
  noise = named(a, "the noise alone")
  np.testing.assert_allclose(noise["per_seed"], -0.05 + (J["population_noise"] - J["population"]) / 10, atol=TOL)
  for t in a["tests"]:
    assert t["outcome"] == "as predicted", t["name"]


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
  assert claims["C6"]["verdict"] == "supported" and claims["C2'"]["verdict"] == "supported"
  np.testing.assert_allclose(primary(claims["C6"])["per_seed"], 0.1 + A, atol=TOL)
  text = path.read_text()
  for cid, claim in (("C6", c6_depth.CLAIM), ("C2'", c2p_lr.CLAIM)):
    assert f"## {cid} — {claim.title}" in text
    assert f"**Primary test** (declared in `bn/claims/` before the run): {claim.primary}." in text
    assert f"| **{cid}** {claim.title} | {claim.primary} |" in text  # the summary row
  section = text[text.index("## C6 —"):]
  assert "**as predicted** → verdict **supported**" in section
  assert "## C1 " not in text and "Not finished yet" not in text
  assert (tmp_path / "c6_depth.png").stat().st_size > 1000 and "](c6_depth.png)" in text


def test_report_lists_a_claim_whose_conditions_have_not_finished(tmp_path):
  _ledger(tmp_path, unfinished=True)
  text = report.build(tmp_path).read_text()
  assert [c["id"] for c in artifacts.read_json(tmp_path / "claims.json")["claims"]] == ["C6"]
  assert "Not finished yet: C2'." in text
