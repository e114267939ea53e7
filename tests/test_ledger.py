"""The claims ledger: the verdict rule on made-up results, analysis from hand-written JSON, and the whole
ledger end to end in tiny mode (synthetic data, a few steps), including resume and `bn report`."""

import json
import math

import numpy as np
import pytest

from bn import analysis, artifacts, claims, cli, ledger, measure, prereg, report

CLAIM_IDS = ["C1", "C1'", "C2", "C2'", "C3", "C4", "C5", "C6", "C7"]


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


def _t(outcome, role):
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
  tests = [_t(primary, "primary")] + [_t(o, "sanity") for o in sanity] + [_t(o, "secondary") for o in secondary]
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


def test_secondary_tally_counts_what_disagrees():
  from bn import report
  tests = [_t("as predicted", "primary"), _t("opposite", "sanity")] + [_t(o, "secondary") for o in ("opposite", "as predicted", "opposite", "unclear")]
  assert report.secondary_tally(tests) == "1 as predicted, 2 opposite, 1 unclear"  # sanity and primary are not counted
  assert report.secondary_tally([_t("as predicted", "primary")]) == "—"


def test_verdict_needs_exactly_one_primary_and_known_kinds():
  with pytest.raises(ValueError, match="exactly one primary"):
    analysis.verdict([_t("as predicted", "secondary")])
  with pytest.raises(ValueError, match="exactly one primary"):
    analysis.verdict([_t("as predicted", "primary"), _t("opposite", "primary")])
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
    assert c["verdict"] in analysis.VERDICTS
    assert c["tests"] and all(t["outcome"] in ("as predicted", "opposite", "unclear") for t in c["tests"])
    assert c["parts"] and c["verdict"] == analysis.claim_verdict([p["verdict"] for p in c["parts"]])
    for p in c["parts"]:  # one primary per tested part; an untested part says why
      n = [t.get("part") for t in c["tests"] if t["role"] == "primary"].count(p["id"])
      assert (n == 0 and p["untested"] and p["verdict"] == "not tested here") or (n == 1 and p["test"]["part"] == p["id"]), p
      assert p["registration"] == "pre-registered", p  # bn reproduce wrote preregistration.json before training
    assert c["table"] and all(len(row) == 3 for row in c["table"])  # paper vs here
  assert claims["seed_base"] == prereg.CONFIRMATORY_SEED_BASE and claims["preregistered"]  # confirmatory seeds, disjoint from the pilots' 0, 1, ...
  reg = artifacts.read_json(tiny / "preregistration.json")
  base = prereg.CONFIRMATORY_SEED_BASE
  assert reg["seed_base"] == base and all(min(s) >= base for conds in reg["experiments"].values() for s in conds.values())
  text = (tiny / "report.md").read_text()
  assert "**A smoke test, not a result**" in text and text.index("## What was found") < text.index("## Summary")
  assert f"| **C1** {claims['claims'][0]['claim']} — claim verdict **{claims['claims'][0]['verdict']}** | secondary tests | " in text
  assert text.index("## Summary") < text.index("## Settings") < text.index("## C1 ") < text.index("## Provenance")
  for cid in CLAIM_IDS:
    assert f"## {cid} " in text
  pngs = sorted(p.name for p in tiny.glob("*.png"))
  assert len(pngs) >= len(CLAIM_IDS)
  for png in pngs:
    assert (tiny / png).stat().st_size > 1000
    assert f"]({png})" in text
  assert "../shared" not in text and "EXPERIMENTS.md" not in text
  prov = claims["provenance"]  # where the numbers came from
  assert prov["packages"]["jax"] and prov["datasets"] and prov["machine"]
  assert prov["command"] == f"bn reproduce --tiny --out {tiny} --no-progress"  # what was run, not the test runner's argv
  assert "- packages: " in text and "- command: " in text


def test_tiny_ledger_workdirs(tiny):
  for name in claims.experiments():
    for cond in ledger.config_module(name).conditions("tiny"):
      d = tiny / name / cond
      assert (d / ("results.json" if measure.measured(name) else "summary.json")).exists(), d
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
  assert first["conditions"]["skipped"] == [] and first["conditions"]["trained"]  # the first run trained (or measured) everything
  assert t["conditions"] == {"trained": [], "skipped": first["conditions"]["trained"]}  # the second nothing
  assert t["cumulative_s"]["total"] == pytest.approx(first["cumulative_s"]["total"] + t["last_invocation_s"]["total"])


def test_bn_report_rebuilds_from_json(tiny):
  (tiny / "report.md").unlink()
  (tiny / "claims.json").unlink()
  assert cli.main(["report", str(tiny)]) == 0
  assert [c["id"] for c in artifacts.read_json(tiny / "claims.json")["claims"]] == CLAIM_IDS


def test_unknown_experiment_is_a_clear_error(tmp_path, capsys):
  assert cli.main(["reproduce", "--tiny", "--out", str(tmp_path), "--only", "nope", "--no-progress"]) == 2
  assert "unknown experiment" in capsys.readouterr().err


def test_power_statement_of_a_margin_test_is_about_the_margin():
  t = analysis.test("x", [0.001, -0.002, 0.0, -0.001, 0.002], "not_lower", margin=0.01)
  text = analysis.power_statement(t)
  assert "the margin -0.01" in text and "non-inferior" in text and f"{t['mde']:.3g}" in text
  assert "non-inferior" not in analysis.power_statement(analysis.test("y", [0.1, 0.2, 0.15], "lower"))


def test_report_cells_escape_the_table_separator():
  assert report._cell("shift |Δμ|/σ") == "shift \\|Δμ\\|/σ"


def test_deep_linear_stability_edge_matches_the_exact_hessian():
  """bn.measure.deep_linear.stability_edge (power iteration on HVPs) against 2 / the top eigenvalue of the
  loss Hessian that jax.hessian builds for a tiny no-BN deep linear net; and a run at a quarter of it stays finite."""
  import jax
  import jax.flatten_util
  import jax.numpy as jnp

  from bn.measure import deep_linear as dl

  c = ledger.condition_configs("deep_linear", "tiny", seed_base=0)["none"]
  edge = dl.stability_edge(c, c.seeds, iterations=300)
  model = dl._deep_model(c, "none")
  for i, seed in enumerate(c.seeds):
    (p, s), xy = dl._setup(c, model, seed)
    flat, unravel = jax.flatten_util.ravel_pytree(p)
    f = lambda v: dl._loss(model)(unravel(v), s, xy)[0]  # noqa: E731
    top = float(jnp.max(jnp.linalg.eigvalsh(jax.hessian(f)(flat))))
    assert edge[i] == pytest.approx(2.0 / top, rel=1e-3)
  r = dl.measure_deep_linear(c)
  assert np.all(np.isfinite(np.array(r["loss"]))) and r["lr"] == pytest.approx(list(0.25 * edge), rel=1e-5)
