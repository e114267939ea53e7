"""The claims ledger: the verdict rule on made-up results, analysis from hand-written JSON, and the whole
ledger end to end in tiny mode (synthetic data, a few steps), including resume and `bn report`."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from bn import analysis, artifacts, claims, cli, ledger, report
from bn.claims import c2p_lr, c5_small_batch, c6_depth

CLAIM_IDS = ["C1", "C1'", "C2", "C2'", "C3", "C4", "C5", "C6"]


# ----------------------------------------------------------------------------- the verdict rule


@pytest.mark.parametrize("diffs,kind,outcome", [
    ([-1.0, -1.1, -0.9], "lower", "as predicted"),
    ([1.0, 1.1, 0.9], "lower", "opposite"),
    ([-1.0, 1.0, 0.1], "lower", "unclear"),
    ([0.5, 0.6, 0.55], "higher", "as predicted"),
    ([-0.5, -0.6, -0.55], "higher", "opposite"),
    ([0.001, -0.002, 0.0005], "equivalent", "as predicted"),
    ([0.5, 0.6, 0.55], "equivalent", "opposite"),
    ([0.0, 0.03, -0.01], "equivalent", "unclear"),
    ([0.3, -0.2, 0.1], "not_lower", "as predicted"),
    ([-0.3, -0.2, -0.25], "not_lower", "opposite"),
])
def test_outcomes(diffs, kind, outcome):
  assert analysis.test("t", diffs, kind, margin=0.02)["outcome"] == outcome


def test_outcome_uses_t_interval():
  # mean 1, sd 1, n = 3: the t interval (t_0.975,2 = 4.303) is 1 +- 2.48 and includes 0,
  # although a normal interval (1 +- 1.13) would not.
  t = analysis.test("t", [0.0, 1.0, 2.0], "higher")
  assert t["outcome"] == "unclear"
  assert t["lo"] == pytest.approx(1 - 4.302652729911275 / math.sqrt(3), rel=1e-9)


def test_nan_or_single_seed_is_unclear():
  assert analysis.test("t", [1.0, float("nan"), 2.0], "higher")["outcome"] == "unclear"
  assert analysis.test("t", [1.0], "higher")["outcome"] == "unclear"


@pytest.mark.parametrize("outcomes,verdict", [
    (["as predicted", "as predicted"], "supported"),
    (["as predicted", "opposite"], "contradicted"),
    (["as predicted", "unclear"], "inconclusive"),
    (["unclear", "unclear"], "inconclusive"),
])
def test_verdict_rule(outcomes, verdict):
  tests = [{"outcome": o, "counts": True} for o in outcomes]
  assert analysis.verdict(tests) == verdict


def test_tests_that_do_not_count_do_not_decide():
  tests = [{"outcome": "as predicted", "counts": True}, {"outcome": "opposite", "counts": False}]
  assert analysis.verdict(tests) == "supported"


# ----------------------------------------------------------------------------- analysis from made-up JSON


def _write_summary(d: Path, config=None, **per_seed):
  n = len(next(iter(per_seed.values())))
  runs = [{"run": i, "seed": i, "lr": 0.1, "diverged": False, **{k: v[i] for k, v in per_seed.items()}} for i in range(n)]
  d.mkdir(parents=True)
  artifacts.write_json(d / "summary.json", {"runs": runs, "steps": 10, "wall_time_s": 1.0, "compile_time_s": 1.0})
  artifacts.write_jsonl(d / "metrics.jsonl", [])
  artifacts.write_json(d / "config.json", {"config": config or {}})


def _small_batch_config(kind, ghost):
  return {"norm": {"kind": kind, "ghost_batch_size": ghost}, "train": {"batch_size": 64}}


@pytest.mark.parametrize("bn2,verdict", [((0.70, 0.71, 0.69), "supported"), ((0.95, 0.96, 0.97), "contradicted")])
def test_c5_from_json(tmp_path, bn2, verdict):
  acc = {"bn_g2": (bn2, "ghost", 2), "bn_g64": ((0.90, 0.91, 0.89), "batch", 0), "renorm_g2": ((0.8, 0.8, 0.81), "renorm", 2),
         "renorm_g64": ((0.9, 0.9, 0.9), "renorm", 64), "group": ((0.88, 0.87, 0.89), "group", 0), "layer": ((0.85, 0.85, 0.86), "layer", 0)}
  for cond, (a, kind, ghost) in acc.items():
    _write_summary(tmp_path / "small_batch" / cond, _small_batch_config(kind, ghost), test_accuracy=a)
  runs = report.load_experiment(tmp_path, "small_batch")
  claim = c5_small_batch.analyze({"small_batch": runs})
  assert analysis.verdict(claim["tests"]) == verdict
  np.testing.assert_allclose(claim["tests"][0]["per_seed"], np.array(bn2) - np.array(acc["bn_g64"][0]))


def test_c6_slopes_from_json():
  # log10 ratio = 0.05 * depth for BN, 0 for none (exactly): slopes 0.05 and 0.
  def result(slope):
    return {"depths": [{"depth": d, "grad_norms": [[10 ** (slope * d), 1.0, 1.0]] * 3} for d in (4, 8, 16)]}
  np.testing.assert_allclose(c6_depth.depth_slopes(result(0.05)), [0.05] * 3, rtol=1e-9)
  claim = c6_depth.analyze({"depth_init": {"bn": {"results": result(0.05)}, "none": {"results": result(0.0)}}})
  # zero spread over seeds: the CI collapses to the mean, which lies above 0.
  assert analysis.verdict(claim["tests"]) == "supported"


def test_largest_stable_lr():
  runs = [{"seed": s, "lr": lr, "diverged": lr > 1.0, "train_accuracy": 0.9 if lr < 0.5 else 0.2}
          for s in (0, 1) for lr in (0.01, 0.1, 1.0, 10.0)]
  np.testing.assert_allclose(c2p_lr.largest_stable_lr({"runs": runs}), [-1.0, -1.0])


# ----------------------------------------------------------------------------- the whole ledger, tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  out = tmp_path_factory.mktemp("ledger")
  assert cli.main(["reproduce", "--tiny", "--out", str(out), "--no-progress"]) == 0
  return out


def test_tiny_ledger_report_has_every_claim(tiny):
  claims = artifacts.read_json(tiny / "claims.json")
  assert [c["id"] for c in claims["claims"]] == CLAIM_IDS
  for c in claims["claims"]:
    assert c["verdict"] in ("supported", "contradicted", "inconclusive")
    assert c["tests"] and all(t["outcome"] in ("as predicted", "opposite", "unclear") for t in c["tests"])
    # the verdict is the rule applied to the measured outcomes
    assert c["verdict"] == analysis.verdict(c["tests"])
  text = (tiny / "report.md").read_text()
  assert text.index("| claim | what it predicts") < text.index("## C1 ")
  for cid in CLAIM_IDS:
    assert f"## {cid} " in text
  for png in ("c1_ioffe_fig1.png", "c1p_noisy_gradient_ics.png", "c2_coupling.png", "c2_lr_sweep.png", "c3_gap.png",
              "c4_landscape.png", "c5_small_batch.png", "c6_depth.png"):
    assert (tiny / png).stat().st_size > 1000
    assert f"]({png})" in text


def test_tiny_ledger_workdirs(tiny):
  for name in claims.experiments():
    for cond in ledger.config_module(name).conditions("tiny"):
      d = tiny / name / cond
      assert (d / ("results.json" if claims.runner(name) else "summary.json")).exists(), d
  # every JSON file a run wrote parses
  for p in tiny.rglob("*.json"):
    json.loads(p.read_text())
  for p in tiny.rglob("*.jsonl"):
    [json.loads(line) for line in p.read_text().splitlines()]


def test_tiny_ledger_resumes_without_training(tiny):
  summaries = sorted(tiny.rglob("summary.json"))
  before = {p: p.stat().st_mtime_ns for p in summaries}
  first = artifacts.read_json(tiny / "timings.json")
  assert cli.main(["reproduce", "--tiny", "--out", str(tiny), "--no-progress"]) == 0
  assert {p: p.stat().st_mtime_ns for p in summaries} == before  # no condition ran again
  t = artifacts.read_json(tiny / "timings.json")
  assert t["previous"] == first["last_invocation_s"]
  assert t["conditions"] == {"trained": [], "skipped": first["conditions"]["trained"]}  # nothing trained again
  assert first["conditions"]["skipped"] == [] and len(first["conditions"]["trained"]) == sum(
      len(ledger.config_module(n).conditions("tiny")) for n in claims.experiments())
  assert t["cumulative_s"]["total"] == pytest.approx(first["cumulative_s"]["total"] + t["last_invocation_s"]["total"])


def test_bn_report_rebuilds_from_json(tiny):
  (tiny / "report.md").unlink()
  (tiny / "claims.json").unlink()
  assert cli.main(["report", str(tiny)]) == 0
  assert [c["id"] for c in artifacts.read_json(tiny / "claims.json")["claims"]] == CLAIM_IDS


def test_unknown_experiment_is_a_clear_error(tmp_path, capsys):
  assert cli.main(["reproduce", "--tiny", "--out", str(tmp_path), "--only", "nope", "--no-progress"]) == 2
  assert "unknown experiment" in capsys.readouterr().err
